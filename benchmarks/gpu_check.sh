#!/usr/bin/env bash
# One-shot GPU check: versions, CUDA-op build, GPU tests, ref-vs-cuda training losses, op-level kernel
# timings, the GPU speed benchmark (section D of train_speed.py, with and without CUDA graphs) and
# profiles of one mixed-precision baseline256 step (CUDA ops, eager then CUDA graphs). Every step has its
# own time limit (560 s in all, plus 5 s per step to kill one that ignores TERM; about 6 minutes on an
# H100) so that one hung step cannot eat a timed GPU session; a failed step is recorded and the script
# goes on. The benchmarks write each row (and each profile) as it is measured, so a step killed at its
# limit keeps what it measured.
#
#   bash benchmarks/gpu_check.sh [OUTDIR [STEP ...]]     (OUTDIR default: $OUT, else ./gpu-check-out)
#
# STEP is any of: tests training ops speed profile (default: all five, in that order). The versions
# and build steps always run (the build is a cache check once the ops are built), so a rerun can name
# only the steps that failed or timed out the first time.
#
# OUTDIR gets five files: summary.md (one line per step, then the tables), steps.log (every step's
# output, in order), ops_speed.md, train_speed.md and step_profile.md. Exits 1 when any step failed
# or timed out (summary.md names them). Uses the machine's python3 (or $PYTHON; no venv, installs
# nothing).
set -u
OUTDIR="${1:-${OUT:-gpu-check-out}}"
shift $(( $# > 0 ? 1 : 0 ))
ALL_STEPS="tests training ops speed profile"
WANTED="${*:-$ALL_STEPS}"
for s in $WANTED; do
  case " $ALL_STEPS " in *" $s "*) ;; *) echo "gpu_check.sh: unknown step '$s' (steps: $ALL_STEPS)" >&2; exit 2;; esac
done
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1  # a step killed at its limit still leaves its output in the log
SUMMARY="$OUTDIR/summary.md" LOG="$OUTDIR/steps.log"
echo "# GPU check $(date -u +%FT%TZ) (steps: versions build $WANTED)" > "$SUMMARY"
: > "$LOG"
FAILED_STEPS=""

wanted() { case " $WANTED " in *" $1 "*) return 0;; *) return 1;; esac; }

step() {  # step NAME LIMIT_S COMMAND...
  local name="$1" limit="$2"; shift 2
  local start=$SECONDS
  echo "== $name (limit ${limit}s): $*" | tee -a "$LOG"
  local before; before=$(wc -l < "$LOG")
  timeout --kill-after=5 "$limit" "$@" >> "$LOG" 2>&1
  local rc=$?
  tail -n +"$((before + 1))" "$LOG" | tail -n 5
  local verdict="FAILED"; [ $rc -eq 0 ] && verdict="ok"; [ $rc -eq 124 ] || [ $rc -eq 137 ] && verdict="TIMEOUT"
  [ $rc -ne 0 ] && FAILED_STEPS="$FAILED_STEPS $name"
  echo "- $name: $verdict (rc $rc, $((SECONDS - start)) s)" | tee -a "$SUMMARY" "$LOG"
}

step versions 15 bash -c "nvidia-smi; $PY -c 'import torch, sys; print(sys.version); print(torch.__version__, torch.version.cuda, torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)'"
# Both ops compile at once (two processes; each op's build is locked separately), then the CLI loads
# them from the cache and reports one line per op with the exit status.
build_ops() {
  local op
  for op in bias_act upfirdn2d; do
    "$PY" -c "import sys; from torch_utils import custom_ops; custom_ops.load_op(sys.argv[1])" "$op" &
  done
  wait
  "$PY" -m torch_utils.custom_ops --build --verbose
}
export -f build_ops
export PY
step build 65 bash -c build_ops
# -m gpu over tests/: the kernel tests, the op benchmark's smoke test, train.py -> resume -> generate.py with
# mixed precision (tests/cli/test_train.py), and the training phases captured as CUDA graphs
# (tests/training/test_phase_graphs.py, train.py --cuda-graphs=1).
# Two test processes when pytest-xdist is there: most GPU tests wait on the host, not on the GPU.
XDIST=""
"$PY" -c "import xdist" >/dev/null 2>&1 && XDIST="-n 2 --dist=loadfile"
# shellcheck disable=SC2086  # $XDIST is a list of options
wanted tests && step tests 140 "$PY" -m pytest -q -m gpu -p no:cacheprovider $XDIST tests
wanted training && step training 35 "$PY" benchmarks/gpu_ops_training_check.py --steps=4
wanted ops && step ops 25 "$PY" benchmarks/ops_speed.py --device=cuda --out "$OUTDIR/ops_speed.md"
wanted speed && step speed 200 "$PY" benchmarks/train_speed.py --device=cuda --sections=D --reps=2 \
  --cfg=baseline256 --cfg=lsun-cat256 \
  --out "$OUTDIR/train_speed.md"
# The profiles are appended to one file as each finishes (the step's log gets them too).
profiles() {
  set -o pipefail
  local args rc=0
  : > "$OUTDIR/step_profile.md"
  for args in "--ops=auto" "--cuda-graphs --ops=auto"; do
    # shellcheck disable=SC2086  # $args is a list of options
    "$PY" benchmarks/step_profile.py --device=cuda $args | tee -a "$OUTDIR/step_profile.md" || rc=1
  done
  return $rc
}
export -f profiles
export OUTDIR
wanted profile && step profile 80 bash -c profiles

if wanted ops; then
  { echo; cat "$OUTDIR/ops_speed.md" 2>/dev/null || echo "(no op timings: see steps.log)"; } >> "$SUMMARY"
fi
if wanted speed; then
  { echo; echo "## train_speed tables"; cat "$OUTDIR/train_speed.md" 2>/dev/null || echo "(none: see steps.log)"; } >> "$SUMMARY"
fi
if wanted profile; then
  { echo; cat "$OUTDIR/step_profile.md" 2>/dev/null || echo "(no profile: see steps.log)"; } >> "$SUMMARY"
fi
echo "done: $OUTDIR (summary.md, steps.log)"
if [ -n "$FAILED_STEPS" ]; then
  echo "failed or timed out:$FAILED_STEPS" | tee -a "$SUMMARY"
  exit 1
fi
