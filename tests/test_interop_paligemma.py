"""The hf_paligemma format (vlmjax.interop.hf_paligemma) and PaliGemma's prefix-LM in vlmjax's VLM.

Without torch: `input.prefix_attention='bidirectional'` makes BOS and the prompt one block with the image,
in training layout and in KV-cache generation alike; vlmjax -> PaliGemma files -> vlmjax round trips
(published and transformers' other tensor namings), the config.json mapping and its one-line refusals, the
import with Gemma's SentencePiece tokenizer.model (its table's extra rows dropped) and the export back.
With torch (`make test-interop`; skipped otherwise): a random transformers PaliGemmaForConditionalGeneration
imported, fed the same PNG file and raw prompt/suffix strings through vlmjax's tokenizer and preprocessing
and through transformers' PaliGemmaProcessor, gives transformers' logits (max abs difference <= 1e-4,
fp32), exported back loads in transformers with them, and greedy captions from `predict` are its
`generate`'s, stopping at Gemma's EOS (id 1, not vlmjax's 3).
"""
import io
import json
import os
import random

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sentencepiece as spm
from PIL import Image

from test_interop_siglip import hf_names as siglip_names
from vlmjax import config as config_lib, export as export_lib, interop
from vlmjax.batch_spec import BIDIRECTIONAL, CAUSAL, IMAGE_TOKEN, caption_sequence
from vlmjax.data import pipeline, tokenizer as tokenizer_lib
from vlmjax.evals.captioning import generation_prefix
from vlmjax.interop import hf_llama, hf_paligemma
from vlmjax.models.generate import generate
from vlmjax.models.vlm import VLM
from vlmjax.run import Bundle

IMAGE_SIZE = 16
NUM_IMAGE_TOKENS = 4  # (16 / 8)²
DECODER = dict(variant="mu", width=32, depth=2, mlp_dim=48, num_heads=4, num_kv_heads=1, head_dim=16,
               activation="gelu_tanh", scale_token_embeddings=True, norm_eps=1e-6)
PALIGEMMA_MODEL = dict(
    name="vlm", projector=dict(kind="linear"), decoder=DECODER,
    image=dict(variant="mu/8", width=32, depth=2, mlp_dim=64, num_heads=2, pool="gap", activation="gelu_tanh",
               norm_eps=1e-6))
WORDS = "a photo of the red blue circle square dog cat on left right caption en describe what is there".split()
PROMPT, SUFFIXES = "caption en\n", ["a red dog", "the blue square on the left of a cat"]
TOL = 1e-4


def gemma_sentencepiece() -> bytes:
  """A SentencePiece model with Gemma's conventions: pad 0, eos 1, bos 2, unk 3, <mask> 4, "\\n" a piece;
  BPE with byte fallback, text taken as written (no normalisation, no dummy prefix)."""
  rng = random.Random(0)
  texts = [" ".join(rng.choices(WORDS, k=rng.randint(1, 12))) for _ in range(300)]
  proto = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(texts), model_writer=proto, vocab_size=330, model_type="bpe", pad_id=0, eos_id=1,
      bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
      user_defined_symbols=["<mask>", "\n"], byte_fallback=True, add_dummy_prefix=False,
      remove_extra_whitespaces=False, normalization_rule_name="identity", split_digits=True,
      allow_whitespace_only_pieces=True, hard_vocab_limit=False, character_coverage=1.0, num_threads=1,
      minloglevel=2)
  return proto.getvalue()


@pytest.fixture(scope="module")
def spiece():
  return gemma_sentencepiece()


def vlm(config=PALIGEMMA_MODEL, vocab_size=330):
  return VLM(**{k: v for k, v in config.items() if k != "name"}, vocab_size=vocab_size)


def jiggled_params(config=PALIGEMMA_MODEL, vocab_size=330):
  """Random params with every leaf off its init: zero biases or unit norms would hide a wrong mapping."""
  images, tokens = jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3)), jnp.asarray([[IMAGE_TOKEN] * NUM_IMAGE_TOKENS + [2, 5]])
  params = jax.jit(vlm(config, vocab_size).init)(jax.random.PRNGKey(0), images=images, tokens=tokens)
  leaves, treedef = jax.tree.flatten(nn.meta.unbox(params)["params"])
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  return jax.tree.map(np.asarray, jax.tree.unflatten(
      treedef, [x + 0.2 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]))


