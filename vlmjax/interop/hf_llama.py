"""Hugging Face `LlamaForCausalLM` and `GemmaForCausalLM` layouts <-> vlmjax's decoder
(`models/decoder.py`), both ways.

  model.embed_tokens.weight                      [V, D]          <-> decoder/embedding [V, D]
  model.layers.{i}.input_layernorm.weight        [D]             <-> .../norm1/scale
  model.layers.{i}.self_attn.q_proj.weight       [H·Dh, D]       <-> .../attn/query/kernel [D, H, Dh]
  model.layers.{i}.self_attn.k_proj / v_proj     [K·Dh, D]       <-> .../attn/key, value/kernel [D, K, Dh]
  model.layers.{i}.self_attn.o_proj.weight       [D, H·Dh]       <-> .../attn/out/kernel [H, Dh, D]
  model.layers.{i}.post_attention_layernorm      [D]             <-> .../norm2/scale
  model.layers.{i}.mlp.gate_proj.weight          [M, D]          <-> .../mlp/fc1/kernel [D, M]  (the activated one)
  model.layers.{i}.mlp.up_proj.weight            [M, D]          <-> .../mlp/gate/kernel [D, M] (the multiplier)
  model.layers.{i}.mlp.down_proj.weight          [D, M]          <-> .../mlp/fc2/kernel [M, D]
  model.norm.weight                              [D]             <-> decoder/final_norm/scale
  lm_head.weight                                 [V, D]          <-> decoder/head/kernel [D, V] (untied only)

Gemma (config.json `model_type` "gemma") is the same layout with two differences, the `FLAVOURS`
table: the token embeddings are multiplied by sqrt(D) (the decoder's `scale_token_embeddings`; a
VLM's image embeddings are not, as in PaliGemma), and its RMSNorms multiply by (1 + w), so the
norm weights w import as vlmjax scales 1 + w and export as scale − 1. Its GeGLU MLP is the gated
MLP with `activation="gelu_tanh"`; GemmaConfig reads `hidden_act` and takes a legacy "gelu" there
for the tanh approximation, as this import does. `read` picks the flavour from `model_type`;
`export` writes Gemma's layout and config for a decoder with `scale_token_embeddings`, Llama's
otherwise.

Both apply RoPE to the two halves of each head (HF's `rotate_half`; HF's Llama weights are stored
permuted for it), with inverse frequencies θ^(−2i/Dh). Not expressible in vlmjax's decoder, and
refused on import with the option named: RoPE scaling (Llama 3.1's), attention or MLP biases, an
activation other than SiLU/GELU, any tensor the decoder has no place for; Gemma 2/3 (`model_type`
gemma2, gemma3, ...) and their features: attention or final logit soft-capping, sliding-window
layers, `query_pre_attn_scalar` other than the head dim, the extra pre/post-feedforward norms.
PyramidDrop stages are a vlmjax-only inference choice: their layers export in order (HF then runs
every token through every layer).
"""
import numpy as np

from vlmjax.interop import layout
from vlmjax.models.decoder import Decoder, decoder_kwargs
from vlmjax.interop.clip import tower_kwargs

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
ACTIVATIONS = {"silu": "silu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh"}
# model_type -> how the layout differs from Llama's. norm_offset: HF's RMSNorm multiplies by
# (norm_offset + w); legacy_activations: hidden_act values the HF config rewrites on load; defaults: what
# LlamaConfig / GemmaConfig take for a key config.json leaves out.
FLAVOURS = {
    "llama": dict(architecture="LlamaForCausalLM", norm_offset=0.0, scale_token_embeddings=False,
                  legacy_activations={}, defaults=dict(hidden_act="silu")),
    "gemma": dict(architecture="GemmaForCausalLM", norm_offset=1.0, scale_token_embeddings=True,
                  legacy_activations={"gelu": "gelu_pytorch_tanh"},
                  defaults=dict(hidden_act="gelu_pytorch_tanh", head_dim=256)),
}
# Gemma 2/3 options (and a bidirectional Gemma's) vlmjax's decoder has no counterpart for; absent,
# None or False means off.
UNSUPPORTED_OPTIONS = ("attn_logit_softcapping", "final_logit_softcapping", "use_bidirectional_attention")
LAYER_TENSORS = ("input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.q_proj.weight",
                 "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
                 "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight")


