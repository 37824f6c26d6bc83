"""Train state, optimizer and the jitted train step.

The train state is a plain pytree `{params, opt_state, step, rng, extras}` created already sharded: its
shapes come from `jax.eval_shape`, its shardings from the params' logical axis names, and
`jax.jit(init, out_shardings=...)` materialises it in place. The step is jitted with explicit in/out
shardings and donates the old state. A step whose loss or gradients are not finite is
skipped (params and optimizer state unchanged) and counted in `extras`, with the bad data records.
"""
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from vlmjax import sharding
from vlmjax.batch_spec import BAD_REASONS


def path_str(path) -> str:
  """A pytree key path -> 'image/encoder/blocks/attn/query/kernel' (box wrappers dropped)."""
  names = []
  for key in path:
    name = getattr(key, "key", getattr(key, "name", getattr(key, "idx", None)))
    if name != "value":  # the field of an nn.Partitioned box
      names.append(str(name))
  return "/".join(names)


def _path_mask(params, predicate):
  return jax.tree_util.tree_map_with_path(lambda p, x: predicate(path_str(p), x), params)


def make_optimizer(opt, total_steps: int):
  """AdamW with linear warmup + cosine decay, global-norm clipping, decay only on matrices (not on
  biases, norms, or paths matching `wd_exclude`), and zero updates for paths matching `frozen`."""
  warmup_steps = min(opt.warmup_steps, total_steps - 1)
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=opt.learning_rate, warmup_steps=max(warmup_steps, 0),
      decay_steps=max(total_steps, warmup_steps + 1), end_value=opt.end_learning_rate)
  exclude = re.compile(opt.wd_exclude) if opt.wd_exclude else None
  decay_mask = lambda params: _path_mask(
      params, lambda p, x: x.ndim >= 2 and not (exclude and exclude.search(p)))
  tx = optax.chain(
      optax.clip_by_global_norm(opt.grad_clip_norm) if opt.grad_clip_norm else optax.identity(),
      optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay,
                  mask=decay_mask))
  if opt.frozen:
    frozen = re.compile(opt.frozen)
    labels = lambda params: _path_mask(params, lambda p, x: "frozen" if frozen.search(p) else "trained")
    tx = optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)
  return tx, schedule


def model_inputs(model, batch, train: bool):
  """The model's call arguments from a batch, by the model's `batch_keys` ({arg: batch key}); keys
  the batch does not have are left to the model's defaults."""
  return {arg: batch[key] for arg, key in model.batch_keys.items() if key in batch} | {"train": train}


def init_extras() -> dict:
  """Counters in the train state, so they are checkpointed and a resumed run continues them:
  skipped non-finite steps (in all, and in a row now) and bad data records by reason."""
  return {"nonfinite_steps": jnp.zeros((), jnp.int32), "nonfinite_streak": jnp.zeros((), jnp.int32),
          "bad_records": jnp.zeros((len(BAD_REASONS),), jnp.int32)}


def create_train_state(model, tx, sample_batch, seed: int, mesh, rules):
  """-> (state, state_shardings). `sample_batch` holds arrays (or shapes) with batch dimension 1."""

  def init(rng):
    init_rng, train_rng = jax.random.split(rng)
    params = model.init({"params": init_rng}, **model_inputs(model, sample_batch, False))["params"]
    return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32),
            "rng": train_rng, "extras": init_extras()}

  rng = jax.random.PRNGKey(seed)
  abstract = jax.eval_shape(init, rng)
  shardings = sharding.logical_shardings(abstract, mesh, rules)
  with jax.set_mesh(mesh):
    state = jax.jit(lambda r: nn.meta.unbox(init(r)), out_shardings=shardings)(rng)
  return state, shardings


def abstract_train_state(model, tx, sample_batch, mesh, rules):
  """ShapeDtypeStructs with shardings, the restore target for a checkpoint on this mesh."""
  def init(rng):
    params = model.init({"params": rng}, **model_inputs(model, sample_batch, False))["params"]
    return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32), "rng": rng,
            "extras": init_extras()}

  abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
  shardings = sharding.logical_shardings(abstract, mesh, rules)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      nn.meta.unbox(abstract), shardings), shardings