@pytest.fixture(scope="module")
def vlm_params():
  return jiggled_params()


def batch(prefix_attention="bidirectional", prompt=(6, 7, 5)):
  captions = [[2, 8, 9, 11, 1, 0, 0], [2, 12, 1, 0, 0, 0, 0]]
  examples = [caption_sequence(np.array(c), NUM_IMAGE_TOKENS, prompt, prefix_attention) for c in captions]
  out = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
  out["images"] = np.asarray(jax.random.uniform(jax.random.PRNGKey(5), (2, IMAGE_SIZE, IMAGE_SIZE, 3), minval=-1))
  return out


def logits(config, params, b, vocab_size=330):
  return np.asarray(vlm(config, vocab_size).apply({"params": params}, images=b["images"], tokens=b["tokens"],
                                                  attention_mask=b["attention_mask"])["logits"])


def published_names(image_depth=2, text_depth=2, head=False, lm_head=False) -> set:
  """Every tensor name of a published PaliGemma checkpoint (vision_tower.vision_model.*, ...)."""
  vision = {"vision_tower." + n for n in siglip_names(image_depth, 0) if n.startswith("vision_model.")
            and (head or not n.startswith("vision_model.head."))}
  text = {f"language_model.model.layers.{i}.{n}" for i in range(text_depth) for n in hf_llama.LAYER_TENSORS}
  return vision | text | {"multi_modal_projector.linear.weight", "multi_modal_projector.linear.bias",
                          "language_model.model.embed_tokens.weight", "language_model.model.norm.weight"} | (
                              {"language_model.lm_head.weight"} if lm_head else set())


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert np.shape(x) == np.shape(y) and np.array_equal(x, y)


# --- prefix attention (no torch) ---------------------------------------------------------------------

def test_bidirectional_prefix_puts_bos_and_prompt_in_the_image_block():
  causal = caption_sequence(np.array([2, 7, 9, 1, 0]), 3, (5, 6))
  prefix = caption_sequence(np.array([2, 7, 9, 1, 0]), 3, (5, 6), "bidirectional")
  np.testing.assert_array_equal(causal["attention_mask"], [1, 1, 1, 2, 2, 2, 2, 2, 2, 0])
  np.testing.assert_array_equal(prefix["attention_mask"], [1, 1, 1, 1, 1, 1, 2, 2, 2, 0])
  for key in ("tokens", "targets", "loss_weights"):  # only the mask changes
    np.testing.assert_array_equal(prefix[key], causal[key])
  with pytest.raises(ValueError, match="prefix_attention"):
    caption_sequence(np.array([2, 7, 1]), 3, (), "full")
  tokens, kinds = generation_prefix(3, (5, 6), bos_id=2, prefix_attention="bidirectional")
  np.testing.assert_array_equal(tokens, [IMAGE_TOKEN] * 3 + [2, 5, 6])
  np.testing.assert_array_equal(kinds, [BIDIRECTIONAL] * 6)
  tokens, kinds = generation_prefix(3, (5,), bos_id=7)  # the tokenizer's BOS, not vlmjax's
  np.testing.assert_array_equal(tokens, [IMAGE_TOKEN] * 3 + [7, 5])
  np.testing.assert_array_equal(kinds, [BIDIRECTIONAL] * 3 + [CAUSAL] * 2)


def test_config_takes_prefix_attention_and_refuses_other_values():
  config = config_lib.base_config()
  assert config.input.prefix_attention == "causal"
  config.model = PALIGEMMA_MODEL
  config.input.prefix_attention = "bidirectional"
  config_lib.check_keys_and_ranges(config)
  config.input.prefix_attention = "prefix"
  with pytest.raises(config_lib.ConfigError, match="input.prefix_attention"):
    config_lib.check_keys_and_ranges(config)


def test_bidirectional_prefix_changes_the_prefix_and_caption_logits(vlm_params):
  causal, prefix = logits(PALIGEMMA_MODEL, vlm_params, batch("causal")), logits(PALIGEMMA_MODEL, vlm_params, batch())
  caption = batch()["loss_weights"] > 0
  assert np.abs(causal - prefix)[caption].max() > 1e-2


