#!/usr/bin/env bash
# The prepared GPU check: everything the CUDA path needs, in one run of at most 8 minutes on a lent GPU.
#
#   bash benchmarks/device_check.sh [--out DIR]    # on a CUDA machine
#   bash benchmarks/device_check.sh --dry-run      # CPU, tiny sizes: checks that every piece runs (CI does this)
#
# Steps (each with its own time limit inside the 8-minute budget; the log of each is DIR/STEP.log):
#   cuda-tests    python -m pytest Testing -m cuda (on the GPU every one must run: a skip counts as a failure)
#   equivalence   benchmarks/device_equivalence.py: predict on the CPU and on the GPU, P(BI) and saliency compared
#   train-amp     gloresnet synth + gloresnet train, 2 folds x 2 epochs, mixed precision (bf16/fp16 autocast)
#   bench-predict benchmarks/bench_predict.py --device cuda (predict vs the MONAI pipeline, ceiling share)
#   bench-train   benchmarks/bench_train.py --device cuda (training volumes/s vs a MONAI loop)
# and prints one summary: per step PASS / FAIL / TIMEOUT / SKIPPED (no time left), seconds and its key line.
# Exit code: 0 when every step passed, 1 otherwise, 2 for bad options or no CUDA without --dry-run.

set -u

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; }

DRY=0
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --out) [ $# -ge 2 ] || { echo "device_check.sh: --out needs a folder" >&2; exit 2; }; OUT="$2"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "device_check.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 2
export PYTHONPATH="$REPO/GloResNet${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"

if [ "$DRY" = 1 ]; then
    DEV=cpu
    BUDGET=420
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
    EQUIV_ARGS=(--device cpu --tiny)
    SYNTH_ARGS=(--n 12 --max-dim 40)
    TRAIN_ARGS=(--size 32 --widths 8,16,32,64 --batch-size 4)
    PREDICT_ARGS=(--device cpu --shape 40 48 40 --size 64 --widths 8 16 32 64 --repeats 1 --repeats8 0
                  --ceiling-size 256)
    TRAIN_BENCH_ARGS=(--device cpu --sizes 32 --volumes 12 --epochs 2 --batch-size 4)
    LIMITS=(120 90 120 120 120)
else
    DEV=cuda
    BUDGET=480
    if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
        echo "device_check.sh: CUDA is not available here (torch sees no GPU); use --dry-run to check on a CPU" >&2
        exit 2
    fi
    EQUIV_ARGS=(--device cuda)
    SYNTH_ARGS=(--n 24 --workers 8)
    TRAIN_ARGS=(--size 128 --batch-size 8)
    PREDICT_ARGS=(--device cuda --repeats 3 --repeats8 1)
    TRAIN_BENCH_ARGS=(--device cuda --sizes 64 128 --volumes 24 --epochs 3)
    LIMITS=(90 60 110 110 110)
fi

OUT="${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/device_check.XXXXXX")}"
mkdir -p "$OUT" || { echo "device_check.sh: cannot create $OUT" >&2; exit 2; }
START=$SECONDS
NAMES=() STATUS=() TIMES=() KEYS=()

# run_step NAME LIMIT_S KEY_REGEX COMMAND...: run COMMAND with a time limit (never past the budget), log it,
# record PASS / FAIL / TIMEOUT / SKIPPED and the last log line matching KEY_REGEX.
run_step() {
    local name="$1" limit="$2" key="$3"
    shift 3
    local left=$((BUDGET - (SECONDS - START)))
    [ "$limit" -gt "$left" ] && limit=$left
    local t0=$SECONDS status rc
    if [ "$limit" -lt 15 ]; then
        status=SKIPPED
        echo "no time left in the ${BUDGET} s budget" > "$OUT/$name.log"
    else
        echo "[device_check] $name (limit ${limit} s) ..." >&2
        timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
        rc=$?
        case $rc in
            0) status=PASS ;;
            124|137) status=TIMEOUT ;;
            *) status="FAIL($rc)" ;;
        esac
    fi
    NAMES+=("$name") STATUS+=("$status") TIMES+=("$((SECONDS - t0))")
    KEYS+=("$(grep -E "$key" "$OUT/$name.log" 2>/dev/null | tail -n 1 | cut -c1-150)")
}

