"""The VLM: example layout, masking of the loss, KV-cache captioning, projectors, end-to-end training."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import single_device_mesh, tiny_config
from vlmjax import experiment, sharding
from vlmjax.batch_spec import caption_sequence
from vlmjax.data.tokenizer import Tokenizer
from vlmjax.run import RunDir, read_metrics
from vlmjax.models.decoder import IMAGE_TOKEN
from vlmjax.models.generate import generate, prefix_kinds
from vlmjax.models.vlm import VLM
from vlmjax.objectives.ntp import ntp_loss
from vlmjax.train import train

VOCAB = 48
IMAGE = dict(variant="mu/8", width=32, depth=1, mlp_dim=64, num_heads=2)
DECODER = dict(variant="mu", width=32, depth=2, mlp_dim=64, num_heads=4, num_kv_heads=2)
TINY_VLM = dict(name="vlm", image=IMAGE, decoder=DECODER, projector=dict(kind="mlp"))


def _vlm(**overrides):
  model = VLM(**{"image": IMAGE, "decoder": DECODER, "vocab_size": VOCAB, **overrides})
  n = model.num_image_tokens(32)
  images = jax.random.uniform(jax.random.PRNGKey(5), (3, 32, 32, 3), minval=-1, maxval=1)
  captions = [[2, 7, 9, 11, 3, 0, 0, 0], [2, 8, 3, 0, 0, 0, 0, 0], [2, 5, 6, 7, 8, 9, 3, 0]]
  examples = [caption_sequence(np.array(c), n, (4, 5)) for c in captions]
  batch = {k: jnp.asarray(np.stack([e[k] for e in examples])) for k in examples[0]}
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), images, batch["tokens"])["params"])
  return model, params, images, batch


def test_caption_sequence_layout():
  out = caption_sequence(np.array([2, 7, 9, 3, 0, 0]), 3, (5,))
  np.testing.assert_array_equal(out["tokens"], [IMAGE_TOKEN] * 3 + [2, 5, 7, 9, 3, 0, 0])
  # Position t predicts token t+1; only the caption pieces and its EOS are supervised.
  np.testing.assert_array_equal(out["targets"], [0, 0, 0, 0, 7, 9, 3, 0, 0, 0])
  np.testing.assert_array_equal(out["loss_weights"], [0, 0, 0, 0, 1, 1, 1, 0, 0, 0])
  np.testing.assert_array_equal(out["attention_mask"], [1, 1, 1, 2, 2, 2, 2, 2, 0, 0])


def _loss(model, params, images, batch):
  def fn(params, logits_delta):
    logits = model.apply({"params": params}, images, batch["tokens"], batch["attention_mask"])["logits"]
    return ntp_loss(logits + logits_delta, batch["targets"], batch["loss_weights"])[0]
  delta = jnp.zeros(batch["tokens"].shape + (VOCAB,))
  loss, (param_grads, logit_grads) = jax.value_and_grad(fn, argnums=(0, 1))(params, delta)
  return loss, param_grads, logit_grads


def test_masked_positions_contribute_zero_loss_and_zero_gradient():
  model, params, images, batch = _vlm()
  loss, grads, logit_grads = _loss(model, params, images, batch)
  masked = np.asarray(batch["loss_weights"]) == 0
  assert masked.sum() > 0 and (~masked).sum() > 0
  # The loss's gradient at image, BOS/prompt and padding positions is exactly zero...
  assert (np.asarray(logit_grads)[masked] == 0).all()
  assert (np.abs(np.asarray(logit_grads)[~masked]).sum(-1) > 0).all()
  # ...so whatever targets they hold, and whatever tokens pad the rows, nothing changes.
  rng = np.random.default_rng(0)
  tokens = np.asarray(batch["tokens"])
  padding = np.asarray(batch["attention_mask"]) == 0
  changed = dict(batch, targets=jnp.where(masked, rng.integers(1, VOCAB, masked.shape), batch["targets"]),
                 tokens=jnp.where(padding, rng.integers(1, VOCAB, tokens.shape), tokens))
  loss2, grads2, _ = _loss(model, params, images, changed)
  assert float(loss2) == float(loss)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads2)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=1e-7)


def _recompute_greedy(model, params, images, prefix, steps):
  """Greedy captioning without a cache: the whole sequence each step. The ranking query of
  PyramidDrop is pinned to the last prefix token, as in the cached prefill. The sequence lives in a
  buffer of its final length whose unwritten tail is padding (invisible), so one compile serves
  every step."""
  length = prefix.shape[1]
  seq = jnp.pad(prefix, ((0, 0), (0, steps)))
  weights = (jnp.arange(length + steps) >= length - 1).astype(jnp.float32)[None].repeat(len(seq), 0)
  apply = jax.jit(model.apply)
  out = []
  for cur in range(length, length + steps):
    kinds = jnp.where(jnp.arange(length + steps) < cur, prefix_kinds(seq), 0)
    logits = apply({"params": params}, images, seq, kinds, weights)["logits"][:, cur - 1]
    token = jnp.argmax(logits, -1).astype(jnp.int32)
    out.append(np.asarray(token))
    seq = seq.at[:, cur].set(token)
  return np.stack(out, 1)


@pytest.mark.parametrize("overrides", [
    dict(projector=dict(kind="mlp")),
    dict(projector=dict(kind="tome", r=4, depth=2, width=32, num_heads=2)),
    dict(decoder=dict(DECODER, depth=3, pdrop_layers=(1, 2), pdrop_ratios=(0.5, 0.25))),
    # Gemma's token-embedding scale: prefill and each cached step scale alike, the image slots not.
    dict(decoder=dict(DECODER, depth=3, pdrop_layers=(1, 2), pdrop_ratios=(0.5, 0.25),
                      scale_token_embeddings=True, activation="gelu_tanh")),
], ids=["mlp", "tome", "pyramid_drop", "pyramid_drop_scaled_tokens"])
def test_captioning_with_kv_cache_equals_recomputing(overrides):
  model, params, images, _ = _vlm(**overrides)
  n = model.num_image_tokens(32)
  prefix = jnp.asarray(np.array([[IMAGE_TOKEN] * n + [2]] * 3))
  cached = jax.jit(lambda p, x, i: generate(model, p, x, jax.random.PRNGKey(0), 6, images=i, eos_id=-5))(
      params, prefix, images)
  np.testing.assert_array_equal(np.asarray(cached), _recompute_greedy(model, params, images, prefix, 6))


def test_pyramid_drop_keeps_text_and_drops_image_tokens():
  model, params, images, batch = _vlm(decoder=dict(DECODER, depth=3, pdrop_layers=(1, 2),
                                                   pdrop_ratios=(0.5, 0.25)))
  logits = np.asarray(model.apply({"params": params}, images, batch["tokens"], batch["attention_mask"],
                                  batch["loss_weights"])["logits"])
  is_image = np.asarray(batch["tokens"]) == IMAGE_TOKEN
  dropped = np.all(logits == 0, axis=-1)
  n = model.num_image_tokens(32)
  # After the last stage a quarter of the image tokens remain; every text position keeps its output.
  assert (dropped.sum(1) == n - n // 4).all()
  assert not dropped[~is_image].any()


@pytest.mark.parametrize("case", ["ntp_mlp", "limber_frozen"])
def test_vlm_trains_end_to_end(tiny_data_dir, tmp_path, case):
  """On 8 devices (data, fsdp and tensor parallel). LiMBeR-style: a linear projector is the only
  thing that trains; the frozen image tower and decoder end exactly where they started."""
  overrides = {"model": dict(TINY_VLM, projector=dict(kind="linear", dropout=0.1), stop_image_gradient=True),
               "optimizer.frozen": "^(image|decoder)/"} if case == "limber_frozen" else {}
  config = tiny_config(tiny_data_dir, **{"total_steps": 4, "mesh": dict(data=2, fsdp=2, tensor=2),
                                         "model": TINY_VLM, "objectives": {"ntp": {"weight": 1.0}},
                                         **overrides})
  workdir = str(tmp_path / case)
  train(config, workdir)
  losses = [m["loss"] for m in read_metrics(workdir) if "loss" in m]
  assert len(losses) == 4 and np.isfinite(losses).all() and losses[-1] < losses[0], losses
  if case == "limber_frozen":
    tokenizer = Tokenizer.load(f"{workdir}/tokenizer.model")
    built = experiment.build(config, tokenizer.vocab_size, mesh=single_device_mesh(), validate=False)
    start, _ = built.init_state()
    abstract, _ = built.abstract_state()
    checkpointer = RunDir(workdir).checkpointer(0, 1)
    final = checkpointer.restore_params(abstract["params"])
    checkpointer.close()
    for part in ("image", "decoder", "projector"):
      moved = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                  for a, b in zip(jax.tree.leaves(start["params"][part]), jax.tree.leaves(final[part])))
      assert (moved > 0) == (part == "projector"), (part, moved)


@pytest.mark.parametrize("name", ["vlm", "lm"])
def test_batch_spec_has_every_field_of_a_pipeline_example(tiny_data_dir, name):
  """init, eval_shape and TPU sizing build the step from the batch spec: it must carry what the
  objectives read (targets, loss_weights), with the pipeline's shapes and dtypes."""
  model_config = TINY_VLM if name == "vlm" else dict(name="lm", decoder=DECODER)
  config = tiny_config(tiny_data_dir, model=model_config, objectives={"ntp": {"weight": 1.0}})
  built = experiment.build(config, VOCAB, mesh=single_device_mesh())
  example = caption_sequence(np.array([2, 7, 3] + [0] * (config.input.max_text_len - 3)),
                             built.model.num_image_tokens(config.input.image_size))
  sample = built.synthetic_batch(VOCAB)
  assert set(example) <= set(sample)
  for key, value in example.items():
    assert sample[key].shape[1:] == value.shape and sample[key].dtype == value.dtype, key


