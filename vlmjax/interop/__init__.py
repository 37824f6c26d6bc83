"""Weights in and out of vlmjax in other libraries' layouts, as folders those libraries load.

  open_clip  a dual encoder <-> `open_clip.create_model_and_transforms('local-dir:FOLDER')`
  hf_clip    a dual encoder <-> `transformers.CLIPModel.from_pretrained(FOLDER)`
  hf_siglip  a SigLIP dual encoder (`sizes.siglip`'s architecture) <->
             `transformers.SiglipModel.from_pretrained(FOLDER)`
  hf_llama   a decoder LM (or a VLM's decoder) <-> `transformers.LlamaForCausalLM.from_pretrained(FOLDER)`,
             or `GemmaForCausalLM` for a decoder with `scale_token_embeddings` (read: by config.json's
             `model_type`, 'llama' or 'gemma')
  hf_paligemma  a VLM of PaliGemma's architecture (SigLIP ViT, linear projector, Gemma decoder, prefix-LM)
             <-> `transformers.PaliGemmaForConditionalGeneration.from_pretrained(FOLDER)`, with Gemma's
             SentencePiece tokenizer.model
  big_vision a SigLIP dual encoder <- big_vision's `two_towers` `.npz` checkpoint (the released SigLIP
             `webli_*.npz`), with the SentencePiece `*.model` beside it; import only

Everything here is numpy and safetensors: neither torch nor open_clip nor transformers is needed to
write or read these folders (a `.bin`/`.pth` state dict needs torch to be read). The name maps are in
`open_clip.py`, `hf_clip.py`, `hf_siglip.py`, `hf_llama.py`, `hf_paligemma.py`, `big_vision.py`; the layout arithmetic
(transposes, head splits, q/k/v packing, pixel statistics) in `layout.py`; the CLIP tower mapping both CLIP
formats share in `clip.py`.
"""
import glob
import json
import os
import shutil

import numpy as np

from vlmjax.data import tokenizer as tokenizer_lib
from vlmjax.interop import big_vision, hf_clip, hf_llama, hf_paligemma, hf_siglip, open_clip

FORMATS = ("open_clip", "hf_clip", "hf_siglip", "hf_llama", "hf_paligemma", "big_vision")
IMPORT_ONLY = ("big_vision",)  # read by `read`, never written
TOKENIZER_FILE = "tokenizer.model"  # the vlmjax tokenizer, written beside the weights


def write(fmt: str, folder: str, model_config: dict, params: dict, tokenizer_path: str | None = None) -> str:
  """Writes `params` (a vlmjax param tree) of a model configured by `model_config` (config.model)
  into `folder` in format `fmt`, with the vlmjax tokenizer beside it when given. -> the folder."""
  if fmt in IMPORT_ONLY:
    raise ValueError(f"{fmt}: import only; vlmjax reads {fmt} checkpoints but does not write them")
  from safetensors.numpy import save_file
  params = _to_numpy(params)
  model_config = dict(model_config)
  # The special ids the target's config names: the tokenizer's when it travels along, else vlmjax's own.
  tok = tokenizer_lib.load(tokenizer_path) if tokenizer_path else None
  bos_id, eos_id, pad_id = ((tok.bos_id, tok.eos_id, tok.pad_id) if tok else
                            (tokenizer_lib.BOS, tokenizer_lib.EOS, tokenizer_lib.PAD))
  if fmt == "open_clip":
    state, config = open_clip.export(model_config, params, eos_id=eos_id)
    files = {open_clip.CONFIG_FILE: config}
    weights = open_clip.WEIGHTS_FILE
  elif fmt == "hf_clip":
    state, config, preprocessor = hf_clip.export(model_config, params, eos_id=eos_id, bos_id=bos_id, pad_id=pad_id)
    files = {hf_clip.CONFIG_FILE: config, hf_clip.PREPROCESSOR_FILE: preprocessor}
    weights = hf_clip.WEIGHTS_FILE
  elif fmt == "hf_siglip":
    state, config, preprocessor = hf_siglip.export(model_config, params, eos_id=eos_id, bos_id=bos_id, pad_id=pad_id)
    files = {hf_siglip.CONFIG_FILE: config, hf_siglip.PREPROCESSOR_FILE: preprocessor}
    weights = hf_siglip.WEIGHTS_FILE
  elif fmt == "hf_llama":
    if "decoder" not in model_config or "decoder" not in params:
      raise ValueError(f"hf_llama: model '{model_config.get('name')}' has no decoder to export")
    state, config = hf_llama.export(dict(model_config["decoder"]), params["decoder"], bos_id, eos_id, pad_id)
    files = {hf_llama.CONFIG_FILE: config}
    weights = hf_llama.WEIGHTS_FILE
  elif fmt == "hf_paligemma":
    state, config, preprocessor = hf_paligemma.export(model_config, params, bos_id, eos_id, pad_id)
    files = {hf_paligemma.CONFIG_FILE: config, hf_paligemma.PREPROCESSOR_FILE: preprocessor}
    weights = hf_paligemma.WEIGHTS_FILE
  else:
    raise ValueError(f"unknown format '{fmt}'; known: {', '.join(FORMATS)}")
  os.makedirs(folder, exist_ok=True)
  # np.array, not np.ascontiguousarray: that makes 0-d tensors (logit_scale) 1-d.
  save_file({k: np.array(v, np.float32, order="C") for k, v in state.items()}, os.path.join(folder, weights),
            metadata={"format": "pt"})
  for name, content in files.items():
    with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
      json.dump(content, f, indent=1)
  # Gemma's SentencePiece model goes into a PaliGemma folder as it is, where transformers reads it.
  native = hf_paligemma.native_tokenizer(tok) if fmt == "hf_paligemma" else None
  if native:
    with open(os.path.join(folder, TOKENIZER_FILE), "wb") as f:
      f.write(native)
  elif tokenizer_path:
    shutil.copyfile(tokenizer_path, os.path.join(folder, TOKENIZER_FILE))
  return folder


