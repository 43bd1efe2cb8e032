#!/usr/bin/env bash
# Paper Tables 2, 3, 5, 8 and 9, foundation-model rows: CLIP ViT-B/16 fine-tuned for 20 epochs in
# full (FFT) or with LIFT's adapters, each alone and with SAM / ImbSAM / CC-SAM / Focal-SAM
# (configs/clip/; paper numbers and runs in repro/tables_foundation.yaml). Needs OpenAI's
# ViT-B-16.pt (README, "Foundation models").
#   TABLE=2F  CIFAR-100-LT, 10 rows x IF 100 / 200 / 50 / 10          TABLE=5F  CIFAR-10-LT, the same
#   TABLE=3F  ImageNet-LT and iNaturalist 2018, 10 rows                TABLE=8F  CIFAR-100-LT, SAM at 30 epochs
#   TABLE=9F  ImageNet-LT, SAM at 30 epochs
#
#   TABLE=2F bash scripts/table_foundation.sh                  # every run of the table, then the table
#   TABLE=2F DRY_RUN=1 bash scripts/table_foundation.sh        # list the runs (config, seed, folder, state)
#   TABLE=2F SMOKE=1 SEEDS=0 GPUS=cpu bash scripts/table_foundation.sh   # synthetic data, tiny random CLIP
# Finished runs are skipped, half-finished ones resumed: run it again to go on. Tables 4 and 7
# evaluate 3F's ImageNet-LT runs: scripts/table4_7_ood.sh.
TABLE=${TABLE:?set TABLE to 2F, 3F, 5F, 8F or 9F}
DATA_ROOT=${DATA_ROOT:-data}          # holds cifar-10-batches-py/, cifar-100-python/, ImageNet_LT/, iNaturalist/
OUT_ROOT=${OUT_ROOT:-runs/tables}     # one folder per run below it; the report in OUT_ROOT/report
SEEDS=${SEEDS:-"0 1 2"}               # one run per seed; cells show mean ± std over them
GPUS=${GPUS:-all}                     # all | cpu | ids, e.g. "0 1 2 3"
RUNS_PER_GPU=${RUNS_PER_GPU:-1}       # ViT-B/16 at batch 128 takes most of a 24 GB GPU: one run each
CLIP_WEIGHTS=${CLIP_WEIGHTS:-}        # OpenAI's ViT-B-16.pt, if not at ~/.cache/clip/ViT-B-16.pt
SMOKE=${SMOKE:-0}
DRY_RUN=${DRY_RUN:-0}
BEST_ON_TEST=${BEST_ON_TEST:-0}       # 1: the report also prints the paper's best-on-test selection, labelled
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
SPEC=repro/tables_foundation.yaml     # until the lead merges it into repro/tables.yaml
if [ "$SMOKE" = 1 ] && [ "$OUT_ROOT" = runs/tables ]; then
  OUT_ROOT=runs/tables-smoke          # synthetic runs never land beside real ones
fi
args=(--table "$TABLE" --spec "$SPEC" --out-root "$OUT_ROOT" --seeds "$SEEDS" --gpus "$GPUS" --runs-per-gpu "$RUNS_PER_GPU")
[ -n "$DATA_ROOT" ] && [ "$SMOKE" != 1 ] && args+=(--data-root "$DATA_ROOT")
[ -n "$CLIP_WEIGHTS" ] && args+=(--set "model.clip_weights=$CLIP_WEIGHTS")
# Smoke: the built-in synthetic data (repro/spec.py SMOKE_SETS) and the tiny random CLIP, no weights.
[ "$SMOKE" = 1 ] && args+=(--smoke --set model.name=clip_tiny --set "~model.clip_weights")
if [ "$DRY_RUN" = 1 ]; then
  exec "$PYTHON" scripts/run_table.py "${args[@]}" --dry-run
fi
"$PYTHON" scripts/run_table.py "${args[@]}"
status=$?
[ "$status" = 130 ] && exit 130  # Ctrl-C: stop here; the same command resumes
report=(--spec "$SPEC" --table "$TABLE" --out-root "$OUT_ROOT" --seeds "$SEEDS")
[ "$BEST_ON_TEST" = 1 ] && report+=(--best-on-test)
"$PYTHON" scripts/make_tables.py "${report[@]}" || status=$?
exit "$status"
