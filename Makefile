# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_WORKDIR ?= workdirs/demo

.PHONY: demo test test-all install clean

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

# The fast suite (what CI runs); slow end-to-end tests are marked and run by `make test-all`.
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) workdirs *.egg-info
