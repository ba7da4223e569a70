# r1lab: two commands do all the set-up.
#   make demo   -> creates .venv, installs r1lab (CPU torch 2.13.0 unless torch is already there), runs `r1lab demo`
#   make test   -> same set-up plus test tools, runs the default test suite
# Bring your own torch (e.g. a CUDA build): `make demo VENV_FLAGS=--system-site-packages`, or
# install torch into .venv first; the set-up only installs torch when `import torch` fails.
PYTHON ?= python3
VENV ?= .venv
VENV_FLAGS ?=
TORCH ?= torch==2.13.0
ARGS ?=
PYTEST_ARGS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.r1lab-$(shell cksum < pyproject.toml | cut -d' ' -f1)

.PHONY: demo test setup clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install "$(TORCH)"
	$(BIN)/python -m pip install -e ".[dev]"
	rm -f $(VENV)/.r1lab-* && touch $@

setup: $(STAMP)

demo: setup
	$(BIN)/r1lab demo $(ARGS)

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
