#!/usr/bin/env bash
# GPU readiness: the checks this project's CPU machine cannot run, in one go (under 8 minutes on one 8-GPU node).
#   1. bf16 autocast training steps (flm train, one GPU)       2. torch.compile of the blocks (one GPU)
#   3. FSDP2 over NCCL on every visible GPU (torchrun)          4. tensor parallel tp=2 over NCCL (>= 2 GPUs)
#   5. bf16 training throughput of flm vs Hugging Face GPTNeoX at d 2048, 24 layers, seq 2048
#      (benchmarks/throughput.py --device cuda --dtype bf16 --shapes gpu)
#   6. GEMM efficiency of the shapes the performance model uses (python -m flm.scaling.perf.calibrate), written
#      to benchmarks/results/gemm_calibration.json for `flm plan layout --calibrate FILE`, and FLM-101B's
#      101B stage ranked with and without it (what the calibration changed)
# Prints one JSON line at the end: each check's status and seconds, tokens/s and MFU of flm and of HF.
# UNTESTED on a GPU so far (written on a CPU-only machine); without a CUDA device it stops at once, exit 3.
#   bash scripts/gpu_check.sh            (uses .venv/bin/python if present, else python; PYTHON=... to choose)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: no CUDA device (torch.cuda.is_available() is False with $PY): run this on a GPU machine" >&2
    exit 3
fi
NGPU=$("$PY" -c 'import torch; print(torch.cuda.device_count())')
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
OUT=$(mktemp -d /tmp/flm-gpu-check.XXXXXX)
CFG=configs/demo.toml
GPU_SET=(--set train.device=cuda --set train.dtype=bf16 --set train.eval_every=0 --set train.progress=false)
STATUS=()
FAILED=0

check() {  # check NAME SECONDS COMMAND...: run with a hard timeout, log to $OUT/NAME.log, record pass/fail
    local name=$1 limit=$2 start rc
    shift 2
    start=$(date +%s)
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    local secs=$(($(date +%s) - start))
    if [ $rc -eq 0 ]; then echo "gpu_check: $name ok (${secs} s)" >&2; else
        echo "gpu_check: $name FAILED (exit $rc, ${secs} s): see $OUT/$name.log" >&2
        FAILED=1
    fi
    STATUS+=("\"$name\": {\"rc\": $rc, \"seconds\": $secs}")
}

echo "gpu_check: $NGPU GPU(s): $("$PY" -c 'import torch; print(torch.cuda.get_device_name(0))'); logs in $OUT" >&2
"$PY" -m flm.cli data prepare "$CFG" >"$OUT/prepare.log" 2>&1  # the bundled corpus, once (cached)
check bf16 90 "$PY" -m flm.cli train "$CFG" "${GPU_SET[@]}" --set train.steps=20 --out "$OUT/bf16"
check compile 150 "$PY" -m flm.cli train "$CFG" "${GPU_SET[@]}" --set train.compile=true --set train.steps=10 \
    --out "$OUT/compile"
check fsdp2_nccl 90 "$PY" -m torch.distributed.run --standalone --nproc_per_node "$NGPU" -m flm.cli train "$CFG" \
    "${GPU_SET[@]}" --set train.steps=10 --out "$OUT/fsdp2"
if [ "$NGPU" -ge 2 ]; then
    check tp2_nccl 90 "$PY" -m torch.distributed.run --standalone --nproc_per_node 2 -m flm.cli train "$CFG" \
        "${GPU_SET[@]}" --set parallel.tp=2 --set train.steps=10 --out "$OUT/tp2"
fi
check throughput 180 "$PY" benchmarks/throughput.py --device cuda --dtype bf16 --shapes gpu --threads 4 \
    --warmup 2 --repeats 5 --out "$OUT/throughput.json"
CAL=benchmarks/results/gemm_calibration.json
check calibrate 120 "$PY" -m flm.scaling.perf.calibrate --out "$CAL"
GPU_NAME=$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0))')
for mode in plain calibrated; do
    extra=(); [ "$mode" = calibrated ] && extra=(--calibrate "$CAL")
    "$PY" -m flm.cli plan layout configs/flm-101b.toml --stage 3 --gpus 192 --gpu "$GPU_NAME" --json --top 3 \
        "${extra[@]}" >"$OUT/layout_$mode.json" 2>"$OUT/layout_$mode.log" || echo "gpu_check: layout $mode FAILED" >&2
done
TP_JSON=$(tail -n 1 "$OUT/throughput.log" 2>/dev/null | grep '^{' || echo '{}')
"$PY" - "$TP_JSON" "$NGPU" "{$(IFS=,; echo "${STATUS[*]}")}" <<'PYEOF'
import json, sys
tp, ngpu, checks = json.loads(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
gpu = tp.get("gpu", {})
keys = ("flm_tok_s", "hf_tok_s", "ratio", "flm_mfu", "hf_mfu")
print(json.dumps({"gpus": ngpu, "checks": checks, "shape": "d2048 L24 seq2048 bf16", **{k: gpu.get(k) for k in keys}}))
PYEOF
exit $FAILED
