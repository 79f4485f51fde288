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

.PHONY: install test test-slow bench bench-quick reproduce lint clean

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

lint: install
	$(VENV)/bin/shellcheck scripts/*.sh

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
