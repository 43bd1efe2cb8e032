#!/usr/bin/env bash
# Paper Table 1: seconds per epoch of SGD / SAM / ImbSAM / CC-SAM / Focal-SAM on each dataset,
# measured by scripts/bench_step.py on the machine at hand (one GPU, alone on it; SEEDS and
# RUNS_PER_GPU do not apply). ImageNet-LT and iNaturalist need their train lists for the class counts.
# 4 benchmark runs (one per dataset, every optimizer in each).
#
#   bash scripts/table1_timing.sh                # every dataset, then the table
#   DRY_RUN=1 bash scripts/table1_timing.sh      # list the runs
#   SMOKE=1 bash scripts/table1_timing.sh        # synthetic data, 2 timed steps per optimizer (CPU check)
# Datasets already timed are skipped (delete OUT_ROOT/table1/<dataset> to time again). See docs/reproduce.md.
OUT_ROOT=${OUT_ROOT:-runs/tables}     # one folder per run below it; the report in OUT_ROOT/report
GPUS=${GPUS:-all}                     # all | cpu | ids: the benchmark runs on the first
TABLE=1
source "$(dirname "$0")/lib_table.sh"
