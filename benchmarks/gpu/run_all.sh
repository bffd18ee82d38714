#!/usr/bin/env bash
# One command that verifies the Triton backend on a CUDA GPU and measures it (at most 9 minutes):
#   1. tests/triton_checks.py on CUDA (scan, conv, mixer, whole Vim vs float64 references / the CPU backend);
#   2. vimtune bench scan --device cuda: reference, chunked, triton, and mamba_ssm's kernel when it runs here
#      (a prebuilt wheel is tried, offline machines just skip it);
#   3. vimtune bench resolution --device cuda: Vim-Ti vs DeiT-Ti inference, 512-1248 px, batch 1 (img/s and
#      torch.cuda.max_memory_allocated; the Vim paper's claim: 2.8x faster, 86.8% less memory at 1248 px);
#   4. vim_small + SVP training step, batch 64, float32 and bfloat16.
# Results go to benchmarks/results/gpu/<gpu name>/ (commit them); every step has its own time limit and a failed
# step does not stop the others (see status.txt there).
#
# Usage (repository root, with the project's Python environment; PYTHON overrides the interpreter):
#   bash benchmarks/gpu/run_all.sh             # on the GPU machine
#   bash benchmarks/gpu/run_all.sh --dry-run   # anywhere: the same steps at toy sizes on CPU, Triton interpreted,
#                                              # written to a temporary folder (checks the script itself)
set -u
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

if [ "${1:-}" = "--dry-run" ]; then
    DRY=1
    DEVICE=cpu
    export TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES=""
    OUT=${OUT_DIR:-$(mktemp -d /tmp/vimtune-gpu-dry.XXXX)}
else
    DRY=0
    DEVICE=cuda
    if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "run_all.sh: torch sees no CUDA device here; use --dry-run to check the script on CPU" >&2
        exit 2
    fi
    GPU=$($PY -c "import torch; print(torch.cuda.get_device_name(0))")
    SLUG=$(echo "$GPU" | tr '[:upper:]' '[:lower:]' | tr -cs 'a-z0-9' '-' | sed 's/-$//')
    OUT=${OUT_DIR:-benchmarks/results/gpu/$SLUG}
fi
mkdir -p "$OUT"
STATUS="$OUT/status.txt"
: > "$STATUS"
echo "results in $OUT"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to OUT/NAME.log, record the exit status
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name: exit $rc after $((SECONDS - start)) s (limit $limit s): $*" | tee -a "$STATUS"
    tail -n 5 "$OUT/$name.log"
}

{
    date -u +"%Y-%m-%dT%H:%M:%SZ"
    git rev-parse HEAD 2>/dev/null
    nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
    $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
} > "$OUT/environment.txt" 2>&1

if [ "$DRY" = 1 ]; then
    step tests 600 $PY -m pytest -q -p no:cacheprovider tests/triton_checks.py -k "conv or explicit"
    step scan 300 $PY -m vimtune bench scan --device cpu --backends reference chunked triton cuda --shapes tiny \
        --repeats 1 --budget-s 1 --memory-backends --out "$OUT/scan"
    step resolution 900 $PY -m vimtune bench resolution --device cpu --resolutions 32 --batches 1 \
        --dtypes float32 --repeats 1 --out "$OUT/resolution"
    step train_step 300 $PY benchmarks/gpu/train_step.py --device cpu --model vim_nano_patch4_32 --img-size 32 \
        --batch 2 --methods svp --dtypes float32 --repeats 1 --out "$OUT/train_step"
else
    # limits add up to 540 s: under the 10 minutes a device call may run, with its start-up on top
    step mamba_ssm_install 20 $PY -m pip install --only-binary=:all: --no-deps mamba-ssm
    step tests 110 $PY -m pytest -q -p no:cacheprovider tests/triton_checks.py
    step scan 140 $PY -m vimtune bench scan --device cuda --backends reference chunked triton cuda \
        --shapes small-224-b32 tiny-224 tiny-1248 small-1248 --repeats 5 --budget-s 3 \
        --memory-backends chunked triton cuda --out "$OUT/scan"
    step resolution 180 $PY -m vimtune bench resolution --device cuda --resolutions 512 738 1024 1248 \
        --batches 1 --dtypes float32 --repeats 5 --out "$OUT/resolution"
    step train_step 90 $PY benchmarks/gpu/train_step.py --device cuda --model vim_small_patch16_224 --batch 64 \
        --methods svp --dtypes float32 bfloat16 --repeats 5 --out "$OUT/train_step"
fi
echo "done; status:"
cat "$STATUS"
