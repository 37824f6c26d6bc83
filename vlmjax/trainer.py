"""Train state, optimizer and the jitted train step.

The train state is a plain pytree `{params, opt_state, step, rng, extras}` (and `ema`, an exponential
moving average of the params, when `optimizer.ema_decay` > 0; `objectives`, the state of objectives
that keep one, e.g. a statistic per training example) created already sharded: its shapes
come from `jax.eval_shape`, its shardings from the params' logical axis names, and
`jax.jit(init, out_shardings=...)` materialises it in place. The step is jitted with explicit in/out
shardings and donates the old state. A step whose loss or gradients are not finite is
skipped (params, optimizer state and EMA unchanged) and counted in `extras`, with the bad data records.

The optimizer's per-parameter learning-rate multipliers (layer-wise decay, `lr_multipliers`) scale
AdamW's update element-wise (`scale_updates`), so one slice of a scanned stack, a layer, gets its own
multiplier without splitting the stacked params.
"""
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vlmjax import sharding
from vlmjax.batch_spec import BAD_REASONS


def path_str(path) -> str:
  """A pytree key path -> 'image/encoder/blocks/attn/query/kernel' (box wrappers dropped)."""
  names = []
  for key in path:
    if isinstance(key, jax.tree_util.GetAttrKey) and key.name == "value":
      continue  # the field of an nn.Partitioned box; a dict key 'value' (attention's) is a module
    names.append(str(getattr(key, "key", getattr(key, "name", getattr(key, "idx", None)))))
  return "/".join(names)


def _path_mask(params, predicate):
  return jax.tree_util.tree_map_with_path(lambda p, x: predicate(path_str(p), x), params)


# A tower's params before its first block (BEiT's layer 0): patch/token/position embeddings, the
# class token, a conv stem and a norm before the blocks. The decoder's `embedding` is also its tied
# output head; it is decayed as an embedding, as BEiT and big_vision treat a tied table.
EMBEDDING_NAMES = re.compile(r"^(patch_embed|cls|pos_embedding|token_embed|embedding|pre_norm|stem_\w+)$")


def _stack_depth(stack) -> int | None:
  """The number of blocks of a `layers.Transformer`'s params: a scanned stack `{'blocks': [n, ...]}`
  or an unscanned one `{'block_0': ..., 'block_{n-1}': ...}`; None when `stack` is neither."""
  if not isinstance(stack, dict):
    return None
  if "blocks" in stack:
    return int(jax.tree.leaves(stack["blocks"])[0].shape[0])
  blocks = [k for k in stack if re.fullmatch(r"block_\d+", k)]
  return len(blocks) or None


def _tower_stacks(node) -> list | None:
  """A tower's transformer params in layer order, [(key, 'stack' | 'block', depth)]: a ViT's or
  text tower's `encoder`; a decoder's `layers`, then per PyramidDrop stage s its `layers_{s}_first`
  block and its `layers_{s}` stack. None when `node` is not a tower."""
  if not isinstance(node, dict):
    return None
  if _stack_depth(node.get("encoder")):
    return [("encoder", "stack", _stack_depth(node["encoder"]))]
  if not _stack_depth(node.get("layers")):
    return None
  out, stage = [("layers", "stack", _stack_depth(node["layers"]))], 1
  while f"layers_{stage}_first" in node or f"layers_{stage}" in node:
    if f"layers_{stage}_first" in node:
      out.append((f"layers_{stage}_first", "block", 1))
    if _stack_depth(node.get(f"layers_{stage}")):
      out.append((f"layers_{stage}", "stack", _stack_depth(node[f"layers_{stage}"])))
    stage += 1
  return out


