"""A VLM projector fitted in closed form, with no gradient step: SITTA (Fields et al. 2023), its
variant that learns the map from image–text pairs.

The map sends the image tower's token features into the frozen LM's input embedding space. It is
fitted by ridge regression on pairs (x, y): x the mean of an image's token features (what the
projector reads, averaged), y the mean of the LM's input embeddings of its caption's pieces (scaled
as the decoder scales token embeddings). Since the map is affine, the mean of the mapped tokens is
the map of the mean, so the image's projected tokens land, on average, where its words are.

  W = (XcᵀXc + λ·N·I)⁻¹ XcᵀYc,   b = ȳ − x̄ W       (Xc, Yc: X, Y centred; N pairs)

λ is chosen from a grid by the mean squared error of the map on the `validation` split's pairs,
and the fit on the training pairs at that λ becomes the `linear` projector's kernel and bias.
A config asks for it under `init.fit` (`ridge_projector=dict(examples=..., l2=(...))`): the
trainer runs it after `init` has loaded the towers, before step 0. The choice is written to the
workdir as `fit_ridge_projector.json`.
"""
import json
import os

import jax
import numpy as np

from vlmjax import registry
from vlmjax.data import pipeline, sources
from vlmjax.models.decoder import decoder_kwargs
from vlmjax.models.vit import ViT


def ridge(x, y, l2: float):
  """x [N, Dx], y [N, Dy] -> (W [Dx, Dy], b [Dy]) minimising ‖xW + b − y‖²/N + λ‖W‖², float64."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  x_mean, y_mean = x.mean(0), y.mean(0)
  xc, yc = x - x_mean, y - y_mean
  w = np.linalg.solve(xc.T @ xc + l2 * len(x) * np.eye(x.shape[1]), xc.T @ yc)
  return w, y_mean - x_mean @ w


def pairs(model, params, tokenizer, data_config, input_config, split: str, count: int, batch_size: int = 256):
  """(X [n, Dv]: mean token features of the split's first `count` images, Y [n, D]: mean input
  embedding of their captions' pieces), float64; records without pieces or an image are left out."""
  vit = ViT(**model.image_kwargs())
  features = jax.jit(lambda p, images: vit.apply({"params": p}, images)[1].mean(axis=1))
  table = np.asarray(jax.device_get(params["decoder"]["embedding"]), np.float64)
  decoder = decoder_kwargs(model.decoder)
  if decoder.get("scale_token_embeddings"):
    table = table * decoder["width"] ** 0.5
  source = sources.make_source(data_config, split)
  preprocess = pipeline.Preprocess(tokenizer, input_config.image_size, input_config.max_text_len,
                                   passthrough=("caption",), input_config=input_config)
  image_params = jax.device_get(params["image"])
  xs, ys = [], []
  for batch in pipeline.eval_batches(source, preprocess, batch_size, range(min(count, len(source)))):
    pieces = tokenizer.pieces([str(c.decode() if isinstance(c, bytes) else c) for c in batch["caption"]])
    keep = np.array([len(p) > 0 for p in pieces])
    xs.append(np.asarray(features(image_params, np.asarray(batch["image"], np.float32)), np.float64)[keep])
    ys += [table[np.asarray(p)].mean(0) for p, k in zip(pieces, keep) if k]
  return np.concatenate(xs), np.stack(ys)


@registry.register("fit", "ridge_projector")
class RidgeProjector:
  """`examples` training pairs to fit on, `validation_examples` to choose λ on, the λ grid `l2`."""

  def __init__(self, examples: int = 8192, validation_examples: int = 2000,
               l2: tuple = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)):
    if examples < 2 or validation_examples < 1 or not l2 or min(l2) < 0:
      raise ValueError("init.fit.ridge_projector: examples must be at least 2, validation_examples at least 1, "
                       f"and l2 a non-empty grid of values >= 0 (got {examples}, {validation_examples}, {l2})")
    self.examples, self.validation_examples, self.l2 = int(examples), int(validation_examples), tuple(l2)

  def __call__(self, params, model, tokenizer, config, workdir: str = ""):
    """-> params with `projector/linear` replaced by the fit."""
    projector = dict(model.projector or {"kind": "mlp"})
    if projector.get("kind") != "linear" or "linear" not in params.get("projector", {}):
      raise ValueError(f"init.fit.ridge_projector: fits a 'linear' projector; model.projector.kind is "
                       f"'{projector.get('kind')}'")
    x, y = pairs(model, params, tokenizer, config.data, config.input, "train", self.examples)
    x_val, y_val = pairs(model, params, tokenizer, config.data, config.input, "validation", self.validation_examples)
    errors = {}
    for l2 in self.l2:
      w, b = ridge(x, y, l2)
      errors[l2] = float(((x_val @ w + b - y_val) ** 2).sum(1).mean())
    best = min(errors, key=errors.get)
    w, b = ridge(x, y, best)
    baseline = float(((y.mean(0) - y_val) ** 2).sum(1).mean())  # the mean caption for every image
    report = {"l2": best, "validation_mse": errors, "validation_mse_of_the_mean_caption": baseline,
              "train_pairs": len(x), "validation_pairs": len(x_val)}
    print(f"init.fit.ridge_projector: λ = {best:g} (validation MSE {errors[best]:.4g}; the mean caption's "
          f"{baseline:.4g}), fitted on {len(x)} pairs", flush=True)
    if workdir and jax.process_index() == 0:
      with open(os.path.join(workdir, "fit_ridge_projector.json"), "w") as f:
        json.dump({k: ({str(l): e for l, e in v.items()} if isinstance(v, dict) else v) for k, v in report.items()},
                  f, indent=1)
    linear = params["projector"]["linear"]
    placed = {"kernel": jax.device_put(np.asarray(w, linear["kernel"].dtype), linear["kernel"].sharding),
              "bias": jax.device_put(np.asarray(b, linear["bias"].dtype), linear["bias"].sharding)}
    return {**params, "projector": {**params["projector"], "linear": placed}}
