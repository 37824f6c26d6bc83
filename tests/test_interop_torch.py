"""Parity with the real libraries: vlmjax exports loaded by open_clip / transformers give the same
embeddings and logits (max abs difference <= 1e-4, fp32), and their randomly initialised models
imported into vlmjax give theirs. Small random models only; nothing is downloaded. Skipped without
the `interop` extra (pip install -e '.[interop]'; `make test-interop`)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
oc = pytest.importorskip("open_clip")
transformers = pytest.importorskip("transformers")

from PIL import Image  # noqa: E402

from test_interop import (CLIP_MODEL, GEMMA_LM, IMAGES, LM_MODEL, TOKENS, VOCAB, clip_model, clip_outputs,  # noqa: E402
                          clip_params, lm_setup)  # clip_params: the shared fixture
from vlmjax import interop  # noqa: E402
from vlmjax.data import pipeline  # noqa: E402
from vlmjax.models.decoder import LanguageModel  # noqa: E402

TOL = 1e-4
OPENAI_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
OPENAI_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
RNG = np.random.default_rng(1)
torch.set_num_threads(1)


def jiggle_torch(module, seed=0):
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in module.parameters():
      p.add_(0.2 * torch.randn(p.shape, generator=generator))
  return module.eval()


def nchw(images):
  return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def max_diff(a, b):
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def argmax_pooled_tokens(batch=3, length=16):
  """Rows whose end-of-text is the largest id (CLIP's tokenizer; open_clip pools at the argmax)."""
  out = np.zeros((batch, length), np.int64)
  for i in range(batch):
    n = 4 + 5 * i
    out[i, :n] = list(RNG.integers(1, VOCAB - 1, n - 1)) + [VOCAB - 1]
  return out


def test_open_clip_loads_an_export_with_the_same_embeddings(clip_params, tmp_path):
  interop.write("open_clip", str(tmp_path), CLIP_MODEL, clip_params)
  model, _, preprocess = oc.create_model_and_transforms("local-dir:" + str(tmp_path))
  model.eval()
  with torch.no_grad():
    image = model.encode_image(nchw(IMAGES), normalize=True).numpy()
    text = model.encode_text(torch.from_numpy(TOKENS).long(), normalize=True).numpy()
  want_image, want_text = clip_outputs(clip_params)
  assert max_diff(image, want_image) <= TOL and max_diff(text, want_text) <= TOL
  assert abs(float(model.logit_scale.detach()) - float(clip_params["logit_scale"])) < 1e-6
  # open_clip's own transforms (from the exported preprocess_cfg) give vlmjax's pixels for a file.
  picture = Image.fromarray(RNG.integers(0, 256, (40, 30, 3), dtype=np.uint8))
  ours = pipeline.Preprocess(None, 16, 16).augment(picture, None)
  assert max_diff(preprocess(picture).numpy().transpose(1, 2, 0), ours) < 1e-5


def test_open_clip_model_imports_with_the_same_embeddings():
  cfg = {"embed_dim": 16, "quick_gelu": True,
         "vision_cfg": {"image_size": 16, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8,
                        "mlp_ratio": 2.0},
         "text_cfg": {"context_length": 16, "vocab_size": VOCAB, "width": 32, "heads": 4, "layers": 2,
                      "mlp_ratio": 2.0}}
  model = jiggle_torch(oc.model.CLIP(**cfg))
  tokens = argmax_pooled_tokens()
  pixels = ((IMAGES + 1) / 2 - OPENAI_MEAN) / OPENAI_STD  # what open_clip's OpenAI preprocessing gives
  with torch.no_grad():
    want_image = model.encode_image(nchw(pixels.astype(np.float32)), normalize=True).numpy()
    want_text = model.encode_text(torch.from_numpy(tokens), normalize=True).numpy()
  model_config, params = interop.open_clip.load(model.state_dict(), {"model_cfg": cfg})
  out = clip_model(model_config).apply({"params": params}, images=IMAGES, texts=tokens.astype(np.int32))
  assert max_diff(out["image_embeds"], want_image) <= TOL
  assert max_diff(out["text_embeds"], want_text) <= TOL


def test_hf_clip_loads_an_export_with_the_same_embeddings(clip_params, tmp_path):
  interop.write("hf_clip", str(tmp_path), CLIP_MODEL, clip_params)
  model = transformers.CLIPModel.from_pretrained(str(tmp_path)).eval()
  with torch.no_grad():
    out = model(input_ids=torch.from_numpy(TOKENS).long(), attention_mask=torch.from_numpy(TOKENS != 0).long(),
                pixel_values=nchw(IMAGES))
  want_image, want_text = clip_outputs(clip_params)
  assert max_diff(out.image_embeds.numpy(), want_image) <= TOL
  assert max_diff(out.text_embeds.numpy(), want_text) <= TOL


def test_hf_clip_model_imports_with_the_same_embeddings():
  config = transformers.CLIPConfig(
      text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       vocab_size=VOCAB, max_position_embeddings=16, eos_token_id=VOCAB - 1, bos_token_id=1,
                       pad_token_id=0),
      vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         image_size=16, patch_size=8),
      projection_dim=16)
  model = jiggle_torch(transformers.CLIPModel(config))
  tokens = argmax_pooled_tokens()
  pixels = (((IMAGES + 1) / 2 - OPENAI_MEAN) / OPENAI_STD).astype(np.float32)
  with torch.no_grad():
    want = model(input_ids=torch.from_numpy(tokens), attention_mask=torch.from_numpy(tokens != 0).long(),
                 pixel_values=nchw(pixels))
  model_config, params = interop.hf_clip.load(model.state_dict(), config.to_dict())
  out = clip_model(model_config).apply({"params": params}, images=IMAGES, texts=tokens.astype(np.int32))
  assert max_diff(out["image_embeds"], want.image_embeds.numpy()) <= TOL
  assert max_diff(out["text_embeds"], want.text_embeds.numpy()) <= TOL