def test_generation_with_a_bidirectional_prefix_equals_recomputing(vlm_params):
  """KV-cache greedy decoding after a prefill with the prefix's kinds = the whole sequence recomputed each
  step with `caption_sequence`'s mask (prefix one block, each generated token causal)."""
  model = vlm()
  prompt, steps = (6, 7, 5), 5
  prefix, kinds = generation_prefix(NUM_IMAGE_TOKENS, prompt, 2, "bidirectional")
  images = batch()["images"]
  prefixes, prefix_kinds = np.tile(prefix, (2, 1)), np.tile(kinds, (2, 1))
  cached = jax.jit(lambda p, x, i, k: generate(model, p, x, jax.random.PRNGKey(0), steps, images=i, prefix_mask=k,
                                               eos_id=-5))(vlm_params, prefixes, images, prefix_kinds)
  apply = jax.jit(model.apply)
  seq, out = prefixes, []
  for _ in range(steps):
    full_kinds = np.concatenate([prefix_kinds, np.full((2, seq.shape[1] - prefix.shape[0]), CAUSAL)], 1)
    token = np.argmax(np.asarray(apply({"params": vlm_params}, images, seq, full_kinds)["logits"])[:, -1], -1)
    out.append(token)
    seq = np.concatenate([seq, token[:, None]], 1)
  np.testing.assert_array_equal(np.asarray(cached), np.stack(out, 1))


# --- the format without torch ----------------------------------------------------------------------

@pytest.mark.parametrize("pool,tied", [("gap", True), ("map", False)])
def test_round_trip_through_the_files_gives_identical_params(vlm_params, pool, tied, tmp_path):
  """Published checkpoints: no MAP head, tied embeddings. A MAP head (`vision_use_head`) and an untied head
  (language_model.lm_head) make the trip too."""
  config = {**PALIGEMMA_MODEL, "image": {**PALIGEMMA_MODEL["image"], "pool": pool},
            "decoder": {**DECODER, "tie_embeddings": tied}}
  params = vlm_params if pool == "gap" else jiggled_params(config)
  interop.write("hf_paligemma", str(tmp_path), config, params)
  assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors", "preprocessor_config.json"]
  assert set(interop.read_state_dict(str(tmp_path))) == published_names(head=pool == "map", lm_head=not tied)
  with open(tmp_path / "config.json", encoding="utf-8") as f:
    hf_config = json.load(f)
  assert hf_config["model_type"] == "paligemma" and hf_config["image_token_index"] == 330
  assert hf_config["vision_config"]["vision_use_head"] == (pool == "map") and hf_config["tie_word_embeddings"] == tied
  with open(tmp_path / "preprocessor_config.json", encoding="utf-8") as f:
    assert json.load(f)["image_seq_length"] == NUM_IMAGE_TOKENS
  model_config, got, inputs = interop.read("hf_paligemma", str(tmp_path))
  assert_trees_equal(got, params)
  assert inputs == dict(image_size=IMAGE_SIZE, max_text_len=4096 - NUM_IMAGE_TOKENS, prefix_attention="bidirectional")
  assert (model_config["image"]["pool"], model_config["decoder"]["tie_embeddings"]) == (pool, tied)
  if pool == "gap":
    np.testing.assert_array_equal(logits(model_config, got, batch()), logits(config, params, batch()))


def test_transformers_other_namings_read_the_same(vlm_params, tmp_path):
  """transformers >= 4.52 names the tensors model.vision_tower.vision_model.* ... in memory, transformers 5
  model.vision_tower.* (its SiglipVisionModel has no vision_model level) and saves vision_tower.*."""
  interop.write("hf_paligemma", str(tmp_path), PALIGEMMA_MODEL, vlm_params)
  state = interop.read_state_dict(str(tmp_path))
  with open(tmp_path / "config.json", encoding="utf-8") as f:
    config = json.load(f)
  renames = [
      lambda k: "model." + k.replace("language_model.model.", "language_model.", 1),  # 4.52+
      lambda k: "model." + k.replace("language_model.model.", "language_model.", 1).replace(".vision_model.", ".", 1),
      lambda k: k.replace(".vision_model.", ".", 1)]  # 5's save_pretrained
  for rename in renames:
    _, params, _ = hf_paligemma.load({rename(k): v for k, v in state.items()}, config)
    assert_trees_equal(params, vlm_params)


