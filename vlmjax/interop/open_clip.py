"""open_clip's `CLIP` layout: state-dict names, model config JSON, and the conversion both ways.

A folder in open_clip's local/hub format holds `open_clip_config.json` ({'model_cfg', 'preprocess_cfg'})
and `open_clip_model.safetensors`; `open_clip.create_model_and_transforms('local-dir:FOLDER')` loads
it. Tensors are named as in `open_clip.model.CLIP`:

  visual.conv1.weight                         [Wi, 3, p, p]   (no bias)
  visual.class_embedding                      [Wi]
  visual.positional_embedding                 [1 + N, Wi]
  visual.ln_pre / ln_post.{weight,bias}
  visual.transformer.resblocks.{i}.ln_1, ln_2.{weight,bias}
  visual.transformer.resblocks.{i}.attn.in_proj_weight [3·Wi, Wi], in_proj_bias [3·Wi]  (q, k, v stacked)
  visual.transformer.resblocks.{i}.attn.out_proj.{weight,bias}
  visual.transformer.resblocks.{i}.mlp.c_fc, c_proj.{weight,bias}
  visual.proj                                 [Wi, E]  (used as x @ proj: no transpose)
  token_embedding.weight [V, Wt], positional_embedding [L, Wt], transformer.resblocks.{i}..., ln_final
  text_projection                             [Wt, E]
  logit_scale [], logit_bias [] (when the config sets init_logit_bias)
"""
import numpy as np

from vlmjax.interop import clip, layout

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"

# HF-style block names (clip.py) -> open_clip's, apart from q/k/v which open_clip packs into in_proj.
BLOCK_NAMES = {
    "layer_norm1.weight": "ln_1.weight", "layer_norm1.bias": "ln_1.bias",
    "layer_norm2.weight": "ln_2.weight", "layer_norm2.bias": "ln_2.bias",
    "self_attn.out_proj.weight": "attn.out_proj.weight", "self_attn.out_proj.bias": "attn.out_proj.bias",
    "mlp.fc1.weight": "mlp.c_fc.weight", "mlp.fc1.bias": "mlp.c_fc.bias",
    "mlp.fc2.weight": "mlp.c_proj.weight", "mlp.fc2.bias": "mlp.c_proj.bias",
}


def _blocks_out(tensors: dict, layers: int, prefix: str) -> dict:
  out = {}
  for i in range(layers):
    src, dst = f"encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
    for ours, theirs in BLOCK_NAMES.items():
      out[dst + theirs] = tensors[src + ours]
    for kind in ("weight", "bias"):
      out[dst + f"attn.in_proj_{kind}"] = layout.merge_qkv(
          *(tensors[src + f"self_attn.{n}_proj.{kind}"] for n in "qkv"))
  return out


def _blocks_in(state: dict, layers: int, prefix: str) -> dict:
  out = {}
  for i in range(layers):
    src, dst = f"{prefix}transformer.resblocks.{i}.", f"encoder.layers.{i}."
    for ours, theirs in BLOCK_NAMES.items():
      out[dst + ours] = _get(state, src + theirs)
    for kind in ("weight", "bias"):
      for name, part in zip("qkv", layout.split_qkv(_get(state, src + f"attn.in_proj_{kind}"))):
        out[dst + f"self_attn.{name}_proj.{kind}"] = part
  return out


def _get(state: dict, key: str):
  if key not in state:
    raise ValueError(f"open_clip: the state dict has no '{key}'")
  return np.asarray(state[key])


def _activation(spec) -> bool:
  acts = {spec["vision"]["activation"], spec["text"]["activation"]}
  if len(acts) != 1:
    raise ValueError(f"open_clip: one activation for both towers (quick_gelu or not); this model has {sorted(acts)}")
  return acts.pop() == "quick_gelu"