def test_hf_llama_loads_an_export_with_the_same_logits(tmp_path):
  model, params = lm_setup()
  interop.write("hf_llama", str(tmp_path), LM_MODEL, params)
  hf = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path)).eval()
  tokens = RNG.integers(1, VOCAB, (2, 8))
  with torch.no_grad():
    logits = hf(input_ids=torch.from_numpy(tokens)).logits.numpy()
  want = model.apply({"params": params}, tokens.astype(np.int32))["logits"]
  assert max_diff(logits, want) <= TOL


def test_hf_llama_model_imports_with_the_same_logits():
  config = transformers.LlamaConfig(
      vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
      num_key_value_heads=2, rms_norm_eps=1e-5, tie_word_embeddings=False,
      rope_parameters={"rope_type": "default", "rope_theta": 500.0})
  hf = jiggle_torch(transformers.LlamaForCausalLM(config))
  tokens = RNG.integers(1, VOCAB, (2, 8))
  with torch.no_grad():
    want = hf(input_ids=torch.from_numpy(tokens)).logits.numpy()
  decoder, params = interop.hf_llama.load(hf.state_dict(), config.to_dict())
  got = LanguageModel(decoder=decoder, vocab_size=VOCAB).apply({"params": {"decoder": params}},
                                                               tokens.astype(np.int32))["logits"]
  assert max_diff(got, want) <= TOL


def gemma_logits(hf, tokens):
  with torch.no_grad():
    return hf(input_ids=torch.from_numpy(tokens)).logits.numpy()


def test_hf_gemma_loads_an_export_with_the_same_logits(tmp_path):
  model, params = lm_setup(GEMMA_LM)
  interop.write("hf_llama", str(tmp_path), GEMMA_LM, params)
  hf = transformers.GemmaForCausalLM.from_pretrained(str(tmp_path)).eval()
  assert type(hf.config).__name__ == "GemmaConfig" and hf.config.hidden_act == "gelu_pytorch_tanh"
  # vlmjax's norm scale s is Gemma's 1 + w.
  assert max_diff(hf.model.norm.weight.detach().numpy() + 1, params["decoder"]["final_norm"]["scale"]) < 1e-6
  tokens = RNG.integers(1, VOCAB, (2, 8))
  want = model.apply({"params": params}, tokens.astype(np.int32))["logits"]
  assert max_diff(gemma_logits(hf, tokens), want) <= TOL


def test_hf_gemma_model_imports_with_the_same_logits():
  config = transformers.GemmaConfig(
      vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
      num_key_value_heads=1, head_dim=16, rms_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh",
      rope_parameters={"rope_type": "default", "rope_theta": 100.0})
  hf = jiggle_torch(transformers.GemmaForCausalLM(config))  # every norm weight w moved off 0: (1 + w) matters
  assert min(float(m.weight.detach().abs().min()) for n, m in hf.named_modules() if n.endswith("norm")) > 0
  tokens = RNG.integers(1, VOCAB, (2, 8))
  want = gemma_logits(hf, tokens)
  decoder, params = interop.hf_llama.load(hf.state_dict(), config.to_dict())
  assert decoder["scale_token_embeddings"] and decoder["tie_embeddings"] and decoder["activation"] == "gelu_tanh"
  got = LanguageModel(decoder=decoder, vocab_size=VOCAB).apply({"params": {"decoder": params}},
                                                               tokens.astype(np.int32))["logits"]
  assert max_diff(got, want) <= TOL