@pytest.mark.parametrize("section,key,value,expected", [
    (None, "model_type", "llava", "model_type='llava'"),
    (None, "model_type", None, "model_type=None"),
    ("text_config", "model_type", "gemma2", "text_config.model_type='gemma2'"),
    ("vision_config", "model_type", "clip_vision_model", "vision_config.model_type='clip_vision_model'"),
    (None, "projection_dim", 64, "projection_dim=64"),
    ("vision_config", "hidden_act", "relu", "vision_config.hidden_act='relu'"),
    ("vision_config", "image_size", [16, 32], "vision_config.image_size=[16, 32]"),
    ("text_config", "attn_logit_softcapping", 50.0, "text_config: 'attn_logit_softcapping'"),
    ("text_config", "attention_bias", True, "text_config: 'attention_bias'"),
    ("text_config", "hidden_act", "relu", "text_config: hidden_act 'relu'"),
])
def test_config_keys_vlmjax_cannot_represent_are_refused(vlm_params, tmp_path, section, key, value, expected):
  interop.write("hf_paligemma", str(tmp_path), PALIGEMMA_MODEL, vlm_params)
  with open(tmp_path / "config.json", encoding="utf-8") as f:
    config = json.load(f)
  (config[section] if section else config)[key] = value
  with pytest.raises(ValueError) as e:
    hf_paligemma.load(interop.read_state_dict(str(tmp_path)), config)
  assert str(e.value).startswith("hf_paligemma:") and expected in str(e.value) and "\n" not in str(e.value)


def test_config_defaults_are_transformers_defaults():
  """A section left out is PaliGemmaConfig's (paligemma-3b-224); a published text_config names hidden_activation
  only (transformers 4), which GemmaConfig's default hidden_act agrees with; use_bidirectional_attention, which
  PaliGemmaConfig sets, is PaliGemma's own."""
  vision, text = hf_paligemma.check_config({"model_type": "paligemma"})
  assert (vision["hidden_size"], vision["patch_size"], vision["image_size"], vision["vision_use_head"]) == (
      1152, 14, 224, False)
  assert (text["hidden_size"], text["num_hidden_layers"], text["num_key_value_heads"], text["head_dim"]) == (
      2048, 18, 1, 256)
  _, text = hf_paligemma.check_config({"model_type": "paligemma", "text_config": {
      "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 2048, "model_type": "gemma",
      "use_bidirectional_attention": True}})
  assert hf_llama.check_config(text) == ("gemma", "gelu_pytorch_tanh") and text["tie_word_embeddings"]


@pytest.mark.parametrize("change,expected", [
    (dict(name="dual_encoder"), "not a vlm"),
    (dict(projector=dict(kind="mlp")), "projector is 'mlp'"),
    (dict(image=dict(pool="cls")), "pools by 'cls'"),
    (dict(image=dict(pre_norm=True)), "pre_norm"),
    (dict(image=dict(posemb="sincos2d")), "posemb"),
    (dict(decoder=dict(scale_token_embeddings=False)), "scale_token_embeddings"),
    (dict(decoder=dict(activation="relu")), "activation 'relu'"),
])
def test_export_refuses_what_paligemma_cannot_express(vlm_params, change, expected):
  config = {**PALIGEMMA_MODEL, **{k: v for k, v in change.items() if k not in ("image", "decoder")}}
  for part in ("image", "decoder"):
    config[part] = {**PALIGEMMA_MODEL[part], **change.get(part, {})}
  with pytest.raises(ValueError) as e:
    hf_paligemma.export(config, vlm_params, 2, 1, 0)
  assert str(e.value).startswith("hf_paligemma:") and expected in str(e.value) and "\n" not in str(e.value)


