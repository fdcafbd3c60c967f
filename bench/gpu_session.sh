#!/usr/bin/env bash
# One slice of GPU time for the full-budget table (issue 11), run in the repository root on the GPU machine:
#
#   bash bench/gpu_session.sh SECONDS [STAGES] [ROWS] [SEEDS] [CONCLUSIONS]
#
# SECONDS: the wall time this call may use; every stage starts only with time for it, and the replay leaves 20 s.
# STAGES, a comma list (default setup,gap,perf,replay,decide), run in this order:
#   setup        install the carried wheels (.whl/: the packages the machine's image lacks) and this checkout;
#                decode the data once into $TRICKS_CACHE
#   gap          bench gap --budget full: the S9 baseline three ways side by side (issue 19 section 1: the default
#                bf16 compiled run, fp32 eager, the plain loop of bench perf), SEEDS seeds each, up to 6 at once;
#                what the results hold is skipped, so once the six runs are kept it costs seconds; a run still
#                training at the deadline stops after its epoch's checkpoint (plain runs too): the next call resumes
#   gap-late     the same, starting all of them up to the deadline (bench gap --start-late): a first call starts the
#                six, the next call on the same warm machine (gap, or gap-late again) finishes them
#   speed        bench perf --device cuda --only speed (single-run img/s, epoch and evaluation seconds, the
#                ratio to the fast plain loop); concurrency (1, 2, 4, 8, 16 runs at once, first without CUDA MPS,
#                then with the MPS control daemon started when the machine has one; the faster setting stays on
#                for the replay, and the result is merged into bench/results/perf-cuda-concurrency-<gpu>.json);
#                parity (bf16 vs fp32, 30 epochs, 2 seeds); perf = speed,concurrency
#   syncdebug    on a CUDA GPU: tests/test_host_reads.py (recipe run and every trick) with their training batches
#                under torch.cuda.set_sync_debug_mode("error"), each compiled as it runs by default (minutes: not
#                a default stage); elsewhere, or without pytest, one line says why not
#   replay       bench replay --budget full of ROWS (default 'S9.*', in the bench's priority order) with SEEDS
#                seeds (default 2) until the time is spent, as many runs at once as the GPU's committed
#                concurrency measurement found fastest (bench/replay.py default_workers; its first line says)
#   replay-late  the same, starting runs up to the deadline: for a call that another call on the same warm
#                machine follows (the results folder in /tmp stays, and that call resumes them)
#   decide       once the replay has given ROWS their SEEDS seeds (it ended before the time did), the time left
#                goes to bench decide CONCLUSIONS (default 'S9.*'): more seeds only for the rows whose
#                conclusions are still open, the run that most likely decides one per second first
# Reads the CIFAR-10 archive from .gpu/cifar10-jpeg.tar.gz (carried; never committed). Writes under $OUT:
# session.log, replay.log, perf-cuda-<measurement>.json, full.jsonl (bench/results/full.jsonl after the appends),
# perf-cuda-concurrency-<gpu>.json (the committed measurement after the merge), gap.log, slices.jsonl (the
# slice log after this call's line: bench slice appends one line per call, each stage's seconds from its start to
# the next one's, runs finished, aggregate img/s; to bench/results/slices.jsonl at the full budget, else to $OUT).
# An MPS daemon it started is stopped when it ends (one a killed call left, by the next call first).
# Environment: BUDGET (full; smoke: a dry run on any machine, with `bench perf --quick`), DEVICE (cuda), DATA,
# DATASET (cifar10), WHEELS (.whl; none: install nothing), PY (python3), OUT (/tmp/gpu-out), RESULTS (the
# replay's folder, /tmp/bench-results), TRICKS_CACHE (/tmp/tricks-cache), MPS_CONTROL (nvidia-cuda-mps-control),
# MPS_DIR (/tmp/gpu-session-mps: the daemon's pipe/ and log/).
set -uo pipefail
SECONDS_GIVEN=${1:-540}
STAGES=${2:-setup,gap,perf,replay,decide}
ROWS=${3:-S9.*}
SEEDS=${4:-2}
CONCLUSIONS=${5:-S9.*}
START=$(date +%s)
export OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
BUDGET=${BUDGET:-full}  # smoke: a dry run of this script on any machine
WHEELS=${WHEELS:-.whl}
DATA=${DATA:-.gpu/cifar10-jpeg.tar.gz}
DATASET=${DATASET:-cifar10}
DEVICE=${DEVICE:-cuda}
RESULTS=${RESULTS:-/tmp/bench-results}
MPS_CONTROL=${MPS_CONTROL:-nvidia-cuda-mps-control}
MPS_DIR=${MPS_DIR:-/tmp/gpu-session-mps}
QUICK=$([ "$BUDGET" = smoke ] && echo --quick)
export DATA DATASET
export PYTHONUNBUFFERED=1 TRICKS_CACHE=${TRICKS_CACHE:-/tmp/tricks-cache}
# one Inductor cache for every stage's processes: a run compiles only what no earlier one did (bench/compile_cache.py)
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$TRICKS_CACHE/inductor}
PY=${PY:-python3}
LOG="$OUT/session.log"
left() { echo $(( SECONDS_GIVEN - ($(date +%s) - START) )); }
say() { echo "[$(date +%H:%M:%S) +$(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }
has() { [[ ",$STAGES," == *",$1,"* ]]; }
MARKS=()  # NAME=UNIX-SECONDS as each stage starts: the slice log's stage windows (bench slice, at the end)
mark() { MARKS+=("$1=$(date +%s)"); }

MPS_STARTED=""
mps_start() {  # the CUDA MPS control daemon, for the CUDA processes started after it; one line when it cannot
  if ! command -v "$MPS_CONTROL" >/dev/null 2>&1; then
    say "mps: cannot start: no $MPS_CONTROL on this machine; runs at once time-slice the GPU"
    return 1
  fi
  export CUDA_MPS_PIPE_DIRECTORY=$MPS_DIR/pipe CUDA_MPS_LOG_DIRECTORY=$MPS_DIR/log
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  local err
  # its output to a file, not a pipe: a daemon that kept a pipe open would hold this script at $(...) forever
  if "$MPS_CONTROL" -d >"$MPS_DIR/start.log" 2>&1; then
    for _ in 1 2 3 4 5 6 7 8 9 10; do [ -e "$CUDA_MPS_PIPE_DIRECTORY/control" ] && break; sleep 0.5; done
    if [ -e "$CUDA_MPS_PIPE_DIRECTORY/control" ]; then
      MPS_STARTED=1
      say "mps: daemon started (pipes in $CUDA_MPS_PIPE_DIRECTORY)"
      return 0
    fi
    echo quit | timeout 10 "$MPS_CONTROL" >/dev/null 2>&1
    err="no control pipe in $CUDA_MPS_PIPE_DIRECTORY after 5 s"
  else
    err=$(head -c 200 "$MPS_DIR/start.log" | tr '\n' ' ')
  fi
  say "mps: cannot start: $MPS_CONTROL -d failed: $err"
  unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
  return 1
}
mps_stop() {  # mps_stop [WHY]: quit the daemon this script started, if any
  [ -n "$MPS_STARTED" ] || return 0
  echo quit | timeout 10 "$MPS_CONTROL" >/dev/null 2>&1
  MPS_STARTED=""
  unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
  say "mps: daemon stopped${1:+ ($1)}"
}
trap mps_stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
if [ -e "$MPS_DIR/pipe/control" ] && command -v "$MPS_CONTROL" >/dev/null 2>&1; then  # an earlier call was killed
  echo quit | CUDA_MPS_PIPE_DIRECTORY=$MPS_DIR/pipe timeout 10 "$MPS_CONTROL" >/dev/null 2>&1
  say "mps: the daemon an earlier call left running is stopped (this call measures without it first)"
fi

if [ -d "$WHEELS" ] && [ -d /tmp/site ]; then export PYTHONPATH=/tmp/site; fi
if has setup; then
  mark setup
  say "setup: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
               || echo "no GPU seen by nvidia-smi (not installed or no driver)")"
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
data = load_dataset(os.environ["DATASET"], os.environ["DATA"])
print(f"torch {torch.__version__}, cuda {torch.cuda.is_available()}, code {code_version()}, "
      f"data {dataset_checksum(data)} ({len(data.train)}+{len(data.test)} images, {time.perf_counter() - t:.1f} s)")
