#!/usr/bin/env bash
# The README's pictures of `vimtune viz` and the training curves: fine-tunes the bundled backbone
# (vim_micro_patch4_32, CIFAR-10 pretrained) briefly with svp and with vpt-deep on one vtab-mini task,
# writes each run's report.html (with the pictures embedded) and copies the pictures to docs/images/.
#   scripts/make_viz_examples.sh [VTAB_MINI_ROOT] [EPOCHS]     (a few minutes per method on 2 idle CPU cores)
# METHODS="svp" or METHODS="vpt-deep" runs one method (e.g. two shells side by side). The runs validate on
# val200 after every epoch but skip the test pass: the pictures need none (benchmarks/results/transfer.md
# holds the accuracies of these methods on this task).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_ROOT=${1:-../shared/data/vtab-mini}
EPOCHS=${2:-1}
METHODS=${METHODS:-svp vpt-deep}
TASK=animal_silhouettes
RUNS=runs/viz-examples
OUT=docs/images
BACKBONE=src/vimtune/weights/vim_micro_patch4_32.cifar10.safetensors
VIMTUNE=${VIMTUNE:-python -m vimtune}
# four test images of different classes (cat, giraffe, horse, elephant), fixed so the pictures are comparable
IMAGES=()
for name in 00000 00001 00003 00012; do IMAGES+=("$DATA_ROOT/$TASK/images/test/$name.png"); done

mkdir -p "$OUT"
for method in $METHODS; do
  $VIMTUNE finetune --config baselines_vtab --method "$method" --model vim_micro_patch4_32 \
    --backbone-weights "$BACKBONE" --data "$DATA_ROOT/$TASK" --img-size 32 --epochs "$EPOCHS" \
    --batch-size 32 --num-workers 0 --seed 0 --set optim.warmup_epochs=0 --set data.test_split=null \
    --output-dir "$RUNS/$method" --overwrite
  $VIMTUNE report "$RUNS/$method" --images "${IMAGES[@]}"
  for picture in "$RUNS/$method"/viz/*.png; do cp "$picture" "$OUT/${method}_$(basename "$picture")"; done
  cp "$RUNS/$method/curves.png" "$OUT/${method}_curves.png"
done
echo "pictures in $OUT; reports in $RUNS/*/report.html"
