"""Weighted mixtures of training datasets (`config.data.mixture`, `vlmjax.data.mixture`).

Two parts: the tiny built-in shapes data (weight 0.7) and a CSV of 40 images written here (0.3).
The parts are numbered in name order: 'pairs' is source 0, 'shapes' source 1.
"""
import dataclasses
import os

import grain
import jax
import numpy as np
import pytest
from PIL import Image

from conftest import sigterm_after_step, single_device_mesh, tiny_config
from vlmjax import experiment, trainer
from vlmjax.config import ConfigError
from vlmjax.data import mixture, pipeline
from vlmjax.run import read_metrics
from vlmjax.train import dry_run, train

WEIGHTS = {"pairs": 0.3, "shapes": 0.7}
PAIRS = 40
TOTAL, STOP = 6, 3
MESH = dict(data=1, fsdp=-1, tensor=1)  # a training run: all 8 fake devices


@pytest.fixture(scope="module")
def pairs_csv(tiny_source, tmp_path_factory):
  """A CSV of PAIRS rows (PNG files of the shapes records); row 0's image is truncated (corrupt)."""
  folder = tmp_path_factory.mktemp("pairs")
  os.makedirs(folder / "images")
  lines = ["image_path,caption"]
  for i in range(PAIRS):
    record = tiny_source[i]
    Image.fromarray(np.asarray(record["image"])).save(folder / f"images/{i}.png")
    lines.append(f"images/{i}.png,a picture: {record['caption'].replace(',', ' ')}")
  (folder / "images/0.png").write_bytes((folder / "images/0.png").read_bytes()[:40])
  (folder / "pairs.csv").write_text("\n".join(lines) + "\n")
  return str(folder / "pairs.csv")


def _mixture(tiny_data_dir, pairs_csv, **weights):
  weights = {**WEIGHTS, **weights}
  return {"pairs": dict(weight=weights["pairs"], data=dict(name="csv", files=dict(train=pairs_csv))),
          "shapes": dict(weight=weights["shapes"], data=dict(name="vlmjax_shapes", builder_config="tiny",
                                                              data_dir=tiny_data_dir))}


@pytest.fixture(scope="module")
def mix_config(tiny_data_dir, pairs_csv):
  return tiny_config(tiny_data_dir, **{"data.mixture": _mixture(tiny_data_dir, pairs_csv), "total_steps": TOTAL, "mesh": MESH,
                                       "checkpoint.every_steps": 0, "input.crop_min": 0.8,
                                       "input.brightness": 0.1})


@dataclasses.dataclass
class _NoPreprocess(grain.transforms.RandomMap):
  """Every record an empty example: the mixed stream's tags without decoding images."""

  def random_map(self, record, rng):
    del record, rng
    return {}


def test_shares_of_the_mixed_stream_match_the_weights(mix_config):
  source = mixture.train_source(mix_config.data, mix_config.seed)
  assert source.names == ("pairs", "shapes") and len(source) == PAIRS + len(source.parts[1])
  stream = pipeline.train_examples(source, _NoPreprocess(), mix_config.seed)
  tags = np.array([stream[i]["source"] for i in range(2000)])
  assert tags.dtype == np.int32
  for index, name in enumerate(source.names):
    assert abs(np.mean(tags == index) - WEIGHTS[name]) <= 0.02, name
  # Element i is a function of i: a second stream of the same config agrees.
  again = pipeline.train_examples(mixture.train_source(mix_config.data, mix_config.seed), _NoPreprocess(),
                                  mix_config.seed)
  assert [again[i]["source"] for i in range(5000, 5100)] == [stream[i]["source"] for i in range(5000, 5100)]
  # The raw records (what the tokenizer trains on) come in the same proportions: the CSV's as bytes.
  from_csv = np.mean([isinstance(source[i]["image"], bytes) for i in range(500)])
  assert abs(from_csv - WEIGHTS["pairs"]) <= 0.02


def test_a_bad_record_is_replaced_from_its_own_part(mix_config, tiny_tokenizer):
  source = mixture.train_source(mix_config.data, mix_config.seed)
  preprocess = pipeline.Preprocess(tiny_tokenizer, 8, 8, max_caption_chars=1000)
  stream = pipeline.train_examples(source, preprocess, mix_config.seed)
  examples = [stream[i] for i in range(int(1.2 * PAIRS / WEIGHTS["pairs"]))]  # the CSV's first epoch and more
  skipped = [e for e in examples if e["bad_records"].sum()]
  assert skipped, "the corrupt row was read"
  assert all(e["source"] == 0 for e in skipped)
  assert sum(int(e["bad_records"][pipeline.BAD_REASONS.index("corrupt_image")]) for e in examples) == len(skipped)
  assert abs(np.mean([e["source"] == 0 for e in examples]) - WEIGHTS["pairs"]) <= 0.02


