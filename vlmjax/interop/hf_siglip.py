"""Hugging Face `SiglipModel` layout: `config.json` + `model.safetensors` (+ `preprocessor_config.json`),
loadable with `transformers.SiglipModel.from_pretrained(FOLDER)`.

SigLIP's architecture in vlmjax's terms (`sizes.siglip`; anything else raises a ValueError naming the
option): a ViT without class token or LayerNorm before the transformer (`pool='map'`, `pre_norm=False`,
learned position embeddings, a plain patch convolution, with bias as HF's), whose MAP head's output is
the image embedding (`image_head='none'`); a text transformer with neither causal nor padding mask,
pooled at its last position (`pool='last'`, `causal=False`, `mask_padding=False`), then a linear map
with bias (`text_head='proj_bias'`, HF's `text_model.head`); `logit_scale`, `logit_bias` ([1] in HF).

  vlmjax                               HF SiglipModel
  image/patch_embed/{kernel,bias}      vision_model.embeddings.patch_embedding.{weight,bias}  (Conv2d)
  image/pos_embedding [1, N, D]        vision_model.embeddings.position_embedding.weight [N, D]
  image/encoder/<block i>              vision_model.encoder.layers.i.*  (`clip.block_to_torch`)
  image/encoder/final_norm             vision_model.post_layernorm
  image/map_head/probe                 vision_model.head.probe
  image/map_head/attn/{query,key,value} vision_model.head.attention.in_proj_{weight,bias}  (q, k, v stacked)
  image/map_head/attn/out              vision_model.head.attention.out_proj
  image/map_head/{norm,mlp}            vision_model.head.{layernorm,mlp}
  text/token_embed, text/pos_embedding text_model.embeddings.{token,position}_embedding.weight
  text/encoder/<block i>, final_norm   text_model.encoder.layers.i.*, text_model.final_layer_norm
  text_proj/{kernel,bias}              text_model.head.{weight,bias}

The vision tower's mapping (`vision_*` below: config entries, tensors, pixel statistics) is shared
with `hf_paligemma`, whose image tower is this ViT without the MAP head (`vision_use_head` False: a
ViT with `pool='gap'`, whose tokens are all the VLM reads).

HF runs the text tower without an attention mask when given none, as vlmjax's SigLIP tower does; its
texts must be `max_position_embeddings` long (pooling reads the last position). Pixels: both take
`(x01 - 0.5) / 0.5`, vlmjax's [-1, 1]; a checkpoint trained with other statistics (its
preprocessor_config.json) has them folded into the patch embedding on import.
"""
import math

import jax.numpy as jnp
import numpy as np

from vlmjax.interop import clip, layout
from vlmjax.models.dual_encoder import DualEncoder
from vlmjax.models.text import TextTransformer
from vlmjax.models.vit import ViT

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PREPROCESSOR_FILE = "preprocessor_config.json"
MODEL_TYPE = "siglip"

# vlmjax activation -> HF `hidden_act`; reading also takes gelu_new, the same tanh formula written out.
HF_ACTIVATIONS = {"gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu", "quick_gelu": "quick_gelu"}
FROM_HF_ACTIVATIONS = {**{v: k for k, v in HF_ACTIVATIONS.items()}, "gelu_new": "gelu_tanh"}

# SiglipTextConfig / SiglipVisionConfig defaults (transformers' configuration_siglip.py): what a
# config.json that leaves a key out means.
TEXT_DEFAULTS = dict(vocab_size=32000, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                     num_attention_heads=12, max_position_embeddings=64, hidden_act="gelu_pytorch_tanh",
                     layer_norm_eps=1e-6, attention_dropout=0.0, projection_size=None)
VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                       num_channels=3, image_size=224, patch_size=16, hidden_act="gelu_pytorch_tanh",
                       layer_norm_eps=1e-6, attention_dropout=0.0, vision_use_head=True)