def read(fmt: str, folder: str, scan: bool = True) -> tuple[dict, dict, dict]:
  """A folder in format `fmt` -> (config.model entry, params as numpy, input sizes dict(image_size=...,
  max_text_len=...), with hf_paligemma's prefix_attention). Raises FileNotFoundError / ValueError naming
  the file or tensor at fault."""
  if fmt not in FORMATS:
    raise ValueError(f"unknown format '{fmt}'; known: {', '.join(FORMATS)}")
  if fmt == "big_vision":  # one .npz (the folder's, or `folder` itself); the input sizes from its shapes
    return big_vision.load(big_vision.checkpoint_file(folder), scan)
  config_file = {"open_clip": open_clip.CONFIG_FILE, "hf_clip": hf_clip.CONFIG_FILE,
                 "hf_siglip": hf_siglip.CONFIG_FILE, "hf_llama": hf_llama.CONFIG_FILE,
                 "hf_paligemma": hf_paligemma.CONFIG_FILE}[fmt]
  config = _read_json(os.path.join(folder, config_file))
  state = read_state_dict(folder)
  if fmt == "open_clip":
    model, params = open_clip.load(state, config, scan)
  elif fmt == "hf_clip":
    preprocessor_path = os.path.join(folder, hf_clip.PREPROCESSOR_FILE)
    preprocessor = _read_json(preprocessor_path) if os.path.exists(preprocessor_path) else None
    model, params = hf_clip.load(state, config, preprocessor, scan)
  elif fmt == "hf_siglip":  # no class token: the input sizes come from config.json
    preprocessor_path = os.path.join(folder, hf_siglip.PREPROCESSOR_FILE)
    preprocessor = _read_json(preprocessor_path) if os.path.exists(preprocessor_path) else None
    return hf_siglip.load(state, config, preprocessor, scan)
  elif fmt == "hf_paligemma":  # the input sizes from config.json, and PaliGemma's prefix-LM
    preprocessor_path = os.path.join(folder, hf_paligemma.PREPROCESSOR_FILE)
    preprocessor = _read_json(preprocessor_path) if os.path.exists(preprocessor_path) else None
    return hf_paligemma.load(state, config, preprocessor, scan)
  else:
    decoder, decoder_params = hf_llama.load(state, config, scan)
    model, params = dict(name="lm", decoder=decoder), {"decoder": decoder_params}
    return model, params, dict(max_text_len=int(config.get("max_position_embeddings", 2048)))
  image = model["image"]
  grid = int(round((params["image"]["pos_embedding"].shape[1] - 1) ** 0.5))
  return model, params, dict(image_size=grid * image["patch_size"], max_text_len=model["text"]["max_len"])


def read_state_dict(folder: str) -> dict:
  """Every tensor of the folder's *.safetensors files (numpy), or of its one .bin/.pth (torch)."""
  files = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
  if files:
    from safetensors.numpy import load_file
    state = {}
    for path in files:
      state.update(load_file(path))
    return state
  files = sorted(glob.glob(os.path.join(folder, "*.bin")) + glob.glob(os.path.join(folder, "*.pth")))
  if not files:
    raise FileNotFoundError(f"interop: no *.safetensors, *.bin or *.pth weights in '{folder}'")
  try:
    import torch
  except ImportError:
    raise ValueError(f"interop: reading '{files[0]}' needs torch (pip install -e '.[interop]'), or convert "
                     "it to safetensors") from None
  state = torch.load(files[0], map_location="cpu", weights_only=True)
  state = state.get("state_dict", state)
  return {k: v.detach().float().numpy() for k, v in state.items()}


def _read_json(path: str) -> dict:
  if not os.path.exists(path):
    raise FileNotFoundError(f"interop: '{path}' is missing")
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _to_numpy(tree):
  if isinstance(tree, dict):
    return {k: _to_numpy(v) for k, v in tree.items()}
  return np.asarray(tree, np.float32)