def test_restage_moves_layers_between_pyramid_drop_stages():
  """An LM's scanned 4-layer stack re-split into PyramidDrop stages (and back) keeps every layer in
  order: the staged model without image tokens computes the LM's logits."""
  from vlmjax.models.decoder import LanguageModel, layer_list, restage
  tokens = jnp.array([[2, 7, 9, 11, 3, 0]])
  plain = LanguageModel(decoder=dict(DECODER, depth=4), vocab_size=VOCAB)
  staged = LanguageModel(decoder=dict(DECODER, depth=4, pdrop_layers=(1, 3), pdrop_ratios=(0.5, 0.25)),
                         vocab_size=VOCAB)
  params = nn.meta.unbox(jax.jit(plain.init)(jax.random.PRNGKey(1), tokens)["params"])
  shapes = jax.eval_shape(lambda: nn.meta.unbox(staged.init(jax.random.PRNGKey(0), tokens)["params"]))
  moved = {"decoder": restage(params["decoder"], shapes["decoder"])}
  assert jax.tree.structure(moved) == jax.tree.structure(shapes)
  np.testing.assert_allclose(staged.apply({"params": moved}, tokens)["logits"],
                             plain.apply({"params": params}, tokens)["logits"], rtol=1e-5, atol=1e-5)
  back = restage(moved["decoder"], params["decoder"])
  for a, b in zip(layer_list(back), layer_list(params["decoder"])):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_array_equal(x, y)