def make_train_step(model, objectives, tx, schedule, mesh, state_shardings, microbatches: int = 1,
                    rules=sharding.DEFAULT_RULES):
  """-> jitted `step(state, batch) -> (state, metrics)`; the input state is donated. With
  `microbatches` > 1 the batch runs in that many pieces (`cached_value_and_grad`), same result.
  `rules` (the params' logical axis rules) also place the activations: batch over data×fsdp."""

  def forward(params, batch, rng):
    return model.apply({"params": params}, **model_inputs(model, batch, True), rngs={"dropout": rng})

  def objectives_loss(outputs, batch, step):
    total, metrics = 0.0, {}
    for name, (weight, objective) in objectives.items():
      loss, extra = objective(outputs, batch, step=step)
      total = total + weight * loss
      metrics[f"{name}/loss"] = loss
      metrics.update({f"{name}/{k}": v for k, v in extra.items()})
    return total, metrics

  loss_and_grads = jax.value_and_grad(
      lambda params, batch, rng, step: objectives_loss(forward(params, batch, rng), batch, step), has_aux=True)
  if microbatches > 1:
    loss_and_grads = cached_value_and_grad(forward, objectives_loss, microbatches, sharding.batch_sharding(mesh))

  def train_step(state, batch):
    rng = jax.random.fold_in(state["rng"], state["step"])
    # The activations' logical constraints (`layers.constrain`), in the model and in any model an
    # objective runs (PRIOR's reference LM).
    with nn.logical_axis_rules(rules):
      (loss, metrics), grads = loss_and_grads(state["params"], batch, rng, state["step"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    for _, objective in objectives.values():
      # Projections after the update (e.g. CLIP's temperature clamp), not inside the forward.
      if hasattr(objective, "project_params"):
        params = objective.project_params(params)
    grad_norm = optax.global_norm(grads)
    # A NaN/Inf loss or gradient (a bad batch, an overflow) is skipped, never applied. The update is
    # not checked: AdamW's update of finite gradients and params is finite (|m| / sqrt(v) is bounded),
    # and another pass over every param would cost a share of every step.
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    params, opt_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                                     (params, opt_state), (state["params"], state["opt_state"]))
    extras = count_extras(state["extras"], finite, batch)
    metrics.update(loss=loss, grad_norm=grad_norm, learning_rate=schedule(state["step"]),
                   nonfinite_steps=extras["nonfinite_steps"], nonfinite_streak=extras["nonfinite_streak"],
                   bad_records=jnp.sum(extras["bad_records"]),
                   **{f"bad_records/{r}": n for r, n in zip(BAD_REASONS, extras["bad_records"])})
    new_state = {"params": params, "opt_state": opt_state, "step": state["step"] + 1, "rng": state["rng"],
                 "extras": extras}
    return new_state, metrics

  return jax.jit(train_step, in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                 out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=(0,))


def count_extras(extras, finite, batch) -> dict:
  """`extras` after a step: `finite` [] bool says whether it was applied; the batch's 'bad_records'
  [B, len(BAD_REASONS)] (if any) are the bad records the pipeline skipped to fill it."""
  bad = jnp.sum(batch["bad_records"], axis=0) if "bad_records" in batch else 0
  return {**extras, "nonfinite_steps": extras["nonfinite_steps"] + jnp.logical_not(finite),
          "nonfinite_streak": jnp.where(finite, 0, extras["nonfinite_streak"] + 1),
          "bad_records": extras["bad_records"] + bad}


def split_microbatches(tree, n: int):
  """Leaves [B, ...] -> [n, B/n, ...]. Microbatch m holds examples m, m+n, m+2n, ...: the rows of
  a batch-sharded array stay on their device (when each device's row count is divisible by n)."""
  return jax.tree.map(lambda x: jnp.moveaxis(x.reshape(x.shape[0] // n, n, *x.shape[1:]), 1, 0), tree)


def merge_microbatches(tree):
  """The inverse of `split_microbatches`: [n, B/n, ...] -> [B, ...] in the original order."""
  return jax.tree.map(lambda x: jnp.moveaxis(x, 0, 1).reshape(-1, *x.shape[2:]), tree)


def cached_value_and_grad(forward, loss_of_outputs, microbatches: int, batch_sharding=None):
  """Gradient accumulation that also holds for losses coupling the whole batch (every contrastive
  one): gradient caching (Gao et al., 2021), the way open_clip accumulates.

  1. forward each microbatch (no activations kept) -> the model's outputs for the whole batch;
  2. the loss once, on those outputs, and its gradient with respect to them;
  3. forward each microbatch again and pull its slice of that gradient back to the params; sum.
  Loss, metrics and gradients are those of the whole batch (up to summation order) for any objective
  of the outputs. Memory: one microbatch's activations plus the whole batch's outputs; cost: one
  more forward pass. Dropout draws differ from the whole batch's (a key per microbatch).

  forward(params, batch, rng) -> outputs (pytree); loss_of_outputs(outputs, batch, step) -> (loss, aux).
  Returns `fn(params, batch, rng, step) -> ((loss, aux), grads)`, like `jax.value_and_grad`. Outputs
  without a batch dimension (e.g. the logit scale) are the same in every microbatch; their gradient
  is shared out equally.
  """
  constrain = lambda tree: tree if batch_sharding is None else jax.lax.with_sharding_constraint(tree, batch_sharding)

  def value_and_grad(params, batch, rng, step):
    micro = split_microbatches(batch, microbatches)
    keys = jax.random.split(rng, microbatches)
    outputs_shape = jax.eval_shape(forward, params, batch, rng)
    treedef = jax.tree.structure(outputs_shape)
    batch_size = jax.tree.leaves(batch)[0].shape[0]
    per_example = [x.ndim > 0 and x.shape[0] == batch_size for x in jax.tree.leaves(outputs_shape)]
    is_float = [jnp.issubdtype(x.dtype, jnp.inexact) for x in jax.tree.leaves(outputs_shape)]
    run = lambda p, mb, key: jax.tree.leaves(forward(p, constrain(mb), key))
    floats = lambda leaves: [x for x, f in zip(leaves, is_float) if f]

    _, stacked = jax.lax.scan(lambda _, xs: (None, run(params, *xs)), None, (micro, keys))
    outputs = [merge_microbatches(x) if e else x[0] for x, e in zip(stacked, per_example)]

    def loss_of_floats(float_outputs):
      given = iter(float_outputs)
      leaves = [next(given) if f else x for x, f in zip(outputs, is_float)]
      return loss_of_outputs(jax.tree.unflatten(treedef, leaves), batch, step)

    (loss, aux), output_grads = jax.value_and_grad(loss_of_floats, has_aux=True)(floats(outputs))
    cotangents = [split_microbatches(g, microbatches) if e else
                  jnp.broadcast_to(g / microbatches, (microbatches, *g.shape))
                  for g, e in zip(output_grads, floats(per_example))]

    def accumulate(grads, xs):
      mb, key, cotangent = xs
      _, pullback = jax.vjp(lambda p: floats(run(p, mb, key)), params)
      return jax.tree.map(jnp.add, grads, pullback(cotangent)[0]), None

    grads, _ = jax.lax.scan(accumulate, jax.tree.map(jnp.zeros_like, params), (micro, keys, cotangents))
    return (loss, aux), grads

  return value_and_grad
