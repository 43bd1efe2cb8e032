#!/usr/bin/env bash
# The GPU checks in one command that fits one call of BUDGET_S seconds (default 540: a 9-minute
# call) on a machine with a CUDA device, spending it in this order and writing under OUT as it goes:
#   1. the CUDA-only tests: captured step, stacked seeds, device loader, bf16          (about a minute)
#   2. scripts/bench_step.py: one step per optimizer with each speed option           (about a minute)
#   3. paper cells with what is left: Table 5's LA, LA+Focal-SAM, then LA+SAM at IF 100, 200 epochs,
#      three seeds each, in the fastest mode part 1 showed to be exact (seeds trained together,
#      captured step; data on the device); scripts/gpu_paper_cells.py times the first epochs, says
#      how many rows fit, runs those, and rewrites the report after every finished row.
# OUT receives at most seven files: gpu_checks.log (everything printed), device.txt, tests.txt,
# step.json, cells.md, cells.json, and nothing else; the run folders go to RUNS_ROOT.
#
#   DATA_ROOT=/datasets OUT=/tmp/out bash scripts/gpu_checks.sh        # CIFAR-10 in /datasets/cifar-10-batches-py
#   GPU_CHECKS_REHEARSAL=1 OUT=/tmp/out bash scripts/gpu_checks.sh     # the same steps on the CPU, tiny
#
# The rehearsal (tests/test_gpu_checks.py runs it) takes the same three steps on the CPU with a
# tiny schedule and synthetic data, so that the script itself is known to work before a GPU sees it.
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
REHEARSAL=${GPU_CHECKS_REHEARSAL:-0}
BUDGET_S=${BUDGET_S:-540}
OUT=${OUT:-runs/gpu_checks}
RUNS_ROOT=${RUNS_ROOT:-runs/gpu_cells}
DATA_ROOT=${DATA_ROOT:-data}
START=$(date +%s)
left() { echo $(( START + BUDGET_S - $(date +%s) )); }
mkdir -p "$OUT" "$RUNS_ROOT" || exit 2
exec > >(tee -a "$OUT/gpu_checks.log") 2>&1
status=0
step() { echo; echo "### [$(( $(date +%s) - START )) s] $*"; "$@"; local rc=$?; [ $rc -eq 0 ] || status=1; return $rc; }

tests_k=cuda                  # the tests that need a GPU (skipped in the rehearsal)
bench=(--optimizers sgd,sam,imbsam,focal_sam --also train.capture=step --also optim.clean_backward=batched
       --also train.amp=bf16)
if [ "$REHEARSAL" = 1 ]; then
  device=cpu; steps=2; warmup=1; bench=(--optimizers sgd,focal_sam --batch 8 --also optim.clean_backward=batched)
  cells=(--smoke --seeds 0,1 --rows LA,LA+Focal-SAM --probe-epochs 1 --set train.device=cpu)
  echo "REHEARSAL on the CPU: tiny schedule, synthetic data; no figure here is a GPU measurement" | tee "$OUT/device.txt"
else
  device=cuda; steps=20; warmup=6
  cells=(--set "data.root=$DATA_ROOT")
  if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "error: no CUDA device visible to $PYTHON; run the rehearsal with GPU_CHECKS_REHEARSAL=1" >&2; exit 2
  fi
  if [ ! -d "$DATA_ROOT/cifar-10-batches-py" ]; then
    echo "error: $DATA_ROOT/cifar-10-batches-py not found; set DATA_ROOT to the folder holding CIFAR-10" >&2; exit 2
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
  "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/device.txt"
fi

# 1. Correctness on the device; each feature's verdict picks the mode of part 3.
capture=step; stack=()
t1() { timeout 150 "$PYTHON" -m pytest -q -rs -p no:cacheprovider -k "$tests_k" "$@" 2>&1 | tee -a "$OUT/tests.txt"; return "${PIPESTATUS[0]}"; }
step t1 tests/test_capture.py || capture=none
step t1 tests/test_stacked.py || stack=(--no-stack)
step t1 tests/test_device_loader.py tests/test_optim_sharpness.py
[ "$REHEARSAL" = 1 ] && capture=none      # the CPU has no CUDA graphs (the plumbing is tested with a stand-in)
echo "part 3 mode: train.capture=$capture, seeds ${stack[*]:-trained together}, data.loader=auto (device on CUDA)"

# 2. One step per optimizer and speed option, interleaved (paper Table 1's ratios).
step timeout 150 "$PYTHON" scripts/bench_step.py --device "$device" --steps "$steps" --warmup "$warmup" "${bench[@]}" \
  --json "$OUT/step.json"

# 3. Paper cells with what is left (15 s kept for the last report).
budget=$(( $(left) - 15 ))
if [ "$budget" -gt 30 ]; then
  step "$PYTHON" scripts/gpu_paper_cells.py --out-root "$RUNS_ROOT" --report "$OUT" --budget-s "$budget" \
    --set "train.capture=$capture" "${stack[@]}" "${cells[@]}"
else
  echo "no time left for the paper cells ($budget s)"; status=1
fi
echo; echo "[$(( $(date +%s) - START )) s] figures in $OUT; run folders in $RUNS_ROOT"
exit "$status"
