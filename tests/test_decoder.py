"""The causal decoder LM: KV-cache decoding, masks, grouped-query attention, tensor parallelism."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlmjax import sharding
from vlmjax.models import layers
from vlmjax.models.decoder import Decoder, LanguageModel, attention_mask_matrix
from vlmjax.models.generate import generate, prefix_kinds, sample_token

VOCAB = 64
LM = dict(variant="mu", width=32, depth=2, mlp_dim=64, num_heads=4, num_kv_heads=2)


def _lm(**overrides):
  model = LanguageModel(decoder={**LM, **overrides}, vocab_size=VOCAB)
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), jnp.ones((1, 8), jnp.int32))["params"])
  return model, params


def _recompute(model, params, prefix, rng, steps, temperature=0.0, top_k=0, min_length=0, repetition_penalty=1.0):
  """Generation without a cache: the whole sequence through the model for every new token, with
  the same RNG splits as `generate`; EOS masked before `min_length`, repeats penalised (CTRL)."""
  seq, kinds, out = prefix, prefix_kinds(prefix), []
  done = np.zeros(prefix.shape[0], bool)
  apply = jax.jit(model.apply)  # one compile per length: op-by-op dispatch would take minutes
  for step in range(steps):
    logits = np.array(apply({"params": params}, seq, kinds)["logits"][:, -1])
    generated = np.stack(out, 1) if out else np.zeros((len(logits), 0), int)
    for row, previous in zip(logits, generated):
      for token in set(int(t) for t in previous) - {0}:
        row[token] = row[token] / repetition_penalty if row[token] > 0 else row[token] * repetition_penalty
    if step < min_length:
      logits[:, 3] = -np.inf
    logits = jnp.asarray(logits)
    rng, sub = jax.random.split(rng)
    token = np.where(done, 0, np.asarray(sample_token(logits, sub, temperature, top_k)))
    done |= token == 3
    out.append(token)
    seq = jnp.concatenate([seq, token[:, None]], 1)
    kinds = jnp.concatenate([kinds, jnp.full((seq.shape[0], 1), 2, jnp.int32)], 1)
  return np.stack(out, 1)


@pytest.mark.parametrize("temperature,top_k,min_length,repetition_penalty",
                         [(0.0, 0, 0, 1.0), (1.0, 5, 0, 1.0), (0.0, 0, 4, 1.3)])
def test_kv_cache_decoding_equals_recomputing_the_sequence(temperature, top_k, min_length, repetition_penalty):
  model, params = _lm()
  # Row 2 is a shorter prompt, left-padded.
  prefix = jnp.array([[2, 7, 9, 11], [2, 8, 8, 30], [0, 0, 2, 5]])
  rng = jax.random.PRNGKey(3)
  steps = 10
  cached = jax.jit(lambda p, x, r: generate(model, p, x, r, steps, temperature, top_k, min_length=min_length,
                                            repetition_penalty=repetition_penalty))(params, prefix, rng)
  full = _recompute(model, params, prefix, rng, steps, temperature, top_k, min_length, repetition_penalty)
  np.testing.assert_array_equal(np.asarray(cached), full)
  assert len(np.unique(full)) > 2  # not a degenerate constant sequence


def test_generation_pads_after_eos():
  model, params = _lm()
  # Make EOS (3) the argmax after [2, 7] by pointing its (tied) embedding row along that hidden state.
  probe = model.apply({"params": params}, jnp.array([[2, 7]]))["hidden"][0, -1]
  embedding = params["decoder"]["embedding"]
  params["decoder"]["embedding"] = embedding.at[3].set(10.0 * probe / jnp.linalg.norm(probe))
  out = np.asarray(generate(model, params, jnp.array([[2, 7]]), jax.random.PRNGKey(0), 5))
  assert out[0, 0] == 3 and (out[0, 1:] == 0).all(), out


def test_padding_and_later_tokens_are_invisible():
  model, params = _lm()
  short = jnp.array([[2, 7, 9, 3]])
  padded = jnp.array([[2, 7, 9, 3, 0, 0, 0]])
  changed_later = jnp.array([[2, 7, 9, 3, 5, 6, 1]])
  a = model.apply({"params": params}, short)["logits"]
  b = model.apply({"params": params}, padded)["logits"][:, :4]
  c = model.apply({"params": params}, changed_later)["logits"][:, :4]
  np.testing.assert_allclose(b, a, atol=1e-5)
  np.testing.assert_allclose(c, a, atol=1e-5)


def test_attention_kinds():
  kinds = jnp.array([[1, 1, 1, 2, 2, 0]])
  mask = np.asarray(attention_mask_matrix(kinds))[0, 0]
  expected = np.array([
      [1, 1, 1, 0, 0, 0],   # the bidirectional block sees itself as a whole, not what follows
      [1, 1, 1, 0, 0, 0],
      [1, 1, 1, 0, 0, 0],
      [1, 1, 1, 1, 0, 0],   # causal tokens see the block and themselves
      [1, 1, 1, 1, 1, 0],
      [1, 1, 1, 1, 1, 0],   # padding is never a key
  ], bool)
  np.testing.assert_array_equal(mask, expected)
  # In the model: the first token's output depends on the third only inside a bidirectional block.
  model, params = _lm()
  for block_kinds, depends in (([1, 1, 1, 2], True), ([2, 2, 2, 2], False)):
    kinds = jnp.array([block_kinds])
    out = lambda t: model.apply({"params": params}, jnp.array([t]), kinds)["logits"][0, 0]
    moved = float(jnp.abs(out([2, 7, 9, 11]) - out([2, 7, 20, 11])).max())
    assert (moved > 1e-4) == depends, (block_kinds, moved)


def test_grouped_query_attention_equals_multi_head_with_shared_keys():
  """GQA with 2 key/value heads for 4 query heads = MHA whose heads 0,1 share kv head 0 and 2,3
  share kv head 1."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 32))
  gqa = layers.Attention(num_heads=4, num_kv_heads=2, use_rope=True, use_bias=False)
  mha = layers.Attention(num_heads=4, use_rope=True, use_bias=False)
  p = nn.meta.unbox(gqa.init(jax.random.PRNGKey(1), x))["params"]
  mha_params = dict(p, key={"kernel": jnp.repeat(p["key"]["kernel"], 2, axis=1)},
                    value={"kernel": jnp.repeat(p["value"]["kernel"], 2, axis=1)})
  mask = nn.make_causal_mask(jnp.ones((2, 5)), dtype=jnp.bool_)
  np.testing.assert_allclose(mha.apply({"params": mha_params}, x, mask), gqa.apply({"params": p}, x, mask),
                             atol=1e-5)


