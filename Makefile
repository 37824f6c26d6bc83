# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_WORKDIR ?= workdirs/demo

.PHONY: demo test test-fast install clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# venv + install, build the built-in dataset, train configs/demo.py, evaluate, export an inference bundle.
demo: $(STAMP)
	$(BIN)/python -m vlmjax.data.shapes --data_dir data/tfds --config default
	$(BIN)/python -m vlmjax.train --config configs/demo.py --workdir $(DEMO_WORKDIR)
	$(BIN)/python -m vlmjax.evaluate --workdir $(DEMO_WORKDIR)
	$(BIN)/python -m vlmjax.export --workdir $(DEMO_WORKDIR) --out $(DEMO_WORKDIR)/bundle

# The whole suite, slow end-to-end tests included (about 5 minutes on 2 cores); `make test-fast`
# skips the tests marked slow.
test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) workdirs *.egg-info