def test_missing_unknown_and_misshapen_tensors_are_named(vlm_params, tmp_path):
  interop.write("hf_paligemma", str(tmp_path), PALIGEMMA_MODEL, vlm_params)
  with open(tmp_path / "config.json", encoding="utf-8") as f:
    config = json.load(f)
  state = interop.read_state_dict(str(tmp_path))
  cases = [({k: v for k, v in state.items() if k != "multi_modal_projector.linear.bias"},
            "multi_modal_projector.linear.bias"),
           ({**state, "image_newline": np.zeros(3)}, "tensor 'image_newline'"),
           ({**state, "vision_tower.vision_model.head.probe": np.zeros((1, 1, 32))}, "head.probe"),
           ({**state, "language_model.model.layers.0.self_attn.q_norm.weight": np.zeros(16)}, "q_norm")]
  for broken, expected in cases:
    with pytest.raises(ValueError) as e:
      hf_paligemma.load(broken, config)
    assert str(e.value).startswith("hf_paligemma:") and expected in str(e.value) and "\n" not in str(e.value)
  with pytest.raises(ValueError, match=r"image/encoder/blocks/mlp/fc1/bias is \(2, 64\).*\(2, 40\)"):
    hf_paligemma.load(state, {**config, "vision_config": {**config["vision_config"], "intermediate_size": 40}})


def test_tokenizer_file_is_read_under_gemma_conventions(spiece, tmp_path):
  path = tmp_path / "tokenizer.model"
  path.write_bytes(spiece)
  tok = hf_paligemma.read_tokenizer(str(path))
  assert tok.options() == dict(tokenizer_lib.GEMMA) and (tok.pad_id, tok.eos_id, tok.bos_id) == (0, 1, 2)
  assert hf_paligemma.native_tokenizer(tok) == spiece
  row = tok.encode(["a red dog"], 8)[0]
  assert row[0] == 2 and 1 in row and tok.decode(row[None]) == ["a red dog"]
  np.testing.assert_array_equal(tok.encode([""], 4), [[2, 1, 0, 0]])  # both specials, as Hugging Face writes them
  assert tok.pieces([PROMPT])[0][-1] == tok.sp.piece_to_id("\n")
  # vlmjax's own tokenizer (pad 0, unk 1, bos 2, eos 3), as an export of a vlmjax model leaves it there.
  own = tokenizer_lib.Tokenizer.train([" ".join(WORDS)] * 20, 40)
  own.save(str(path))
  assert type(hf_paligemma.read_tokenizer(str(path))) is tokenizer_lib.Tokenizer
  assert hf_paligemma.native_tokenizer(own) is None


def test_import_with_gemma_tokenizer_and_export_back(spiece, tmp_path):
  """A published table holds rows past its tokenizer's ids (<image>, padding to 64): the import drops them,
  brings the tokenizer under Gemma's conventions and PaliGemma's prefix-LM; the export writes the same tensors
  (less those rows) with Gemma's SentencePiece model as it was; a run trained with a causal prefix is refused."""
  padded = jiggled_params(vocab_size=330 + 64)
  interop.write("hf_paligemma", str(tmp_path / "hf"), PALIGEMMA_MODEL, padded)
  (tmp_path / "hf" / "tokenizer.model").write_bytes(spiece)
  bundle = export_lib.import_from("hf_paligemma", str(tmp_path / "hf"), str(tmp_path / "bundle"))
  loaded = Bundle(bundle).load()
  assert loaded.config.input.prefix_attention == "bidirectional" and loaded.config.model.name == "vlm"
  assert loaded.tokenizer.options() == dict(tokenizer_lib.GEMMA) and loaded.tokenizer.eos_id == 1
  assert loaded.params["decoder"]["embedding"].shape == (330, 32)
  out = export_lib.export_to("hf_paligemma", str(tmp_path / "again"), bundle=bundle)
  assert export_lib._is_export(out, "hf_paligemma")
  assert (tmp_path / "again" / "tokenizer.model").read_bytes() == spiece
  first, second = interop.read_state_dict(str(tmp_path / "hf")), interop.read_state_dict(out)
  assert set(first) == set(second)
  for key in first:
    want = first[key][:330] if key.endswith("embed_tokens.weight") else first[key]
    assert np.array_equal(want, second[key]), key
  with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
    config = json.load(f)
  assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (2, 1, 0)
  with open(os.path.join(bundle, "config.json"), encoding="utf-8") as f:
    causal = json.load(f)
  causal["input"]["prefix_attention"] = "causal"
  with open(os.path.join(bundle, "config.json"), "w", encoding="utf-8") as f:
    json.dump(causal, f)
  with pytest.raises(ValueError, match="input.prefix_attention is 'causal'"):
    export_lib.export_to("hf_paligemma", str(tmp_path / "third"), bundle=bundle)