def test_tensor_parallel_logits_equal_single_device():
  """On 8 fake devices (data=2, tensor=4: heads, MLP and vocabulary split 4 ways) the decoder's logits
  equal the single-device logits."""
  model = LanguageModel(decoder=dict(variant="mu", width=32, depth=2, mlp_dim=64, num_heads=8,
                                     num_kv_heads=4, head_dim=8), vocab_size=VOCAB)
  tokens = jax.random.randint(jax.random.PRNGKey(1), (4, 12), 1, VOCAB)
  init = lambda rng: model.init(rng, tokens)["params"]
  single = nn.meta.unbox(init(jax.random.PRNGKey(0)))
  expected = model.apply({"params": single}, tokens)["logits"]

  mesh = sharding.make_mesh(dict(data=2, fsdp=1, tensor=4))
  shardings = sharding.logical_shardings(jax.eval_shape(init, jax.random.PRNGKey(0)), mesh,
                                         sharding.DEFAULT_RULES)
  with jax.set_mesh(mesh):
    params = jax.jit(lambda r: nn.meta.unbox(init(r)), out_shardings=shardings)(jax.random.PRNGKey(0))
    logits = jax.jit(lambda p, t: model.apply({"params": p}, t)["logits"])(
        params, sharding.global_batch(np.asarray(tokens), mesh))
  blocks = params["decoder"]["layers"]["blocks"]
  for leaf in (blocks["attn"]["query"]["kernel"], blocks["attn"]["key"]["kernel"],
               blocks["mlp"]["fc1"]["kernel"], params["decoder"]["embedding"]):
    assert "tensor" in jax.tree.leaves(tuple(leaf.sharding.spec)), leaf.sharding.spec
    assert leaf.addressable_shards[0].data.size * 4 == leaf.size
  np.testing.assert_allclose(np.asarray(logits), np.asarray(expected), rtol=0, atol=2e-5)


