#!/usr/bin/env bash
# The test suite: lint, then pytest (fast, offline, CPU only).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh test
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
.venv/bin/ruff check flm tests benchmarks
exec .venv/bin/python -m pytest "$@"