HALF = (0.5, 0.5, 0.5)  # SiglipImageProcessor's statistics for the released checkpoints: vlmjax's pixels


def _require(ok: bool, what: str):
  if not ok:
    raise ValueError(f"hf_siglip: this model's {what}; SigLIP's architecture (HF SiglipModel) cannot express that")


def _refuse(ok: bool, key: str, value, why: str, fmt: str = "hf_siglip"):
  if not ok:
    raise ValueError(f"{fmt}: config.json {key}={value!r}: {why}")


# --- the vision tower (shared with hf_paligemma) -----------------------------------------------------

def check_vision_tower(image: dict, fmt: str):
  """ValueError (one line, `fmt` first) unless the ViT (`clip.tower_kwargs` filled in) is HF's SigLIP
  vision transformer: learned position embeddings, a plain patch convolution, no LayerNorm before the
  transformer, an activation HF names. Its pooling is the caller's to check."""
  for ok, what in ((image["posemb"] == "learn", f"ViT posemb is '{image['posemb']}' (SigLIP: 'learn')"),
                   (image["stem"] == "patch", f"ViT stem is '{image['stem']}' (SigLIP: 'patch')"),
                   (not image["pre_norm"], "ViT has pre_norm (SigLIP: none)"),
                   (image["activation"] in HF_ACTIVATIONS,
                    f"image activation is '{image['activation']}' (HF SigLIP: {', '.join(HF_ACTIVATIONS)})")):
    if not ok:
      raise ValueError(f"{fmt}: this model's {what}; HF's SigLIP vision transformer cannot express that")


def vision_config(image: dict, image_size: int) -> dict:
  """A ViT (`clip.tower_kwargs` filled in) at `image_size` -> its SiglipVisionConfig entries; a MAP head
  (`pool='map'`) is `vision_use_head`."""
  return {
      "hidden_size": image["width"], "intermediate_size": image["mlp_dim"], "num_hidden_layers": image["depth"],
      "num_attention_heads": image["num_heads"], "image_size": int(image_size), "patch_size": image["patch_size"],
      "num_channels": 3, "hidden_act": HF_ACTIVATIONS[image["activation"]], "layer_norm_eps": float(image["norm_eps"]),
      "attention_dropout": 0.0, "vision_use_head": image["pool"] == "map"}


def vision_from_hf(vision: dict, scan: bool = True, fmt: str = "hf_siglip") -> tuple[dict, int]:
  """SiglipVisionConfig entries (its defaults filled in) -> (config.model.image, image_size): `pool='map'`
  with the MAP head (`vision_use_head`), else 'gap' (no params of its own). A key vlmjax cannot represent
  raises a one-line ValueError naming it as `vision_config.KEY`."""
  vision = dict(vision)
  act = vision["hidden_act"]
  _refuse(act in FROM_HF_ACTIVATIONS, "vision_config.hidden_act", act,
          f"vlmjax takes {', '.join(FROM_HF_ACTIVATIONS)}", fmt)
  _refuse(not vision["attention_dropout"], "vision_config.attention_dropout", vision["attention_dropout"],
          "vlmjax's attention has no dropout", fmt)
  _refuse(vision["hidden_size"] % vision["num_attention_heads"] == 0, "vision_config.num_attention_heads",
          vision["num_attention_heads"], f"does not divide hidden_size {vision['hidden_size']}", fmt)
  for key in ("image_size", "patch_size"):
    value = vision[key]
    if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1]:
      value = vision[key] = value[0]
    _refuse(isinstance(value, int), f"vision_config.{key}", vision[key], "vlmjax takes one int (square)", fmt)
  _refuse(vision["num_channels"] == 3, "vision_config.num_channels", vision["num_channels"],
          "vlmjax takes RGB (3)", fmt)
  image = dict(width=vision["hidden_size"], depth=vision["num_hidden_layers"], mlp_dim=vision["intermediate_size"],
               num_heads=vision["num_attention_heads"], patch_size=vision["patch_size"],
               pool="map" if vision["vision_use_head"] else "gap", posemb="learn", pre_norm=False, stem="patch",
               activation=FROM_HF_ACTIVATIONS[act], norm_eps=float(vision["layer_norm_eps"]), scan=scan)
  return image, vision["image_size"]