# --- against transformers' PaliGemmaForConditionalGeneration (torch) ----------------------------------

@pytest.fixture(scope="module")
def hf_folder(spiece, tmp_path_factory):
  """A random transformers PaliGemma saved with Gemma's SentencePiece tokenizer.model: its table has 64 rows past
  the tokenizer's ids, its vision tower no head (as published), every weight moved off its init."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  config = transformers.PaliGemmaConfig(
      vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         image_size=IMAGE_SIZE, patch_size=8, vision_use_head=False),
      text_config=dict(model_type="gemma", vocab_size=330 + 64, hidden_size=32, intermediate_size=48,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                       rope_parameters={"rope_type": "default", "rope_theta": 100.0}),
      image_token_index=330, projection_dim=32, hidden_size=32, vocab_size=330 + 64)
  model = transformers.PaliGemmaForConditionalGeneration(config).eval()
  generator = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.2 * torch.randn(p.shape, generator=generator))
  folder = tmp_path_factory.mktemp("paligemma") / "hf"
  model.save_pretrained(str(folder))
  (folder / "tokenizer.model").write_bytes(spiece)
  return folder


def hf_processor(transformers, folder):
  tokenizer = transformers.GemmaTokenizer.from_pretrained(str(folder))
  tokenizer.padding_side = "right"
  images = transformers.SiglipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=[0.5] * 3,
                                             image_std=[0.5] * 3)
  images.image_seq_length = NUM_IMAGE_TOKENS
  return transformers.PaliGemmaProcessor(image_processor=images, tokenizer=tokenizer)


def png_files(folder, count):
  rng = np.random.default_rng(0)
  paths = []
  for i in range(count):  # at the model's size: neither side resizes
    paths.append(str(folder / f"{i}.png"))
    Image.fromarray(rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)).save(paths[-1])
  return paths


def vlmjax_examples(loaded, paths, suffixes):
  """Files and raw strings through the bundle's own tokenizer and vlmjax's training/eval preprocessing."""
  config = loaded.config
  config.input.prompt, config.input.max_text_len = PROMPT, 16
  base = pipeline.Preprocess(loaded.tokenizer, config.input.image_size, config.input.max_text_len)
  preprocess = pipeline.caption_preprocess(base, config, loaded.tokenizer, loaded.model)
  examples = []
  for path, suffix in zip(paths, suffixes):
    with open(path, "rb") as f:
      examples.append(preprocess.map({"image": f.read(), "caption": suffix}))
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def test_transformers_paligemma_imports_and_exports_with_the_same_logits(hf_folder, tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  bundle = export_lib.import_from("hf_paligemma", str(hf_folder), str(tmp_path / "bundle"))
  loaded = Bundle(bundle).load()
  paths = png_files(tmp_path, len(SUFFIXES))
  ours = vlmjax_examples(loaded, paths, SUFFIXES)
  got = np.asarray(loaded.model.apply({"params": loaded.params}, images=ours["image"], tokens=ours["tokens"],
                                      attention_mask=ours["attention_mask"])["logits"])

  processor = hf_processor(transformers, hf_folder)
  inputs = processor(images=[Image.open(p) for p in paths], text=["<image>" + PROMPT[:-1]] * len(paths),
                     suffix=SUFFIXES, padding="longest", return_tensors="pt")
  inputs.pop("labels")
  hf_model = transformers.PaliGemmaForConditionalGeneration.from_pretrained(str(hf_folder)).eval()
  with torch.no_grad():
    want = hf_model(**inputs).logits.numpy()[..., :330]  # the rows past the tokenizer's ids were dropped
  valid = inputs["attention_mask"].numpy().astype(bool)
  length = valid.shape[1]
  # The same sequences: <image>s, BOS, the prompt with its "\n", the suffix and EOS; type 0 is the bidirectional block.
  tokens = np.where(ours["tokens"] == IMAGE_TOKEN, 330, ours["tokens"])[:, :length]
  np.testing.assert_array_equal(np.where(valid, tokens, 0), np.where(valid, inputs["input_ids"].numpy(), 0))
  np.testing.assert_array_equal(ours["attention_mask"][:, :length][valid] == BIDIRECTIONAL,
                                inputs["token_type_ids"].numpy()[valid] == 0)
  diff = np.abs(got[:, :length] - want)[valid].max()
  assert diff <= TOL, diff

  out = export_lib.export_to("hf_paligemma", str(tmp_path / "back"), bundle=bundle)
  reloaded, info = transformers.PaliGemmaForConditionalGeneration.from_pretrained(out, output_loading_info=True)
  assert not any(info.values()), info
  assert transformers.GemmaTokenizer.from_pretrained(out)(SUFFIXES, add_special_tokens=False)["input_ids"] == \
      processor.tokenizer(SUFFIXES, add_special_tokens=False)["input_ids"]
  with torch.no_grad():
    again = reloaded.eval()(**inputs).logits.numpy()
  diff = np.abs(again - want)[valid].max()
  assert diff <= TOL, diff


def test_greedy_captions_are_transformers_generate(hf_folder, tmp_path):
  """`predict caption` on the imported bundle (prompt from its config, Gemma's BOS and EOS from its tokenizer)
  gives the tokens transformers' greedy `generate` does. The EOS row is steered so that EOS wins at the third
  step: both must stop there, at id 1."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from vlmjax import predict
  processor = hf_processor(transformers, hf_folder)
  paths = png_files(tmp_path, 1)
  inputs = processor(images=[Image.open(paths[0])], text=["<image>" + PROMPT[:-1]], return_tensors="pt")
  hf_model = transformers.PaliGemmaForConditionalGeneration.from_pretrained(str(hf_folder)).eval()
  greedy = dict(max_new_tokens=6, do_sample=False, eos_token_id=1, pad_token_id=0)
  with torch.no_grad():
    start = inputs["input_ids"].shape[1]
    sequence = hf_model.generate(**inputs, **greedy)
    step = start + 2  # the position whose output is the third new token
    types = torch.cat([inputs["token_type_ids"], torch.ones((1, step - start), dtype=torch.long)], 1)
    hidden = hf_model.model(input_ids=sequence[:, :step], pixel_values=inputs["pixel_values"], token_type_ids=types,
                            attention_mask=torch.ones_like(types)).last_hidden_state[0, -1]
    table = hf_model.model.language_model.embed_tokens.weight
    table[1] = table[int(sequence[0, step])] + 0.05 * hidden / hidden.norm()
    want = hf_model.generate(**inputs, **greedy)[0, start:].numpy()
  assert 1 in want, want
  folder = tmp_path / "steered"
  hf_model.save_pretrained(str(folder))
  (folder / "tokenizer.model").write_bytes((hf_folder / "tokenizer.model").read_bytes())
  bundle = export_lib.import_from("hf_paligemma", str(folder), str(tmp_path / "bundle"))
  with open(os.path.join(bundle, "config.json"), encoding="utf-8") as f:
    config = json.load(f)
  config["input"]["prompt"] = PROMPT
  with open(os.path.join(bundle, "config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f)
  predictor = predict.Predictor(bundle, devices=1, batch_size=2, progress=False)
  captions = predict.caption(predictor, paths, max_new_tokens=6)
  assert captions == [{"image": paths[0], "caption": predictor.tokenizer.decode(want[None])[0]}]
  # The tokens themselves: up to Gemma's EOS, then padding.
  prefix, kinds = generation_prefix(NUM_IMAGE_TOKENS, predictor.tokenizer.pieces([PROMPT])[0], 2, "bidirectional")
  ours = generate(predictor.model, predictor.params, prefix[None], jax.random.PRNGKey(0), 6,
                  images=predictor.read_image(paths[0])[None], prefix_mask=kinds[None], eos_id=1)
  np.testing.assert_array_equal(np.asarray(ours)[0, :len(want)], want)
  assert not np.asarray(ours)[0, len(want):].any()
