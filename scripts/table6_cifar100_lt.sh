#!/usr/bin/env bash
# Paper Table 6: CIFAR-100-LT, ResNet-32, 200 epochs. LDAM+DRW and VS, each alone and with SAM /
# ImbSAM / CC-SAM / Focal-SAM (10 rows); IF 100 (Head / Med / Tail / All), IF 200 / 50 / 10 (All).
# 10 rows x 4 IFs x 3 seeds = 120 runs of configs/cifar100_lt/{ldam_drw,vs}_{sgd,sam,imbsam,cc_sam,focal_sam}.yaml.
#
#   bash scripts/table6_cifar100_lt.sh                          # every run of the table, then the table
#   DRY_RUN=1 bash scripts/table6_cifar100_lt.sh                # list the runs (config, seed, folder, state)
#   SMOKE=1 SEEDS=0 bash scripts/table6_cifar100_lt.sh          # synthetic data, 2 tiny epochs per run (CPU check)
# Finished runs are skipped, half-finished ones resumed: run it again to go on. See docs/reproduce.md.
# Variables (defaults and meanings in scripts/lib_table.sh): DATA_ROOT OUT_ROOT SEEDS GPUS RUNS_PER_GPU
# PROCS_PER_RUN ROWS SMOKE DRY_RUN.
TABLE=6
source "$(dirname "$0")/lib_table.sh"