def vision_to_state(image: dict, p: dict, prefix: str) -> dict:
  """A ViT's params (`image`: its `clip.tower_kwargs`) -> SiglipVisionTransformer's tensors (numpy, torch
  layout) named under `prefix` ('vision_model.' in a SiglipModel); the MAP head's when it has one."""
  state = {
      "embeddings.patch_embedding.weight": layout.flax_to_conv(p["patch_embed"]["kernel"]),
      "embeddings.patch_embedding.bias": np.asarray(p["patch_embed"]["bias"]),
      "embeddings.position_embedding.weight": np.asarray(p["pos_embedding"])[0],
      **_norm(p["encoder"]["final_norm"], "post_layernorm"),
  }
  for i, block in enumerate(layout.unstack_layers(p["encoder"], image["depth"])):
    state.update({f"encoder.layers.{i}.{k}": v for k, v in clip.block_to_torch(block).items()})
  if "map_head" in p:
    head = p["map_head"]
    attn = head["attn"]
    state.update({
        "head.probe": np.asarray(head["probe"]),
        "head.attention.in_proj_weight": layout.merge_qkv(
            *(layout.heads_in_to_linear(attn[n]["kernel"]) for n in ("query", "key", "value"))),
        "head.attention.in_proj_bias": layout.merge_qkv(
            *(layout.heads_to_bias(attn[n]["bias"]) for n in ("query", "key", "value"))),
        "head.attention.out_proj.weight": layout.heads_out_to_linear(attn["out"]["kernel"]),
        "head.attention.out_proj.bias": np.asarray(attn["out"]["bias"]),
        **_norm(head["norm"], "head.layernorm"),
        **_dense(head["mlp"]["fc1"], "head.mlp.fc1"),
        **_dense(head["mlp"]["fc2"], "head.mlp.fc2"),
    })
  return {prefix + k: v for k, v in state.items()}


def vision_from_state(state: dict, image: dict, prefix: str, scan: bool = True) -> dict:
  """SiglipVisionTransformer's tensors named under `prefix` -> the params of the ViT `image` (as
  `vision_from_hf` gives it; the MAP head read for `pool='map'`). KeyError for a missing tensor."""
  t = lambda name: np.asarray(state[prefix + name])
  norm = lambda name: {"scale": t(f"{name}.weight"), "bias": t(f"{name}.bias")}
  dense = lambda name: {"kernel": layout.linear_to_dense(t(f"{name}.weight")), "bias": t(f"{name}.bias")}
  heads = image["num_heads"]
  params = {
      "patch_embed": {"kernel": layout.conv_to_flax(t("embeddings.patch_embedding.weight")),
                      "bias": t("embeddings.patch_embedding.bias")},
      "pos_embedding": t("embeddings.position_embedding.weight")[None],
      "encoder": {**layout.stack_layers([clip.block_from_torch(_prefixed(state, f"{prefix}encoder.layers.{i}."), heads)
                                         for i in range(image["depth"])], scan),
                  "final_norm": norm("post_layernorm")},
  }
  if image["pool"] == "map":
    q, k, v = layout.split_qkv(t("head.attention.in_proj_weight"))
    qb, kb, vb = layout.split_qkv(t("head.attention.in_proj_bias"))
    attn = {name: {"kernel": layout.linear_to_heads_in(w, heads), "bias": layout.bias_to_heads(b, heads)}
            for name, w, b in (("query", q, qb), ("key", k, kb), ("value", v, vb))}
    attn["out"] = {"kernel": layout.linear_to_heads_out(t("head.attention.out_proj.weight"), heads),
                   "bias": t("head.attention.out_proj.bias")}
    params["map_head"] = {"probe": t("head.probe"), "attn": attn, "norm": norm("head.layernorm"),
                          "mlp": {"fc1": dense("head.mlp.fc1"), "fc2": dense("head.mlp.fc2")}}
  return params