def export(model_config: dict, params: dict, eos_id: int) -> tuple[dict, dict]:
  """vlmjax dual encoder -> (state dict of numpy arrays, open_clip_config.json contents).

  `eos_id`: the tokenizer's end-of-text id, at which open_clip's `pool_type='eos'` pools (vlmjax
  pools at the last non-padding token, which its tokenizer makes the EOS)."""
  spec, t = clip.to_torch(model_config, params, "open_clip")
  v, x = spec["vision"], spec["text"]
  state = {
      "visual.conv1.weight": t["vision"]["embeddings.patch_embedding.weight"],
      "visual.class_embedding": t["vision"]["embeddings.class_embedding"],
      "visual.positional_embedding": t["vision"]["embeddings.position_embedding.weight"],
      "visual.ln_pre.weight": t["vision"]["pre_layrnorm.weight"],
      "visual.ln_pre.bias": t["vision"]["pre_layrnorm.bias"],
      "visual.ln_post.weight": t["vision"]["post_layernorm.weight"],
      "visual.ln_post.bias": t["vision"]["post_layernorm.bias"],
      "visual.proj": layout.linear_to_dense(t["visual_projection"]),  # x @ proj
      **_blocks_out(t["vision"], v["layers"], "visual."),
      "token_embedding.weight": t["text"]["embeddings.token_embedding.weight"],
      "positional_embedding": t["text"]["embeddings.position_embedding.weight"],
      "ln_final.weight": t["text"]["final_layer_norm.weight"],
      "ln_final.bias": t["text"]["final_layer_norm.bias"],
      "text_projection": layout.linear_to_dense(t["text_projection"]),
      **_blocks_out(t["text"], x["layers"], ""),
      "logit_scale": t["logit_scale"],
      "logit_bias": t["logit_bias"],
  }
  model_cfg = {
      "embed_dim": spec["embed_dim"],
      "quick_gelu": _activation(spec),
      "init_logit_bias": float(t["logit_bias"]),  # so the model has a logit_bias (SigLIP-style runs use it)
      "vision_cfg": {
          "image_size": v["image_size"], "layers": v["layers"], "width": v["width"],
          "head_width": v["width"] // v["heads"], "mlp_ratio": v["mlp_dim"] / v["width"],
          "patch_size": v["patch_size"], "pool_type": "tok", "norm_kwargs": {"eps": v["norm_eps"]},
      },
      "text_cfg": {
          "context_length": x["context_length"], "vocab_size": x["vocab_size"], "width": x["width"],
          "heads": x["heads"], "layers": x["layers"], "mlp_ratio": x["mlp_dim"] / x["width"],
          "pool_type": "eos", "eos_id": int(eos_id), "pad_id": 0, "norm_kwargs": {"eps": x["norm_eps"]},
      },
  }
  for cfg, tower in ((model_cfg["vision_cfg"], v), (model_cfg["text_cfg"], x)):
    if int(tower["width"] * cfg["mlp_ratio"]) != tower["mlp_dim"]:
      raise ValueError(f"open_clip: mlp_dim {tower['mlp_dim']} is not width × a ratio open_clip rounds back")
    if "head_width" in cfg and cfg["head_width"] * tower["heads"] != tower["width"]:
      raise ValueError(f"open_clip: width {tower['width']} is not a multiple of num_heads {tower['heads']}")
  preprocess_cfg = {"size": v["image_size"], "mean": list(spec["pixel_mean"]), "std": list(spec["pixel_std"]),
                    "interpolation": "bilinear", "resize_mode": "squash"}  # vlmjax's own preprocessing
  return state, {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}


