"""Character-level text: SentencePiece's char model, the recurrent text tower, and the
sentence-similarity evaluator."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from conftest import tiny_config
from vlmjax import train as train_lib
from vlmjax.config import ConfigError
from vlmjax.data.tokenizer import Tokenizer, TokenizerError
from vlmjax.evals import sentence_similarity as sts
from vlmjax.models.text_rnn import TextGRU

MESH = dict(data=1, fsdp=-1, tensor=1)


def test_char_tokenizer_has_one_piece_per_character():
  texts = ["a red circle.", "ein großer Kreis.", "une étoile verte."]
  tokenizer = Tokenizer.train(texts, 64, "char")
  characters = set("".join(texts).replace(" ", "▁").lower()) | {"▁"}
  assert tokenizer.vocab_size == 4 + len(characters)  # pad, unk, bos, eos, then one per character
  pieces = tokenizer.pieces(["a red star."])[0]
  assert len(pieces) == len("▁a▁red▁star.")  # one piece per character (an unseen 's': unk)
  assert tokenizer.decode(tokenizer.encode(["ein großer Kreis."], 32)) == ["ein großer kreis."]
  with pytest.raises(TokenizerError, match="tokenizer.model_type 'word'"):
    Tokenizer.train(texts, 64, "word")


def _gru_reference(params, tokens):
  """The tower in numpy: GRU equations as flax's GRUCell states them, each direction over the
  text's own tokens, then the attention pooling."""
  sigmoid = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
  p = jax.tree.map(np.asarray, params)

  def run(cell, xs):
    h = np.zeros(cell["hr"]["kernel"].shape[0])
    out = []
    for x in xs:
      r = sigmoid(x @ cell["ir"]["kernel"] + cell["ir"]["bias"] + h @ cell["hr"]["kernel"])
      z = sigmoid(x @ cell["iz"]["kernel"] + cell["iz"]["bias"] + h @ cell["hz"]["kernel"])
      n = np.tanh(x @ cell["in"]["kernel"] + cell["in"]["bias"] + r * (h @ cell["hn"]["kernel"] + cell["hn"]["bias"]))
      h = (1 - z) * n + z * h
      out.append(h)
    return np.stack(out)

  pooled = []
  for row in tokens:
    n = int((row != 0).sum())
    x = p["token_embed"]["embedding"][row[:n]]
    x = np.concatenate([run(p["gru_0_forward"], x), run(p["gru_0_backward"], x[::-1])[::-1]], axis=1)
    scores = np.tanh(x @ p["pool_hidden"]["kernel"] + p["pool_hidden"]["bias"]) @ p["pool_out"]["kernel"] + \
        p["pool_out"]["bias"]
    weights = np.exp(scores - scores.max(0)) / np.exp(scores - scores.max(0)).sum(0)
    pooled.append((weights * x).sum(0))
  return np.stack(pooled)


def test_gru_tower_matches_numpy_and_ignores_padding():
  import flax.linen as nn
  tower = TextGRU(vocab_size=20, width=8, depth=1, max_len=12, attention_hidden=6)
  tokens = np.array([[2, 5, 6, 7, 3, 0, 0, 0], [2, 9, 3, 0, 0, 0, 0, 0]])
  params = nn.meta.unbox(tower.init(jax.random.PRNGKey(0), tokens)["params"])
  pooled, states, mask = tower.apply({"params": params}, jnp.asarray(tokens))
  np.testing.assert_allclose(pooled, _gru_reference(params, tokens), atol=1e-5)
  assert states.shape == (2, 8, 8) and (np.asarray(states)[~np.asarray(mask)] == 0).all()
  longer = np.concatenate([tokens, np.zeros((2, 4), int)], axis=1)
  np.testing.assert_allclose(tower.apply({"params": params}, jnp.asarray(longer))[0], pooled, atol=1e-6)


def test_scene_overlap_and_spearman():
  assert sts.scene_overlap(["red circle"], ["red circle"]) == 1.0
  assert sts.scene_overlap(["red circle"], ["blue star"]) == 0.0
  # A red circle shares its colour with a red star and nothing with a blue star.
  assert sts.scene_overlap(["red circle"], ["red star"]) == pytest.approx(1 / 3)
  assert sts.scene_overlap(["red circle", "blue star"], ["red circle"]) == pytest.approx((1 / 2 + 1 / 2 + 1 / 2) / 3)
  pairs = sts.random_pairs(10, 500, 0)
  assert (pairs[:, 0] != pairs[:, 1]).all() and pairs.min() >= 0 and pairs.max() < 10
  assert stats.spearmanr([1, 2, 3], [1, 4, 9]).statistic == 1.0


def test_char_gru_run(tiny_data_dir, tmp_path):
  """A CLIP run on characters with the GRU tower trains (sharded over the 8 test devices) and reports
  the sentence similarity; a bad tower kind or model type is a one-line config error."""
  config = tiny_config(tiny_data_dir, total_steps=3, mesh=MESH, **{
      "tokenizer.model_type": "char", "tokenizer.vocab_size": 64, "input.max_text_len": 112,
      "model.text": dict(kind="gru", width=16, depth=1, max_len=112),
      "evals": dict(sts=dict(type="sentence_similarity", split="test", num_pairs=200))})
  results = train_lib.train(config, str(tmp_path / "run"))
  assert -1.0 <= results["sts/spearman"] <= 1.0 and results["sts/pairs"] == 200
  tokenizer = Tokenizer.load(str(tmp_path / "run" / "tokenizer.model"))
  assert tokenizer.vocab_size < 64 and all(len(tokenizer.sp.id_to_piece(i)) == 1 for i in range(4, tokenizer.vocab_size))
  with pytest.raises(ConfigError, match="unknown text_tower 'lstm'; known: gru, transformer"):
    train_lib.train(tiny_config(tiny_data_dir, mesh=MESH, **{"model.text": dict(kind="lstm")}), str(tmp_path / "a"))
  with pytest.raises(ConfigError, match="'tokenizer.model_type' 'word' is not one of bpe, char"):
    train_lib.train(tiny_config(tiny_data_dir, mesh=MESH, **{"tokenizer.model_type": "word"}), str(tmp_path / "b"))
  with pytest.raises(ConfigError, match="model.text: unknown key 'mlp_dim'|mlp_dim"):
    train_lib.train(tiny_config(tiny_data_dir, mesh=MESH, **{"model.text": dict(kind="gru", mlp_dim=4)}),
                    str(tmp_path / "c"))
