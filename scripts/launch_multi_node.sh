#!/usr/bin/env bash
# M machines x N GPUs each, c10d rendezvous. Run the same command on every node:
#   NNODES=2 GPUS=4 RDZV_HOST=node0.example RDZV_PORT=29400 JOB_ID=inat-focal \
#     bash scripts/launch_multi_node.sh configs/inat2018/la_focal_sam.yaml --out /shared/runs/inat_focal
#   NNODES=2 GPUS=4 RDZV_HOST=node0.example bash scripts/launch_multi_node.sh --resume /shared/runs/inat_focal
# The first argument is the config, or train.py's own options when it starts with "--". The run
# folder must be on storage every node sees (only global rank 0 writes to it, but a restart on any
# node resumes from its last.pt). train.batch_size is the GLOBAL batch over NNODES x GPUS.
# `run_table.py --launcher slurm` calls this on every node of a multi-GPU job, with the variables
# taken from SLURM's environment (repro/slurm.py). PYTHON: the interpreter (default: python).
set -euo pipefail
: "${1:?usage: NNODES=M GPUS=N RDZV_HOST=host bash scripts/launch_multi_node.sh CONFIG|--resume DIR [train.py options]}"
: "${NNODES:?set NNODES}" "${RDZV_HOST:?set RDZV_HOST (a host every node can reach)}"
PYTHON=${PYTHON:-python}
if [[ "$1" == --* ]]; then args=("$@"); else args=(--config "$@"); fi
GPUS=${GPUS:-$("$PYTHON" -c "import torch; print(max(1, torch.cuda.device_count()))")}
TRAIN=$(dirname "${BASH_SOURCE[0]}")/../train.py
exec "$PYTHON" -m torch.distributed.run --nnodes "$NNODES" --nproc_per_node "$GPUS" \
    --rdzv_backend c10d --rdzv_endpoint "$RDZV_HOST:${RDZV_PORT:-29400}" --rdzv_id "${JOB_ID:-lt-sam}" \
    --max-restarts "${MAX_RESTARTS:-0}" \
    "$TRAIN" "${args[@]}"