def test_no_mixture_gives_the_same_batches_as_the_single_source(make_tiny_config, tiny_tokenizer):
  config = make_tiny_config(**{"input.crop_min": 0.8, "input.brightness": 0.1})
  source = mixture.train_source(config.data, config.seed)
  assert not hasattr(source, "parts")
  preprocess = experiment.build(config, tiny_tokenizer.vocab_size, mesh=single_device_mesh(), objectives=False).preprocess(tiny_tokenizer)
  # train_dataset as it was written before mixtures: the reference.
  ds = grain.MapDataset.source(source).shuffle(seed=config.seed).repeat(None)
  ds = pipeline.SkipBadRecords(ds.random_map(preprocess, seed=config.seed + 1), stride=len(source))
  reference = iter(ds.batch(8, drop_remainder=True)[1::2].to_iter_dataset(grain.ReadOptions(num_threads=1)))
  batches = iter(pipeline.train_dataset(source, preprocess, 8, config.seed, 1, 2, num_threads=1))
  for _ in range(3):
    a, b = next(reference), next(batches)
    assert sorted(a) == sorted(b) and "source" not in b
    for key in a:
      np.testing.assert_array_equal(b[key], a[key], err_msg=key)
  assert "source_examples" not in trainer.init_extras()


@pytest.fixture(scope="module")
def runs(mix_config, tmp_path_factory):
  workdir_a, workdir_b = str(tmp_path_factory.mktemp("mix_a")), str(tmp_path_factory.mktemp("mix_b"))
  train(mix_config, workdir_a)
  with sigterm_after_step(STOP):  # a real SIGTERM after step STOP: checkpointed, stopped
    train(mix_config, workdir_b)
  stopped = sorted(m["step"] for m in read_metrics(workdir_b) if "loss" in m)
  train(mix_config, workdir_b)
  return workdir_a, workdir_b, stopped


def test_share_metric_is_logged(runs):
  metrics = [m for m in read_metrics(runs[0]) if "loss" in m]
  assert [m["step"] for m in metrics] == list(range(1, TOTAL + 1))
  for name, weight in WEIGHTS.items():
    assert abs(metrics[-1][f"data/share/{name}"] - weight) <= 0.02, name
  assert abs(sum(metrics[-1][f"data/share/{name}"] for name in WEIGHTS) - 1.0) < 1e-6


def test_resumed_mixture_run_equals_uninterrupted_exactly(runs):
  def losses(workdir):
    return {m["step"]: (m["loss"], m["data/share/pairs"]) for m in read_metrics(workdir) if "loss" in m}
  a, b = losses(runs[0]), losses(runs[1])
  assert runs[2] == list(range(1, STOP + 1)), "SIGTERM stopped the run after step STOP"
  assert sorted(b) == list(range(1, TOTAL + 1))
  assert len({loss for loss, _ in a.values()}) == TOTAL  # the loss changes from step to step
  assert b == a


BAD_ENTRIES = [
    (dict(weight=0.0), "data.mixture.pairs.weight"),
    (dict(weight=float("nan")), "data.mixture.pairs.weight"),
    (dict(weight=-1.0), "data.mixture.pairs.weight"),
    (dict(weight="1"), "data.mixture.pairs.weight"),
    (dict(data=None), "data.mixture.pairs.data"),
    (dict(data=dict(nme="csv")), "data.mixture.pairs.data.nme"),
    (dict(data=dict(name="nosuch")), "data.mixture.pairs.data.name"),
    (dict(data=dict(name="csv", files="x.csv")), "data.mixture.pairs.data.files"),
    (dict(data=dict(name="csv", num_threads=4)), "data.mixture.pairs.data.num_threads"),
    (dict(data=dict(name="csv", mixture=dict())), "data.mixture.pairs.data.mixture"),
    (dict(extra=1), "data.mixture.pairs.extra"),
]


@pytest.mark.parametrize("change,culprit", BAD_ENTRIES, ids=[c for _, c in BAD_ENTRIES])
def test_bad_entry_is_a_one_line_error_naming_the_key(tiny_data_dir, pairs_csv, change, culprit):
  entries = _mixture(tiny_data_dir, pairs_csv)
  entries["pairs"] = {**entries["pairs"], **change}
  config = tiny_config(tiny_data_dir, **{"data.mixture": entries})
  with pytest.raises(ConfigError) as e:
    experiment.check(config, devices=jax.devices()[:1])
  assert culprit in str(e.value) and "\n" not in str(e.value)


def test_dry_run_opens_every_part(tiny_data_dir, pairs_csv, tmp_path):
  entries = _mixture(tiny_data_dir, pairs_csv)
  entries["pairs"]["data"]["files"]["train"] = str(tmp_path / "missing.csv")
  config = tiny_config(tiny_data_dir, **{"data.mixture": entries, "mesh": MESH})
  with pytest.raises(ConfigError) as e:
    dry_run(config, str(tmp_path / "run"))
  assert "data.mixture.pairs" in str(e.value) and "missing.csv" in str(e.value) and "\n" not in str(e.value)
  assert not os.path.exists(tmp_path / "run")
  report = dry_run(tiny_config(tiny_data_dir, **{"data.mixture": _mixture(tiny_data_dir, pairs_csv), "mesh": MESH}),
                   str(tmp_path / "run"))
  assert report["train_examples"] > PAIRS