EOF
fi

# the gap first: issue 19 wants its six runs in a slice's first call, before any measurement takes the time
GAP_LATE=""
if has gap-late; then GAP_LATE="--start-late"; STAGES="$STAGES,gap"; fi
if has gap && [ "$(left)" -gt 60 ]; then
  mark gap
  UNTIL=$(( $(left) - 20 ))
  say "gap: the S9 baseline three ways, $SEEDS seeds each, until $UNTIL s${GAP_LATE:+, starting runs up to then}"
  timeout $(( UNTIL + 15 )) $PY -m bench.cli gap --budget "$BUDGET" --device "$DEVICE" --seeds "$SEEDS" \
    --until "$UNTIL" --dataset "$DATASET" --data "$DATA" --results "$RESULTS" $GAP_LATE 2>&1 \
    | grep --line-buffered -v Warning | tee "$OUT/gap.log" | tee -a "$LOG"
fi

measure() {  # measure NAME [UNTIL]: bench perf --only NAME; its JSON to $OUT/perf-cuda-NAME.json, its lines to
  mark "perf-$1"  # perf-NAME.log; UNTIL: the seconds within which the concurrency starts no count it cannot finish
  timeout $(( $(left) - 20 )) $PY -m bench.cli perf --device "$DEVICE" --only "$1" $QUICK --dataset "$DATASET" \
    --data "$DATA" --results "$OUT/perf-$1" ${2:+--until "$2"} 2>&1 | grep --line-buffered -v Warning \
    | tee "$OUT/perf-$1.log" | tee -a "$LOG"
  cp "$OUT/perf-$1/perf-cuda.json" "$OUT/perf-cuda-$1.json" 2>/dev/null && rm -rf "$OUT/perf-$1"
}

