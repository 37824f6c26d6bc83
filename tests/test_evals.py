"""Evaluators: recall@k, zero-shot classification and retrieval on the tiny split with oracle
embedders (so the expected numbers are known exactly), and the real jitted Embedder."""
import hashlib

import jax
import numpy as np
import pytest

from conftest import single_device_mesh, tiny_config
from vlmjax import evaluate, experiment, sharding, trainer
from vlmjax.data import shapes
from vlmjax.evals.common import Embedder, EvalContext
from vlmjax.evals.retrieval import Retrieval, recall_at_k
from vlmjax.evals.zeroshot import ZeroShot

# --- recall@k -------------------------------------------------------------------------------------


def test_recall_at_k_hand_made():
  scores = np.array([
      [0.9, 0.1, 0.2, 0.3],   # correct item ranked 1st
      [0.8, 0.5, 0.7, 0.1],   # 3rd
      [0.1, 0.2, 0.3, 0.0],   # 1st
      [0.4, 0.5, 0.6, 0.1],   # 4th (last)
  ])
  assert recall_at_k(scores, ks=(1, 2, 3, 4)) == {1: 0.5, 2: 0.5, 3: 0.75, 4: 1.0}
  # The other direction is the transpose: column i's correct row is i.
  # Column ranks 1st, 1st (a tie with row 3 counts for it), 3rd, 2nd.
  assert recall_at_k(scores.T, ks=(1, 2, 3)) == {1: 0.5, 2: 0.75, 3: 1.0}


def test_recall_at_k_ties_do_not_push_the_correct_item_down():
  scores = np.array([[0.5, 0.5], [0.2, 0.2]])
  assert recall_at_k(scores, ks=(1,)) == {1: 1.0}


# --- oracle embedders on the real tiny test split --------------------------------------------------


def _key(x) -> str:
  return hashlib.sha1(np.ascontiguousarray(x).tobytes()).hexdigest()


class OracleEmbedder:
  """Embeds images and texts by looking up what they are, as a perfect model would."""

  def __init__(self, tokenizer, image_vectors: dict, text_vector):
    self.tokenizer, self.image_vectors, self.text_vector = tokenizer, image_vectors, text_vector
    self.images_seen = 0

  def embed_images(self, images):
    self.images_seen += len(images)
    return np.stack([self.image_vectors[_key(x)] for x in images]).astype(np.float32)

  def embed_texts(self, tokens):
    return np.stack([self.text_vector(t) for t in self.tokenizer.decode(tokens)]).astype(np.float32)


@pytest.fixture(scope="module")
def eval_config(tiny_data_dir):
  return tiny_config(tiny_data_dir)


@pytest.fixture(scope="module")
def test_split(eval_config, tiny_tokenizer):
  """Every preprocessed test image (by content hash) -> (index, label, caption)."""
  ctx = EvalContext(eval_config.data, eval_config.input, tiny_tokenizer, None, 16)
  source, batches = ctx.batches("test", passthrough=("label",))
  out, index = {}, 0
  for batch in batches:
    for image, label in zip(batch["image"], batch["label"]):
      out[_key(image)] = (index, int(label), source[index]["caption"])
      index += 1
  assert index == len(source) == 128
  return out


def _class_of_text(text):
  names = [c for c in shapes.CLASS_NAMES if c in text]
  assert len(names) == 1, (text, names)
  return shapes.CLASS_NAMES.index(names[0])


def _one_hot(k, n=len(shapes.CLASS_NAMES)):
  v = np.zeros(n)
  v[k] = 1.0
  return v


def _run_zeroshot(eval_config, tokenizer, test_split, image_vector):
  """ZeroShot on 'test' with class texts embedded one-hot and labelled images as image_vector(label);
  multi-object images (label -1) get a vector equally close to several classes."""
  vectors = {k: image_vector(label) if label >= 0 else np.full(len(shapes.CLASS_NAMES), 1 / 6)
             for k, (_, label, _) in test_split.items()}
  embedder = OracleEmbedder(tokenizer, vectors, lambda text: _one_hot(_class_of_text(text)))
  ctx = EvalContext(eval_config.data, eval_config.input, tokenizer, embedder, 16)
  return ZeroShot(name="zs", split="test").run(ctx)


def test_zeroshot_with_oracle_embedder(eval_config, tiny_tokenizer, test_split):
  labelled = sum(label >= 0 for _, label, _ in test_split.values())
  assert 0 < labelled < len(test_split)  # the split mixes single- and multi-object scenes
  results = _run_zeroshot(eval_config, tiny_tokenizer, test_split, _one_hot)
  assert results == {"zs/top1": 1.0, "zs/top5": 1.0, "zs/mean_per_class_recall": 1.0, "zs/count": labelled}


def test_zeroshot_top1_and_top5_differ(eval_config, tiny_tokenizer, test_split):
  """Images look most like the next class, second most like their own: top-1 0, top-5 1."""
  n = len(shapes.CLASS_NAMES)
  results = _run_zeroshot(eval_config, tiny_tokenizer, test_split,
                          lambda k: _one_hot((k + 1) % n) + 0.5 * _one_hot(k))
  assert results["zs/top1"] == 0.0
  assert results["zs/top5"] == 1.0
  # Own class ranked 6th: outside the top 5.
  results = _run_zeroshot(eval_config, tiny_tokenizer, test_split,
                          lambda k: sum((1 - 0.1 * j) * _one_hot((k + 1 + j) % n) for j in range(5))
                          + 0.3 * _one_hot(k))
  assert results["zs/top1"] == 0.0 and results["zs/top5"] == 0.0


