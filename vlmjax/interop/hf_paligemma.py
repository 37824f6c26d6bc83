"""Hugging Face `PaliGemmaForConditionalGeneration` layout: `config.json` + `model.safetensors` +
`preprocessor_config.json` (+ Gemma's SentencePiece `tokenizer.model`), loadable with
`transformers.PaliGemmaForConditionalGeneration.from_pretrained(FOLDER)`.

PaliGemma (1) in vlmjax's terms: a VLM (`name='vlm'`) whose image tower is SigLIP's ViT read at every
patch token (HF's `last_hidden_state`, after `post_layernorm`: `pool='gap'`, whose mean the VLM does not
use; a checkpoint with `vision_use_head` keeps its unused MAP head as `pool='map'`), a linear projector
with bias (`projector.kind='linear'`) into a Gemma decoder (`scale_token_embeddings`: HF's Gemma
embedding multiplies the token embeddings by sqrt(D) and the image features placed at the `<image>`
tokens not, as vlmjax's decoder does), and a prefix-LM mask: HF makes the tokens of `token_type_ids` 0
(image, BOS, the prompt and its "\\n") one bidirectional block and the suffix causal after it, which is
vlmjax's `input.prefix_attention='bidirectional'` (`vlmjax.export` sets it on import and refuses to
export a run trained with another).

  vlmjax                               HF, as published checkpoints name the tensors
  image/<ViT>                          vision_tower.vision_model.*       (`hf_siglip.vision_to_state`)
  projector/linear/{kernel,bias}       multi_modal_projector.linear.{weight,bias}
  decoder/<Gemma decoder>              language_model.model.*            (`hf_llama`'s Gemma mapping)
  decoder/head/kernel                  language_model.lm_head.weight     (untied only)

Reading also takes transformers' other namings (`RENAMES`: model.vision_tower.*, model.language_model.*,
lm_head.* in memory since 4.52; vision_tower.* without vision_model when transformers 5 saves).

Tokens: the processor writes `<image>`×N, BOS, the prompt and "\\n" (type 0), then the suffix and EOS
(type 1). vlmjax's `caption_sequence` writes the same from `input.prompt` (text as given: a PaliGemma
prompt ends with the "\\n" the processor adds) and a caption encoded with `tokenizer.GEMMA`'s options.
vlmjax's image slots are `IMAGE_TOKEN`, never a row of the table: an export writes `image_token_index`
as the first id past the table, which HF reads as row 0 before putting the image features there. A
published table also holds rows past its tokenizer's ids (`<image>`, padding to a multiple of 64) that no
text reaches; an import with a tokenizer drops them (`fit_vocab`). HF numbers positions from 1, vlmjax
from 0: RoPE depends on their differences only.

Config keys vlmjax cannot represent raise a one-line ValueError naming them: another `model_type`, a
text model other than Gemma (PaliGemma 2's Gemma 2: `text_config.model_type`), a vision model other than
SigLIP's, `projection_dim` other than the text width, and what `hf_siglip` refuses of `vision_config`
and `hf_llama` of `text_config`. HF's `text_config.use_bidirectional_attention` (which PaliGemmaConfig
turns on) only makes Gemma attend both ways where it is given no mask; PaliGemma always gives one.
"""
import math
import re

import jax.numpy as jnp
import numpy as np

from vlmjax.data import tokenizer as tokenizer_lib
from vlmjax.interop import clip, hf_llama, hf_siglip, layout
from vlmjax.models.decoder import IMAGE_TOKEN, decoder_kwargs
from vlmjax.models.vit import ViT
from vlmjax.models.vlm import VLM

FORMAT = "hf_paligemma"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PREPROCESSOR_FILE = "preprocessor_config.json"
MODEL_TYPE = "paligemma"
VISION = "vision_tower.vision_model."
PROJECTOR = "multi_modal_projector.linear."
TEXT = "language_model."  # before hf_llama's names: language_model.model.*, language_model.lm_head.weight
# Other namings of the same tensors -> the published one; the first pattern that matches applies.
RENAMES = ((r"^model\.language_model\.", "language_model.model."), (r"^lm_head\.", "language_model.lm_head."),
           (r"^(model\.)?vision_tower\.(vision_model\.)?", VISION),
           (r"^model\.multi_modal_projector\.", "multi_modal_projector."))
