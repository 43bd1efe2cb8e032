#!/usr/bin/env bash
# The GPU checks of the speed work (docs/benchmarks.md), as one script for a machine with a CUDA
# device: the tests that need CUDA, then the step, epoch and throughput benchmarks. Prints
# everything and writes the figures under OUT. CIFAR-10 must be in DATA_ROOT (cifar-10-batches-py/).
#
#   DATA_ROOT=/datasets bash scripts/gpu_checks.sh          # about 15 minutes on an H100-class GPU
#   QUICK=1 DATA_ROOT=/datasets bash scripts/gpu_checks.sh  # fewer steps and runs (about 5 minutes)
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
DATA_ROOT=${DATA_ROOT:-data}
OUT=${OUT:-runs/gpu_checks}
QUICK=${QUICK:-0}
mkdir -p "$OUT" || exit 1
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "error: no CUDA device visible to $PYTHON; these checks are for a GPU machine" >&2
  exit 2
fi
if [ ! -d "$DATA_ROOT/cifar-10-batches-py" ]; then
  echo "error: $DATA_ROOT/cifar-10-batches-py not found; set DATA_ROOT to the folder holding CIFAR-10" >&2
  exit 2
fi
steps=50; runs=1,2,4,8,16
[ "$QUICK" = 1 ] && { steps=20; runs=1,4,16; }
status=0
step() { echo; echo "### $*"; "$@" || status=1; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
# 1. correctness on CUDA: captured step = eager, stacked members = runs alone, device loader
step "$PYTHON" -m pytest -q -rs tests/test_capture.py tests/test_stacked.py tests/test_device_loader.py
# 2. one step per optimizer with each speed option (paper Table 1 ratios); capture needs >= 4 warm-up steps
step "$PYTHON" scripts/bench_step.py --device cuda --optimizers sgd,sam,imbsam,focal_sam --steps "$steps" --warmup 6 \
  --also train.capture=step --also train.compile=model --also optim.clean_backward=batched --also train.amp=bf16 \
  --json "$OUT/step.json"
# 3. real epochs (train + test) per optimizer, the paper's Table 1 beside them; eager, then captured + bf16
step "$PYTHON" scripts/bench_step.py --device cuda --mode epoch --epochs 2 --set data.root="$DATA_ROOT" \
  --optimizers sgd,sam,imbsam,focal_sam --json "$OUT/epoch.json"
step "$PYTHON" scripts/bench_step.py --device cuda --mode epoch --epochs 2 --set data.root="$DATA_ROOT" \
  --optimizers sgd,sam,focal_sam --set train.capture=step --set train.amp=bf16 --json "$OUT/epoch_captured.json"
# 4. runs per GPU: N processes against N stacked seeds in one process
step "$PYTHON" scripts/bench_step.py --device cuda --mode throughput --runs "$runs" --steps "$steps" --warmup 6 \
  --optimizers focal_sam --set data.root="$DATA_ROOT" --json "$OUT/throughput.json"
echo; echo "figures in $OUT"
exit "$status"
