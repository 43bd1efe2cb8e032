# Sourced by scripts/table*.sh after they set TABLE (one id, or several: "9 10") and their
# variables: runs the tables' runs (scripts/run_table.py), then prints them beside the paper's
# numbers (scripts/make_tables.py).
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
# The variables every table script takes, with their defaults: the one place they are set.
DATA_ROOT=${DATA_ROOT:-data}          # holds cifar-10-batches-py/, cifar-100-python/, ImageNet_LT/, iNaturalist/
OUT_ROOT=${OUT_ROOT:-runs/tables}     # one folder per run below it; the report in OUT_ROOT/report
SEEDS=${SEEDS:-"0 1 2"}               # one run per seed; cells show mean ± std over them
GPUS=${GPUS:-all}                     # all | cpu | ids, e.g. "0 1 2 3"
RUNS_PER_GPU=${RUNS_PER_GPU:-}        # runs sharing one GPU at once (default: 4 on GPUs, 1 on the CPU)
PROCS_PER_RUN=${PROCS_PER_RUN:-}     # processes (GPUs) per run; default: the table's (repro/tables.yaml)
STACK_SEEDS=${STACK_SEEDS:-0}         # 1: a row's new seeds train together in one process (train.py --seeds)
ROWS=${ROWS:-}                        # only the rows whose name matches this regular expression, e.g. "Focal-SAM"
                                      # (runs and report)
SMOKE=${SMOKE:-0}                      # 1: synthetic data, 2 tiny epochs per run (a CPU check of the pipeline)
DRY_RUN=${DRY_RUN:-0}                  # 1: print every run's exact command and state, run nothing
BEST_ON_TEST=${BEST_ON_TEST:-0}        # 1: the report also prints the paper's best-on-test selection, labelled
# On a SLURM cluster (repro/slurm.py, docs/clusters.md): LAUNCHER=slurm makes each run (or each row's
# seeds with STACK_SEEDS=1) a SLURM job; the same command later prints what finished and where the
# rest stands. Empty: the defaults per dataset.
LAUNCHER=${LAUNCHER:-local}           # local | slurm
PARTITION=${PARTITION:-}              # SLURM partition (default: the cluster's default)
TIME=${TIME:-}                        # time limit per job, minutes or [D-]HH:MM:SS; a job reaching it is requeued
GPUS_PER_NODE=${GPUS_PER_NODE:-}      # GPUs per node; fewer than a run's processes spreads it over nodes; 0: CPU
CPUS_PER_GPU=${CPUS_PER_GPU:-}        # CPUs per GPU
MEM_PER_GPU=${MEM_PER_GPU:-}          # memory per GPU, GB
SBATCH=${SBATCH:-}                    # other sbatch options, e.g. "account=lab qos=normal"
WAIT=${WAIT:-0}                       # 1: wait for every job to end, then print the table
RETRY_FAILED=${RETRY_FAILED:-0}       # 1: submit the runs whose job failed again
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
if [ "$SMOKE" = 1 ] && [ "$OUT_ROOT" = runs/tables ]; then
  OUT_ROOT=runs/tables-smoke   # synthetic runs never land beside real ones
fi
tables=()
for t in $TABLE; do tables+=(--table "$t"); done
args=("${tables[@]}" --out-root "$OUT_ROOT" --seeds "$SEEDS")
[ -n "${DATA_ROOT:-}" ] && args+=(--data-root "$DATA_ROOT")
[ -n "${PROCS_PER_RUN:-}" ] && args+=(--procs-per-run "$PROCS_PER_RUN")
[ -n "${ROWS:-}" ] && args+=(--rows "$ROWS")
[ "$SMOKE" = 1 ] && args+=(--smoke)
[ "$STACK_SEEDS" = 1 ] && args+=(--stack-seeds)
# GPUS and RUNS_PER_GPU place runs on this machine: run_table.py refuses them with LAUNCHER=slurm
{ [ "$LAUNCHER" = local ] || [ "$GPUS" != all ]; } && args+=(--gpus "$GPUS")
[ -n "${RUNS_PER_GPU:-}" ] && args+=(--runs-per-gpu "$RUNS_PER_GPU")
if [ "$LAUNCHER" != local ]; then
  args+=(--launcher "$LAUNCHER")
  [ -n "$PARTITION" ] && args+=(--partition "$PARTITION")
  [ -n "$TIME" ] && args+=(--time "$TIME")
  [ -n "$GPUS_PER_NODE" ] && args+=(--gpus-per-node "$GPUS_PER_NODE")
  [ -n "$CPUS_PER_GPU" ] && args+=(--cpus-per-gpu "$CPUS_PER_GPU")
  [ -n "$MEM_PER_GPU" ] && args+=(--mem-per-gpu "$MEM_PER_GPU")
  for kv in $SBATCH; do args+=(--sbatch "$kv"); done
  [ "$WAIT" = 1 ] && args+=(--wait)
  [ "$RETRY_FAILED" = 1 ] && args+=(--retry-failed)
fi
if [ "$DRY_RUN" = 1 ]; then
  exec "$PYTHON" scripts/run_table.py "${args[@]}" --dry-run
fi
"$PYTHON" scripts/run_table.py "${args[@]}"
status=$?
[ "$status" = 130 ] && exit 130  # Ctrl-C: stop here; the same command resumes
report=("${tables[@]}" --out-root "$OUT_ROOT" --seeds "$SEEDS")
[ -n "${ROWS:-}" ] && report+=(--rows "$ROWS")
[ "$BEST_ON_TEST" = 1 ] && report+=(--best-on-test)
"$PYTHON" scripts/make_tables.py "${report[@]}" || status=$?
exit "$status"
