#!/usr/bin/env bash
# M machines x N GPUs each, c10d rendezvous. Run the same command on every node:
#   NNODES=2 GPUS=4 RDZV_HOST=node0.example RDZV_PORT=29400 JOB_ID=inat-focal \
#     bash scripts/launch_multi_node.sh configs/inat2018/la_focal_sam.yaml --out /shared/runs/inat_focal
# The run folder must be on storage every node sees (only global rank 0 writes to it, but a restart
# on any node resumes from its last.pt). train.batch_size is the GLOBAL batch over NNODES x GPUS.
set -euo pipefail
CONFIG=${1:?usage: NNODES=M GPUS=N RDZV_HOST=host bash scripts/launch_multi_node.sh CONFIG [train.py options]}
shift
: "${NNODES:?set NNODES}" "${RDZV_HOST:?set RDZV_HOST (a host every node can reach)}"
GPUS=${GPUS:-$(python -c "import torch; print(max(1, torch.cuda.device_count()))")}
exec torchrun --nnodes "$NNODES" --nproc_per_node "$GPUS" \
    --rdzv_backend c10d --rdzv_endpoint "$RDZV_HOST:${RDZV_PORT:-29400}" --rdzv_id "${JOB_ID:-lt-sam}" \
    --max-restarts "${MAX_RESTARTS:-0}" \
    train.py --config "$CONFIG" "$@"