# perf: speed (the single-run figures and the plain-loop ratio), concurrency (1, 2, 4, 8, 16 runs at once, without
# MPS and then with it), parity
has perf && STAGES="$STAGES,speed,concurrency"
for m in speed concurrency parity; do
  need=$([ $m = speed ] && echo 200 || echo 110)
  if has $m && [ "$(left)" -gt "$need" ]; then
    say "perf: $m${MPS_STARTED:+ (MPS)}"
    # the concurrency without MPS leaves half the time for the run with it, where the machine has the daemon
    share=$(command -v "$MPS_CONTROL" >/dev/null 2>&1 && echo 2 || echo 1)
    measure $m $([ $m = concurrency ] && echo $(( ($(left) - 30) / share )))
  fi
  if [ $m = concurrency ] && has $m && [ -z "$MPS_STARTED" ] && [ "$(left)" -gt "$need" ] && mps_start; then
    say "perf: concurrency with MPS"
    measure concurrency $(( $(left) - 90 ))  # slack: a count may take more than twice the one before
    # the merged measurement's verdict: MPS stays on for the replay only where it was faster
    if grep -q "^concurrency: faster without MPS" "$OUT/perf-concurrency.log"; then mps_stop "faster without it"
    elif ! grep -q "^concurrency: faster with MPS" "$OUT/perf-concurrency.log"; then
      mps_stop "no measurement says it is faster"
    fi
  fi
done

