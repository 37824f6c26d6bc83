"""WiSE-FT (Wortsman et al., 2022): a bundle whose params mix a zero-shot model's and its fine-tuned one's.

  python -m vlmjax.wise_ft --zero_shot BUNDLE_A --fine_tuned BUNDLE_B --alpha 0.5 --out BUNDLE_C [--force]
      [--format safetensors]

Each param of C is (1 − α)·A + α·B, computed in float32: α = 0 gives A's params, α = 1 B's, values in
between trade the zero-shot model's robustness for the fine-tuned one's accuracy. A and B must be
bundles (`vlmjax.export`, `--ema` included) of one architecture: every param of the same path and
shape; the first that differs is named in one line. C holds B's config and tokenizer
(the fine-tuned run's) and, in bundle.json, both sources and α. It is written as `vlmjax.export` writes
bundles: a new or empty --out, or with --force a previous bundle, nothing else; complete or not at all.
"""
import math
import os

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from vlmjax import cli, config as config_lib, export, trainer
from vlmjax.metrics import quiet_absl_logging
from vlmjax.run import Bundle


def _shapes(params) -> dict:
  return {trainer.path_str(p): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}


def check_same_architecture(a, b):
  """ValueError (one line) naming the first param (by path) that the loaded bundles `a` and `b` do
  not both hold with one shape. The params decide, not the configs' text: an imported bundle's config
  spells its towers out where a run started from it names a variant."""
  got_a, got_b = _shapes(a.params), _shapes(b.params)
  for path in sorted(got_a.keys() | got_b.keys()):
    if path not in got_a or path not in got_b:
      has, lacks = ("--fine_tuned", "--zero_shot") if path not in got_a else ("--zero_shot", "--fine_tuned")
      raise ValueError(f"wise_ft: param '{path}' is in the {has} bundle but not in the {lacks} one; WiSE-FT mixes "
                       "two bundles of one architecture")
    if got_a[path] != got_b[path]:
      raise ValueError(f"wise_ft: param '{path}' has shape {got_a[path]} in --zero_shot and {got_b[path]} in "
                       "--fine_tuned; WiSE-FT mixes two bundles of one architecture")


def mix(zero_shot_params, fine_tuned_params, alpha: float):
  """(1 − α)·A + α·B per param, in float32 (host numpy arrays): α = 0 and 1 give A and B exactly."""
  a_weight, b_weight = np.float32(1.0 - alpha), np.float32(alpha)
  return jax.tree.map(lambda a, b: a_weight * np.asarray(a, np.float32) + b_weight * np.asarray(b, np.float32),
                      zero_shot_params, fine_tuned_params)


def check_alpha(alpha) -> float:
  if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) \
      or not 0.0 <= alpha <= 1.0:
    raise ValueError(f"wise_ft: --alpha {alpha!r} must be a number in [0, 1] (0: the zero-shot params, 1: the "
                     "fine-tuned ones)")
  return float(alpha)


def wise_ft(zero_shot: str, fine_tuned: str, alpha: float, out: str, fmt: str = "orbax",
            force: bool = False) -> str:
  """Writes the bundle of (1 − α)·A + α·B at `out` (see the module docstring); -> its path. Everything
  is checked (α, --out, both bundles, their architectures) before anything is written."""
  alpha = check_alpha(alpha)
  sources = {"--zero_shot": zero_shot, "--fine_tuned": fine_tuned}
  _as_wise_ft(export.check_out, out, "bundle", force, sources)
  for flag, path in sources.items():
    if not Bundle.holds_one(path):
      raise FileNotFoundError(f"wise_ft: {flag} '{path}' is not an inference bundle (no {Bundle.INFO}); make one "
                              "with python -m vlmjax.export --workdir DIR --out BUNDLE")
  a, b = Bundle(zero_shot).load(), Bundle(fine_tuned).load()  # each checked against its own model
  check_same_architecture(a, b)
  params = mix(jax.device_get(a.params), jax.device_get(b.params), alpha)
  dtype = "bfloat16" if all(Bundle(p).info().get("dtype") == "bfloat16" for p in sources.values()) else "float32"
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.dtype(dtype)), params)
  bundle = Bundle(fine_tuned)
  info = bundle.info()
  tokenizer = bundle.file(Bundle.TOKENIZER) if b.tokenizer else None
  meta = {"step": int(info["step"]), "dtype": dtype, "vocab_size": int(info["vocab_size"]),
          "source": f"wise_ft:{os.path.abspath(fine_tuned)}",
          "wise_ft": {"zero_shot": os.path.abspath(zero_shot), "fine_tuned": os.path.abspath(fine_tuned),
                      "alpha": alpha}}
  return _as_wise_ft(export.write_bundle, out, b.config, params, tokenizer, meta, fmt, force, sources)


def _as_wise_ft(fn, *args):
  """`fn(*args)` of `vlmjax.export`, its one-line errors naming this command."""
  try:
    return fn(*args)
  except (OSError, ValueError) as e:
    raise type(e)(str(e).replace("export: ", "wise_ft: ", 1)) from None


def main(argv):
  quiet_absl_logging()
  if len(argv) > 1:
    cli.fail("wise_ft", f"wise_ft: unexpected arguments: {' '.join(argv[1:])}")
  try:
    out = wise_ft(FLAGS.zero_shot, FLAGS.fine_tuned, FLAGS.alpha, FLAGS.out, FLAGS.format, FLAGS.force)
  except (OSError, ValueError, config_lib.ConfigError) as e:  # OSError: FileNotFoundError, a full disk...
    cli.fail("wise_ft", e)
  print(f"Wrote {out}: (1 - {FLAGS.alpha})·{FLAGS.zero_shot} + {FLAGS.alpha}·{FLAGS.fine_tuned}")


if __name__ == "__main__":
  FLAGS = flags.FLAGS
  flags.DEFINE_string("zero_shot", None, "Bundle A: the model before fine-tuning (alpha 0).", required=True)
  flags.DEFINE_string("fine_tuned", None, "Bundle B: the fine-tuned model (alpha 1); its config and tokenizer "
                      "go into --out.", required=True)
  flags.DEFINE_float("alpha", None, "The fine-tuned params' weight, in [0, 1].", required=True)
  flags.DEFINE_string("out", None, "The bundle to write: a new or empty folder.", required=True)
  flags.DEFINE_boolean("force", False, "Replace a previous bundle at --out; nothing else is ever replaced.")
  flags.DEFINE_enum("format", "orbax", list(export.BUNDLE_FORMATS), "How the bundle stores its params.")
  app.run(main, flags_parser=cli.flags_parser("wise_ft"))
