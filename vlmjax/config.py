"""Loading and validating experiment configs (ml_collections ConfigDicts).

Every config file starts from `base_config()` and changes what it needs. `validate` runs before
anything is compiled and raises `ConfigError` with a one-line message naming the key at fault:
unknown keys, wrong types, unknown registry names, batch sizes the mesh cannot split, missing files.
"""
import difflib
import importlib.util
import inspect
import math
import os
import re

import ml_collections
import jax.numpy as jnp

from vlmjax import batch_spec, registry
from vlmjax.models.layers import ATTENTION_IMPLEMENTATIONS, REMAT_POLICIES
from vlmjax.models.sizes import decode_variant
from vlmjax.data.tokenizer import MODEL_TYPES

# Sections whose keys are free-form: they are checked against the constructor they configure.
OPEN_SECTIONS = ("model", "objectives", "evals", "data.fields", "data.files", "data.mixture", "init.also",
                 "init.fit", "input.languages")


# An eval entry's keys that choose its data and resolution (vlmjax.evals.common); the others are its evaluator's.
EVAL_ENTRY_KEYS = ("type", "data", "resize", "image_size")


class ConfigError(ValueError):
  pass


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = 256              # global batch, split over data×fsdp devices
  c.microbatches = 1              # gradient accumulation: run each batch in this many pieces (same result)
  c.total_steps = 1000
  c.total_epochs = 0.0            # if > 0, overrides total_steps: epochs of the train split

  c.data = dict(
      name="vlmjax_shapes",       # a registered dataset: vlmjax_shapes, tfds, csv, jsonl, webdataset, parquet, array_record
      data_dir="",                # TFDS folder ('' = ./data/tfds for vlmjax_shapes)
      builder_config="default",   # vlmjax_shapes size: default or tiny
      tfds_name="",               # for name='tfds'
      fields={},                  # record key -> dataset feature path, for name='tfds'
                                  # (name='webdataset': record key -> key path in each sample's .json)
                                  # (parquet/array_record: more record keys, record key -> column)
      files=dict(train="", validation="", test="", test_unseen=""),  # split -> CSV/JSONL path, for
                                  # name='csv'/'jsonl' ('' = none; other split names may be added);
                                  # parquet/array_record: a file, a glob or several joined with '::'
      image_root="",
      image_key="image_path",     # parquet/array_record: the image bytes column ('image_path' = 'image')
      caption_key="caption",      # '' = the file has no captions (a classification set)
                                  # name='webdataset': 'caption'/'txt' = the .txt member, else a .json key
      index_dir="",               # name='webdataset' (files: '/data/{00000..00099}.tar', '::' joins
                                  # patterns): where shard indices go when not beside the shards
                                  # ('' = ~/.cache/vlmjax/webdataset)
      label_key="",               # a column of class labels (an integer or a class name); '' = none
      class_names=None,           # what the labels name: a list, or a shipped set ('imagenet', 'cifar10')
      class_names_file="",        # ... or a file of one class name per line
      train_split="train",
      num_threads=2,              # threads decoding and augmenting ahead of the step (per worker)
      workers=0,                  # grain worker processes making batches (0: threads of this process)
      worker_nice=19,             # added to the workers' nice value: they yield the cores to the step
      max_bad_fraction=0.1,       # bad records (corrupt image, empty caption, ...) are skipped; more
                                  # than this fraction of those read stops the run
      max_caption_chars=1000,     # a longer caption is a bad record (0: no limit)
      caption_file="",            # new captions for train records: 'index<TAB>caption' lines
                                  # (vlmjax.data.recaption, `python -m vlmjax.gist`)
      pseudo_label_file="",       # pseudo-labels for train records: 'index<TAB>class index' lines
                                  # (vlmjax.data.recaption, `python -m vlmjax.pseudo_label`)
      subset_file="",             # train only on the train split's records listed in this file (one
                                  # index per line: vlmjax.data.subset, `python -m vlmjax.select_data`)
      caption_language="en",     # the language of the records' `caption`; others come from their
                                  # `translations` ({language: text}, vlmjax_shapes: 'de', 'fr')
      caption_noise=0.0,          # this fraction of training records carry another record's texts
                                  # (vlmjax.data.caption_noise: ALIGN's noisy pairs); 0 = off
      # Train on a weighted mixture of datasets instead (vlmjax.data.mixture): {name: dict(weight=
      # number > 0, data=a data section, its unset keys the defaults above)}, e.g. dict(shapes=dict(
      # weight=0.7, data=dict(name='vlmjax_shapes')), pairs=dict(weight=0.3, data=dict(name='csv',
      # files=dict(train='/data/pairs.csv')))). Each part is shuffled with its own seed; batches carry
      # 'source' (the part's index, parts in name order); `data/share/<name>` is logged. {} = off.
      mixture={},
  )
  c.input = dict(image_size=64, max_text_len=32, crop_min=1.0, brightness=0.0,
                 subcaptions=3,  # DreamLIP: sentences sampled from the long caption beside the caption
                 prompt="",      # decoders: text between BOS and the caption, never supervised
                 # decoders: how BOS and the prompt attend: 'causal', or 'bidirectional' (one block with
                 # the image, the caption causal after it: PaliGemma's prefix-LM)
                 prefix_attention="causal",
                 # the record's text the model is trained on and scored against: 'caption', or e.g.
                 # 'long_caption' (vlmjax_shapes' one sentence per object and pair: ImageInWords)
                 caption_field="caption",
                 # the language mix of the training captions: {language: weight >= 0}, each record's
                 # caption taken in a language drawn with these weights (data.caption_language or one
                 # of its `translations`), e.g. dict(en=0.5, de=0.25, fr=0.25); {} = the caption as is
                 languages={},
                 # records with object regions (vlmjax.data.regions): at most this many per example
                 max_regions=4,
                 # video models (`model.name='video_clip'`): frames per clip, the data's (0: images)
                 num_frames=0)
  # languages: the tokenizer learns every record's caption in each of these (() = those of input.languages)
  # model_type: 'bpe' (sub-word pieces) or 'char' (one piece per character, vocab_size at most)
  c.tokenizer = dict(path="", vocab_size=1000, train_examples=20000, languages=(), model_type="bpe")

  c.model = dict(name="dual_encoder", image=dict(variant="S/16"), text=dict(variant="S"), embed_dim=384)
  c.objectives = dict(clip=dict(weight=1.0))
  # Start the params matching `params` (a regex) from another run's checkpoint or a bundle; `also`:
  # more sources by name, each dict(workdir=..., params=...[, into=dict(image='image_1')]), applied
  # after it (big_vision's per-tower model_init), e.g. a VLM's decoder from a text-only LM run and its
  # image tower from a CLIP run. `fit`: params computed from the loaded ones after that, before step
  # 0, by registered fit name with its options (`vlmjax.projector_fit`'s ridge_projector,
  # `vlmjax.weight_mix`'s weight_mix).
  c.init = dict(workdir="", params=".*", also={}, fit={})
  c.precision = dict(compute_dtype="float32")  # params are always float32; bfloat16 on accelerators

  c.optimizer = dict(
      learning_rate=1e-3, b1=0.9, b2=0.98, eps=1e-6,
      weight_decay=0.1, wd_exclude="logit_scale|logit_bias",  # and every tensor with ndim < 2
      warmup_steps=100, end_learning_rate=0.0, grad_clip_norm=1.0,
      frozen="",                  # regex over param paths ('image/.*') whose updates are zero
      # Fine-tuning (docs/design.md, "Fine-tuning controls"): per-param learning-rate multipliers
      # scale the update, their product applies.
      layer_decay=1.0,            # in (0, 1]: block i of a tower of depth L gets lr·decay^(L−i), its
                                  # embeddings decay^(L+1), heads 1 (1.0: off)
      lr_multipliers=(),          # ((regex over param paths, multiplier >= 0), ...): the first match
                                  # wins, default 1; e.g. (("^image/", 0.1), ("logit_scale", 0.0))
      ema_decay=0.0,              # in [0, 1): the state keeps ema = decay·ema + (1−decay)·params after
                                  # each applied step; evaluated and exported with --ema (0: off)
  )
  c.mesh = dict(data=1, fsdp=-1, tensor=1)  # FSDP over all devices by default
  c.sharding_rules = ()                     # ((logical, mesh axes), ...); () = sharding.DEFAULT_RULES

  c.checkpoint = dict(every_steps=500, keep=3, async_save=True)
  c.log_every_steps = 10
  c.max_consecutive_nonfinite = 10  # NaN/Inf loss or gradients: the update is skipped; this many in a
                                    # row stops the run (0: never stop)
  c.peak_flops_per_device = 0.0  # FLOP/s behind the logged 'mfu'; 0: measure a matmul peak, < 0: no MFU
  c.eval_every_steps = 0          # 0: evaluate only at the end
  c.progress_bar = True
  c.evals = dict(
      zeroshot=dict(type="zeroshot", split="test"),
      retrieval=dict(type="retrieval", split="test", num_examples=1000),
  )
  return c


