#!/usr/bin/env bash
# Paper Tables 4 and 7: the ImageNet-LT models of Table 3F (CLIP ViT-B/16, FFT and LIFT with each
# optimizer; TABLE=3F bash scripts/table_foundation.sh) evaluated on ImageNet-Sketch, ImageNetV2 and
# ImageNet-C (Head / Med / Tail / All), and ImageNet-C's corruption errors CE and mCE. Each finished
# run gets RUN/ood.json once (eval.py --ood); then both tables are printed beside the paper's.
#
#   SKETCH=DIR V2=DIR IMAGENET_C=DIR bash scripts/table4_7_ood.sh    # evaluate what is missing, print
#   bash scripts/table4_7_ood.sh                                      # print from the ood.json files present
# Folders (README, "Foundation models"): SKETCH/<wnid>/*.JPEG, V2/<0..999>/*.jpeg,
# IMAGENET_C/<corruption>/<severity>/<wnid>/*.JPEG.
OUT_ROOT=${OUT_ROOT:-runs/tables}     # where Table 3F's runs are
SEEDS=${SEEDS:-"0 1 2"}
SKETCH=${SKETCH:-}
V2=${V2:-}
IMAGENET_C=${IMAGENET_C:-}
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
args=(--out-root "$OUT_ROOT" --seeds "$SEEDS" --python "$PYTHON")
[ -n "$SKETCH" ] && args+=(--sketch "$SKETCH")
[ -n "$V2" ] && args+=(--v2 "$V2")
[ -n "$IMAGENET_C" ] && args+=(--imagenet-c "$IMAGENET_C")
[ -z "$SKETCH$V2$IMAGENET_C" ] && args+=(--no-eval)
exec "$PYTHON" scripts/ood_tables.py "${args[@]}"