def decoder_layer_slots(depth: int, pdrop_layers: tuple) -> list[tuple]:
  """Where each of the `depth` layers lives in the decoder's params: (module name, index in that
  module's stack or None for a lone block), in layer order."""
  bounds = (0,) + tuple(int(l) for l in pdrop_layers) + (depth,)
  slots = []
  for stage in range(len(bounds) - 1):
    count = bounds[stage + 1] - bounds[stage]
    if stage > 0:
      slots.append((f"layers_{stage}_first", None))
      count -= 1
    slots += [("layers" if stage == 0 else f"layers_{stage}", i) for i in range(count)]
  return slots


def _norm_out(scale, offset: float):
  return (np.asarray(scale, np.float64) - offset).astype(np.float32)


def _norm_in(weight, offset: float):
  return (np.asarray(weight, np.float64) + offset).astype(np.float32)


def _block_out(block: dict, norm_offset: float) -> dict:
  attn, mlp = block["attn"], block["mlp"]
  return {
      "input_layernorm.weight": _norm_out(block["norm1"]["scale"], norm_offset),
      "post_attention_layernorm.weight": _norm_out(block["norm2"]["scale"], norm_offset),
      "self_attn.q_proj.weight": layout.heads_in_to_linear(attn["query"]["kernel"]),
      "self_attn.k_proj.weight": layout.heads_in_to_linear(attn["key"]["kernel"]),
      "self_attn.v_proj.weight": layout.heads_in_to_linear(attn["value"]["kernel"]),
      "self_attn.o_proj.weight": layout.heads_out_to_linear(attn["out"]["kernel"]),
      "mlp.gate_proj.weight": layout.dense_to_linear(mlp["fc1"]["kernel"]),
      "mlp.up_proj.weight": layout.dense_to_linear(mlp["gate"]["kernel"]),
      "mlp.down_proj.weight": layout.dense_to_linear(mlp["fc2"]["kernel"]),
  }


def _block_in(t: dict, heads: int, kv_heads: int, norm_offset: float) -> dict:
  return {
      "norm1": {"scale": _norm_in(t["input_layernorm.weight"], norm_offset)},
      "norm2": {"scale": _norm_in(t["post_attention_layernorm.weight"], norm_offset)},
      "attn": {"query": {"kernel": layout.linear_to_heads_in(t["self_attn.q_proj.weight"], heads)},
               "key": {"kernel": layout.linear_to_heads_in(t["self_attn.k_proj.weight"], kv_heads)},
               "value": {"kernel": layout.linear_to_heads_in(t["self_attn.v_proj.weight"], kv_heads)},
               "out": {"kernel": layout.linear_to_heads_out(t["self_attn.o_proj.weight"], heads)}},
      "mlp": {"fc1": {"kernel": layout.linear_to_dense(t["mlp.gate_proj.weight"])},
              "gate": {"kernel": layout.linear_to_dense(t["mlp.up_proj.weight"])},
              "fc2": {"kernel": layout.linear_to_dense(t["mlp.down_proj.weight"])}},
  }


