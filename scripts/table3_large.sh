#!/usr/bin/env bash
# Paper Table 3: ResNet-50 from scratch, 200 epochs, on ImageNet-LT and iNaturalist 2018: LA, LA+SAM,
# LA+ImbSAM, LA+Focal-SAM (Head / Med / Tail / All); the table also prints the paper's quoted
# baselines (CB, cRT, DiVE, DRO-LT, DisAlign, WB, CC-SAM, marked with a dagger), which have no run.
# Each run is one torchrun job on the GPU count of the official scripts: 2 GPUs for ImageNet-LT, 4 for
# iNaturalist (PROCS_PER_RUN changes it; the batch is global). Needs the images and the train
# lists: docs/large_datasets_lists.md.
# 4 rows x 2 datasets x 3 seeds = 24 runs.
#
#   bash scripts/table3_large.sh                          # every run of the table, then the table
#   DRY_RUN=1 bash scripts/table3_large.sh                # list the runs (config, seed, folder, state)
#   SMOKE=1 SEEDS=0 bash scripts/table3_large.sh          # synthetic data, 2 tiny epochs per run (CPU check)
# Finished runs are skipped, half-finished ones resumed: run it again to go on. See docs/reproduce.md.
# Variables (defaults and meanings in scripts/lib_table.sh): DATA_ROOT OUT_ROOT SEEDS GPUS RUNS_PER_GPU
# PROCS_PER_RUN ROWS SMOKE DRY_RUN.
TABLE=3
source "$(dirname "$0")/lib_table.sh"
