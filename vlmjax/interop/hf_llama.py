"""Hugging Face `LlamaForCausalLM` layout <-> vlmjax's decoder (`models/decoder.py`), both ways.

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

Both apply RoPE to the two halves of each head (HF's `rotate_half`; HF's Llama weights are stored
permuted for it), with inverse frequencies θ^(−2i/Dh). Not expressible in vlmjax's decoder, and
refused on import with the option named: RoPE scaling (Llama 3.1's), attention or MLP biases, an
activation other than SiLU/GELU. PyramidDrop stages are a vlmjax-only inference choice: their layers
export in order (HF then runs every token through every layer).
"""
import numpy as np

from vlmjax.interop import layout
from vlmjax.models.decoder import Decoder, decoder_kwargs
from vlmjax.interop.clip import tower_kwargs

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
ACTIVATIONS = {"silu": "silu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh"}


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


def _block_out(block: dict) -> dict:
  attn, mlp = block["attn"], block["mlp"]
  return {
      "input_layernorm.weight": np.asarray(block["norm1"]["scale"]),
      "post_attention_layernorm.weight": np.asarray(block["norm2"]["scale"]),
      "self_attn.q_proj.weight": layout.heads_in_to_linear(attn["query"]["kernel"]),
      "self_attn.k_proj.weight": layout.heads_in_to_linear(attn["key"]["kernel"]),
      "self_attn.v_proj.weight": layout.heads_in_to_linear(attn["value"]["kernel"]),
      "self_attn.o_proj.weight": layout.heads_out_to_linear(attn["out"]["kernel"]),
      "mlp.gate_proj.weight": layout.dense_to_linear(mlp["fc1"]["kernel"]),
      "mlp.up_proj.weight": layout.dense_to_linear(mlp["gate"]["kernel"]),
      "mlp.down_proj.weight": layout.dense_to_linear(mlp["fc2"]["kernel"]),
  }


def _block_in(t: dict, heads: int, kv_heads: int) -> dict:
  return {
      "norm1": {"scale": t["input_layernorm.weight"]},
      "norm2": {"scale": t["post_attention_layernorm.weight"]},
      "attn": {"query": {"kernel": layout.linear_to_heads_in(t["self_attn.q_proj.weight"], heads)},
               "key": {"kernel": layout.linear_to_heads_in(t["self_attn.k_proj.weight"], kv_heads)},
               "value": {"kernel": layout.linear_to_heads_in(t["self_attn.v_proj.weight"], kv_heads)},
               "out": {"kernel": layout.linear_to_heads_out(t["self_attn.o_proj.weight"], heads)}},
      "mlp": {"fc1": {"kernel": layout.linear_to_dense(t["mlp.gate_proj.weight"])},
              "gate": {"kernel": layout.linear_to_dense(t["mlp.up_proj.weight"])},
              "fc2": {"kernel": layout.linear_to_dense(t["mlp.down_proj.weight"])}},
  }


def export(decoder_config: dict, decoder_params: dict, bos_id: int, eos_id: int, pad_id: int):
  """config.model.decoder + the params under 'decoder/' -> (state dict of numpy arrays, config.json)."""
  kw = {**tower_kwargs(Decoder, {}, "S"), **decoder_kwargs(decoder_config)}
  inverse = {v: k for k, v in ACTIVATIONS.items()}
  if kw["activation"] not in inverse:
    raise ValueError(f"hf_llama: decoder activation '{kw['activation']}' has no HF name (known: {', '.join(inverse)})")
  vocab_size, width = np.asarray(decoder_params["embedding"]).shape
  head_dim = kw["head_dim"] or width // kw["num_heads"]
  state = {"model.embed_tokens.weight": np.asarray(decoder_params["embedding"]),
           "model.norm.weight": np.asarray(decoder_params["final_norm"]["scale"])}
  stacks = {}
  for i, (module, index) in enumerate(decoder_layer_slots(kw["depth"], kw["pdrop_layers"])):
    if index is None:
      block = decoder_params[module]
    else:
      if module not in stacks:
        depth = sum(1 for m, j in decoder_layer_slots(kw["depth"], kw["pdrop_layers"]) if m == module)
        stacks[module] = layout.unstack_layers(decoder_params[module], depth)
      block = stacks[module][index]
    state.update({f"model.layers.{i}.{k}": a for k, a in _block_out(block).items()})
  if not kw["tie_embeddings"]:
    state["lm_head.weight"] = layout.dense_to_linear(decoder_params["head"]["kernel"])
  config = {
      "architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "float32",
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
  return state, config


def load(state: dict, config: dict, scan: bool = True) -> tuple[dict, dict]:
  """HF Llama-style state dict (numpy or torch) + config.json -> (config.model.decoder entry,
  params under 'decoder/'). Raises ValueError naming an option or tensor that does not fit."""
  state = {k: (a.detach().float().cpu().numpy() if hasattr(a, "detach") else np.asarray(a))
           for k, a in state.items()}
  rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
  if rope.get("rope_type", rope.get("type", "default")) != "default":
    raise ValueError(f"hf_llama: rope type '{rope.get('rope_type', rope.get('type'))}'; vlmjax's RoPE has no scaling")
  for key in ("attention_bias", "mlp_bias"):
    if config.get(key):
      raise ValueError(f"hf_llama: '{key}' is set; vlmjax's decoder has no biases")
  act = config.get("hidden_act", "silu")
  if act not in ACTIVATIONS:
    raise ValueError(f"hf_llama: hidden_act '{act}' (known: {', '.join(ACTIVATIONS)})")
  if "model.embed_tokens.weight" not in state:
    raise ValueError("hf_llama: the state dict has no 'model.embed_tokens.weight' (is it a LlamaForCausalLM?)")
  vocab_size, width = state["model.embed_tokens.weight"].shape
  heads = int(config["num_attention_heads"])
  kv_heads = int(config.get("num_key_value_heads") or heads)
  head_dim = int(config.get("head_dim") or width // heads)
  depth = len({k.split(".")[2] for k in state if k.startswith("model.layers.")})
  tied = "lm_head.weight" not in state or bool(config.get("tie_word_embeddings", False))
  try:
    blocks = [_block_in({k[len(f"model.layers.{i}."):]: a for k, a in state.items()
                         if k.startswith(f"model.layers.{i}.")}, heads, kv_heads) for i in range(depth)]
  except KeyError as e:
    raise ValueError(f"hf_llama: a layer of the state dict has no tensor {e}") from None
  params = {"embedding": state["model.embed_tokens.weight"], "layers": layout.stack_layers(blocks, scan),
            "final_norm": {"scale": state["model.norm.weight"]}}
  if not tied:
    params["head"] = {"kernel": layout.linear_to_dense(state["lm_head.weight"])}
  params = layout.tree_map(lambda x: np.asarray(x, np.float32), params)
  decoder = dict(width=int(width), depth=depth, mlp_dim=int(config["intermediate_size"]), num_heads=heads,
                 num_kv_heads=kv_heads, head_dim=head_dim, activation=ACTIVATIONS[act], tie_embeddings=tied,
                 norm_eps=float(config.get("rms_norm_eps", 1e-6)),
                 rope_max_wavelength=float(rope.get("rope_theta", config.get("rope_theta", 10_000.0))), scan=scan)
  return decoder, params
