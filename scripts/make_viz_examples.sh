#!/usr/bin/env bash
# The README's pictures of `vimtune viz` and the training curves: fine-tunes the bundled backbone
# (vim_micro_patch4_32, CIFAR-10 pretrained) briefly with svp and with vpt-deep on one vtab-mini task,
# writes each run's report.html (with the pictures embedded) and copies the pictures to docs/images/.
#   scripts/make_viz_examples.sh [VTAB_MINI_ROOT] [EPOCHS]     (a few minutes per method on 2 idle CPU cores)
# METHODS="svp" or METHODS="vpt-deep" runs one method (e.g. two shells side by side). The runs validate on
# val200 after every epoch but skip the test pass: the pictures need none (benchmarks/results/transfer.md
# holds the accuracies of these methods on this task).
# REUSE_RUNS=1 redraws from the finished runs in runs/viz-examples/ without training again.
# VIMTUNE is the command that runs vimtune (e.g. "env PYTHONPATH=$PWD/src .venv/bin/python -m vimtune"); its
# python also gathers every method's gate change into benchmarks/results/viz_gates.md (when all of METHODS ran).
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
PYTHON=${VIMTUNE% -m vimtune}
REUSE_RUNS=${REUSE_RUNS:-0}
GATES=benchmarks/results/viz_gates.md
# four test images of different classes (cat, giraffe, horse, elephant), fixed so the pictures are comparable
IMAGES=()
for name in 00000 00001 00003 00012; do IMAGES+=("$DATA_ROOT/$TASK/images/test/$name.png"); done

mkdir -p "$OUT"
# the docs' copies: a 256-colour palette keeps each picture well under 200 KB
shrink() { $PYTHON -c 'import sys; from PIL import Image
Image.open(sys.argv[1]).convert("RGB").quantize(256).save(sys.argv[2], optimize=True)' "$1" "$2"; }
records=()
for method in $METHODS; do
  if [ "$REUSE_RUNS" = 1 ]; then
    [ -f "$RUNS/$method/final_metrics.json" ] || { echo "REUSE_RUNS=1: no finished run in $RUNS/$method" >&2; exit 1; }
  else
    $VIMTUNE finetune --config baselines_vtab --method "$method" --model vim_micro_patch4_32 \
      --backbone-weights "$BACKBONE" --data "$DATA_ROOT/$TASK" --img-size 32 --epochs "$EPOCHS" \
      --batch-size 32 --num-workers 0 --seed 0 --set optim.warmup_epochs=0 --set data.test_split=null \
      --output-dir "$RUNS/$method" --overwrite
  fi
  rm -rf "$RUNS/$method/viz"  # only this drawing's pictures
  $VIMTUNE report "$RUNS/$method" --images "${IMAGES[@]}"
  for picture in "$RUNS/$method"/viz/*.png; do shrink "$picture" "$OUT/${method}_$(basename "$picture")"; done
  shrink "$RUNS/$method/curves.png" "$OUT/${method}_curves.png"
  records+=("$RUNS/$method/viz/gate_change.json")
done
if [ "$METHODS" = "svp vpt-deep" ]; then
  $PYTHON scripts/viz_gates_table.py "$GATES" "${records[@]}" \
    --command "scripts/make_viz_examples.sh $DATA_ROOT $EPOCHS"
fi
echo "pictures in $OUT; reports in $RUNS/*/report.html; gate change in $GATES"
