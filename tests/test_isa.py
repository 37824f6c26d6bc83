"""ISA: the text tower's pseudo-word prefix, the isa loss, distillation into the light student with
everything else frozen, the cir evaluator's pseudo_sentence / pseudo_image queries, and bad configs."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import tiny_config
from vlmjax import batch_spec
from vlmjax import train as train_lib
from vlmjax.models.text import TextTransformer
from vlmjax.objectives.isa import isa_loss

MESH = dict(data=1, fsdp=-1, tensor=1)
STUDENT = dict(num_words=2, depth=1, num_heads=2,
               student=dict(width=16, depth=1, mlp_dim=32, num_heads=2, patch_size=8, stem="patch"))


@pytest.mark.parametrize("pool", ["eos", "mean"])
def test_prefix_of_token_embeddings_is_those_tokens(pool):
  """The first j tokens given as their own embeddings (a prefix) give the plain tower's outputs."""
  tower = TextTransformer(vocab_size=50, width=32, depth=2, mlp_dim=64, num_heads=2, max_len=12, pool=pool)
  tokens = jnp.asarray(batch_spec.random_texts(np.random.default_rng(0), (4,), 12, 50))
  params = nn.meta.unbox(tower.init(jax.random.PRNGKey(0), tokens)["params"])
  pooled, states, mask = tower.apply({"params": params}, tokens)
  for j in (1, 3):
    prefix = params["token_embed"]["embedding"][tokens[:, :j]]  # [B, j, W]
    got = tower.apply({"params": params}, tokens[:, j:], prefix=prefix)
    np.testing.assert_allclose(got[0], pooled, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got[1], states, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(got[2], mask)
  # A prefix alone (no tokens) counts as the text: eos pooling takes its last word.
  words = params["token_embed"]["embedding"][tokens[:, :3]]
  alone = tower.apply({"params": params}, jnp.zeros((4, 0), jnp.int32), prefix=words)
  first3 = tower.apply({"params": params}, jnp.where(jnp.arange(12) < 3, tokens, 0))
  if pool == "eos":
    np.testing.assert_allclose(alone[0], first3[0], rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="prefix 3 \\+ text length 15 exceeds the text tower's max_len 12"):
    tower.apply({"params": params}, tokens, prefix=words)


def test_isa_loss_matches_numpy():
  rng = np.random.default_rng(1)
  l2 = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
  student, teacher, theta = l2(rng.normal(size=(6, 8))), l2(rng.normal(size=(6, 8))), 1.3
  logits = np.exp(theta) * student @ teacher.T
  row_max = logits.max(1)
  global_ = np.mean(row_max + np.log(np.exp(logits - row_max[:, None]).sum(1)) - np.diag(logits))
  local = np.mean(1.0 - np.sum(student * teacher, axis=1))
  loss, got_global, got_local = isa_loss(jnp.asarray(student, jnp.float32), jnp.asarray(teacher, jnp.float32),
                                         jnp.float32(theta), local_weight=0.5)
  np.testing.assert_allclose([loss, got_global, got_local], [global_ + 0.5 * local, global_, local], rtol=1e-5)
  # The teacher is a target: no gradient reaches it.
  grad_teacher = jax.grad(lambda t: isa_loss(jnp.asarray(student), t, 1.3)[0])(jnp.asarray(teacher))
  assert not np.any(grad_teacher)


@pytest.fixture(scope="session")
def clip_run(tiny_data_dir, tmp_path_factory):
  path = str(tmp_path_factory.mktemp("isa") / "clip")
  train_lib.train(tiny_config(tiny_data_dir, total_steps=4, mesh=MESH), path)
  return path


def _shapes(tiny_data_dir):
  return dict(name="vlmjax_shapes", data_dir=tiny_data_dir, builder_config="tiny")


@pytest.fixture(scope="session")
def isa_run(tiny_data_dir, clip_run, tmp_path_factory):
  path = str(tmp_path_factory.mktemp("isa") / "isa")
  evals = {q: dict(type="cir", split="test", num_examples=32, query=q, data=_shapes(tiny_data_dir))
           for q in ("pseudo_sentence", "pseudo_image")}
  config = tiny_config(tiny_data_dir, total_steps=12, mesh=MESH, evals=evals, **{
      "init": dict(workdir=clip_run, params="^(image|text|logit_scale)"), "model.pseudo_words": STUDENT,
      "optimizer.frozen": "^(?!pseudo_words/)", "optimizer.learning_rate": 3e-3, "checkpoint.every_steps": 6,
      "objectives": dict(isa=dict(weight=1.0, local_weight=0.5))})
  return path, train_lib.train(config, path)


def test_only_the_student_learns(clip_run, isa_run):
  from vlmjax.run import open_run, read_metrics
  path, _ = isa_run
  teacher = open_run(clip_run).load().params
  halfway, final = open_run(path).load(step=6).params, open_run(path).load(step=12).params
  assert set(final) == set(teacher) | {"pseudo_words"}
  for name in teacher:  # the towers, projections and temperatures: bit-identical
    jax.tree.map(np.testing.assert_array_equal, final[name], teacher[name])
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                                       halfway["pseudo_words"], final["pseudo_words"]))
  assert moved and all(moved)
  assert {"student", "queries", "token_learner", "to_words"} <= set(final["pseudo_words"])
  losses = [m["isa/loss"] for m in read_metrics(path) if "isa/loss" in m]
  assert len(losses) == 12 and np.mean(losses[-3:]) < np.mean(losses[:3])


def test_cir_pseudo_queries(isa_run):
  _, results = isa_run
  for q in ("pseudo_sentence", "pseudo_image"):
    assert {k for k in results if k.startswith(f"{q}/")} == {f"{q}/R@{k}" for k in (1, 5, 10)} | {f"{q}/queries"}
    assert results[f"{q}/queries"] == 32
    assert 0.0 <= results[f"{q}/R@1"] <= results[f"{q}/R@5"] <= results[f"{q}/R@10"] <= 1.0


def test_pseudo_sentence_query_needs_pseudo_words(tiny_data_dir, clip_run):
  from vlmjax import evaluate
  from vlmjax.run import open_run
  loaded = open_run(clip_run).load()
  entries = ml_collections.ConfigDict(dict(c=dict(type="cir", split="test", num_examples=8, query="pseudo_sentence",
                                                  data=_shapes(tiny_data_dir))))
  planned = evaluate.plan_evals(entries, loaded.config.data)
  with pytest.raises(ValueError, match=r"^evals.c: query 'pseudo_sentence' needs the model's pseudo-word encoder: "
                     r"set model.pseudo_words$"):
    evaluate.run_evals(loaded.experiment, loaded.params, loaded.tokenizer, planned)


def test_pseudo_words_need_a_transformer_text_tower(tiny_data_dir, tmp_path):
  config = tiny_config(tiny_data_dir, mesh=MESH, **{
      "model.text": dict(kind="gru", width=32, max_len=16), "model.pseudo_words": STUDENT,
      "objectives": dict(isa=dict(weight=1.0))})
  with pytest.raises(ValueError, match=r"^model.pseudo_words needs the transformer text tower, not "
                     r"model.text.kind 'gru'") as error:
    train_lib.dry_run(config, str(tmp_path / "run"))
  assert "\n" not in str(error.value)
  # And the isa objective on a model without pseudo-words says what to set.
  with pytest.raises(ValueError, match="^objectives.isa needs the model's pseudo-word encoder: set model.pseudo_words"):
    train_lib.dry_run(tiny_config(tiny_data_dir, mesh=MESH, objectives=dict(isa=dict(weight=1.0))),
                      str(tmp_path / "b"))
