#!/usr/bin/env bash
# Paper Table 5: CIFAR-10-LT, ResNet-32, 200 epochs. CE, LDAM+DRW, LA and VS, each alone and with
# SAM / ImbSAM / CC-SAM / Focal-SAM (20 rows); IF 100 (Head / Med / Tail / All), IF 200 / 50 / 10 (All).
# 20 rows x 4 IFs x 3 seeds = 240 runs of configs/cifar10_lt/*_{sgd,sam,imbsam,cc_sam,focal_sam}.yaml.
#
#   bash scripts/table5_cifar10_lt.sh                          # every run of the table, then the table
#   DRY_RUN=1 bash scripts/table5_cifar10_lt.sh                # list the runs (config, seed, folder, state)
#   SMOKE=1 SEEDS=0 bash scripts/table5_cifar10_lt.sh          # synthetic data, 2 tiny epochs per run (CPU check)
# Finished runs are skipped, half-finished ones resumed: run it again to go on. See docs/reproduce.md.
# Variables (defaults and meanings in scripts/lib_table.sh): DATA_ROOT OUT_ROOT SEEDS GPUS RUNS_PER_GPU
# PROCS_PER_RUN ROWS SMOKE DRY_RUN.
TABLE=5
source "$(dirname "$0")/lib_table.sh"
