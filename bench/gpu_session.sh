#!/usr/bin/env bash
# One slice of GPU time for the full-budget table (issue 11), run in the repository root on the GPU machine:
#
#   bash bench/gpu_session.sh SECONDS [STAGES] [ROWS] [SEEDS] [CONCLUSIONS]
#
# SECONDS: the wall time this call may use; every stage starts only with time for it, and the replay leaves 20 s.
# STAGES, a comma list (default setup,perf,replay,decide), run in this order:
#   setup        install the carried wheels (.whl/: the packages the machine's image lacks) and this checkout;
#                decode the data once into $TRICKS_CACHE
#   speed        bench perf --device cuda --only speed (single-run img/s, epoch and evaluation seconds, the
#                ratio to the fast plain loop); concurrency (1, 2, 4, 8 runs at once); parity (bf16 vs fp32,
#                30 epochs, 2 seeds); perf = speed,concurrency
#   gap          bench gap --budget full: the S9 baseline three ways side by side (issue 19 section 1: the default
#                bf16 compiled run, fp32 eager, the plain loop of bench perf), SEEDS seeds each, up to 6 at once;
#                what the results hold is skipped, so once the six runs are kept it costs seconds
#   replay       bench replay --budget full of ROWS (default 'S9.*', in the bench's priority order) with SEEDS
#                seeds (default 2) until the time is spent, min(4, the fastest measured count) runs at once
#   replay-late  the same, starting runs up to the deadline: for a call that another call on the same warm
#                machine follows (the results folder in /tmp stays, and that call resumes them)
#   decide       once the replay has given ROWS their SEEDS seeds (it ended before the time did), the time left
#                goes to bench decide CONCLUSIONS (default 'S9.*'): more seeds only for the rows whose
#                conclusions are still open, the run that most likely decides one per second first
# Reads the CIFAR-10 archive from .gpu/cifar10-jpeg.tar.gz (carried; never committed). Writes under $OUT:
# session.log, replay.log, perf-cuda-<measurement>.json, full.jsonl (bench/results/full.jsonl after the appends).
set -uo pipefail
SECONDS_GIVEN=${1:-540}
STAGES=${2:-setup,perf,gap,replay,decide}
ROWS=${3:-S9.*}
SEEDS=${4:-2}
CONCLUSIONS=${5:-S9.*}
START=$(date +%s)
export OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
BUDGET=${BUDGET:-full}  # smoke: a dry run of this script on any machine
WHEELS=${WHEELS:-.whl}
DATA=${DATA:-.gpu/cifar10-jpeg.tar.gz}
DEVICE=${DEVICE:-cuda}
export PYTHONUNBUFFERED=1 TRICKS_CACHE=${TRICKS_CACHE:-/tmp/tricks-cache}
PY=${PY:-python3}
LOG="$OUT/session.log"
left() { echo $(( SECONDS_GIVEN - ($(date +%s) - START) )); }
say() { echo "[$(date +%H:%M:%S) +$(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }
has() { [[ ",$STAGES," == *",$1,"* ]]; }
MARKS=()  # NAME=UNIX-SECONDS as each stage starts: the slice log's stage windows (bench slice, at the end)
mark() { MARKS+=("$1=$(date +%s)"); }

if [ -d "$WHEELS" ] && [ -d /tmp/site ]; then export PYTHONPATH=/tmp/site; fi
if has setup; then
  mark setup
  say "setup: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null)"
  if [ -d "$WHEELS" ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl \
      2>&1 | tail -3 | tee -a "$LOG"
    export PYTHONPATH=/tmp/site
  fi
  # the package's metadata (its version is part of the code version every result carries)
  [ "$WHEELS" = none ] || $PY -m pip install -q --no-deps --no-index --no-build-isolation -e . 2>&1 | tail -3 | tee -a "$LOG"
  $PY - <<'EOF' 2>&1 | tee -a "$LOG"
import os, time, torch
from bench.store import code_version, dataset_checksum
from tricks.data import load_dataset
t = time.perf_counter()
data = load_dataset("cifar10", os.environ.get("DATA", ".gpu/cifar10-jpeg.tar.gz"))
print(f"torch {torch.__version__}, cuda {torch.cuda.is_available()}, code {code_version()}, "
      f"data {dataset_checksum(data)} ({len(data.train)}+{len(data.test)} images, {time.perf_counter() - t:.1f} s)")
EOF
fi
export DATA

# perf: speed (the single-run figures and the plain-loop ratio), concurrency (1, 2, 4, 8 runs at once), parity
has perf && STAGES="$STAGES,speed,concurrency"
for m in speed concurrency parity; do
  need=$([ $m = speed ] && echo 200 || echo 110)
  if has $m && [ "$(left)" -gt "$need" ]; then
    say "perf: $m"
    timeout $(( $(left) - 20 )) $PY -m bench.cli perf --device "$DEVICE" --only $m --data "$DATA" \
      --results "$OUT/perf-$m" 2>&1 | grep --line-buffered -v Warning | tee -a "$LOG"
    cp "$OUT/perf-$m/perf-cuda.json" "$OUT/perf-cuda-$m.json" 2>/dev/null && rm -rf "$OUT/perf-$m"
  fi
done

if has gap && [ "$(left)" -gt 60 ]; then
  mark gap
  UNTIL=$(( $(left) - 20 ))
  say "gap: the S9 baseline three ways, $SEEDS seeds each, until $UNTIL s"
  timeout $(( UNTIL + 15 )) $PY -m bench.cli gap --budget "$BUDGET" --device "$DEVICE" --seeds "$SEEDS" \
    --until "$UNTIL" --data "$DATA" --results /tmp/bench-results 2>&1 \
    | grep --line-buffered -v Warning | tee "$OUT/gap.log" | tee -a "$LOG"
fi

LATE=""
if has replay-late; then LATE="--start-late"; STAGES="$STAGES,replay"; fi
if has replay && [ "$(left)" -gt 60 ]; then
  mark replay
  WORKERS=$($PY - <<'EOF'
import json, os
try:
    perf = json.load(open(os.path.join(os.environ["OUT"], "perf-cuda-concurrency.json")))
    print(min(4, perf["concurrency"]["best_processes"]))
except (OSError, KeyError, ValueError):
    print(4)
EOF
)
  UNTIL=$(( $(left) - 20 ))
  say "replay: rows $ROWS, $SEEDS seeds, $WORKERS at once, until $UNTIL s"
  timeout $(( UNTIL + 15 )) $PY -m bench.cli replay --budget "$BUDGET" --device "$DEVICE" --rows "$ROWS" --seeds "$SEEDS" \
    --workers "$WORKERS" --until "$UNTIL" --data "$DATA" --results /tmp/bench-results $LATE 2>&1 \
    | grep --line-buffered -v Warning | tee "$OUT/replay.log" | tee -a "$LOG"
  # every run failed (e.g. CUDA graphs refused): once more without them, for the time that is left
  if grep -q "^done before [0-9]*, ran 0, .*failed [1-9]" "$OUT/replay.log" && [ "$(left)" -gt 90 ]; then
    UNTIL=$(( $(left) - 20 ))
    say "replay again with --compile-mode default, until $UNTIL s"
    timeout $(( UNTIL + 15 )) $PY -m bench.cli replay --budget "$BUDGET" --device "$DEVICE" --rows "$ROWS" \
      --seeds "$SEEDS" --workers "$WORKERS" --until "$UNTIL" --data "$DATA" --results /tmp/bench-results \
      --compile-mode default $LATE 2>&1 | grep --line-buffered -v Warning | tee -a "$LOG"
  fi
fi
if has decide && [ "$(left)" -gt 90 ]; then
  mark decide
  UNTIL=$(( $(left) - 20 ))
  say "decide: conclusions $CONCLUSIONS, ${WORKERS:-4} at once, until $UNTIL s"
  timeout $(( UNTIL + 15 )) $PY -m bench.cli decide "$CONCLUSIONS" --budget "$BUDGET" --device "$DEVICE" \
    --workers "${WORKERS:-4}" --until "$UNTIL" --data "$DATA" --results /tmp/bench-results 2>&1 \
    | grep --line-buffered -v Warning | tee "$OUT/decide.log" | tee -a "$LOG"
  cp /tmp/bench-results/decide.md "$OUT/decide.md" 2>/dev/null
fi
mark end
SLICE_STAGES=()
for (( i = 0; i + 1 < ${#MARKS[@]}; i++ )); do SLICE_STAGES+=(--stage "${MARKS[i]}:${MARKS[i+1]#*=}"); done
SLICES=${SLICES:-$([ "$BUDGET" = full ] && echo bench/results/slices.jsonl || echo "$OUT/slices.jsonl")}
$PY -m bench.cli slice "${SLICE_STAGES[@]}" --given "$SECONDS_GIVEN" --budget "$BUDGET" --device "$DEVICE" \
  --results /tmp/bench-results --log "$SLICES" 2>&1 | grep --line-buffered -v Warning | tee -a "$LOG"
[ "$SLICES" -ef "$OUT/slices.jsonl" ] || cp "$SLICES" "$OUT/slices.jsonl" 2>/dev/null
cp bench/results/full.jsonl "$OUT/full.jsonl" 2>/dev/null
say "done; $(wc -l < bench/results/full.jsonl 2>/dev/null || echo 0) lines in bench/results/full.jsonl"
