# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_WORKDIR ?= workdirs/demo

.PHONY: demo test test-fast test-interop bench-open-clip install libtpu clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# venv + install, build the built-in dataset, train configs/demo.py, evaluate, export an inference
# bundle, and run the built-in dataset's evaluation suite on the bundle.
demo: $(STAMP)
	$(BIN)/python -m vlmjax.data.shapes --data_dir data/tfds --config default
	$(BIN)/python -m vlmjax.train --config configs/demo.py --workdir $(DEMO_WORKDIR)
	$(BIN)/python -m vlmjax.evaluate --workdir $(DEMO_WORKDIR)
	$(BIN)/python -m vlmjax.export --workdir $(DEMO_WORKDIR) --out $(DEMO_WORKDIR)/bundle --force
	$(BIN)/python -m vlmjax.evaluate --bundle $(DEMO_WORKDIR)/bundle --suite configs/evals/shapes.py --out $(DEMO_WORKDIR)/suite

# The whole suite, slow end-to-end tests included, in two worker processes (a test file stays in
# one worker: module fixtures train once); `make test-fast` skips the tests marked slow.
PYTEST := $(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=15

test: $(STAMP)
	$(PYTEST)

test-fast: $(STAMP)
	$(PYTEST) -m "not slow"

# Parity with open_clip and HF transformers: installs the `interop` extra (torch, torchvision,
# open_clip, transformers: about 3 GB of wheels) and runs the interop tests. `make test` does not
# install it; there those tests report as skipped.
test-interop: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[test,interop]"
	$(BIN)/python -m pytest -q tests/test_interop.py tests/test_interop_torch.py tests/test_interop_siglip.py tests/test_bench_open_clip.py

# vlmjax's train step against open_clip's PyTorch one on the same model, side by side in one run per
# config (README "Benchmarks"): installs the `interop` extra as test-interop does. Run it on an idle
# machine; the reports record the load average.
bench-open-clip: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[test,interop]"
	$(BIN)/python -m vlmjax.bench.open_clip --config configs/bench_vits16.py --out benchmarks --repeats 5 --op_profile
	# The demo's size with a patch embedding: open_clip has no convolutional stem.
	$(BIN)/python -m vlmjax.bench.open_clip --config configs/demo.py --config.model.image.stem=patch --out benchmarks --repeats 5 --op_profile

# libtpu for `python -m vlmjax.bench.compile` (TPU sizing) on a machine without TPUs: the version jax[tpu]
# names, installed into .venv/libtpu rather than site-packages, where JAX would try to start a TPU
# runtime in every process. On a TPU VM install the `tpu` extra instead.
libtpu: $(STAMP)
	$(BIN)/python -m pip install --quiet --no-deps --target $(VENV)/libtpu "$$($(BIN)/python -c \
	  "import importlib.metadata as m; print(next(r.split(';')[0].replace(' ', '') for r in m.requires('jax') if r.startswith('libtpu')))")"

clean:
	rm -rf $(VENV) workdirs *.egg-info