def load_file(path: str, arg=None) -> ml_collections.ConfigDict:
  """`get_config(arg)` of a config file, so one experiment can start from another's file:
  `load_file(os.path.join(os.path.dirname(__file__), "clip.py"))`."""
  if not os.path.isfile(path):
    raise ConfigError(f"config: no config file {path}")
  spec = importlib.util.spec_from_file_location(f"vlmjax_config_{os.path.basename(path)[:-3]}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def _flatten(d, prefix=""):
  for key, value in d.items():
    path = f"{prefix}{key}"
    if isinstance(value, (ml_collections.ConfigDict, dict)) and not any(
        path == s or path.startswith(s + ".") for s in OPEN_SECTIONS):
      yield from _flatten(value, path + ".")
    else:
      yield path, value


def _check_against_base(config):
  base = dict(_flatten(base_config()))
  for path, value in _flatten(config):
    if any(path == s or path.startswith(s + ".") for s in OPEN_SECTIONS):
      continue
    if path not in base:
      close = difflib.get_close_matches(path, list(base), n=3, cutoff=0.6)
      hint = f" (did you mean one of: {', '.join(close[:6])})" if close else ""
      raise ConfigError(f"config: unknown key '{path}'{hint}")
    _check_type(path, base[path], value)


def _check_type(path: str, expected, value):
  """`value` at `path` of the type of the base config's `expected` (an int for a float; None: any)."""
  if expected is not None and value is not None:
    ok = isinstance(value, type(expected)) or (isinstance(expected, float) and isinstance(value, int)) \
        or (isinstance(expected, (tuple, list)) and isinstance(value, (tuple, list))) \
        or all(isinstance(v, (dict, ml_collections.ConfigDict)) for v in (expected, value))
    if not ok or (isinstance(expected, int) and isinstance(value, bool) != isinstance(expected, bool)):
      raise ConfigError(f"config: '{path}' must be {type(expected).__name__}, got "
                        f"{type(value).__name__} {value!r}")


MIXTURE_ENTRY_KEYS = ("weight", "data")
MIXTURE_RUN_KEYS = ("num_threads", "workers", "worker_nice", "max_bad_fraction", "max_caption_chars")  # the base data section's, for all parts


def check_mixture(data_config):
  """ConfigError, one line naming `data.mixture.<name>...`, for a mixture entry that is not
  dict(weight=finite number > 0, data=a data section of the base keys, types and a registered name)."""
  base = base_config().data
  mixture = data_config.get("mixture") or {}
  for name in sorted(mixture):
    entry, key = mixture[name], f"data.mixture.{name}"
    if not isinstance(entry, (dict, ml_collections.ConfigDict)):
      raise ConfigError(f"config: '{key}' must be dict(weight=number > 0, data=dict(name=..., ...)), got {entry!r}")
    for entry_key in entry:
      if entry_key not in MIXTURE_ENTRY_KEYS:
        raise ConfigError(f"config: unknown key '{key}.{entry_key}' (a mixture entry's keys: "
                          f"{', '.join(MIXTURE_ENTRY_KEYS)})")
    weight = entry.get("weight")
    if isinstance(weight, bool) or not _finite(weight) or weight <= 0:
      raise ConfigError(f"config: '{key}.weight' {weight!r} must be a finite number > 0")
    data = entry.get("data")
    if not isinstance(data, (dict, ml_collections.ConfigDict)) or not data:
      raise ConfigError(f"config: '{key}.data' must be a data section, e.g. dict(name='csv', "
                        f"files=dict(train='/data/train.csv')), got {data!r}")
    for data_key in data:
      if data_key == "mixture":
        raise ConfigError(f"config: '{key}.data.mixture': a mixture entry's data cannot itself be a mixture")
      if data_key in MIXTURE_RUN_KEYS:
        raise ConfigError(f"config: '{key}.data.{data_key}': it applies to the whole mixture; set data.{data_key}")
      if data_key not in base:
        raise ConfigError(f"config: unknown key '{key}.data.{data_key}' (a data section's keys: "
                          f"{', '.join(k for k in base if k not in ('mixture',) + MIXTURE_RUN_KEYS)})")
      _check_type(f"{key}.data.{data_key}", base[data_key], data[data_key])
    try:
      registry.get("dataset", data.get("name", base.name))
    except registry.RegistryError as e:
      raise ConfigError(f"config: '{key}.data.name': {e}") from None


def _check_kwargs(what: str, target, kwargs: dict, provided=()):
  """Keys of `kwargs` must be parameters of `target` (a function, class or dataclass Module)."""
  params = inspect.signature(target).parameters
  if any(p.kind == p.VAR_KEYWORD for p in params.values()):
    return
  for key in kwargs:
    if key not in params or key in provided:
      raise ConfigError(f"config: unknown key '{what}.{key}' (known: "
                        f"{', '.join(k for k in params if k not in provided and k not in ('parent', 'name'))})")


def _check_stack(what: str, settings: dict):
  """A transformer stack's `remat`, `unroll` and `attention`, which the model would only reject when
  it is built."""
  if "attention" in settings and settings["attention"] not in ATTENTION_IMPLEMENTATIONS:
    raise ConfigError(f"config: '{what}.attention' {settings['attention']!r} is not an attention "
                      f"implementation (one of {', '.join(ATTENTION_IMPLEMENTATIONS)})")
  if "remat" in settings and settings["remat"] not in REMAT_POLICIES:
    raise ConfigError(f"config: '{what}.remat' {settings['remat']!r} is not a remat policy "
                      f"(one of {', '.join(REMAT_POLICIES)})")
  output_layer = settings.get("output_layer", 0)
  if type(output_layer) is not int or output_layer < 0:
    raise ConfigError(f"config: '{what}.output_layer' {output_layer!r} must be a layer number (1 = the first "
                      "block; 0 = the last)")
  unroll = settings.get("unroll", 1)
  if type(unroll) is not int or unroll < 1:
    raise ConfigError(f"config: '{what}.unroll' {unroll!r} must be a positive integer (layers per "
                      "iteration of the scanned loop)")


def init_sources(init) -> list[tuple[str, str, dict]]:
  """(workdir, params regex, into) triples to start params from, in order: `init` itself, then
  `init.also`. `into` ({} unless an `init.also` entry gives it) maps top-level param names of the
  source to this model's: dict(image='image_1') puts a run's image tower in this model's second."""
  sources = [(init.workdir, init.params, {})] if init.workdir else []
  for name, source in init.get("also", {}).items():
    keys = set(source.keys()) if isinstance(source, (dict, ml_collections.ConfigDict)) else set()
    into = dict(source.get("into") or {}) if keys else {}
    if not {"workdir", "params"} <= keys <= {"workdir", "params", "into"} \
        or not all(isinstance(source[k], str) for k in ("workdir", "params")) \
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in into.items()):
      got = source.to_dict() if hasattr(source, "to_dict") else source
      raise ConfigError(f"config: 'init.also.{name}' must be dict(workdir=str, params=str[, into=dict(str=str)]), "
                        f"got {got!r}")
    if source.workdir:
      sources.append((source.workdir, source.params, into))
  return sources


