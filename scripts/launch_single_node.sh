#!/usr/bin/env bash
# One machine, N GPUs (or N CPU processes with gloo), DistributedDataParallel through torchrun.
#   GPUS=2 bash scripts/launch_single_node.sh configs/cifar10_lt/la_focal_sam.yaml --out runs/c10_focal
# train.batch_size in the config is the GLOBAL batch: each of the N processes takes batch_size / N.
# MAX_RESTARTS=N lets torchrun restart the worker group after a failure; the run then resumes
# from <out>/last.pt (give --out so that every attempt uses the same folder).
set -euo pipefail
CONFIG=${1:?usage: GPUS=N bash scripts/launch_single_node.sh CONFIG [train.py options]}
shift
GPUS=${GPUS:-$(python -c "import torch; print(max(1, torch.cuda.device_count()))")}
MAX_RESTARTS=${MAX_RESTARTS:-0}
exec torchrun --standalone --nproc_per_node "$GPUS" --max-restarts "$MAX_RESTARTS" \
    train.py --config "$CONFIG" "$@"