def _tower_decay(tower, decay: float):
  """Layer decay over one tower's params: block i (0-based, over all its stacks) of L gets
  decay^(L - i), per slice of a scanned stack; the embeddings decay^(L + 1); the rest 1."""
  stacks = _tower_stacks(tower)
  depth = sum(n for _, _, n in stacks)
  scale = lambda layer: np.float32(decay ** (depth - layer))
  out, first = {}, 0
  for key, kind, n in stacks:
    if kind == "block":
      out[key] = jax.tree.map(lambda x, i=first: scale(i), tower[key])
    else:
      out[key] = {}
      for name, sub in tower[key].items():
        if name == "blocks":  # stacked on a leading `layers` axis: one multiplier per slice
          column = np.array([scale(first + i) for i in range(n)], np.float32)
          out[key][name] = jax.tree.map(lambda x: column.reshape((n,) + (1,) * (x.ndim - 1)), sub)
        elif re.fullmatch(r"block_\d+", name):
          out[key][name] = jax.tree.map(lambda x, i=first + int(name[6:]): scale(i), sub)
        else:  # e.g. the encoder's final norm, after the blocks
          out[key][name] = jax.tree.map(lambda x: np.float32(1.0), sub)
    first += n
  for key, sub in tower.items():
    if key not in out:
      value = scale(-1) if EMBEDDING_NAMES.match(key) else np.float32(1.0)
      out[key] = jax.tree.map(lambda x, v=value: v, sub)
  return out


def layer_decay_multipliers(params, decay: float):
  """Layer-wise learning-rate decay (BEiT; big_vision): a tree like `params` of multipliers that
  broadcast against each param. In a tower (an image/text tower, a decoder) of depth L, a param of
  block i (0-based) gets decay^(L - i): the last block decay, the first decay^L; the embeddings
  decay^(L + 1); what follows the blocks (final norm, pooling head) and every param outside a tower
  (projections, logit scale, a VLM's projector) 1. A scanned stack's param [L, ...] gets an
  [L, 1, ...] column, so each layer's slice is scaled by its own multiplier."""

  def walk(node):
    if _tower_stacks(node) is not None:
      return _tower_decay(node, decay)
    if isinstance(node, dict):
      return {k: walk(v) for k, v in node.items()}
    return jax.tree.map(lambda x: np.float32(1.0), node)

  return walk(params)


def lr_multipliers(params, opt):
  """The product of layer decay (`opt.layer_decay`) and the first `opt.lr_multipliers` pattern
  matching each param's path (default 1): a tree like `params` of broadcastable float32 arrays."""
  decay = float(opt.get("layer_decay", 1.0))
  rules = [(re.compile(pattern), float(value)) for pattern, value in (opt.get("lr_multipliers") or ())]

  def group(path, layer):
    value = next((v for pattern, v in rules if pattern.search(path_str(path))), 1.0)
    return np.asarray(layer * np.float32(value), np.float32)

  return jax.tree_util.tree_map_with_path(group, layer_decay_multipliers(params, decay))


def scale_updates(tx: optax.GradientTransformation, multipliers) -> optax.GradientTransformation:
  """`tx` with each update multiplied by `multipliers(updates)` (a tree of broadcastable arrays,
  built from the tree's paths and shapes when the step is traced: constants, never state). The
  state is `tx`'s own, so turning multipliers on or off leaves checkpoints compatible."""

  def update(updates, state, params=None):
    updates, state = tx.update(updates, state, params)
    return jax.tree.map(lambda u, m: u * m.astype(u.dtype), updates, multipliers(updates)), state

  return optax.GradientTransformation(tx.init, update)


def make_optimizer(opt, total_steps: int):
  """AdamW with linear warmup + cosine decay, global-norm clipping, decay only on matrices (not on
  biases, norms, or paths matching `wd_exclude`), and zero updates for paths matching `frozen`.
  Per-parameter learning-rate multipliers (`layer_decay`, `lr_multipliers`) scale the update,
  weight decay included, as a smaller learning rate would."""
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
  if opt.get("layer_decay", 1.0) != 1.0 or opt.get("lr_multipliers"):
    tx = scale_updates(tx, lambda tree: lr_multipliers(tree, opt))
  return tx, schedule


def model_inputs(model, batch, train: bool):
  """The model's call arguments from a batch, by the model's `batch_keys` ({arg: batch key}); keys
  the batch does not have are left to the model's defaults."""
  return {arg: batch[key] for arg, key in model.batch_keys.items() if key in batch} | {"train": train}


