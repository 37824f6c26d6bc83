"""A vlmjax dual encoder <-> CLIP's PyTorch weights, in a layout both open_clip and HF share.

`to_torch(model_config, params)` gives `(spec, tensors)`: `spec` the architecture (what open_clip's
and HF's model configs are written from), `tensors` numpy arrays in PyTorch layout under HF
`CLIPModel` names without their prefixes ({'vision': {...}, 'text': {...}, 'visual_projection': ...}).
`from_torch(spec, tensors)` is its inverse. `open_clip.py` and `hf_clip.py` only rename.

What CLIP's architecture is, in vlmjax's terms (anything else cannot be written in these formats
and raises a ValueError naming the option): ViT with a class token (`pool='cls'`), learned position
embeddings, LayerNorm before the transformer (`pre_norm`) and after it, a plain patch convolution
(`stem='patch'`); a causal text transformer pooled at its last token (`pool='eos'`); GELU or
QuickGELU MLPs; linear projections without bias. vlmjax's patch-embedding bias has no place in
CLIP's bias-free convolution: it is added to the patch positions' position embeddings instead
(exact, since every patch token gets both). Pixels: vlmjax feeds [−1, 1], which is CLIP's
`(x − mean)/std` with mean = std = 0.5; weights trained with other statistics (OpenAI's) have them
folded into the patch embedding on import (`layout.fold_pixel_normalization`).
"""
import dataclasses

import numpy as np

from vlmjax.interop import layout
from vlmjax.models.sizes import decode_variant
from vlmjax.models.text import TextTransformer
from vlmjax.models.vit import ViT

ACTIVATIONS = ("gelu", "quick_gelu")


def tower_kwargs(tower_cls, tower_config: dict, default_variant: str) -> dict:
  """A tower's config entry -> every field of its module (variant decoded, class defaults filled)."""
  config = dict(tower_config or {})
  out = {f.name: f.default for f in dataclasses.fields(tower_cls)
         if f.default is not dataclasses.MISSING and f.name not in ("parent", "name")}
  out.update(decode_variant(config.pop("variant", default_variant)))
  out.update(config)
  return out


def _require(ok: bool, what: str, fmt: str):
  if not ok:
    raise ValueError(f"{fmt}: this model's {what}; CLIP's architecture cannot express that")


# --- one transformer block (torch names as in HF's CLIPEncoderLayer) -------------------------------

def block_to_torch(block: dict) -> dict:
  attn, mlp = block["attn"], block["mlp"]
  out = {}
  for name, ours in (("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value")):
    out[f"self_attn.{name}.weight"] = layout.heads_in_to_linear(attn[ours]["kernel"])
    out[f"self_attn.{name}.bias"] = layout.heads_to_bias(attn[ours]["bias"])
  out["self_attn.out_proj.weight"] = layout.heads_out_to_linear(attn["out"]["kernel"])
  out["self_attn.out_proj.bias"] = np.asarray(attn["out"]["bias"])
  for name, ours in (("layer_norm1", "norm1"), ("layer_norm2", "norm2")):
    out[f"{name}.weight"], out[f"{name}.bias"] = np.asarray(block[ours]["scale"]), np.asarray(block[ours]["bias"])
  for name in ("fc1", "fc2"):
    out[f"mlp.{name}.weight"] = layout.dense_to_linear(mlp[name]["kernel"])
    out[f"mlp.{name}.bias"] = np.asarray(mlp[name]["bias"])
  return out


def block_from_torch(t: dict, num_heads: int) -> dict:
  attn = {ours: {"kernel": layout.linear_to_heads_in(t[f"self_attn.{name}.weight"], num_heads),
                 "bias": layout.bias_to_heads(t[f"self_attn.{name}.bias"], num_heads)}
          for name, ours in (("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value"))}
  attn["out"] = {"kernel": layout.linear_to_heads_out(t["self_attn.out_proj.weight"], num_heads),
                 "bias": np.asarray(t["self_attn.out_proj.bias"])}
  return {
      "attn": attn,
      "norm1": {"scale": np.asarray(t["layer_norm1.weight"]), "bias": np.asarray(t["layer_norm1.bias"])},
      "norm2": {"scale": np.asarray(t["layer_norm2.weight"]), "bias": np.asarray(t["layer_norm2.bias"])},
      "mlp": {name: {"kernel": layout.linear_to_dense(t[f"mlp.{name}.weight"]),
                     "bias": np.asarray(t[f"mlp.{name}.bias"])} for name in ("fc1", "fc2")},
  }


