#!/usr/bin/env bash
# Paper Tables 8-10 (appendix): LA + SAM trained 1.5x the epochs (300; DRW start and rho milestones
# stretched alike) against LA + Focal-SAM at 200, on CIFAR-10-LT IF100, CIFAR-100-LT IF100 and
# ImageNet-LT (2 GPUs per run). The 200-epoch rows are the runs of Tables 5, 2 and 3 (same folders).
# 3 rows x 3 datasets x 3 seeds = 27 runs.
#
#   bash scripts/table8_10_sam_1p5x.sh                          # every run of the table, then the table
#   DRY_RUN=1 bash scripts/table8_10_sam_1p5x.sh                # list the runs (config, seed, folder, state)
#   SMOKE=1 SEEDS=0 bash scripts/table8_10_sam_1p5x.sh          # synthetic data, 2 tiny epochs per run (CPU check)
# Finished runs are skipped, half-finished ones resumed: run it again to go on. See docs/reproduce.md.
DATA_ROOT=${DATA_ROOT:-data}          # holds cifar-10-batches-py/, cifar-100-python/, ImageNet_LT/, iNaturalist/
OUT_ROOT=${OUT_ROOT:-runs/tables}     # one folder per run below it; the report in OUT_ROOT/report
SEEDS=${SEEDS:-"0 1 2"}               # one run per seed; cells show mean ± std over them
GPUS=${GPUS:-all}                     # all | cpu | ids, e.g. "0 1 2 3"
RUNS_PER_GPU=${RUNS_PER_GPU:-}        # runs sharing one GPU at once (default: 4 on GPUs, 1 on the CPU)
PROCS_PER_RUN=${PROCS_PER_RUN:-}     # processes (GPUs) per run; default: the table's (repro/tables.yaml)
TABLE=8-10
source "$(dirname "$0")/lib_table.sh"
