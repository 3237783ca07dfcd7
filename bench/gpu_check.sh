#!/usr/bin/env bash
# The prepared GPU check (bench/gpu_check.py says what it measures): about 8 minutes on one GPU.
#
#   bash bench/gpu_check.sh OUT_DIR          # writes OUT_DIR/gpu_check.md
#   bash bench/gpu_check.sh OUT_DIR --dry    # the same steps on the CPU at test sizes (the tests run this)
#
# It uses the course's environment (.venv, from `make setup`), else $PYTHON, else python3.
# Needs no Hub: the online profiles run against stand-ins seeded into OUT_DIR/hf-home.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ]; then
  echo "usage: bash bench/gpu_check.sh OUT_DIR [--dry]" >&2
  exit 2
fi
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
missing=$("$PYTHON" - <<'PY'
import importlib.util
needed = ["torch", "transformers", "peft", "datasets", "trl", "nbval", "nbclient", "ipykernel", "rouge_score",
          "sacrebleu", "sentencepiece", "gguf", "matplotlib", "pandas"]
print(" ".join(name for name in needed if importlib.util.find_spec(name) is None))
PY
)
if [ -n "$missing" ]; then
  echo "$PYTHON lacks: $missing. Run \`make setup\` (or install them) and try again." >&2
  exit 2
fi
export TOKENIZERS_PARALLELISM=false HF_HUB_DISABLE_TELEMETRY=1 PYTHONUNBUFFERED=1
exec "$PYTHON" bench/gpu_check.py "$@"
