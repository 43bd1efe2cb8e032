# Sourced by scripts/table*.sh after they set TABLE (one id, or several: "9 10") and their
# variables: runs the tables' runs (scripts/run_table.py), then prints them beside the paper's
# numbers (scripts/make_tables.py).
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
SEEDS=${SEEDS:-0 1 2}
SMOKE=${SMOKE:-0}
DRY_RUN=${DRY_RUN:-0}
if [ "$SMOKE" = 1 ] && [ "$OUT_ROOT" = runs/tables ]; then
  OUT_ROOT=runs/tables-smoke   # synthetic runs never land beside real ones
fi
tables=()
for t in $TABLE; do tables+=(--table "$t"); done
args=("${tables[@]}" --out-root "$OUT_ROOT" --seeds "$SEEDS" --gpus "$GPUS")
[ -n "${DATA_ROOT:-}" ] && args+=(--data-root "$DATA_ROOT")
[ -n "${RUNS_PER_GPU:-}" ] && args+=(--runs-per-gpu "$RUNS_PER_GPU")
[ -n "${PROCS_PER_RUN:-}" ] && args+=(--procs-per-run "$PROCS_PER_RUN")
[ -n "${ROWS:-}" ] && args+=(--rows "$ROWS")
[ "$SMOKE" = 1 ] && args+=(--smoke)
if [ "$DRY_RUN" = 1 ]; then
  exec "$PYTHON" scripts/run_table.py "${args[@]}" --dry-run
fi
"$PYTHON" scripts/run_table.py "${args[@]}"
status=$?
[ "$status" = 130 ] && exit 130  # Ctrl-C: stop here; the same command resumes
"$PYTHON" scripts/make_tables.py "${tables[@]}" --out-root "$OUT_ROOT" --seeds "$SEEDS" || status=$?
exit "$status"