def export(decoder_config: dict, decoder_params: dict, bos_id: int, eos_id: int, pad_id: int):
  """config.model.decoder + the params under 'decoder/' -> (state dict of numpy arrays, config.json):
  Gemma's layout for a decoder with `scale_token_embeddings`, Llama's otherwise."""
  kw = {**tower_kwargs(Decoder, {}, "S"), **decoder_kwargs(decoder_config)}
  model_type = "gemma" if kw["scale_token_embeddings"] else "llama"
  flavour = FLAVOURS[model_type]
  inverse = {v: k for k, v in ACTIVATIONS.items()}
  if kw["activation"] not in inverse:
    raise ValueError(f"hf_llama: decoder activation '{kw['activation']}' has no HF name (known: {', '.join(inverse)})")
  if inverse[kw["activation"]] in flavour["legacy_activations"]:
    raise ValueError(f"hf_llama: decoder activation '{kw['activation']}' with scale_token_embeddings: GemmaConfig "
                     f"reads hidden_act '{inverse[kw['activation']]}' as "
                     f"'{flavour['legacy_activations'][inverse[kw['activation']]]}'")
  vocab_size, width = np.asarray(decoder_params["embedding"]).shape
  head_dim = kw["head_dim"] or width // kw["num_heads"]
  offset = flavour["norm_offset"]
  state = {"model.embed_tokens.weight": np.asarray(decoder_params["embedding"]),
           "model.norm.weight": _norm_out(decoder_params["final_norm"]["scale"], offset)}
  stacks = {}
  for i, (module, index) in enumerate(decoder_layer_slots(kw["depth"], kw["pdrop_layers"])):
    if index is None:
      block = decoder_params[module]
    else:
      if module not in stacks:
        depth = sum(1 for m, j in decoder_layer_slots(kw["depth"], kw["pdrop_layers"]) if m == module)
        stacks[module] = layout.unstack_layers(decoder_params[module], depth)
      block = stacks[module][index]
    state.update({f"model.layers.{i}.{k}": a for k, a in _block_out(block, offset).items()})
  if not kw["tie_embeddings"]:
    state["lm_head.weight"] = layout.dense_to_linear(decoder_params["head"]["kernel"])
  config = {
      "architectures": [flavour["architecture"]], "model_type": model_type, "torch_dtype": "float32",
      "vocab_size": int(vocab_size), "hidden_size": int(width), "intermediate_size": kw["mlp_dim"],
      "num_hidden_layers": kw["depth"], "num_attention_heads": kw["num_heads"],
      "num_key_value_heads": kw["num_kv_heads"] or kw["num_heads"], "head_dim": int(head_dim),
      "hidden_act": inverse[kw["activation"]], "rms_norm_eps": float(kw["norm_eps"]),
      "rope_theta": float(kw["rope_max_wavelength"]),
      "rope_parameters": {"rope_type": "default", "rope_theta": float(kw["rope_max_wavelength"])},
      "tie_word_embeddings": bool(kw["tie_embeddings"]), "attention_bias": False, "mlp_bias": False,
      "max_position_embeddings": 4096, "bos_token_id": int(bos_id), "eos_token_id": int(eos_id),
      "pad_token_id": int(pad_id),
  }
  if model_type == "gemma":
    config["hidden_activation"] = config["hidden_act"]  # what transformers < 5 read for Gemma
  return state, config


def check_config(config: dict) -> tuple[str, str]:
  """A config.json -> (flavour name, HF activation name), or a ValueError naming the option that
  vlmjax's decoder cannot express."""
  model_type = config.get("model_type") or "llama"
  if model_type.startswith("gemma") and model_type not in FLAVOURS:
    raise ValueError(f"hf_llama: model_type '{model_type}' (Gemma 2 and later: logit soft-capping, sliding-window "
                     "layers, extra norms) is beyond vlmjax's decoder; known: llama, gemma")
  name = model_type if model_type in FLAVOURS else "llama"  # other Llama-style types: each option checked below
  flavour = FLAVOURS[name]
  rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
  if rope.get("rope_type", rope.get("type", "default")) != "default":
    raise ValueError(f"hf_llama: rope type '{rope.get('rope_type', rope.get('type'))}'; vlmjax's RoPE has no scaling")
  for key in ("attention_bias", "mlp_bias"):
    if config.get(key):
      raise ValueError(f"hf_llama: '{key}' is set; vlmjax's decoder has no biases")
  for key in UNSUPPORTED_OPTIONS:
    if config.get(key):
      raise ValueError(f"hf_llama: '{key}' is {config[key]!r}; vlmjax's decoder has no counterpart")
  if config.get("sliding_window") and config.get("use_sliding_window", True):
    raise ValueError(f"hf_llama: 'sliding_window' is {config['sliding_window']}; vlmjax's decoder attends to every "
                     "earlier token")
  if any(t != "full_attention" for t in config.get("layer_types") or ()):
    raise ValueError(f"hf_llama: 'layer_types' has {sorted(set(config['layer_types']) - {'full_attention'})}; "
                     "vlmjax's decoder has only full attention")
  heads = config.get("num_attention_heads") or 1
  head_dim = config.get("head_dim") or config.get("hidden_size", 0) // heads
  if config.get("query_pre_attn_scalar") not in (None, head_dim):
    raise ValueError(f"hf_llama: 'query_pre_attn_scalar' {config['query_pre_attn_scalar']} is not head_dim "
                     f"{head_dim}; vlmjax scales attention logits by head_dim^-0.5")
  act = config.get("hidden_act", "silu")
  act = flavour["legacy_activations"].get(act, act)
  if act not in ACTIVATIONS:
    raise ValueError(f"hf_llama: hidden_act '{act}' (known: {', '.join(ACTIVATIONS)})")
  other = config.get("hidden_activation")
  if model_type == "gemma" and other is not None and other != act:
    raise ValueError(f"hf_llama: 'hidden_activation' '{other}' disagrees with hidden_act '{act}' (transformers "
                     "before and after 5.0 would run different MLPs)")
  return name, act