def _norm_to_torch(norm):
  return np.asarray(norm["scale"]), np.asarray(norm["bias"])


# --- the whole model -------------------------------------------------------------------------------

def to_torch(model_config: dict, params: dict, fmt: str = "export"):
  """vlmjax dual-encoder config + params -> (spec, tensors); see the module docstring."""
  model_config = dict(model_config)
  _require(model_config.get("name", "dual_encoder") == "dual_encoder",
           f"model is '{model_config.get('name')}', not a dual_encoder", fmt)
  image = tower_kwargs(ViT, model_config.get("image"), "S/16")
  text = tower_kwargs(TextTransformer, model_config.get("text"), "S")
  _require(image["pool"] == "cls", f"ViT pools by '{image['pool']}' (CLIP: pool='cls')", fmt)
  _require(image["posemb"] == "learn", f"ViT posemb is '{image['posemb']}' (CLIP: 'learn')", fmt)
  _require(image["stem"] == "patch", f"ViT stem is '{image['stem']}' (CLIP: 'patch')", fmt)
  _require(image["pre_norm"], "ViT has no pre_norm (CLIP: pre_norm=True)", fmt)
  _require(text["pool"] == "eos", f"text tower pools by '{text['pool']}' (CLIP: 'eos')", fmt)
  _require(text["causal"], "text tower is not causal (CLIP: causal=True)", fmt)
  for tower, kw in (("image", image), ("text", text)):
    _require(kw["activation"] in ACTIVATIONS, f"{tower} activation is '{kw['activation']}' (CLIP: "
             "gelu or quick_gelu)", fmt)
  _require(not model_config.get("local_logit_scale"), "model has local_logit_scale (DreamLIP)", fmt)

  p = params["image"]
  num_positions, width = np.asarray(p["pos_embedding"]).shape[1:]
  grid = int(round((num_positions - 1) ** 0.5))
  patch = image["patch_size"]
  positions = np.asarray(p["pos_embedding"], np.float32)[0].copy()
  positions[1:] += np.asarray(p["patch_embed"]["bias"], np.float32)  # CLIP's conv has no bias
  vision = {
      "embeddings.class_embedding": np.asarray(p["cls"]).reshape(width),
      "embeddings.patch_embedding.weight": layout.flax_to_conv(p["patch_embed"]["kernel"]),
      "embeddings.position_embedding.weight": positions,
      "pre_layrnorm.weight": _norm_to_torch(p["pre_norm"])[0],
      "pre_layrnorm.bias": _norm_to_torch(p["pre_norm"])[1],
      "post_layernorm.weight": _norm_to_torch(p["encoder"]["final_norm"])[0],
      "post_layernorm.bias": _norm_to_torch(p["encoder"]["final_norm"])[1],
  }
  for i, block in enumerate(layout.unstack_layers(p["encoder"], image["depth"])):
    vision.update({f"encoder.layers.{i}.{k}": v for k, v in block_to_torch(block).items()})

  p = params["text"]
  vocab_size, text_width = np.asarray(p["token_embed"]["embedding"]).shape
  context_length = np.asarray(p["pos_embedding"]).shape[1]
  text_tensors = {
      "embeddings.token_embedding.weight": np.asarray(p["token_embed"]["embedding"]),
      "embeddings.position_embedding.weight": np.asarray(p["pos_embedding"])[0],
      "final_layer_norm.weight": _norm_to_torch(p["encoder"]["final_norm"])[0],
      "final_layer_norm.bias": _norm_to_torch(p["encoder"]["final_norm"])[1],
  }
  for i, block in enumerate(layout.unstack_layers(p["encoder"], text["depth"])):
    text_tensors.update({f"encoder.layers.{i}.{k}": v for k, v in block_to_torch(block).items()})

  embed_dim = np.asarray(params["image_proj"]["kernel"]).shape[1]
  tensors = {
      "vision": vision, "text": text_tensors,
      "visual_projection": layout.dense_to_linear(params["image_proj"]["kernel"]),  # [E, Wi]
      "text_projection": layout.dense_to_linear(params["text_proj"]["kernel"]),     # [E, Wt]
      "logit_scale": np.asarray(params["logit_scale"], np.float32),
      "logit_bias": np.asarray(params["logit_bias"], np.float32),
  }
  spec = dict(
      embed_dim=int(embed_dim),
      vision=dict(width=int(width), layers=image["depth"], heads=image["num_heads"], mlp_dim=image["mlp_dim"],
                  patch_size=patch, image_size=grid * patch, activation=image["activation"],
                  norm_eps=float(image["norm_eps"])),
      text=dict(width=int(text_width), layers=text["depth"], heads=text["num_heads"], mlp_dim=text["mlp_dim"],
                vocab_size=int(vocab_size), context_length=int(context_length), activation=text["activation"],
                norm_eps=float(text["norm_eps"])),
      pixel_mean=(0.5, 0.5, 0.5), pixel_std=(0.5, 0.5, 0.5))
  return spec, tensors