def _finite(value) -> bool:
  return isinstance(value, (int, float)) and math.isfinite(value)


# (key, lowest allowed value, whether the lowest is allowed): every number a config may hold.
RANGES = (
    ("seed", 0, True), ("log_every_steps", 1, True), ("eval_every_steps", 0, True),
    ("checkpoint.keep", 1, True), ("checkpoint.every_steps", 0, True), ("total_epochs", 0, True),
    ("optimizer.learning_rate", 0, True), ("optimizer.end_learning_rate", 0, True),
    ("optimizer.weight_decay", 0, True), ("optimizer.grad_clip_norm", 0, True),
    ("optimizer.warmup_steps", 0, True), ("optimizer.eps", 0, False), ("optimizer.b1", 0, True),
    ("optimizer.b2", 0, True), ("optimizer.layer_decay", 0, False), ("optimizer.ema_decay", 0, True),
    ("input.image_size", 1, True), ("input.crop_min", 0, False),
    ("input.brightness", 0, True), ("input.subcaptions", 0, True), ("tokenizer.vocab_size", 5, True),
    ("tokenizer.train_examples", 1, True), ("data.num_threads", 0, True),
    ("data.workers", 0, True), ("data.worker_nice", 0, True),
)


def _get(config, key: str):
  """The value at a dotted key, None where a section leaves it out (a config may replace a section
  such as `input` with only the keys it uses)."""
  for part in key.split("."):
    if part not in config:
      return None
    config = config[part]
  return config


