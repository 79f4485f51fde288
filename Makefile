# One command sets up and runs the main job (`make bench`); one runs the tests (`make test`).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# jax[cpu] here and in CI; `make install JAX_EXTRA=cuda12` on a GPU box, `JAX_EXTRA=tpu` on a TPU VM.
# The venv remembers the extra it was made with, so a later bare `make bench` keeps it.
JAX_EXTRA ?= $(shell cat $(VENV)/.jax-extra 2>/dev/null || echo cpu)
# Pinned versions that were tested together; `make install CONSTRAINTS=` to float them.
CONSTRAINTS ?= -c constraints.txt
STAMP := $(VENV)/.installed-$(JAX_EXTRA)
# `make test` runs the tests marked `numerics` (rounding-sensitive: sums in other orders,
# float64 and Keras references) a second time with XLA:CPU's code generation capped at this
# ISA, so a developer on an AVX-512 machine sees what an AVX2-only CPU computes. x86-64 only;
# `make test NUMERICS_ISA=` skips the second pass.
NUMERICS_ISA ?= $(if $(filter x86_64 amd64,$(shell uname -m)),AVX2,)

.PHONY: install test test-slow bench bench-quick reproduce speedrun speedrun-peers docs-tables \
	docs lint clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(CONSTRAINTS) "jax[$(JAX_EXTRA)]" -e ".[tfds,keras,extras,streaming,test]"
	echo $(JAX_EXTRA) > $(VENV)/.jax-extra
	touch $@

test: install
	$(PY) -m pytest -q -n 2 -m "not slow"
ifneq ($(NUMERICS_ISA),)
	XLA_FLAGS="$(strip $(XLA_FLAGS) --xla_cpu_max_isa=$(NUMERICS_ISA))" \
		$(PY) -m pytest -q -n 2 -m "numerics and not slow"
endif

test-slow: install
	$(PY) -m pytest -q -m slow

bench: install
	$(PY) -m benchmarks.run

bench-quick: install
	$(PY) -m benchmarks.run --quick

reproduce: install
	$(PY) -m benchmarks.reproduce

# The speedrun's PyTorch peer needs torch, which is not a jaxscale dependency: the CPU wheel is
# installed into the venv on demand (tested version below); without it (offline, no wheel for
# this platform) the peer is skipped with a message and the rest of the speedrun runs.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

speedrun-peers: install
	@$(PY) -c "import torch" 2>/dev/null \
		|| $(PY) -m pip install -q "$(TORCH_SPEC)" --index-url $(TORCH_INDEX) \
		|| echo "speedrun: no $(TORCH_SPEC) CPU wheel installed; the PyTorch peer is skipped"

# Time to 99.0 % / 99.5 % MNIST test accuracy, 5 seeds, ours vs PyTorch vs Keras (~10 min).
speedrun: speedrun-peers
	$(PY) -m benchmarks.speedrun $(SPEEDRUN_ARGS)

# The tables of README.md and docs/*.md (and the charts) from the committed results files
# under benchmarks/results/; tests/test_docs.py checks that they are up to date.
docs-tables: install
	$(PY) -m benchmarks.report --docs

# The HTML docs with the API reference from the docstrings (Sphinx); installs the `docs`
# extra first (the tests and CI do not need it). Output: docs/_build/html/index.html.
docs: install
	$(PY) -m pip install -q $(CONSTRAINTS) -e ".[docs]"
	$(PY) -m sphinx -W --keep-going -q -b html docs docs/_build/html

lint: install
	$(VENV)/bin/shellcheck scripts/*.sh

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis docs/_build docs/_autosummary
