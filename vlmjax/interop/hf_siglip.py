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

HF runs the text tower without an attention mask when given none, as vlmjax's SigLIP tower does; its
texts must be `max_position_embeddings` long (pooling reads the last position). Pixels: both take
`(x01 - 0.5) / 0.5`, vlmjax's [-1, 1]; a checkpoint trained with other statistics (its
preprocessor_config.json) has them folded into the patch embedding on import.
"""
import math

import flax.linen as nn
import jax
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


def _refuse(ok: bool, key: str, value, why: str):
  if not ok:
    raise ValueError(f"hf_siglip: config.json {key}={value!r}: {why}")


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
  _require(image["posemb"] == "learn", f"ViT posemb is '{image['posemb']}' (SigLIP: 'learn')")
  _require(image["stem"] == "patch", f"ViT stem is '{image['stem']}' (SigLIP: 'patch')")
  _require(not image["pre_norm"], "ViT has pre_norm (SigLIP: none)")
  _require(text["pool"] == "last", f"text tower pools by '{text['pool']}' (SigLIP: 'last')")
  _require(not text["causal"], "text tower is causal (SigLIP: causal=False)")
  _require(not text["mask_padding"], "text tower masks padding (SigLIP: mask_padding=False)")
  for tower, kw in (("image", image), ("text", text)):
    _require(kw["activation"] in HF_ACTIVATIONS, f"{tower} activation is '{kw['activation']}' (HF SigLIP: "
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
      "vision_config": {
          "hidden_size": image["width"], "intermediate_size": image["mlp_dim"], "num_hidden_layers": image["depth"],
          "num_attention_heads": image["num_heads"], "image_size": int(image_size),
          "patch_size": image["patch_size"], "num_channels": 3, "hidden_act": HF_ACTIVATIONS[image["activation"]],
          "layer_norm_eps": float(image["norm_eps"]), "attention_dropout": 0.0, "vision_use_head": True},
  }


def from_hf_config(config: dict, scan: bool = True) -> tuple[dict, dict]:
  """HF SiglipConfig's config.json -> (config.model, dict(image_size, max_text_len, vocab_size)).
  A key vlmjax cannot represent, or another `model_type`, raises a one-line ValueError naming it."""
  model_type = config.get("model_type")
  _refuse(model_type == MODEL_TYPE, "model_type", model_type, f"hf_siglip reads '{MODEL_TYPE}' (SiglipModel)")
  text = {**TEXT_DEFAULTS, **(config.get("text_config") or {})}
  vision = {**VISION_DEFAULTS, **(config.get("vision_config") or {})}
  for name, section in (("text_config", text), ("vision_config", vision)):
    act = section["hidden_act"]
    _refuse(act in FROM_HF_ACTIVATIONS, f"{name}.hidden_act", act, f"vlmjax takes {', '.join(FROM_HF_ACTIVATIONS)}")
    _refuse(not section["attention_dropout"], f"{name}.attention_dropout", section["attention_dropout"],
            "vlmjax's attention has no dropout")
    _refuse(section["hidden_size"] % section["num_attention_heads"] == 0, f"{name}.num_attention_heads",
            section["num_attention_heads"], f"does not divide hidden_size {section['hidden_size']}")
  for key in ("image_size", "patch_size"):
    value = vision[key]
    if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1]:
      value = vision[key] = value[0]
    _refuse(isinstance(value, int), f"vision_config.{key}", vision[key], "vlmjax takes one int (square)")
  _refuse(vision["num_channels"] == 3, "vision_config.num_channels", vision["num_channels"], "vlmjax takes RGB (3)")
  _refuse(vision["vision_use_head"], "vision_config.vision_use_head", vision["vision_use_head"],
          "vlmjax's SigLIP image embedding is the MAP head's output")
  embed_dim = text["projection_size"] if text["projection_size"] is not None else text["hidden_size"]
  _refuse(embed_dim == vision["hidden_size"], "text_config.projection_size", embed_dim,
          f"SigLIP compares it with the image embedding, vision_config.hidden_size {vision['hidden_size']}")
  model = dict(
      name="dual_encoder", embed_dim=int(embed_dim), image_head="none", text_head="proj_bias",
      logit_scale_init=math.log(10.0), logit_bias_init=-10.0,
      image=dict(width=vision["hidden_size"], depth=vision["num_hidden_layers"], mlp_dim=vision["intermediate_size"],
                 num_heads=vision["num_attention_heads"], patch_size=vision["patch_size"], pool="map",
                 posemb="learn", pre_norm=False, stem="patch", activation=FROM_HF_ACTIVATIONS[vision["hidden_act"]],
                 norm_eps=float(vision["layer_norm_eps"]), scan=scan),
      text=dict(width=text["hidden_size"], depth=text["num_hidden_layers"], mlp_dim=text["intermediate_size"],
                num_heads=text["num_attention_heads"], max_len=text["max_position_embeddings"], pool="last",
                causal=False, mask_padding=False, activation=FROM_HF_ACTIVATIONS[text["hidden_act"]],
                norm_eps=float(text["layer_norm_eps"]), scan=scan))
  sizes = dict(image_size=vision["image_size"], max_text_len=text["max_position_embeddings"],
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
  p = params["image"]
  head = p["map_head"]
  attn = head["attn"]
  state = {
      "vision_model.embeddings.patch_embedding.weight": layout.flax_to_conv(p["patch_embed"]["kernel"]),
      "vision_model.embeddings.patch_embedding.bias": np.asarray(p["patch_embed"]["bias"]),
      "vision_model.embeddings.position_embedding.weight": np.asarray(p["pos_embedding"])[0],
      **_norm(p["encoder"]["final_norm"], "vision_model.post_layernorm"),
      "vision_model.head.probe": np.asarray(head["probe"]),
      "vision_model.head.attention.in_proj_weight": layout.merge_qkv(
          *(layout.heads_in_to_linear(attn[n]["kernel"]) for n in ("query", "key", "value"))),
      "vision_model.head.attention.in_proj_bias": layout.merge_qkv(
          *(layout.heads_to_bias(attn[n]["bias"]) for n in ("query", "key", "value"))),
      "vision_model.head.attention.out_proj.weight": layout.heads_out_to_linear(attn["out"]["kernel"]),
      "vision_model.head.attention.out_proj.bias": np.asarray(attn["out"]["bias"]),
      **_norm(head["norm"], "vision_model.head.layernorm"),
      **_dense(head["mlp"]["fc1"], "vision_model.head.mlp.fc1"),
      **_dense(head["mlp"]["fc2"], "vision_model.head.mlp.fc2"),
  }
  for i, block in enumerate(layout.unstack_layers(p["encoder"], image["depth"])):
    state.update({f"vision_model.encoder.layers.{i}.{k}": v for k, v in clip.block_to_torch(block).items()})
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
  image, text = model_config["image"], model_config["text"]
  t = lambda name: np.asarray(state[name])
  norm = lambda prefix: {"scale": t(f"{prefix}.weight"), "bias": t(f"{prefix}.bias")}
  dense = lambda prefix: {"kernel": layout.linear_to_dense(t(f"{prefix}.weight")), "bias": t(f"{prefix}.bias")}
  blocks = lambda prefix, depth, heads: layout.stack_layers(
      [clip.block_from_torch(_prefixed(state, f"{prefix}.encoder.layers.{i}."), heads) for i in range(depth)],
      scan)
  heads = image["num_heads"]
  q, k, v = layout.split_qkv(t("vision_model.head.attention.in_proj_weight"))
  qb, kb, vb = layout.split_qkv(t("vision_model.head.attention.in_proj_bias"))
  attn = {name: {"kernel": layout.linear_to_heads_in(w, heads), "bias": layout.bias_to_heads(b, heads)}
          for name, w, b in (("query", q, qb), ("key", k, kb), ("value", v, vb))}
  attn["out"] = {"kernel": layout.linear_to_heads_out(t("vision_model.head.attention.out_proj.weight"), heads),
                 "bias": t("vision_model.head.attention.out_proj.bias")}
  params = {
      "image": {
          "patch_embed": {"kernel": layout.conv_to_flax(t("vision_model.embeddings.patch_embedding.weight")),
                          "bias": t("vision_model.embeddings.patch_embedding.bias")},
          "pos_embedding": t("vision_model.embeddings.position_embedding.weight")[None],
          "encoder": {**blocks("vision_model", image["depth"], heads),
                      "final_norm": norm("vision_model.post_layernorm")},
          "map_head": {"probe": t("vision_model.head.probe"), "attn": attn, "norm": norm("vision_model.head.layernorm"),
                       "mlp": {"fc1": dense("vision_model.head.mlp.fc1"), "fc2": dense("vision_model.head.mlp.fc2")}},
      },
      "text": {
          "token_embed": {"embedding": t("text_model.embeddings.token_embedding.weight")},
          "pos_embedding": t("text_model.embeddings.position_embedding.weight")[None],
          "encoder": {**blocks("text_model", text["depth"], text["num_heads"]),
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
  preprocessor = {
      "image_processor_type": "SiglipImageProcessor", "do_resize": True,
      "size": {"height": image_size, "width": image_size}, "resample": 2,  # PIL bilinear, vlmjax's 'squash'
      "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(HALF),
      "image_std": list(HALF), "do_convert_rgb": True}
  return to_state(model_config, params), config, preprocessor


def load(state: dict, config: dict, preprocessor: dict | None = None, scan: bool = True) -> tuple[dict, dict, dict]:
  """HF SiglipModel state dict (numpy or torch) + config.json (+ preprocessor_config.json) ->
  (vlmjax model config, params, dict(image_size, max_text_len)). ValueError naming a config key
  vlmjax cannot represent, or a missing tensor, or one whose shape is not the config's."""
  model, sizes = from_hf_config(config, scan)
  state = {k: (a.detach().float().cpu().numpy() if hasattr(a, "detach") else np.asarray(a))
           for k, a in state.items()}
  try:
    params = from_state(state, model, scan)
  except KeyError as e:
    raise ValueError(f"hf_siglip: the state dict has no tensor {e} (is it a SiglipModel?)") from None
  _check_shapes(model, sizes, params)
  mean, std = tuple((preprocessor or {}).get("image_mean", HALF)), tuple((preprocessor or {}).get("image_std", HALF))
  if (mean, std) != (HALF, HALF):
    patch = params["image"]["patch_embed"]
    patch["kernel"], patch["bias"] = layout.fold_pixel_normalization(patch["kernel"], patch["bias"], mean, std)
  return model, params, dict(image_size=sizes["image_size"], max_text_len=sizes["max_text_len"])


def _prefixed(tensors: dict, prefix: str) -> dict:
  return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _check_shapes(model: dict, sizes: dict, params: dict):
  """Every param's shape against the model the config describes (abstract init: nothing computed)."""
  module = DualEncoder(**{k: v for k, v in model.items() if k != "name"}, vocab_size=sizes["vocab_size"])
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0),
                          images=jnp.zeros((1, sizes["image_size"], sizes["image_size"], 3)),
                          texts=jnp.zeros((1, sizes["max_text_len"]), jnp.int32))
  want = {jax.tree_util.keystr(k, simple=True, separator="/"): tuple(v.shape)
          for k, v in jax.tree_util.tree_leaves_with_path(nn.meta.unbox(shapes)["params"])}
  got = {jax.tree_util.keystr(k, simple=True, separator="/"): tuple(np.shape(v))
         for k, v in jax.tree_util.tree_leaves_with_path(params)}
  for name in sorted(want):
    if got.get(name) != want[name]:
      raise ValueError(f"hf_siglip: param {name} is {got.get(name)} from the state dict; config.json makes it "
                       f"{want[name]}")
