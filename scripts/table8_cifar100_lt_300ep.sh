#!/usr/bin/env bash
# Paper Table 8 (App. D.3, aligned computational cost): CIFAR-100-LT, ResNet-32. CE, LDAM+DRW, VS and
# LA, each "+SAM" trained 300 epochs (configs/cifar100_lt/*_sam_300ep.yaml: the official code run
# with --epochs 300, cosine over 300, DRW still from 160) against "+Focal-SAM" at 200; IF 100 / 200 /
# 50 / 10 (All).
# 8 rows x 4 IFs x 3 seeds = 96 runs; the 48 Focal-SAM runs are those of Tables 2 and 6 (same
# folders: whichever script runs first trains them, the other skips them).
#
#   bash scripts/table8_cifar100_lt_300ep.sh                          # every run of the table, then the table
#   DRY_RUN=1 bash scripts/table8_cifar100_lt_300ep.sh                # list the runs (config, seed, folder, state)
#   SMOKE=1 SEEDS=0 bash scripts/table8_cifar100_lt_300ep.sh          # synthetic data, a few tiny epochs per run (CPU check)
#   ROWS='\+SAM' bash scripts/table8_cifar100_lt_300ep.sh             # only the 300-epoch SAM rows
# Finished runs are skipped, half-finished ones resumed: run it again to go on. See docs/reproduce.md.
# Variables (defaults and meanings in scripts/lib_table.sh): DATA_ROOT OUT_ROOT SEEDS GPUS RUNS_PER_GPU
# PROCS_PER_RUN ROWS SMOKE DRY_RUN.
TABLE=8
source "$(dirname "$0")/lib_table.sh"
