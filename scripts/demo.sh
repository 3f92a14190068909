#!/usr/bin/env bash
# The default demo: progressive training on the bundled public-domain corpus (CPU, about 5 minutes).
# Arguments go on to `flm run` (e.g. --out DIR, --set key=value). Run again, it does not start over:
# a finished run folder gets its report printed, an unfinished one is resumed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh

out=""
passthrough=0  # --help, --scratch (its own folder) and --resume go to flm unchanged
prev=""
for arg in "$@"; do
  case "$prev" in --out) out="$arg" ;; esac
  case "$arg" in
    --out=*) out="${arg#--out=}" ;;
    -h | --help | --scratch | --scratch=* | --resume) passthrough=1 ;;
  esac
  prev="$arg"
done
if [ "$passthrough" = 1 ]; then
  exec .venv/bin/flm run configs/demo.toml "$@"
fi
run=(.venv/bin/flm run configs/demo.toml "$@")
if [ -z "$out" ]; then
  out=runs/demo  # the config's own default (name = "demo"), made explicit so the check below looks there
  run+=(--out "$out")
fi
if [ ! -f "$out/config.toml" ]; then
  exec "${run[@]}"
fi

# A run is finished when report.md exists (flm run writes it after the last stage) and every stage in its
# config.toml has a checkpoint.
stages=$(grep -c '^\[\[stages\]\]' "$out/config.toml" || true)
done_stages=0
for ((i = 1; i <= stages; i++)); do
  if compgen -G "$out/stage$i/checkpoints/step_*" >/dev/null; then done_stages=$((done_stages + 1)); fi
done
if [ -f "$out/report.md" ] && [ "$done_stages" = "$stages" ]; then
  cat "$out/report.md"
  echo
  echo "$out already holds this finished run (report above, plot in $out/loss.png)."
  echo "To train again: bash scripts/demo.sh --out NEW_FOLDER (e.g. runs/demo2), or delete $out and rerun."
  exit 0
fi
echo "$out holds an unfinished run: resuming it (flm run configs/demo.toml --resume)" >&2
exec "${run[@]}" --resume