def set_dotted(config, key: str, value):
  """config['a']['b']['c'] = value for key 'a.b.c' (the sections must exist; the leaf may not)."""
  *parents, leaf = key.split(".")
  for part in parents:
    config = config[part]
  config[leaf] = value


def _check_ranges(config):
  """Every number in range and finite: a NaN or negative learning rate would train to NaN params."""
  for key, lowest, inclusive in RANGES:
    value = _get(config, key)
    if value is None:
      continue
    if not _finite(value) or value < lowest or (value == lowest and not inclusive):
      bound = f">= {lowest}" if inclusive else f"> {lowest}"
      raise ConfigError(f"config: '{key}' {value!r} must be a finite number {bound}")
  for key in ("optimizer.b1", "optimizer.b2", "optimizer.ema_decay"):
    if _get(config, key) is not None and _get(config, key) >= 1:
      raise ConfigError(f"config: '{key}' {_get(config, key)!r} must be below 1")
  if (_get(config, "optimizer.layer_decay") or 0) > 1:
    raise ConfigError(f"config: 'optimizer.layer_decay' {config.optimizer.layer_decay!r} must be at most 1 "
                      "(1: no decay; each block deeper from the top gets that factor less)")
  _check_lr_multipliers(_get(config, "optimizer.lr_multipliers") or ())
  if config.input.get("crop_min", 1.0) > 1:
    raise ConfigError(f"config: 'input.crop_min' {config.input.crop_min!r} must be at most 1 (a fraction of the side)")
  if config.input.get("prefix_attention", "causal") not in batch_spec.PREFIX_ATTENTIONS:
    raise ConfigError(f"config: 'input.prefix_attention' {config.input.prefix_attention!r} must be one of "
                      f"{', '.join(batch_spec.PREFIX_ATTENTIONS)}")


