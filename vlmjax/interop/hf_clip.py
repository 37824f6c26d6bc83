"""Hugging Face `CLIPModel` layout: `config.json` + `model.safetensors` (+ `preprocessor_config.json`),
loadable with `transformers.CLIPModel.from_pretrained(FOLDER)`.

Tensor names are those of `clip.py` under `vision_model.` / `text_model.`, plus
`visual_projection.weight` [E, Wi], `text_projection.weight` [E, Wt] (nn.Linear: transposed against
vlmjax's kernels) and `logit_scale` []. HF's CLIP has no logit bias: a SigLIP-style run's `logit_bias`
is not exported (embeddings are unaffected). HF pools the text at the first `eos_token_id`, which
the config sets to the tokenizer's EOS (vlmjax pools at the last non-padding token, the EOS).
"""
import numpy as np

from vlmjax.interop import clip

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PREPROCESSOR_FILE = "preprocessor_config.json"


def export(model_config: dict, params: dict, eos_id: int, bos_id: int, pad_id: int) -> tuple[dict, dict, dict]:
  """vlmjax dual encoder -> (state dict of numpy arrays, config.json, preprocessor_config.json)."""
  spec, t = clip.to_torch(model_config, params, "hf_clip")
  v, x = spec["vision"], spec["text"]
  state = {f"vision_model.{k}": a for k, a in t["vision"].items()}
  state.update({f"text_model.{k}": a for k, a in t["text"].items()})
  state.update({"visual_projection.weight": t["visual_projection"], "text_projection.weight": t["text_projection"],
                "logit_scale": t["logit_scale"]})
  config = {
      "architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": spec["embed_dim"],
      "logit_scale_init_value": float(t["logit_scale"]), "torch_dtype": "float32",
      "vision_config": {
          "hidden_size": v["width"], "intermediate_size": v["mlp_dim"], "num_hidden_layers": v["layers"],
          "num_attention_heads": v["heads"], "image_size": v["image_size"], "patch_size": v["patch_size"],
          "hidden_act": v["activation"], "layer_norm_eps": v["norm_eps"], "projection_dim": spec["embed_dim"],
          "num_channels": 3},
      "text_config": {
          "hidden_size": x["width"], "intermediate_size": x["mlp_dim"], "num_hidden_layers": x["layers"],
          "num_attention_heads": x["heads"], "vocab_size": x["vocab_size"],
          "max_position_embeddings": x["context_length"], "hidden_act": x["activation"],
          "layer_norm_eps": x["norm_eps"], "projection_dim": spec["embed_dim"],
          "eos_token_id": int(eos_id), "bos_token_id": int(bos_id), "pad_token_id": int(pad_id)},
  }
  preprocessor = {
      "image_processor_type": "CLIPImageProcessor", "do_resize": True, "do_center_crop": False,
      "size": {"height": v["image_size"], "width": v["image_size"]}, "resample": 2,  # PIL bilinear
      "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
      "image_mean": list(spec["pixel_mean"]), "image_std": list(spec["pixel_std"]), "do_convert_rgb": True}
  return state, config, preprocessor


def load(state: dict, config: dict, preprocessor: dict | None = None, scan: bool = True) -> tuple[dict, dict]:
  """HF CLIPModel state dict (numpy or torch) + config.json (+ preprocessor_config.json) ->
  (vlmjax model config, params). Raises ValueError naming a missing tensor."""
  preprocessor = preprocessor or {}
  vc, tc = config.get("vision_config", {}), config.get("text_config", {})
  state = {k: (a.detach().float().cpu().numpy() if hasattr(a, "detach") else np.asarray(a))
           for k, a in state.items()}
  for key in ("vision_model.embeddings.patch_embedding.weight", "text_model.embeddings.token_embedding.weight",
              "visual_projection.weight", "text_projection.weight"):
    if key not in state:
      raise ValueError(f"hf_clip: the state dict has no '{key}' (is it a CLIPModel?)")
  acts = {vc.get("hidden_act", "quick_gelu"), tc.get("hidden_act", "quick_gelu")}
  if not acts <= set(clip.ACTIVATIONS):
    raise ValueError(f"hf_clip: hidden_act {sorted(acts)}; vlmjax's CLIP towers take {', '.join(clip.ACTIVATIONS)}")
  count = lambda prefix: len({k.split(".")[3] for k in state if k.startswith(f"{prefix}.encoder.layers.")})
  width = state["vision_model.embeddings.patch_embedding.weight"].shape[0]
  text_width = state["text_model.embeddings.token_embedding.weight"].shape[1]
  spec = dict(
      embed_dim=state["visual_projection.weight"].shape[0],
      vision=dict(width=width, layers=count("vision_model"), heads=vc.get("num_attention_heads", 12),
                  mlp_dim=state["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
                  patch_size=state["vision_model.embeddings.patch_embedding.weight"].shape[-1],
                  activation=vc.get("hidden_act", "quick_gelu"), norm_eps=float(vc.get("layer_norm_eps", 1e-5))),
      text=dict(width=text_width, layers=count("text_model"), heads=tc.get("num_attention_heads", 8),
                mlp_dim=state["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
                context_length=state["text_model.embeddings.position_embedding.weight"].shape[0],
                activation=tc.get("hidden_act", "quick_gelu"), norm_eps=float(tc.get("layer_norm_eps", 1e-5))),
      pixel_mean=tuple(preprocessor.get("image_mean", OPENAI_MEAN)),
      pixel_std=tuple(preprocessor.get("image_std", OPENAI_STD)))
  tensors = {
      "vision": {k[len("vision_model."):]: a for k, a in state.items() if k.startswith("vision_model.")},
      "text": {k[len("text_model."):]: a for k, a in state.items() if k.startswith("text_model.")},
      "visual_projection": state["visual_projection.weight"],
      "text_projection": state["text_projection.weight"],
      "logit_scale": state.get("logit_scale", np.float32(config.get("logit_scale_init_value", 2.6592))),
  }
  try:
    return clip.from_torch(spec, tensors, scan)
  except KeyError as e:
    raise ValueError(f"hf_clip: the state dict has no tensor for {e}") from None


# CLIPImageProcessor's defaults (OpenAI's CLIP statistics).
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
