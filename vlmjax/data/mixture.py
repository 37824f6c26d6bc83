"""Weighted mixtures of training datasets: `config.data.mixture`.

    c.data.mixture = dict(
        shapes=dict(weight=0.7, data=dict(name="vlmjax_shapes", builder_config="tiny")),
        pairs=dict(weight=0.3, data=dict(name="csv", files=dict(train="/data/pairs.csv"))))

Each entry names a data section (any registered source) whose unset keys take the base config's
defaults, as an eval entry's `data` does (`vlmjax.evals.common.eval_data_config`), and a weight: the
share of the training examples it gives (weights are relative; they need not sum to 1). The parts are
numbered in the order of their names (a ConfigDict lists its keys sorted); that number is each
example's 'source' in a train batch, and the trainer logs each part's share of the examples seen as
`data/share/<name>`. An empty mixture (the default) trains on `config.data` itself.

The mixed stream is index based, like a single source's (`pipeline.train_examples`): each part is
shuffled and repeated with its own seed, then `grain.MapDataset.mix` interleaves the parts in a
fixed pattern of the weights' proportions (rounded by grain to integers, the smallest to 100), so
element i of the mixture is a function of i. The iterator's state is still one position: shuffling,
per-process slicing, bad-record skipping and exact resume work as they do for one source. The keys
of the base data section that are about the run rather than a dataset (`num_threads`,
`max_bad_fraction`, `max_caption_chars`) apply to the whole mixture; a part reads its own
`train_split`.
"""
import grain
import ml_collections
import numpy as np

from vlmjax import config as config_lib
from vlmjax.config import ConfigError
from vlmjax.data import caption_noise, recaption, sources, subset
from vlmjax.evals.common import eval_data_config


def entries(data_config) -> dict:
  """{name: entry} of `data_config.mixture` in the parts' order (sorted by name); {} when off."""
  mixture = data_config.get("mixture") or {}
  return {name: mixture[name] for name in sorted(mixture)}


def part_config(data_config, name: str) -> ml_collections.ConfigDict:
  """The data section of entry `name`: its `data` over the base config's defaults."""
  return eval_data_config(data_config, data_config.mixture[name])


def part_seed(seed: int, index: int) -> int:
  """Part `index`'s own seed (its shuffle; its augmentation uses the next integer), independent of
  the other parts' for any `seed`."""
  return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint32)[0] >> 1)


class Mixture:
  """The random-access view of a mixture of training sources: element i is the raw record at
  position i of the mixed stream (each part shuffled and repeated with its seed, interleaved by the
  weights), as the tokenizer and the objectives' `prepare` read training captions. Its length, what
  `total_epochs` counts in, is the sum of the parts' lengths.

  `train_examples` (`vlmjax.data.pipeline`) reads `parts`, `weights` and `seeds` to build the
  preprocessed stream; `names` are the entries' names in the parts' order."""

  def __init__(self, names, parts, weights, seeds):
    self.names, self.parts, self.weights, self.seeds = tuple(names), tuple(parts), tuple(weights), tuple(seeds)
    self.class_names = ()
    self._records = grain.MapDataset.mix(
        [grain.MapDataset.source(part).shuffle(seed=seed).repeat(None) for part, seed in zip(parts, seeds)],
        list(weights))

  def __len__(self):
    return sum(len(part) for part in self.parts)

  def __getitem__(self, index):
    return self._records[int(index)]


def train_source(data_config, seed: int):
  """The training data of `data_config`: its `mixture` as a `Mixture` (every part opened, so a
  missing file or unprepared dataset is found before training), else its own train split's
  source. A part that cannot be opened is a ConfigError naming its entry. `caption_file` gives
  records new captions (`vlmjax.data.recaption`), `subset_file` keeps only the records it lists
  (`vlmjax.data.subset`); `caption_noise` > 0 then swaps that fraction of the
  texts between records (`vlmjax.data.caption_noise`), in each part."""
  if not entries(data_config):
    source = sources.make_source(data_config, data_config.train_split)
    source = subset.with_subset(recaption.with_captions(source, data_config), data_config)
    return caption_noise.with_caption_noise(source, data_config, seed)
  config_lib.check_mixture(data_config)
  names, parts, weights = [], [], []
  for name, entry in entries(data_config).items():
    data = part_config(data_config, name)
    try:
      part = sources.make_source(data, data.train_split)
      part = subset.with_subset(recaption.with_captions(part, data), data)
    except (OSError, ValueError, KeyError) as e:
      message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
      raise ConfigError(f"config: data.mixture.{name}: {message}") from None
    if not len(part):
      raise ConfigError(f"config: data.mixture.{name}: split '{data.train_split}' has no records")
    names.append(name)
    parts.append(caption_noise.with_caption_noise(part, data, part_seed(seed, len(parts))))
    weights.append(float(entry["weight"]))
  return Mixture(names, parts, weights, [part_seed(seed, i) for i in range(len(parts))])


def share_metrics(names, source_examples) -> dict:
  """{'data/share/<name>': fraction of the examples seen so far from part <name>} from the train
  state's per-part example counts."""
  counts = np.asarray(source_examples, np.float64)
  total = max(counts.sum(), 1.0)
  return {f"data/share/{name}": count / total for name, count in zip(names, counts)}