if has syncdebug && [ "$(left)" -gt 120 ]; then
  mark syncdebug
  if ! $PY -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
    say "syncdebug: skipped: no CUDA GPU here (torch.cuda.is_available() is False); on the CPU" \
        "tests/test_host_reads.py counts the host reads instead"
  elif ! $PY -c "import pytest" 2>/dev/null; then
    say "syncdebug: skipped: pytest is not installed here; carry its wheel in $WHEELS"
  else
    say "syncdebug: tests/test_host_reads.py under torch.cuda.set_sync_debug_mode('error')"
    timeout $(( $(left) - 20 )) $PY -m pytest -q -p no:cacheprovider tests/test_host_reads.py 2>&1 | tail -40 \
      | tee "$OUT/syncdebug.log" | tee -a "$LOG"
  fi
fi

LATE=""
if has replay-late; then LATE="--start-late"; STAGES="$STAGES,replay"; fi
if has replay && [ "$(left)" -gt 60 ]; then
  mark replay
  UNTIL=$(( $(left) - 20 ))
  say "replay: rows $ROWS, $SEEDS seeds, until $UNTIL s${MPS_STARTED:+, MPS on} (runs at once: its first line)"
  timeout $(( UNTIL + 15 )) $PY -m bench.cli replay --budget "$BUDGET" --device "$DEVICE" --rows "$ROWS" --seeds "$SEEDS" \
    --until "$UNTIL" --dataset "$DATASET" --data "$DATA" --results "$RESULTS" $LATE 2>&1 \
    | grep --line-buffered -v Warning | tee "$OUT/replay.log" | tee -a "$LOG"
  # every run failed (e.g. CUDA graphs refused): once more without them, for the time that is left
  if grep -q "^done before [0-9]*, ran 0, .*failed [1-9]" "$OUT/replay.log" && [ "$(left)" -gt 90 ]; then
    UNTIL=$(( $(left) - 20 ))
    say "replay again with --compile-mode default, until $UNTIL s"
    timeout $(( UNTIL + 15 )) $PY -m bench.cli replay --budget "$BUDGET" --device "$DEVICE" --rows "$ROWS" \
      --seeds "$SEEDS" --until "$UNTIL" --dataset "$DATASET" --data "$DATA" --results "$RESULTS" \
      --compile-mode default $LATE 2>&1 | grep --line-buffered -v Warning | tee -a "$LOG"
  fi
fi
if has decide && [ "$(left)" -gt 90 ]; then
  mark decide
  UNTIL=$(( $(left) - 20 ))
  say "decide: conclusions $CONCLUSIONS, until $UNTIL s${MPS_STARTED:+, MPS on}"
  timeout $(( UNTIL + 15 )) $PY -m bench.cli decide "$CONCLUSIONS" --budget "$BUDGET" --device "$DEVICE" \
    --until "$UNTIL" --dataset "$DATASET" --data "$DATA" --results "$RESULTS" 2>&1 \
    | grep --line-buffered -v Warning | tee "$OUT/decide.log" | tee -a "$LOG"
  cp "$RESULTS/decide.md" "$OUT/decide.md" 2>/dev/null
fi
mark end
SLICE_STAGES=()
for (( i = 0; i + 1 < ${#MARKS[@]}; i++ )); do SLICE_STAGES+=(--stage "${MARKS[i]}:${MARKS[i+1]#*=}"); done
SLICES=${SLICES:-$([ "$BUDGET" = full ] && echo bench/results/slices.jsonl || echo "$OUT/slices.jsonl")}
$PY -m bench.cli slice "${SLICE_STAGES[@]}" --given "$SECONDS_GIVEN" --budget "$BUDGET" --device "$DEVICE" \
  --results "$RESULTS" --log "$SLICES" 2>&1 | grep --line-buffered -v Warning | tee -a "$LOG"
[ "$SLICES" -ef "$OUT/slices.jsonl" ] || cp "$SLICES" "$OUT/slices.jsonl" 2>/dev/null
cp bench/results/full.jsonl "$OUT/full.jsonl" 2>/dev/null
cp bench/results/perf-cuda-concurrency-*.json "$OUT/" 2>/dev/null
say "done; $(wc -l < bench/results/full.jsonl 2>/dev/null || echo 0) lines in bench/results/full.jsonl"
