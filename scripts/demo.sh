#!/usr/bin/env bash
# The default demo: progressive training on the bundled public-domain corpus (CPU, about 5 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/flm run configs/demo.toml "$@"