def from_torch(spec: dict, tensors: dict, scan: bool = True):
  """(spec, tensors) as `to_torch` gives them (pixel statistics may differ) -> (model config, params).

  The model config is a `config.model` entry for `DualEncoder`; `params` numpy arrays in its tree."""
  vision, text = spec["vision"], spec["text"]
  t = tensors["vision"]
  kernel, bias = layout.fold_pixel_normalization(
      layout.conv_to_flax(t["embeddings.patch_embedding.weight"]), None, spec["pixel_mean"], spec["pixel_std"])
  image_params = {
      "patch_embed": {"kernel": kernel, "bias": bias},
      "cls": np.asarray(t["embeddings.class_embedding"]).reshape(1, 1, -1),
      "pos_embedding": np.asarray(t["embeddings.position_embedding.weight"])[None],
      "pre_norm": {"scale": np.asarray(t["pre_layrnorm.weight"]), "bias": np.asarray(t["pre_layrnorm.bias"])},
      "encoder": {
          **layout.stack_layers([block_from_torch(_prefixed(t, f"encoder.layers.{i}."), vision["heads"])
                                 for i in range(vision["layers"])], scan),
          "final_norm": {"scale": np.asarray(t["post_layernorm.weight"]),
                         "bias": np.asarray(t["post_layernorm.bias"])}},
  }
  t = tensors["text"]
  text_params = {
      "token_embed": {"embedding": np.asarray(t["embeddings.token_embedding.weight"])},
      "pos_embedding": np.asarray(t["embeddings.position_embedding.weight"])[None],
      "encoder": {
          **layout.stack_layers([block_from_torch(_prefixed(t, f"encoder.layers.{i}."), text["heads"])
                                 for i in range(text["layers"])], scan),
          "final_norm": {"scale": np.asarray(t["final_layer_norm.weight"]),
                         "bias": np.asarray(t["final_layer_norm.bias"])}},
  }
  params = {
      "image": image_params, "text": text_params,
      "image_proj": {"kernel": layout.linear_to_dense(tensors["visual_projection"])},
      "text_proj": {"kernel": layout.linear_to_dense(tensors["text_projection"])},
      "logit_scale": np.asarray(tensors["logit_scale"], np.float32).reshape(()),
      "logit_bias": np.asarray(tensors.get("logit_bias", -10.0), np.float32).reshape(()),
  }
  params = layout.tree_map(lambda x: np.asarray(x, np.float32), params)
  model_config = dict(
      name="dual_encoder", embed_dim=int(spec["embed_dim"]),
      image=dict(width=vision["width"], depth=vision["layers"], mlp_dim=vision["mlp_dim"],
                 num_heads=vision["heads"], patch_size=vision["patch_size"], pool="cls", posemb="learn",
                 pre_norm=True, stem="patch", activation=vision["activation"], norm_eps=vision["norm_eps"],
                 scan=scan),
      text=dict(width=text["width"], depth=text["layers"], mlp_dim=text["mlp_dim"], num_heads=text["heads"],
                max_len=text["context_length"], causal=True, pool="eos", activation=text["activation"],
                norm_eps=text["norm_eps"], scan=scan))
  return model_config, params


def _prefixed(tensors: dict, prefix: str) -> dict:
  return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