def _check_lr_multipliers(rules):
  """`optimizer.lr_multipliers`: (regex, multiplier) pairs, each regex valid, each multiplier finite >= 0."""
  key = "optimizer.lr_multipliers"
  for rule in rules:
    if not isinstance(rule, (tuple, list)) or len(rule) != 2 or not isinstance(rule[0], str) \
        or isinstance(rule[1], bool):
      raise ConfigError(f"config: '{key}' entry {rule!r} must be a pair (regex over param paths, multiplier)")
    pattern, value = rule
    try:
      re.compile(pattern)
    except re.error as e:
      raise ConfigError(f"config: '{key}' pattern {pattern!r} is not a valid regex ({e})") from None
    if not _finite(value) or value < 0:
      raise ConfigError(f"config: '{key}' multiplier {value!r} of {pattern!r} must be a finite number >= 0")


def _check_input_sizes(config, model_cls):
  """The input shapes against the towers that read them: the image side at least one patch, the
  text no longer than the text tower's position table."""
  towers = getattr(model_cls, "towers", {})
  if "image" in towers:
    tower = {**decode_variant(dict(config.model.get("image") or {}).get("variant", "S/16")),
             **{k: v for k, v in (config.model.get("image") or {}).items() if k != "variant"}}
    patch = tower.get("patch_size", 16)
    # A side that is not a whole number of patches loses its last pixels, as big_vision's VALID patch
    # convolution does (SigLIP So400m/14 at 384 px: a 27x27 grid of 378 px).
    if config.input.image_size < patch:
      raise ConfigError(f"config: 'input.image_size' {config.input.image_size} is smaller than the image "
                        f"tower's patch_size {patch}")
  if "text" in towers:
    max_len = dict(config.model.get("text") or {}).get("max_len", inspect.signature(towers["text"]).parameters[
        "max_len"].default)
    if config.input.max_text_len > max_len:
      raise ConfigError(f"config: 'input.max_text_len' {config.input.max_text_len} exceeds the text tower's "
                        f"max_len {max_len} (model.text.max_len)")


