#!/usr/bin/env bash
# Create (or reuse) .venv with flm installed. The pinned CPU torch wheel goes in first: a bare "torch"
# requirement would otherwise pull a multi-GB CUDA build. Extras: pass them as $1 (e.g. "test").
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/pip install -q "torch==2.13.0" || .venv/bin/pip install -q "torch>=2.6" --index-url https://download.pytorch.org/whl/cpu
fi
if [ -n "$extras" ]; then
  .venv/bin/pip install -q -e ".[$extras]"
else
  .venv/bin/pip install -q -e .
fi