def load(state: dict, config: dict, scan: bool = True) -> tuple[dict, dict]:
  """open_clip state dict (numpy or torch tensors) + open_clip_config.json contents (or a bare
  model config) -> (vlmjax model config, params). Raises ValueError naming what does not fit."""
  model_cfg = config.get("model_cfg", config)
  preprocess = config.get("preprocess_cfg", {})
  vc, tc = model_cfg.get("vision_cfg", {}), model_cfg.get("text_cfg", {})
  for key in ("timm_model_name", "hf_model_name"):
    if vc.get(key) or tc.get(key):
      raise ValueError(f"open_clip: '{key}' towers are not CLIP ViT/transformer towers")
  for key in ("attentional_pool", "no_ln_pre", "final_ln_after_pool", "ls_init_value", "qk_norm",
              "embed_cls", "no_causal_mask", "proj_bias"):
    if vc.get(key) or tc.get(key):
      raise ValueError(f"open_clip: '{key}' is set; vlmjax's CLIP towers have no such option")
  if vc.get("pool_type", "tok") != "tok" or tc.get("pool_type", "argmax") not in ("argmax", "eos"):
    raise ValueError(f"open_clip: pool types vision '{vc.get('pool_type')}' / text '{tc.get('pool_type')}'; "
                     "vlmjax pools the class token and the text's last token")
  state = {k: (v.detach().float().cpu().numpy() if hasattr(v, "detach") else np.asarray(v))
           for k, v in state.items()}
  act = "quick_gelu" if model_cfg.get("quick_gelu") else "gelu"
  width, text_width = _get(state, "visual.conv1.weight").shape[0], _get(state, "token_embedding.weight").shape[1]
  layers = lambda prefix: len({k.split(".")[3 if prefix else 2] for k in state
                               if k.startswith(f"{prefix}transformer.resblocks.")})
  spec = dict(
      embed_dim=_get(state, "text_projection").shape[1],
      vision=dict(width=width, layers=layers("visual."), heads=width // vc.get("head_width", 64),
                  mlp_dim=_get(state, "visual.transformer.resblocks.0.mlp.c_fc.weight").shape[0],
                  patch_size=_get(state, "visual.conv1.weight").shape[-1], activation=act,
                  norm_eps=float((vc.get("norm_kwargs") or {}).get("eps", 1e-5))),
      text=dict(width=text_width, layers=layers(""), heads=tc.get("heads", 8),
                mlp_dim=_get(state, "transformer.resblocks.0.mlp.c_fc.weight").shape[0],
                context_length=_get(state, "positional_embedding").shape[0], activation=act,
                norm_eps=float((tc.get("norm_kwargs") or {}).get("eps", 1e-5))),
      pixel_mean=tuple(preprocess.get("mean", OPENAI_MEAN)), pixel_std=tuple(preprocess.get("std", OPENAI_STD)))
  tensors = {
      "vision": {
          "embeddings.patch_embedding.weight": state["visual.conv1.weight"],
          "embeddings.class_embedding": _get(state, "visual.class_embedding"),
          "embeddings.position_embedding.weight": _get(state, "visual.positional_embedding"),
          "pre_layrnorm.weight": _get(state, "visual.ln_pre.weight"),
          "pre_layrnorm.bias": _get(state, "visual.ln_pre.bias"),
          "post_layernorm.weight": _get(state, "visual.ln_post.weight"),
          "post_layernorm.bias": _get(state, "visual.ln_post.bias"),
          **_blocks_in(state, spec["vision"]["layers"], "visual."),
      },
      "text": {
          "embeddings.token_embedding.weight": state["token_embedding.weight"],
          "embeddings.position_embedding.weight": state["positional_embedding"],
          "final_layer_norm.weight": _get(state, "ln_final.weight"),
          "final_layer_norm.bias": _get(state, "ln_final.bias"),
          **_blocks_in(state, spec["text"]["layers"], ""),
      },
      "visual_projection": layout.dense_to_linear(_get(state, "visual.proj")),
      "text_projection": layout.dense_to_linear(state["text_projection"]),
      "logit_scale": _get(state, "logit_scale"),
  }
  if "logit_bias" in state:
    tensors["logit_bias"] = state["logit_bias"]
  return clip.from_torch(spec, tensors, scan)


# open_clip's defaults when a config names no preprocessing (OpenAI's CLIP statistics).
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