@pytest.mark.parametrize("kwargs,message", [
    (dict(pdrop_layers=(1,), pdrop_ratios=()), "same length"),
    (dict(pdrop_layers=(2,), pdrop_ratios=(0.5,)), "increase strictly"),
    (dict(pdrop_layers=(1,), pdrop_ratios=(1.5,)), r"\(0, 1\]"),
])
def test_bad_pyramid_drop_settings_fail_clearly(kwargs, message):
  model = Decoder(width=32, depth=2, mlp_dim=64, num_heads=4, vocab_size=VOCAB, **kwargs)
  with pytest.raises(ValueError, match=message):
    model.init(jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32))


def _exhaustive(model, params, prefix, steps, length_penalty, min_length, repetition_penalty, vocab):
  """Every continuation of each prefix up to `steps` tokens (ending at EOS or at `steps`), scored
  by recomputing the whole sequence without a cache -> (best tokens [B, steps], best score [B])."""
  import itertools  # pylint: disable=import-outside-toplevel
  from vlmjax.models.generate import penalise_repeats  # pylint: disable=import-outside-toplevel
  apply = jax.jit(model.apply)
  best_tokens, best_scores = [], []
  for row in np.asarray(prefix):
    best = (-np.inf, None)
    for n in range(1, steps + 1):
      for tail in itertools.product(range(vocab), repeat=n):
        if 3 in tail[:-1] or (n < steps and tail[-1] != 3):
          continue  # EOS ends a hypothesis; one without EOS only at the full length
        seq = np.concatenate([row, tail])[None]
        kinds = np.concatenate([np.asarray(prefix_kinds(jnp.asarray(row[None]))), np.full((1, n), 2)], 1)
        logits = apply({"params": params}, jnp.asarray(seq), jnp.asarray(kinds))["logits"][0, len(row) - 1:-1]
        total = 0.0
        for t in range(n):
          generated = np.array([list(tail[:t]) + [0] * (steps - t)])
          logp = jax.nn.log_softmax(penalise_repeats(logits[t:t + 1], jnp.asarray(generated), repetition_penalty))[0]
          if t < min_length:
            logp = logp.at[3].set(-np.inf)
          total += float(logp[tail[t]])
        score = total / n ** length_penalty
        if score > best[0]:
          best = (score, list(tail) + [0] * (steps - n))
    best_scores.append(best[0])
    best_tokens.append(best[1])
  return np.array(best_tokens), np.array(best_scores)


@pytest.mark.parametrize("length_penalty,min_length,repetition_penalty", [(0.0, 0, 1.0), (1.0, 2, 1.5)])
def test_beam_search_equals_exhaustive_search(length_penalty, min_length, repetition_penalty):
  """With as many beams as there are hypotheses, beam search (KV cache, reordered every step) finds
  the exhaustive search's best sequence and score on a 5-token vocabulary."""
  from vlmjax.models.generate import beam_search  # pylint: disable=import-outside-toplevel
  vocab, steps = 5, 3
  model = LanguageModel(decoder=LM, vocab_size=vocab)
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(4), jnp.ones((1, 8), jnp.int32))["params"])
  # Make EOS likely enough that finished and unfinished hypotheses compete.
  params["decoder"]["embedding"] = params["decoder"]["embedding"].at[3].multiply(3.0)
  prefix = jnp.array([[2, 4, 1], [0, 2, 4]])  # the second left-padded
  tokens, scores = jax.jit(lambda p, x: beam_search(model, p, x, steps, beam_size=vocab ** (steps - 1),
                                                    length_penalty=length_penalty, min_length=min_length,
                                                    repetition_penalty=repetition_penalty))(params, prefix)
  want_tokens, want_scores = _exhaustive(model, params, prefix, steps, length_penalty, min_length,
                                         repetition_penalty, vocab)
  np.testing.assert_allclose(np.asarray(scores), want_scores, rtol=1e-4)
  np.testing.assert_array_equal(np.asarray(tokens), want_tokens)
  if min_length:
    assert (np.asarray(tokens)[:, :min_length] != 3).all()


def test_beam_search_with_one_beam_is_greedy():
  from vlmjax.models.generate import beam_search  # pylint: disable=import-outside-toplevel
  model, params = _lm()
  prefix = jnp.array([[2, 7, 9, 11], [0, 0, 2, 5]])
  tokens, _ = beam_search(model, params, prefix, 6, beam_size=1)
  greedy = generate(model, params, prefix, jax.random.PRNGKey(0), 6)
  np.testing.assert_array_equal(np.asarray(tokens), np.asarray(greedy))