def init_extras(num_sources: int = 0) -> dict:
  """Counters in the train state, so they are checkpointed and a resumed run continues them:
  skipped non-finite steps (in all, and in a row now), bad data records by reason and, with
  `num_sources` > 0 (a mixture of datasets), the examples seen from each part."""
  extras = {"nonfinite_steps": jnp.zeros((), jnp.int32), "nonfinite_streak": jnp.zeros((), jnp.int32),
            "bad_records": jnp.zeros((len(BAD_REASONS),), jnp.int32)}
  if num_sources:
    extras["source_examples"] = jnp.zeros((num_sources,), jnp.int32)
  return extras


def _with_ema(state: dict, ema: bool) -> dict:
  """The state with `ema` (the params' moving average, sharded like them: the same boxes) when on."""
  return {**state, "ema": jax.tree.map(jnp.copy, state["params"])} if ema else state


def reset_ema(state: dict) -> dict:
  """The EMA restarted at the state's params: after they are replaced (`c.init`), before step 0."""
  return _with_ema(state, True) if "ema" in state else state


def _with_objective_states(state: dict, objective_states) -> dict:
  """The state with `objectives` ({name: pytree} of the objectives that keep a state) when any."""
  states = objective_states() if objective_states else {}
  return {**state, "objectives": states} if states else state


def create_train_state(model, tx, sample_batch, seed: int, mesh, rules, ema: bool = False, num_sources: int = 0,
                       objective_states=None):
  """-> (state, state_shardings). `sample_batch` holds arrays (or shapes) with batch dimension 1.
  `ema`: the state holds `ema`, the params' moving average, starting at the params. `num_sources`:
  the parts of a data mixture, whose examples the extras count. `objective_states`: () -> {name:
  initial state} of the objectives that keep one (replicated, like the extras)."""

  def init(rng):
    init_rng, train_rng = jax.random.split(rng)
    params = model.init({"params": init_rng}, **model_inputs(model, sample_batch, False))["params"]
    state = _with_ema({"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32),
                       "rng": train_rng, "extras": init_extras(num_sources)}, ema)
    return _with_objective_states(state, objective_states)

  rng = jax.random.PRNGKey(seed)
  abstract = jax.eval_shape(init, rng)
  shardings = sharding.logical_shardings(abstract, mesh, rules)
  with jax.set_mesh(mesh):
    state = jax.jit(lambda r: nn.meta.unbox(init(r)), out_shardings=shardings)(rng)
  return state, shardings


def abstract_train_state(model, tx, sample_batch, mesh, rules, ema: bool = False, num_sources: int = 0,
                         objective_states=None):
  """ShapeDtypeStructs with shardings, the restore target for a checkpoint on this mesh."""
  def init(rng):
    params = model.init({"params": rng}, **model_inputs(model, sample_batch, False))["params"]
    state = _with_ema({"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32),
                       "rng": rng, "extras": init_extras(num_sources)}, ema)
    return _with_objective_states(state, objective_states)

  abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
  shardings = sharding.logical_shardings(abstract, mesh, rules)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      nn.meta.unbox(abstract), shardings), shardings


