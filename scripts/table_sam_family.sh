#!/usr/bin/env bash
# The SAM family under one protocol (issue 25): SGD, SAM, ASAM, GSAM, Friendly SAM, RWP, LookSAM,
# ImbSAM, CC-SAM, SSE-SAM, Focal-SAM, Focal-SAM+ASAM and Focal-SAM+Friendly, each with CE and LA
# (26 rows), on CIFAR-10-LT and CIFAR-100-LT at IF 100, ResNet-32, 200 epochs: Head / Med / Tail /
# All beside the published numbers (each row names its source), the cost per step relative to SGD
# (scripts/bench_step.py on the first device, before the training runs), and accuracy versus cost
# (OUT_ROOT/report/tablesam_family_cost.png).
# 26 rows x 2 datasets x 3 seeds = 156 runs of configs/sam_family/*/*.yaml (the 60 of the paper's
# rows are Tables 5 and 2's runs: done once for both), plus 26 benchmark runs.
#
#   bash scripts/table_sam_family.sh                        # every run, then the report
#   DRY_RUN=1 bash scripts/table_sam_family.sh              # list the runs (config, seed, folder, state)
#   SMOKE=1 SEEDS=0 bash scripts/table_sam_family.sh        # synthetic data, 2 tiny epochs per run (CPU check)
#   ROWS='Focal-SAM' bash scripts/table_sam_family.sh       # only the rows whose name matches
# Finished runs are skipped, half-finished ones resumed: run it again to go on. Timing again:
# delete OUT_ROOT/sam_family/. Variables (defaults and meanings in scripts/lib_table.sh): DATA_ROOT
# OUT_ROOT SEEDS GPUS RUNS_PER_GPU PROCS_PER_RUN STACK_SEEDS ROWS SMOKE DRY_RUN LAUNCHER.
TABLE=sam_family
source "$(dirname "$0")/lib_table.sh"