def with_defaults(config: dict) -> dict:
  """config.json with the flavour's defaults for the keys it leaves out."""
  name = config.get("model_type") or "llama"
  return {**FLAVOURS.get(name, FLAVOURS["llama"])["defaults"], **config}


def load(state: dict, config: dict, scan: bool = True) -> tuple[dict, dict]:
  """HF Llama- or Gemma-style state dict (numpy or torch) + config.json -> (config.model.decoder
  entry, params under 'decoder/'). Raises ValueError naming an option or tensor that does not fit."""
  state = layout.to_numpy_state(state)
  config = with_defaults(config)
  name, act = check_config(config)
  flavour = FLAVOURS[name]
  if "model.embed_tokens.weight" not in state:
    raise ValueError(f"hf_llama: the state dict has no 'model.embed_tokens.weight' (is it a "
                     f"{flavour['architecture']}?)")
  # Older checkpoints store RoPE's inverse frequencies; vlmjax recomputes them from rope_theta.
  state = {k: a for k, a in state.items() if not k.endswith("rotary_emb.inv_freq")}
  known = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
  for key in state:
    if key not in known and not key.startswith("model.layers."):
      raise ValueError(f"hf_llama: tensor '{key}' has no place in vlmjax's decoder")
  vocab_size, width = state["model.embed_tokens.weight"].shape
  heads = int(config["num_attention_heads"])
  kv_heads = int(config.get("num_key_value_heads") or heads)
  head_dim = int(config.get("head_dim") or width // heads)
  depth = len({k.split(".")[2] for k in state if k.startswith("model.layers.")})
  tied = "lm_head.weight" not in state or bool(config.get("tie_word_embeddings", False))
  blocks = []
  for i in range(depth):
    prefix = f"model.layers.{i}."
    tensors = {k[len(prefix):]: a for k, a in state.items() if k.startswith(prefix)}
    try:
      blocks.append(_block_in(tensors, heads, kv_heads, flavour["norm_offset"]))
    except KeyError as e:
      raise ValueError(f"hf_llama: layer {i} of the state dict has no tensor {e}") from None
    extra = sorted(set(tensors) - set(LAYER_TENSORS))
    if extra:  # e.g. Gemma 2's pre/post-feedforward norms, Qwen 3's q/k norms, biases
      raise ValueError(f"hf_llama: tensor '{prefix}{extra[0]}' has no place in vlmjax's decoder")
  params = {"embedding": state["model.embed_tokens.weight"], "layers": layout.stack_layers(blocks, scan),
            "final_norm": {"scale": _norm_in(state["model.norm.weight"], flavour["norm_offset"])}}
  if not tied:
    params["head"] = {"kernel": layout.linear_to_dense(state["lm_head.weight"])}
  params = layout.tree_map(lambda x: np.asarray(x, np.float32), params)
  rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
  decoder = dict(width=int(width), depth=depth, mlp_dim=int(config["intermediate_size"]), num_heads=heads,
                 num_kv_heads=kv_heads, head_dim=head_dim, activation=ACTIVATIONS[act], tie_embeddings=tied,
                 norm_eps=float(config.get("rms_norm_eps", 1e-6)),
                 rope_max_wavelength=float(rope.get("rope_theta", config.get("rope_theta", 10_000.0))), scan=scan)
  if flavour["scale_token_embeddings"]:
    decoder["scale_token_embeddings"] = True
  return decoder, params
