"""The experiment spine: everything a train step needs, built from a config in one place.

`build(config, vocab_size)` validates the config against its mesh and returns an `Experiment`:
the mesh, the logical axis rules, the model, the objectives, the optimizer and its schedule, and
the batch fields (`batch_spec`) the model and objectives read. From it come the train state (real
or abstract), the jitted step, and the batches of one (init), synthetic (benchmarks) and abstract
(ahead-of-time compiles). `vlmjax.train`, `vlmjax.evaluate`, `vlmjax.export`, the run folder's
loading and the benchmark tools all build through here and nowhere else.
"""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from vlmjax import batch_spec, config as config_lib, registry, sharding, trainer
from vlmjax.data import pipeline


def build_model(config, vocab_size: int) -> nn.Module:
  """The registered model `config.model.name`, configured by the rest of `config.model`."""
  kwargs = {k: v for k, v in config.model.to_dict().items() if k != "name"}
  return registry.get("model", config.model.name)(
      **kwargs, vocab_size=vocab_size, dtype=jnp.dtype(config.precision.compute_dtype))


def build_objectives(config) -> dict:
  """{name: (weight, objective)} from `config.objectives`."""
  out = {}
  for name, cfg in config.objectives.items():
    kwargs = {k: v for k, v in cfg.to_dict().items() if k != "weight"}
    try:
      out[name] = (float(cfg.weight), registry.get("objective", name)(**kwargs))
    except (ValueError, TypeError) as e:  # an objective refusing one of its values
      if isinstance(e, config_lib.ConfigError):
        raise
      raise config_lib.ConfigError(f"config: objectives.{name}: {e}") from None
  return out


@dataclasses.dataclass
class Experiment:
  config: ml_collections.ConfigDict
  mesh: Mesh
  rules: tuple
  model: nn.Module
  objectives: dict       # {name: (weight, objective)}; empty when built without them
  tx: object             # optax GradientTransformation
  schedule: object       # step -> learning rate
  fields: dict           # {batch key: batch_spec.Field}, model's then objectives'
  model_field_names: tuple  # the model's own fields: what init reads
  train_examples: int = 0   # the train split's records: what per-example objective state is sized by

  @property
  def batch_size(self) -> int:
    return self.config.batch_size

  @property
  def ema_decay(self) -> float:
    """`optimizer.ema_decay` (0: the state keeps no EMA); a run's config from before the key has none."""
    return float(self.config.optimizer.get("ema_decay", 0.0))

  def sample_batch(self) -> dict:
    """A batch of one (zeros) with every field: what init and eval_shape read."""
    return batch_spec.zeros_batch(self.model_fields(), self.config.input, 1)

  def model_fields(self) -> dict:
    return {k: self.fields[k] for k in self.model_field_names}

  @property
  def num_sources(self) -> int:
    """The parts of `data.mixture` (0: one dataset, no mixture)."""
    return len(self.config.data.get("mixture") or {})

  def train_fields(self) -> dict:
    """The fields of a train batch: the experiment's, the pipeline's bad-record counts and, for a
    mixture of datasets, each example's part."""
    mixture = {batch_spec.SOURCE.name: batch_spec.SOURCE} if self.num_sources else {}
    return {**self.fields, batch_spec.BAD_RECORDS.name: batch_spec.BAD_RECORDS, **mixture}

  def synthetic_batch(self, vocab_size: int | None = None, seed: int = 0) -> dict:
    """A numpy global batch of random examples shaped as the input pipeline's train batches."""
    vocab = vocab_size or self.config.tokenizer.vocab_size
    return batch_spec.synthetic_batch(self.train_fields(), self.config.input, self.batch_size, vocab, seed)

  def abstract_batch(self) -> dict:
    """ShapeDtypeStructs of a global train batch, sharded over the batch axes."""
    return batch_spec.abstract_batch(self.train_fields(), self.config.input, self.batch_size,
                                     sharding.batch_sharding(self.mesh))

  def objective_states(self) -> dict:
    """{name: initial state} of the objectives that keep one in the train state (`init_state`)."""
    return {name: objective.init_state(self.train_examples) for name, (_, objective) in self.objectives.items()
            if hasattr(objective, "init_state")}

  def init_state(self, seed: int | None = None):
    """-> (train state, its shardings), initialised in place on the mesh."""
    seed = self.config.seed if seed is None else seed
    return trainer.create_train_state(self.model, self.tx, self.sample_batch(), seed, self.mesh, self.rules,
                                      ema=self.ema_decay > 0, num_sources=self.num_sources,
                                      objective_states=self.objective_states)

  def abstract_state(self):
    """-> (ShapeDtypeStructs with shardings, shardings): the restore target of a checkpoint."""
    return trainer.abstract_train_state(self.model, self.tx, self.sample_batch(), self.mesh, self.rules,
                                        ema=self.ema_decay > 0, num_sources=self.num_sources,
                                        objective_states=self.objective_states)

  def abstract_params(self):
    return self.abstract_state()[0]["params"]

  def train_step(self, state_shardings):
    """The jitted step `(state, batch) -> (state, metrics)` for states placed by `state_shardings`."""
    return trainer.make_train_step(self.model, self.objectives, self.tx, self.schedule, self.mesh,
                                   state_shardings, microbatches=self.config.microbatches, rules=self.rules,
                                   ema_decay=self.ema_decay)

  def preprocess(self, tokenizer, train: bool = True):
    """The input pipeline's map from a source record to an example with every field of the batch:
    the base image and caption, the objectives' fields (`Field.make`), then the model's example
    maker (`registry` 'preprocess', e.g. the decoder layout)."""
    config = self.config
    base = pipeline.Preprocess(tokenizer, config.input.image_size, config.input.max_text_len, train=train,
                               crop_min=config.input.crop_min, brightness=config.input.brightness,
                               fields=tuple(f for f in self.fields.values() if f.make),
                               input_config=config.input, max_caption_chars=config.data.max_caption_chars,
                               caption_field=pipeline.caption_field(config.input),
                               languages=pipeline.language_mix(config.input),
                               caption_language=config.data.get("caption_language", "en"))
    return registry.get("preprocess", config.model.name)(base, config, tokenizer, self.model)

  def use_mesh(self):
    """The context every jitted apply of this experiment's model is traced and run under."""
    return sharding.use(self.mesh, self.rules)


