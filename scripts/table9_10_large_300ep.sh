#!/usr/bin/env bash
# Paper Tables 9 and 10 (App. D.3, aligned computational cost): ResNet-50 from scratch on
# ImageNet-LT (Table 9) and iNaturalist 2018 (Table 10): LA+SAM trained 300 epochs
# (configs/{imagenet_lt,inat2018}/la_sam_300ep.yaml: the official code run with --epochs 300, the
# ImageNet-LT rho step at 239) against LA+Focal-SAM at 200; Head / Medium / Tail / All. torchrun,
# 2 GPUs per ImageNet-LT run, 4 per iNaturalist run, as Table 3. Needs the images and the train
# lists: docs/large_datasets_lists.md.
# 2 rows x 2 datasets x 3 seeds = 12 runs; the 6 Focal-SAM runs are those of Table 3 (same folders).
#
#   bash scripts/table9_10_large_300ep.sh                          # every run of both tables, then the tables
#   DRY_RUN=1 bash scripts/table9_10_large_300ep.sh                # list the runs (config, seed, folder, state)
#   SMOKE=1 SEEDS=0 bash scripts/table9_10_large_300ep.sh          # synthetic data, a few tiny epochs per run (CPU check)
# Finished runs are skipped, half-finished ones resumed: run it again to go on. See docs/reproduce.md.
# Variables (defaults and meanings in scripts/lib_table.sh): DATA_ROOT OUT_ROOT SEEDS GPUS RUNS_PER_GPU
# PROCS_PER_RUN ROWS SMOKE DRY_RUN.
TABLE="9 10"
source "$(dirname "$0")/lib_table.sh"
