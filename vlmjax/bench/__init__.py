"""Benchmark and sizing tools: each measures a config's real train step, built by `vlmjax.experiment`.

  python -m vlmjax.bench --config C --out benchmarks        the train step on synthetic batches:
                                                           time, FLOPs, MFU, memory (train_step.py)
  python -m vlmjax.bench --losses --out benchmarks         per-device memory of each contrastive
                                                           loss form's gradient (losses.py)
  python -m vlmjax.bench.open_clip --config C --out D      vlmjax's step against open_clip's PyTorch
                                                           step on the same model (open_clip.py)
  python -m vlmjax.bench.step_time --config A --config B   several configs' steps timed in turns
  python -m vlmjax.bench.compile --config C --topology T   the step compiled for a TPU slice: memory,
                                                           FLOPs, estimated time (no TPU needed)

The measuring modules return plain dicts; `report.py` renders them (markdown, text) and writes the
JSON + markdown pairs; `xla.py` reads a compiled step's memory and cost; `vlmjax.cpu_memory` keeps
glibc's freed memory on CPU-only runs. Nothing here imports JAX when the package is imported: the
commands set XLA_FLAGS, or libtpu's paths, before JAX starts.
"""

# The most devices the loss-memory sweep uses (`losses.py`); `python -m vlmjax.bench --losses` fakes
# this many on a CPU, which must be set before JAX is imported, so the number lives here.
LOSS_DEVICES = 8