def vision_preprocessor(image_size: int) -> dict:
  """The SiglipImageProcessor settings that read images as vlmjax does at `image_size`."""
  return {
      "image_processor_type": "SiglipImageProcessor", "do_resize": True,
      "size": {"height": image_size, "width": image_size}, "resample": 2,  # PIL bilinear, vlmjax's 'squash'
      "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(HALF),
      "image_std": list(HALF), "do_convert_rgb": True}


def fold_pixel_statistics(image_params: dict, preprocessor: dict | None):
  """A preprocessor_config.json's `image_mean` / `image_std` other than SigLIP's 0.5 folded into the ViT's
  patch embedding (in place), so it takes vlmjax's [-1, 1] pixels."""
  mean, std = tuple((preprocessor or {}).get("image_mean", HALF)), tuple((preprocessor or {}).get("image_std", HALF))
  if (mean, std) != (HALF, HALF):
    patch = image_params["patch_embed"]
    patch["kernel"], patch["bias"] = layout.fold_pixel_normalization(patch["kernel"], patch["bias"], mean, std)


# --- config.json <-> config.model ------------------------------------------------------------------

def to_hf_config(model_config: dict, image_size: int, vocab_size: int, eos_id: int, bos_id: int,
                 pad_id: int) -> dict:
  """A vlmjax SigLIP dual encoder's config.model -> HF SiglipConfig's config.json. ValueError naming
  the option for a model outside SigLIP's architecture."""
  model_config = dict(model_config)
  _require(model_config.get("name", "dual_encoder") == "dual_encoder",
           f"model is '{model_config.get('name')}', not a dual_encoder")
  image = clip.tower_kwargs(ViT, model_config.get("image"), "S/16")
  text = clip.tower_kwargs(TextTransformer, model_config.get("text"), "S")
  _require(image["pool"] == "map", f"ViT pools by '{image['pool']}' (SigLIP: pool='map')")
  check_vision_tower(image, "hf_siglip")
  _require(text["pool"] == "last", f"text tower pools by '{text['pool']}' (SigLIP: 'last')")
  _require(not text["causal"], "text tower is causal (SigLIP: causal=False)")
  _require(not text["mask_padding"], "text tower masks padding (SigLIP: mask_padding=False)")
  _require(text["activation"] in HF_ACTIVATIONS, f"text activation is '{text['activation']}' (HF SigLIP: "
           f"{', '.join(HF_ACTIVATIONS)})")
  _require(model_config.get("image_head", "proj") == "none",
           f"image_head is '{model_config.get('image_head', 'proj')}' (SigLIP: 'none')")
  _require(model_config.get("text_head", "proj") == "proj_bias",
           f"text_head is '{model_config.get('text_head', 'proj')}' (SigLIP: 'proj_bias')")
  _require(not model_config.get("local_logit_scale"), "model has local_logit_scale (DreamLIP)")
  embed_dim = int(model_config["embed_dim"])
  _require(embed_dim == image["width"], f"embed_dim {embed_dim} is not the image width {image['width']}")
  return {
      "architectures": ["SiglipModel"], "model_type": MODEL_TYPE, "torch_dtype": "float32",
      "initializer_factor": 1.0,
      "text_config": {
          "hidden_size": text["width"], "intermediate_size": text["mlp_dim"], "num_hidden_layers": text["depth"],
          "num_attention_heads": text["num_heads"], "vocab_size": int(vocab_size),
          "max_position_embeddings": text["max_len"], "hidden_act": HF_ACTIVATIONS[text["activation"]],
          "layer_norm_eps": float(text["norm_eps"]), "projection_size": embed_dim, "attention_dropout": 0.0,
          "eos_token_id": int(eos_id), "bos_token_id": int(bos_id), "pad_token_id": int(pad_id)},
      "vision_config": vision_config(image, image_size),
  }