def check_keys_and_ranges(config):
  """The checks of `validate` that need no devices: keys and types against the base config, value
  ranges, and the input sizes against the model's towers."""
  _check_against_base(config)
  _check_ranges(config)
  try:
    _check_input_sizes(config, registry.get("model", config.model.name))
  except registry.RegistryError as e:
    raise ConfigError(f"config: {e}") from None


def _check_languages(config):
  """input.languages: non-negative weights, one positive; over the caption itself."""
  languages = dict(_get(config, "input.languages") or {})
  for language, weight in languages.items():
    if not isinstance(weight, (int, float)) or weight < 0:
      raise ConfigError(f"config: 'input.languages.{language}' {weight!r} must be a number >= 0")
  if languages and not sum(languages.values()) > 0:
    raise ConfigError("config: 'input.languages' needs one weight > 0")
  if languages and (_get(config, "input.caption_field") or "caption") != "caption":
    raise ConfigError("config: 'input.languages' mixes languages of the caption; it cannot be used with "
                      f"input.caption_field '{config.input.caption_field}'")


def validate(config, num_devices: int, batch_ways: int, process_count: int = 1):
  """Raises ConfigError on the first problem. `batch_ways` = data × fsdp mesh size."""
  _check_against_base(config)
  init_sources(config.init)
  try:
    model_cls = registry.get("model", config.model.name)
    model_kwargs = {k: v for k, v in config.model.items() if k != "name"}
    _check_kwargs("model", model_cls, model_kwargs, provided=("vocab_size", "dtype"))
    _check_stack("model", model_kwargs)
    for tower, tower_cls in getattr(model_cls, "towers", {}).items():
      tower_cfg = dict(config.model.get(tower) or {})
      if "kind" in tower_cfg:  # another registered tower (a dual encoder's 'text_tower', e.g. 'gru')
        if f"{tower}_tower" not in registry.KINDS:
          raise ConfigError(f"config: model.{tower}.kind: the {tower} tower has one kind; leave 'kind' out")
        tower_cls = registry.get(f"{tower}_tower", tower_cfg.pop("kind"))
      try:
        if getattr(tower_cls, "sized_by_variant", True) or "variant" in tower_cfg:
          decode_variant(tower_cfg.pop("variant", "S"))
      except ValueError as e:
        raise ConfigError(f"config: model.{tower}.variant: {e}") from None
      _check_kwargs(f"model.{tower}", tower_cls, tower_cfg, provided=("vocab_size", "dtype"))
      _check_stack(f"model.{tower}", tower_cfg)
    for name, cfg in config.objectives.items():
      objective = registry.get("objective", name)
      if "weight" not in cfg:
        raise ConfigError(f"config: objectives.{name} needs a 'weight'")
      _check_kwargs(f"objectives.{name}", objective, {k: v for k, v in cfg.items() if k != "weight"})
      if getattr(objective, "teacher_keys", ()) and not config.optimizer.get("ema_decay", 0.0) > 0:
        raise ConfigError(f"config: objectives.{name} learns from an EMA teacher: set optimizer.ema_decay > 0")
    for name, cfg in config.evals.items():
      if "type" not in cfg:
        raise ConfigError(f"config: evals.{name} needs a 'type' (one of {', '.join(registry.names('evaluator'))})")
      _check_kwargs(f"evals.{name}", registry.get("evaluator", cfg.type),
                    {k: v for k, v in cfg.items() if k not in EVAL_ENTRY_KEYS}, provided=("name",))
      for key in (cfg.get("data") or {}):
        if key not in config.data:
          raise ConfigError(f"config: unknown key 'evals.{name}.data.{key}' (a data section's keys: "
                            f"{', '.join(config.data.keys())})")
    registry.get("dataset", config.data.name)
  except registry.RegistryError as e:
    raise ConfigError(f"config: {e}") from None
  check_mixture(config.data)
  _check_languages(config)
  if not config.objectives:
    raise ConfigError("config: 'objectives' is empty; name at least one (e.g. clip=dict(weight=1.0))")
  _check_ranges(config)
  _check_input_sizes(config, model_cls)
  if config.total_steps <= 0 and config.total_epochs <= 0:
    raise ConfigError("config: 'total_steps' (or 'total_epochs') must be positive")
  if config.batch_size <= 0:
    raise ConfigError(f"config: 'batch_size' {config.batch_size} must be positive")
  if config.batch_size % batch_ways:
    raise ConfigError(f"config: 'batch_size' {config.batch_size} is not divisible by the mesh's "
                      f"data×fsdp = {batch_ways} ways (devices: {num_devices})")
  if config.microbatches < 1 or config.batch_size % (batch_ways * config.microbatches):
    raise ConfigError(f"config: 'microbatches' {config.microbatches} must be at least 1 and divide the "
                      f"per-device batch {config.batch_size} / {batch_ways} (data×fsdp)")
  if config.batch_size % process_count:
    raise ConfigError(f"config: 'batch_size' {config.batch_size} is not divisible by the "
                      f"{process_count} processes")
  if config.tokenizer.get("model_type", "bpe") not in MODEL_TYPES:
    raise ConfigError(f"config: 'tokenizer.model_type' '{config.tokenizer.model_type}' is not one of "
                      f"{', '.join(MODEL_TYPES)}")
  if config.tokenizer.path and not os.path.isfile(config.tokenizer.path):
    raise ConfigError(f"config: 'tokenizer.path' file '{config.tokenizer.path}' does not exist")
  if not 0.0 <= config.data.max_bad_fraction < 1.0:
    raise ConfigError(f"config: 'data.max_bad_fraction' {config.data.max_bad_fraction} must be in [0, 1)")
  if not 0.0 <= config.data.get("caption_noise", 0.0) <= 1.0:
    raise ConfigError(f"config: 'data.caption_noise' {config.data.caption_noise} must be in [0, 1]")
  if config.data.max_caption_chars < 0 or config.max_consecutive_nonfinite < 0:
    raise ConfigError("config: 'data.max_caption_chars' and 'max_consecutive_nonfinite' must be >= 0")
  if config.input.max_text_len < 3:
    raise ConfigError("config: 'input.max_text_len' must be at least 3 (BOS, a token, EOS)")
  try:
    jnp.dtype(config.precision.compute_dtype)
  except TypeError:
    raise ConfigError(f"config: 'precision.compute_dtype' '{config.precision.compute_dtype}' "
                      "is not a dtype (float32, bfloat16)") from None