# PaliGemmaConfig's sub-configs (configuration_paligemma.py): a section left out is built from these; a
# section given fills what it leaves out from SiglipVisionConfig's / GemmaConfig's own defaults.
VISION_INIT = dict(intermediate_size=4096, hidden_size=1152, patch_size=14, image_size=224, num_hidden_layers=27,
                   num_attention_heads=16, vision_use_head=False)
TEXT_INIT = dict(hidden_size=2048, num_hidden_layers=18, intermediate_size=16384, num_attention_heads=8,
                 num_key_value_heads=1, vocab_size=257152)
GEMMA_DEFAULTS = dict(model_type="gemma", vocab_size=256000, hidden_size=3072, intermediate_size=24576,
                      num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=16, head_dim=256,
                      hidden_act="gelu_pytorch_tanh", max_position_embeddings=8192, rms_norm_eps=1e-6)
GEMMA_IDS = (0, 1, 2)  # pad, eos, bos of Gemma's SentencePiece model


def _require(ok: bool, what: str):
  if not ok:
    raise ValueError(f"{FORMAT}: this model's {what}; PaliGemma's architecture (HF "
                     "PaliGemmaForConditionalGeneration) cannot express that")


def _refuse(ok: bool, key: str, value, why: str):
  if not ok:
    raise ValueError(f"{FORMAT}: config.json {key}={value!r}: {why}")


def _from_hf_llama(error: ValueError, section: str) -> ValueError:
  """hf_llama's one-line message about the Gemma part, named as this format's `section`."""
  return ValueError(str(error).replace("hf_llama: ", f"{FORMAT}: {section}: ", 1))


# --- config.json ---------------------------------------------------------------------------------

def check_config(config: dict) -> tuple[dict, dict]:
  """config.json -> (vision_config, text_config) with transformers' defaults filled in and the text
  section as `hf_llama` reads a Gemma config.json. ValueError naming a key vlmjax cannot represent."""
  model_type = config.get("model_type")
  _refuse(model_type == MODEL_TYPE, "model_type", model_type,
          f"hf_paligemma reads '{MODEL_TYPE}' (PaliGemmaForConditionalGeneration)")
  given = config.get("vision_config")
  vision = {**hf_siglip.VISION_DEFAULTS, **(VISION_INIT if given is None else given)}
  vision_type = vision.get("model_type", "siglip_vision_model")
  _refuse(vision_type == "siglip_vision_model", "vision_config.model_type", vision_type,
          "vlmjax's image tower is SigLIP's ViT")
  given = config.get("text_config")
  text = {**GEMMA_DEFAULTS, **(TEXT_INIT if given is None else given)}
  _refuse(text["model_type"] == "gemma", "text_config.model_type", text["model_type"],
          "vlmjax's decoder is Gemma's (PaliGemma 2's Gemma 2 adds logit soft-capping and sliding-window layers)")
  text.pop("use_bidirectional_attention", None)  # see the module docstring
  text["tie_word_embeddings"] = config.get("tie_word_embeddings", True)  # what PaliGemma ties by
  projection_dim = config.get("projection_dim", 2048)
  _refuse(projection_dim == text["hidden_size"], "projection_dim", projection_dim,
          f"the projected image features are decoder inputs of text_config.hidden_size {text['hidden_size']}")
  try:
    hf_llama.check_config(text)
  except ValueError as e:
    raise _from_hf_llama(e, "text_config") from None
  return vision, text


# --- tokenizer -----------------------------------------------------------------------------------