def make_mesh(config, devices=None) -> Mesh:
  try:
    return sharding.make_mesh(config.mesh, devices)
  except ValueError as e:
    raise config_lib.ConfigError(f"config: {e}") from None


def check(config, devices=None, processes: int | None = None, mesh: Mesh | None = None) -> Mesh:
  """Validates `config` for `mesh` (default: `config.mesh` over `devices`, default all) and
  `processes` (default this run's); -> the mesh. ConfigError naming the key at fault."""
  mesh = mesh or make_mesh(config, devices)
  config_lib.validate(config, mesh.size, sharding.batch_axes_size(mesh),
                      jax.process_count() if processes is None else processes)
  return mesh


def build(config, vocab_size: int, *, total_steps: int | None = None, mesh: Mesh | None = None, devices=None,
          processes: int | None = None, objectives: bool = True, validate: bool = True,
          prompt_len: int = 0, train_examples: int = 0) -> Experiment:
  """Builds the experiment of `config` on `mesh` (default: `config.mesh` over `devices`, default all).

  `total_steps`: the schedule's length (default `config.total_steps`); `processes`: the process
  count the batch must split over (default this run's); `objectives`: False for a reader (evaluate,
  export) that runs no train step; `validate`: check the config first (a reader of a finished run
  or a bundle may use another mesh than the run trained on); `prompt_len`: the decoder prompt's
  pieces (part of the sequence length); `train_examples`: the train split's records (the size of
  per-example objective state; a synthetic run without data may leave it 0). Raises ConfigError with one line naming the key at fault.
  """
  if mesh is None or validate:
    mesh = check(config, devices, processes, mesh) if validate else make_mesh(config, devices)
  model = build_model(config, vocab_size)
  built = build_objectives(config) if objectives else {}
  tx, schedule = trainer.make_optimizer(config.optimizer, max(total_steps or config.total_steps, 1))
  # An objective declares its fields on its class: a reader that builds no objective sees them too.
  model_fields = model.batch_fields(config.input, prompt_len)
  fields = batch_spec.merge(model_fields,
                            *(getattr(registry.get("objective", name), "batch_fields", ()) for name in config.objectives))
  return Experiment(config, mesh, sharding.rules_from_config(config.sharding_rules), model, built, tx,
                    schedule, fields, tuple(f.name for f in model_fields), train_examples)