def from_hf_config(config: dict, scan: bool = True) -> tuple[dict, dict]:
  """HF SiglipConfig's config.json -> (config.model, dict(image_size, max_text_len, vocab_size)).
  A key vlmjax cannot represent, or another `model_type`, raises a one-line ValueError naming it."""
  model_type = config.get("model_type")
  _refuse(model_type == MODEL_TYPE, "model_type", model_type, f"hf_siglip reads '{MODEL_TYPE}' (SiglipModel)")
  text = {**TEXT_DEFAULTS, **(config.get("text_config") or {})}
  vision = {**VISION_DEFAULTS, **(config.get("vision_config") or {})}
  act = text["hidden_act"]
  _refuse(act in FROM_HF_ACTIVATIONS, "text_config.hidden_act", act, f"vlmjax takes {', '.join(FROM_HF_ACTIVATIONS)}")
  _refuse(not text["attention_dropout"], "text_config.attention_dropout", text["attention_dropout"],
          "vlmjax's attention has no dropout")
  _refuse(text["hidden_size"] % text["num_attention_heads"] == 0, "text_config.num_attention_heads",
          text["num_attention_heads"], f"does not divide hidden_size {text['hidden_size']}")
  image, image_size = vision_from_hf(vision, scan)
  _refuse(vision["vision_use_head"], "vision_config.vision_use_head", vision["vision_use_head"],
          "vlmjax's SigLIP image embedding is the MAP head's output")
  embed_dim = text["projection_size"] if text["projection_size"] is not None else text["hidden_size"]
  _refuse(embed_dim == vision["hidden_size"], "text_config.projection_size", embed_dim,
          f"SigLIP compares it with the image embedding, vision_config.hidden_size {vision['hidden_size']}")
  model = dict(
      name="dual_encoder", embed_dim=int(embed_dim), image_head="none", text_head="proj_bias",
      logit_scale_init=math.log(10.0), logit_bias_init=-10.0,
      image=image,
      text=dict(width=text["hidden_size"], depth=text["num_hidden_layers"], mlp_dim=text["intermediate_size"],
                num_heads=text["num_attention_heads"], max_len=text["max_position_embeddings"], pool="last",
                causal=False, mask_padding=False, activation=FROM_HF_ACTIVATIONS[text["hidden_act"]],
                norm_eps=float(text["layer_norm_eps"]), scan=scan))
  sizes = dict(image_size=image_size, max_text_len=text["max_position_embeddings"],
               vocab_size=text["vocab_size"])
  return model, sizes


# --- weights ---------------------------------------------------------------------------------------

def _norm(tree, prefix: str) -> dict:
  return {f"{prefix}.weight": np.asarray(tree["scale"]), f"{prefix}.bias": np.asarray(tree["bias"])}


def _dense(tree, prefix: str) -> dict:
  return {f"{prefix}.weight": layout.dense_to_linear(tree["kernel"]), f"{prefix}.bias": np.asarray(tree["bias"])}


def to_state(model_config: dict, params: dict) -> dict:
  """vlmjax SigLIP params -> the SiglipModel state dict (numpy, torch layout)."""
  image = clip.tower_kwargs(ViT, model_config.get("image"), "S/16")
  text = clip.tower_kwargs(TextTransformer, model_config.get("text"), "S")
  state = vision_to_state(image, params["image"], "vision_model.")
  p = params["text"]
  state.update({
      "text_model.embeddings.token_embedding.weight": np.asarray(p["token_embed"]["embedding"]),
      "text_model.embeddings.position_embedding.weight": np.asarray(p["pos_embedding"])[0],
      **_norm(p["encoder"]["final_norm"], "text_model.final_layer_norm"),
      **_dense(params["text_proj"], "text_model.head"),
      "logit_scale": np.asarray(params["logit_scale"], np.float32).reshape(1),
      "logit_bias": np.asarray(params["logit_bias"], np.float32).reshape(1),
  })
  for i, block in enumerate(layout.unstack_layers(p["encoder"], text["depth"])):
    state.update({f"text_model.encoder.layers.{i}.{k}": v for k, v in clip.block_to_torch(block).items()})
  return state