def make_train_step(model, objectives, tx, schedule, mesh, state_shardings, microbatches: int = 1,
                    rules=sharding.DEFAULT_RULES, ema_decay: float = 0.0):
  """-> jitted `step(state, batch) -> (state, metrics)`; the input state is donated. With
  `microbatches` > 1 the batch runs in that many pieces (`cached_value_and_grad`), same result.
  `rules` (the params' logical axis rules) also place the activations: batch over data×fsdp.
  `ema_decay` > 0: the state's `ema` becomes decay·ema + (1 − decay)·params after each applied step.

  An objective that keeps a state (`init_state`, in the train state's `objectives`) is called with
  it, `objective(outputs, batch, step=, state=) -> (loss, metrics, new state)`; the new state is
  kept when the step is applied. An objective with `teacher_keys` reads a teacher: the model run
  with the state's `ema` params (no dropout, no gradient) on the same batch, whose outputs under
  those keys reach it as `batch['teacher_<key>']`."""
  teacher_keys = sorted({k for _, objective in objectives.values() for k in getattr(objective, "teacher_keys", ())})

  def forward(params, batch, rng):
    return model.apply({"params": params}, **model_inputs(model, batch, True), rngs={"dropout": rng})

  def objectives_loss(outputs, batch, step, states):
    total, metrics, new_states = 0.0, {}, {}
    for name, (weight, objective) in objectives.items():
      if name in states:
        loss, extra, new_states[name] = objective(outputs, batch, step=step, state=states[name])
      else:
        loss, extra = objective(outputs, batch, step=step)
      total = total + weight * loss
      metrics[f"{name}/loss"] = loss
      metrics.update({f"{name}/{k}": v for k, v in extra.items()})
    return total, (metrics, new_states)

  loss_and_grads = jax.value_and_grad(
      lambda params, batch, rng, step, states: objectives_loss(forward(params, batch, rng), batch, step, states),
      has_aux=True)
  if microbatches > 1:
    loss_and_grads = cached_value_and_grad(forward, objectives_loss, microbatches, sharding.batch_sharding(mesh))

  def train_step(state, batch):
    rng = jax.random.fold_in(state["rng"], state["step"])
    # The activations' logical constraints (`layers.constrain`), in the model and in any model an
    # objective runs (PRIOR's reference LM).
    with nn.logical_axis_rules(rules):
      if teacher_keys:
        teacher = model.apply({"params": state["ema"]}, **model_inputs(model, batch, False))
        batch = {**batch, **{f"teacher_{k}": jax.lax.stop_gradient(teacher[k]) for k in teacher_keys}}
      (loss, (metrics, objective_states)), grads = loss_and_grads(
          state["params"], batch, rng, state["step"], state.get("objectives", {}))
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
    if "source_examples" in extras:  # a vector: the trainer logs it as each part's share
      metrics["source_examples"] = extras["source_examples"]
    new_state = {"params": params, "opt_state": opt_state, "step": state["step"] + 1, "rng": state["rng"],
                 "extras": extras}
    if "objectives" in state:  # a skipped step leaves them as they were
      new_state["objectives"] = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                                             jax.lax.stop_gradient(objective_states), state["objectives"])
    if ema_decay:
      # Of the params as applied (after any projection); a skipped step leaves it as it was.
      new_state["ema"] = jax.tree.map(lambda e, p: jnp.where(finite, ema_decay * e + (1.0 - ema_decay) * p, e),
                                      state["ema"], params)
    return new_state, metrics

  return jax.jit(train_step, in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                 out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=(0,))


def count_extras(extras, finite, batch) -> dict:
  """`extras` after a step: `finite` [] bool says whether it was applied; the batch's 'bad_records'
  [B, len(BAD_REASONS)] (if any) are the bad records the pipeline skipped to fill it; its 'source'
  [B] (a mixture's) the part of each example, counted whether or not the step was applied."""
  bad = jnp.sum(batch["bad_records"], axis=0) if "bad_records" in batch else 0
  out = {**extras, "nonfinite_steps": extras["nonfinite_steps"] + jnp.logical_not(finite),
         "nonfinite_streak": jnp.where(finite, 0, extras["nonfinite_streak"] + 1),
         "bad_records": extras["bad_records"] + bad}
  if "source_examples" in extras and "source" in batch:
    parts = extras["source_examples"].shape[0]
    out["source_examples"] = extras["source_examples"] + jnp.sum(
        jax.nn.one_hot(batch["source"], parts, dtype=jnp.int32), axis=0)
  return out


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

  forward(params, batch, rng) -> outputs (pytree); loss_of_outputs(outputs, batch, step, states) ->
  (loss, aux), `states` the objectives' (passed through). Returns `fn(params, batch, rng, step,
  states) -> ((loss, aux), grads)`, like `jax.value_and_grad`. Outputs
  without a batch dimension (e.g. the logit scale) are the same in every microbatch; their gradient
  is shared out equally.
  """
  constrain = lambda tree: tree if batch_sharding is None else jax.lax.with_sharding_constraint(tree, batch_sharding)

  def value_and_grad(params, batch, rng, step, states):
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
      return loss_of_outputs(jax.tree.unflatten(treedef, leaves), batch, step, states)

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
