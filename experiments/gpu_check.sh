#!/usr/bin/env bash
# GPU check: the GPU tests and benchmarks of strike_jax, in at most ~8 minutes, writing
# experiments/results/*_gpu.md (and .json). Run from anywhere; it works in the repository root.
#
#   experiments/gpu_check.sh                       # on a GPU machine
#   experiments/gpu_check.sh --quick --results-dir /tmp/gpu_rehearsal   # rehearsal (e.g. on CPU): shrunk sizes
#
# Each section runs under its own time limit (`timeout`), so one slow section cannot eat the others'
# time; a section that fails or runs out of time is reported at the end and in the log, and the
# script still runs the rest. Sections are appended by the issues that own them (one block each).
#
# Environment: PYTHON (default python3) must import jax (with its GPU plugin), flax, optax, chex,
# numpy; PyTorch (optional) adds the PyTorch columns. The repository root is put on PYTHONPATH.
set -uo pipefail

cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
QUICK=""
RESULTS=experiments/results
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK="--quick" ;;
    --results-dir) RESULTS="$2"; shift ;;
    -h|--help) sed -n 2,14p "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$RESULTS"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
LOG="$RESULTS/gpu_check.log"
: > "$LOG"
FAILED=()
START=$(date +%s)

# section NAME SECONDS COMMAND...: runs COMMAND under a time limit, output to the terminal and the log.
# The whole script keeps to BUDGET seconds (default 470, under the 8-minute device slot): a section
# gets min(its own limit, what is left), and is skipped once less than 20 s is left.
BUDGET=${GPU_CHECK_BUDGET:-470}
section() {
  local name=$1 secs=$2
  shift 2
  local left=$(( BUDGET - ($(date +%s) - START) ))
  if [ "$left" -lt 20 ]; then
    echo "=== $name: SKIPPED (budget of ${BUDGET}s spent)" | tee -a "$LOG"
    FAILED+=("$name(skipped)")
    return
  fi
  [ "$secs" -gt "$left" ] && secs=$left
  echo "=== $name (limit ${secs}s) $(date +%T)" | tee -a "$LOG"
  timeout --kill-after=10 "$secs" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" -ne 0 ]; then
    echo "=== $name: FAILED (exit $rc$([ "$rc" -eq 124 ] && echo ', time limit'))" | tee -a "$LOG"
    FAILED+=("$name")
  fi
}

section "environment" 60 "$PY" -c "import jax, sys; print(sys.version.split()[0], 'jax', jax.__version__, jax.devices())"
if [ -n "$QUICK" ]; then
  TAG=quick
else
  TAG=gpu
fi

# Order: the sections without GPU tables yet come first (a spent budget skips the last ones).
# --- issue 18: time to a table (a grid's compile and round time, cold vs warm compilation cache;
# bench_grid_<tag>.md). The generated data: the device has no scikit-learn.
section "bench_grid" 120 "$PY" -m experiments.bench_grid --cases synthetic_demo --warm \
  --out "$RESULTS/bench_grid_$TAG"

# --- issue 10: empirical (f, kappa) at the paper's size (50 x 2.47M synthetic; bench_kappa_<tag>.md)
if [ -n "$QUICK" ]; then
  KAPPA_ARGS="--quick --rules median,multikrum"
else
  KAPPA_ARGS=""
fi
section "bench_kappa" 90 "$PY" -m experiments.bench_kappa $KAPPA_ARGS --results-dir "$RESULTS" --tag "$TAG"

# --- issue 13: round time and peak memory against n on one device (bench_scale_<tag>.md; the
# server's share of the round). Peak memory there is the host process's RSS; the device's own
# peak comes from jax's memory stats where the backend has them.
if [ -n "$QUICK" ]; then
  SCALE_N="10,100"; SCALE_ROUNDS=2
else
  SCALE_N="10,100,1000,10000"; SCALE_ROUNDS=3
fi
section "bench_scale" 100 "$PY" -m experiments.bench_scale --n "$SCALE_N" --devices 1 --rounds "$SCALE_ROUNDS" \
  --backend "$([ -n "$QUICK" ] && echo cpu || echo gpu)" --tag "$TAG" --no-plot --results-dir "$RESULTS"

# --- issue 9: one training step per model, vmapped lanes, the CIFAR-10 round (bench_steps_<tag>.md)
if [ -f experiments/bench_steps.py ] && [ -z "${SKIP_STEPS:-}" ]; then
  section "bench_steps" 150 "$PY" -m experiments.bench_steps $QUICK --sections steps,lanes,round \
    --include-resnet --round-strategies vmap,steps --round-reps 3 --reps 20 \
    --results-dir "$RESULTS" --tag "$TAG"
fi

# --- issue 8: the vectorised path's tests, strategies (padded fraction, auto), sweeps as batches
if [ -n "$QUICK" ]; then
  SWEEP_CASES="digits_mlp"; STRAT_CASES="digits_mlp"; SUFFIX="_quick"
else
  SWEEP_CASES="digits_mlp synthetic_cifar_alexnet"; STRAT_CASES="fmnist_mlp cifar_alexnet"; SUFFIX=""
fi
section "tests_vectorised" 80 "$PY" -m pytest -x -q -p no:cacheprovider tests/test_schedule.py \
  "tests/test_simulate_many.py::test_batch_equals_each_run_alone"
section "bench_strategies" 90 "$PY" -m experiments.bench_strategies --cases $STRAT_CASES \
  --strategies packed vmap steps auto --rounds 3 --max-rounds 5 --out "$RESULTS" --suffix "$SUFFIX"
section "bench_sweep" 120 "$PY" -m experiments.bench_sweep --cases $SWEEP_CASES --sweeps nu8 \
  --out "$RESULTS" --suffix "$SUFFIX"

# --- (other issues append their sections here)

echo "=== done in $(( $(date +%s) - START ))s; results in $RESULTS" | tee -a "$LOG"
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "=== failed sections: ${FAILED[*]}" | tee -a "$LOG"
  exit 1
fi
