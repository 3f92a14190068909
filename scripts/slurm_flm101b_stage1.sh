#!/usr/bin/env bash
# FLM-101B stage 1 (16B, TP·PP·DP = 2·1·96) on 192 GPUs: 24 nodes x 8, one torchrun per node, c10d rendezvous
# on the first node. Submit from the repository root: sbatch scripts/slurm_flm101b_stage1.sh
# Point configs/flm-101b.toml's [data] at your corpus first (the paper's is not public; flm refuses to train a config
# without data.train, e.g. pass --set 'data.train=[{path="/data/corpus/*.jsonl"}]' below). Untested: written
# without access to a cluster. See README "Multi-node" and docs/parallel.md "Launch".
#SBATCH --job-name=flm101b-stage1
#SBATCH --nodes=24
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --exclusive
#SBATCH --time=10-00:00:00
#SBATCH --output=logs/%x-%j.out
#SBATCH --signal=TERM@300  # 5 min before the time limit: finish the step, checkpoint, exit 0 (docs/reliability.md)
set -euo pipefail

CONFIG=${CONFIG:-configs/flm-101b.toml}
OUT=${OUT:-runs/flm-101b}
PY=${PYTHON:-.venv/bin/python}
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=${MASTER_PORT:-29500}

export OMP_NUM_THREADS=$((SLURM_CPUS_PER_TASK / 8))  # 8 processes per node share the node's cores
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1  # a failed collective ends the job instead of hanging it
export NCCL_IB_DISABLE=${NCCL_IB_DISABLE:-0}  # InfiniBand between the nodes
export NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-^lo,docker}  # the bootstrap interface: not loopback/docker
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

# Stage 1 alone (`flm train` takes a config without [[stages]]: the top-level [model] is the 16B stage) with
# stage 1's layout; --set parallel.timeout_s=SECONDS raises the collective timeout (default 1800) if rank 0
# needs longer to write a checkpoint. `-m flm.cli run "$CONFIG"` instead runs the whole three-stage plan.
srun --kill-on-bad-exit=1 "$PY" -m torch.distributed.run \
    --nnodes "$SLURM_NNODES" --nproc_per_node 8 --shutdown_timeout 280 \
    --rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv_id "$SLURM_JOB_ID" \
    -m flm.cli train "$CONFIG" --set 'stages=[]' --set parallel.tp=2 --set parallel.pp=1 --set parallel.dp=96 \
    --set train.steps=52000 --out "$OUT/stage1" "$@"