def test_zeroshot_unseen_split_uses_held_out_classes(eval_config, tiny_tokenizer):
  ctx = EvalContext(eval_config.data, eval_config.input, tiny_tokenizer, None, 16)
  source, batches = ctx.batches("test_unseen", passthrough=("label",))
  labels = np.concatenate([b["label"] for b in batches])
  unseen = {shapes.CLASS_NAMES.index(f"{c} {s}") for c, s in shapes.UNSEEN}
  assert set(labels.tolist()) <= unseen


def test_retrieval_with_oracle_embedder(eval_config, tiny_tokenizer, test_split):
  # A text is what the tokenizer keeps of a caption (max_text_len truncates the long ones); two
  # records with the same text tie, and ties count for the correct item.
  max_len = eval_config.input.max_text_len
  kept = {caption: tiny_tokenizer.decode(tiny_tokenizer.encode([caption], max_len))[0]
          for _, _, caption in test_split.values()}
  texts = sorted(set(kept.values()))
  rng = np.random.default_rng(0)
  basis = np.linalg.qr(rng.standard_normal((len(texts), len(texts))))[0]
  caption_vector = dict(zip(texts, basis))
  vectors = {k: caption_vector[kept[caption]] for k, (_, _, caption) in test_split.items()}
  embedder = OracleEmbedder(tiny_tokenizer, vectors, lambda text: caption_vector[text])
  ctx = EvalContext(eval_config.data, eval_config.input, tiny_tokenizer, embedder, 16)
  results = Retrieval(name="ret", split="test", num_examples=40).run(ctx)
  assert embedder.images_seen == 40  # only the first num_examples records
  recalls = {f"ret/{d}_R@{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)}
  assert set(results) == recalls | {"ret/images", "ret/texts"}
  assert results["ret/images"] == results["ret/texts"] == 40
  assert all(results[k] == 1.0 for k in recalls), results


def test_format_table():
  table = evaluate.format_table({"zs/top1": 0.5, "zs/count": 64})
  lines = table.splitlines()
  assert len(lines) == 4
  assert "zs/top1" in lines[2] and "0.5000" in lines[2]
  assert "zs/count" in lines[3] and "64" in lines[3]



def test_compare_table(tmp_path):
  import json
  for name, results in {"clip": {"zs/top1": 0.25, "comp/count": 0.5}, "siglip": {"zs/top1": 0.375}}.items():
    (tmp_path / name).mkdir()
    (tmp_path / name / "eval_results.json").write_text(json.dumps(results))
  lines = evaluate.compare_table([str(tmp_path / "clip"), str(tmp_path / "siglip")]).splitlines()
  assert lines[0] == "| run | zs/top1 | comp/count |"
  assert lines[2:] == ["| clip | 25.0 | 50.0 |", "| siglip | 37.5 | — |"]
  with pytest.raises(FileNotFoundError, match="nope/eval_results.json' does not exist"):
    evaluate.compare_table([str(tmp_path / "nope")])


# --- the real embedder ----------------------------------------------------------------------------


@pytest.mark.parametrize("mesh_kind", ["single", "2x2x2"])
def test_embedder_matches_model_apply(eval_config, mesh_kind):
  """Embedder pads the last batch and runs sharded; results equal a plain apply, row for row."""
  mesh = single_device_mesh() if mesh_kind == "single" else sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
  built = experiment.build(eval_config, 64, mesh=mesh, validate=False)
  model, params = built.model, built.init_state(0)[0]["params"]
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (20, 32, 32, 3)).astype(np.float32)
  tokens = np.zeros((20, 16), np.int32)
  tokens[:, 0] = 2
  tokens[:, 1:6] = rng.integers(4, 64, (20, 5))
  tokens[:, 6] = 3
  embedder = Embedder(model, params, mesh, batch_size=16)
  got_images, got_texts = embedder.embed_images(images), embedder.embed_texts(tokens)
  host_params = jax.device_get(params)
  ref = model.apply({"params": host_params}, images=images, texts=tokens)
  assert got_images.shape == (20, 32) and got_texts.shape == (20, 32)
  np.testing.assert_allclose(got_images, np.asarray(ref["image_embeds"]), atol=2e-5)
  np.testing.assert_allclose(got_texts, np.asarray(ref["text_embeds"]), atol=2e-5)
  np.testing.assert_allclose(np.linalg.norm(got_images, axis=1), 1.0, atol=1e-5)


def test_retrieval_detects_mismatched_pairs(eval_config, tiny_tokenizer, test_split):
  """Image i embedded like caption i+1: retrieval must collapse (R@1 far below 1)."""
  by_index = {index: (key, caption) for key, (index, _, caption) in test_split.items()}
  max_len = eval_config.input.max_text_len
  kept = lambda caption: tiny_tokenizer.decode(tiny_tokenizer.encode([caption], max_len))[0]
  texts = sorted({kept(caption) for _, caption in by_index.values()})
  basis = np.linalg.qr(np.random.default_rng(1).standard_normal((len(texts), len(texts))))[0]
  caption_vector = dict(zip(texts, basis))
  n = len(by_index)
  vectors = {by_index[i][0]: caption_vector[kept(by_index[(i + 1) % n][1])] for i in range(n)}
  embedder = OracleEmbedder(tiny_tokenizer, vectors, lambda text: caption_vector[text])
  ctx = EvalContext(eval_config.data, eval_config.input, tiny_tokenizer, embedder, 16)
  results = Retrieval(name="ret", split="test", num_examples=40).run(ctx)
  assert results["ret/image_to_text_R@1"] < 0.5 and results["ret/text_to_image_R@1"] < 0.5, results