TRAIN_SCRIPT='
set -e
"$PY" -m GloResNetLib synth "${SYNTH_ARGS[@]}" --seed 0 --out "$OUT/cohort" >/dev/null
"$PY" -m GloResNetLib train --manifest "$OUT/cohort/manifest.csv" --out "$OUT/train-run" --folds 2 --epochs 2 \
    --device "$DEV" --synthetic --no-tensorboard --cache-dir "$OUT/cache" "${TRAIN_ARGS[@]}"
"$PY" - "$OUT/train-run" "$DEV" <<"EOF"
import json, math, sys, torch
from GloResNetLib.training.amp import amp_dtype
run, dev = sys.argv[1], sys.argv[2]
m = json.load(open(run + "/metrics.json"))
auc = m["pooled"].get("auc")
ok = auc is None or math.isfinite(auc)
precision = amp_dtype(torch.device(dev), True) or "off (CPU: full precision)"
print(f"train: 2 folds x 2 epochs on {dev}, mixed precision {precision}, pooled AUC "
      + ("n/a" if auc is None else f"{auc:.3f}") + f", finite {ok}")
sys.exit(0 if ok else 1)
EOF
'

export PY DEV OUT
run_step cuda-tests "${LIMITS[0]}" "passed|failed|skipped|error" \
    "$PY" -m pytest Testing -m cuda -q -rs -p no:cacheprovider
if [ "$DEV" = cuda ] && [ "${STATUS[0]}" = PASS ] && grep -qE "[0-9]+ skipped" "$OUT/cuda-tests.log"; then
    STATUS[0]="FAIL(skipped on the GPU)"
fi
run_step equivalence "${LIMITS[1]}" "^equivalence:" "$PY" benchmarks/device_equivalence.py "${EQUIV_ARGS[@]}"
run_step train-amp "${LIMITS[2]}" "^train:|Error|error:" \
    bash -c "SYNTH_ARGS=(${SYNTH_ARGS[*]}); TRAIN_ARGS=(${TRAIN_ARGS[*]}); $TRAIN_SCRIPT"
run_step bench-predict "${LIMITS[3]}" "^speed-up|^network:|RESULTS DIFFER" \
    "$PY" benchmarks/bench_predict.py "${PREDICT_ARGS[@]}"
run_step bench-train "${LIMITS[4]}" "^ratio ours" "$PY" benchmarks/bench_train.py "${TRAIN_BENCH_ARGS[@]}"

DEVICE_NAME="$("$PY" -c "
import torch
print(torch.cuda.get_device_name(0) if '$DEV' == 'cuda' else 'CPU (dry run: tiny sizes, figures mean nothing)')
" 2>/dev/null)"
PASSED=0
echo
echo "==================== device check: $DEVICE_NAME ===================="
echo "torch $("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null), $(date -u '+%Y-%m-%d %H:%M UTC'), logs in $OUT"
for i in "${!NAMES[@]}"; do
    printf '%-14s %-24s %4s s  %s\n' "${NAMES[$i]}" "${STATUS[$i]}" "${TIMES[$i]}" "${KEYS[$i]}"
    [ "${STATUS[$i]}" = PASS ] && PASSED=$((PASSED + 1))
done
TOTAL=$((SECONDS - START))
if [ "$PASSED" = "${#NAMES[@]}" ]; then
    echo "device check: PASS (${PASSED}/${#NAMES[@]} steps) in ${TOTAL} s"
    exit 0
fi
echo "device check: FAIL (${PASSED}/${#NAMES[@]} steps passed) in ${TOTAL} s"
exit 1