def read_tokenizer(path: str):
  """A PaliGemma folder's tokenizer.model: Gemma's SentencePiece model (pad 0, eos 1, bos 2) under
  `tokenizer.GEMMA`'s options; any other file as `tokenizer.load` reads it (a vlmjax tokenizer that
  `interop.write` left beside an export)."""
  with open(path, "rb") as f:
    data = f.read()
  if data.lstrip()[:1] != b"{":
    try:
      tok = tokenizer_lib.SentencePieceTokenizer(data, **tokenizer_lib.GEMMA)
    except tokenizer_lib.TokenizerError:
      tok = None
    if tok is not None and (tok.pad_id, tok.eos_id, tok.bos_id) == GEMMA_IDS:
      return tok
  return tokenizer_lib.load(path)


def native_tokenizer(tok) -> bytes | None:
  """The SentencePiece model to write as a PaliGemma folder's tokenizer.model (what transformers reads)
  when `tok` is Gemma's under `tokenizer.GEMMA`'s options; else None (the vlmjax file goes there)."""
  if isinstance(tok, tokenizer_lib.SentencePieceTokenizer) and tok.options() == dict(
      tokenizer_lib.GEMMA) and (tok.pad_id, tok.eos_id, tok.bos_id) == GEMMA_IDS:
    return tok.model_proto
  return None


def fit_vocab(params: dict, vocab_size: int) -> dict:
  """`params` with the decoder's token table (and an untied head) cut to its first `vocab_size` rows:
  those past the tokenizer's ids (`<image>`, padding) no text reaches. A table no larger is kept as it is."""
  decoder = dict(params["decoder"])
  if decoder["embedding"].shape[0] <= vocab_size:
    return params
  decoder["embedding"] = decoder["embedding"][:vocab_size]
  if "head" in decoder:
    decoder["head"] = {"kernel": decoder["head"]["kernel"][:, :vocab_size]}
  return {**params, "decoder": decoder}


# --- weights -------------------------------------------------------------------------------------

def published_names(state: dict) -> dict:
  """A state dict under any of transformers' namings (`RENAMES`) -> the published checkpoints' names."""
  out = {}
  for key, value in state.items():
    for pattern, replacement in RENAMES:
      if re.match(pattern, key):
        key = re.sub(pattern, replacement, key, count=1)
        break
    out[key] = value
  return out


def export(model_config: dict, params: dict, bos_id: int, eos_id: int, pad_id: int) -> tuple[dict, dict, dict]:
  """A vlmjax VLM of PaliGemma's architecture -> (state dict of numpy arrays, config.json,
  preprocessor_config.json). ValueError naming the option PaliGemma cannot express."""
  model_config = dict(model_config)
  _require(model_config.get("name") == "vlm", f"model is '{model_config.get('name')}', not a vlm")
  image = clip.tower_kwargs(ViT, model_config.get("image"), "S/16")  # VLM.image_kwargs
  _require(image["pool"] in ("gap", "map"), f"ViT pools by '{image['pool']}' (PaliGemma reads every patch token and "
           "no class token: 'gap', or 'map' whose head it leaves unused)")
  hf_siglip.check_vision_tower(image, FORMAT)
  kind = dict(model_config.get("projector") or {"kind": "mlp"}).get("kind")
  _require(kind == "linear", f"projector is '{kind}' (PaliGemma: 'linear')")
  _require(decoder_kwargs(model_config["decoder"]).get("scale_token_embeddings", False),
           "decoder has no scale_token_embeddings (PaliGemma's text model is Gemma)")
  try:
    text_state, text_config = hf_llama.export(dict(model_config["decoder"]), params["decoder"], bos_id, eos_id, pad_id)
  except ValueError as e:
    raise _from_hf_llama(e, "decoder") from None
  num_positions = np.asarray(params["image"]["pos_embedding"]).shape[1]
  grid = math.isqrt(num_positions)
  _require(grid * grid == num_positions, f"{num_positions} image positions are not a square grid")
  image_size, width, vocab_size = grid * image["patch_size"], text_config["hidden_size"], text_config["vocab_size"]
  linear = params["projector"]["linear"]
  state = {**hf_siglip.vision_to_state(image, params["image"], VISION),
           PROJECTOR + "weight": layout.dense_to_linear(linear["kernel"]),
           PROJECTOR + "bias": np.asarray(linear["bias"]),
           **{TEXT + k: v for k, v in text_state.items()}}
  text_config = {k: v for k, v in text_config.items() if k not in ("architectures", "torch_dtype")}
  config = {
      "architectures": ["PaliGemmaForConditionalGeneration"], "model_type": MODEL_TYPE, "torch_dtype": "float32",
      "image_token_index": vocab_size, "vocab_size": vocab_size, "hidden_size": width, "projection_dim": width,
      "tie_word_embeddings": text_config["tie_word_embeddings"], "bos_token_id": int(bos_id),
      "eos_token_id": int(eos_id), "pad_token_id": int(pad_id), "text_config": text_config,
      "vision_config": {"model_type": "siglip_vision_model", **hf_siglip.vision_config(image, image_size),
                        "projection_dim": width},
  }
  preprocessor = {**hf_siglip.vision_preprocessor(image_size), "image_seq_length": grid * grid,
                  "processor_class": "PaliGemmaProcessor"}
  return state, config, preprocessor