def from_state(state: dict, model_config: dict, scan: bool = True) -> dict:
  """The SiglipModel state dict (numpy) -> vlmjax params for `model_config` (as `from_hf_config`
  gives it). KeyError for a missing tensor."""
  text = model_config["text"]
  t = lambda name: np.asarray(state[name])
  norm = lambda prefix: {"scale": t(f"{prefix}.weight"), "bias": t(f"{prefix}.bias")}
  dense = lambda prefix: {"kernel": layout.linear_to_dense(t(f"{prefix}.weight")), "bias": t(f"{prefix}.bias")}
  params = {
      "image": vision_from_state(state, model_config["image"], "vision_model.", scan),
      "text": {
          "token_embed": {"embedding": t("text_model.embeddings.token_embedding.weight")},
          "pos_embedding": t("text_model.embeddings.position_embedding.weight")[None],
          "encoder": {**layout.stack_layers([clip.block_from_torch(_prefixed(state, f"text_model.encoder.layers.{i}."),
                                                                   text["num_heads"]) for i in range(text["depth"])],
                                            scan),
                      "final_norm": norm("text_model.final_layer_norm")},
      },
      "text_proj": dense("text_model.head"),
      "logit_scale": t("logit_scale").reshape(()),
      "logit_bias": t("logit_bias").reshape(()),
  }
  return layout.tree_map(lambda x: np.asarray(x, np.float32), params)


def export(model_config: dict, params: dict, eos_id: int, bos_id: int, pad_id: int) -> tuple[dict, dict, dict]:
  """vlmjax SigLIP dual encoder -> (state dict of numpy arrays, config.json, preprocessor_config.json)."""
  model_config = dict(model_config)
  image = clip.tower_kwargs(ViT, model_config.get("image"), "S/16")
  num_positions = np.asarray(params["image"]["pos_embedding"]).shape[1]
  grid = math.isqrt(num_positions)
  _require(grid * grid == num_positions, f"{num_positions} image positions are not a square grid")
  image_size = grid * image["patch_size"]
  vocab_size = np.asarray(params["text"]["token_embed"]["embedding"]).shape[0]
  config = to_hf_config(model_config, image_size, vocab_size, eos_id, bos_id, pad_id)
  return to_state(model_config, params), config, vision_preprocessor(image_size)


def load(state: dict, config: dict, preprocessor: dict | None = None, scan: bool = True) -> tuple[dict, dict, dict]:
  """HF SiglipModel state dict (numpy or torch) + config.json (+ preprocessor_config.json) ->
  (vlmjax model config, params, dict(image_size, max_text_len)). ValueError naming a config key
  vlmjax cannot represent, or a missing tensor, or one whose shape is not the config's."""
  model, sizes = from_hf_config(config, scan)
  state = layout.to_numpy_state(state)
  try:
    params = from_state(state, model, scan)
  except KeyError as e:
    raise ValueError(f"hf_siglip: the state dict has no tensor {e} (is it a SiglipModel?)") from None
  size = sizes["image_size"]
  layout.check_shapes("hf_siglip", DualEncoder(**{k: v for k, v in model.items() if k != "name"},
                                               vocab_size=sizes["vocab_size"]), params,
                      images=jnp.zeros((1, size, size, 3)), texts=jnp.zeros((1, sizes["max_text_len"]), jnp.int32))
  fold_pixel_statistics(params["image"], preprocessor)
  return model, params, dict(image_size=size, max_text_len=sizes["max_text_len"])


def _prefixed(tensors: dict, prefix: str) -> dict:
  return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