def load(state: dict, config: dict, preprocessor: dict | None = None, scan: bool = True) -> tuple[dict, dict, dict]:
  """A PaliGemmaForConditionalGeneration state dict (numpy or torch, any of transformers' namings) +
  config.json (+ preprocessor_config.json) -> (vlmjax model config, params, dict(image_size,
  max_text_len, prefix_attention)). ValueError naming a config key vlmjax cannot represent, or a tensor
  missing, unknown or of another shape than the config's."""
  vision, text = check_config(config)
  image, image_size = hf_siglip.vision_from_hf(vision, scan, FORMAT)
  state = published_names(layout.to_numpy_state(state))
  for key in state:
    if not key.startswith((VISION, PROJECTOR, TEXT)):
      raise ValueError(f"{FORMAT}: tensor '{key}' has no place in vlmjax's VLM")
  try:
    decoder, decoder_params = hf_llama.load({k[len(TEXT):]: v for k, v in state.items() if k.startswith(TEXT)},
                                            text, scan)
  except ValueError as e:
    raise _from_hf_llama(e, "language_model") from None
  try:
    image_params = hf_siglip.vision_from_state(state, image, VISION, scan)
    projector = {"linear": {"kernel": layout.linear_to_dense(state[PROJECTOR + "weight"]),
                            "bias": state[PROJECTOR + "bias"]}}
  except KeyError as e:
    raise ValueError(f"{FORMAT}: the state dict has no tensor {e} (is it a PaliGemmaForConditionalGeneration?)") \
        from None
  vision_names = hf_siglip.vision_to_state(clip.tower_kwargs(ViT, image, "S/16"), image_params, VISION)
  extra = sorted(k for k in state if k.startswith(VISION) and k not in vision_names)
  if extra:  # e.g. a MAP head a config without vision_use_head does not build
    raise ValueError(f"{FORMAT}: tensor '{extra[0]}' has no place in vlmjax's VLM (config.json vision_config "
                     f"describes another vision tower)")
  model = dict(name="vlm", image=image, projector=dict(kind="linear"), decoder=decoder)
  params = layout.tree_map(lambda x: np.asarray(x, np.float32),
                           {"image": image_params, "projector": projector, "decoder": decoder_params})
  module = VLM(image=image, decoder=decoder, projector=model["projector"],
               vocab_size=decoder_params["embedding"].shape[0])
  num_image_tokens = module.num_image_tokens(image_size)
  tokens = jnp.asarray([[IMAGE_TOKEN] * num_image_tokens + [GEMMA_IDS[2]]], jnp.int32)  # image slots, BOS
  layout.check_shapes(FORMAT, module, params, images=jnp.zeros((1, image_size, image_size, 3)), tokens=tokens)
  hf_siglip.fold_pixel_statistics(params["image"], preprocessor)
  # The decoder's positions left for text once the image tokens have theirs.
  max_text_len = int(text["max_position_embeddings"]) - num_image_tokens
  return model, params, dict(image_size=image_size, max_text_len=max_text_len, prefix_attention="bidirectional")
