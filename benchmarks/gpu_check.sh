#!/usr/bin/env bash
# One-shot GPU check (9.75 minutes at most): versions, CUDA-op build, GPU tests, ref-vs-cuda training
# losses, the GPU speed benchmark (section D of train_speed.py) and a profile of one mixed-precision
# step. Every step has its own time limit so that one hung step cannot eat the device session; a
# failed step is recorded and the script goes on. The benchmark writes each row as it is measured.
#
#   bash benchmarks/gpu_check.sh [OUTDIR]      (default: $OUT, else ./gpu-check-out)
#
# Uses the machine's python3 (no venv, installs nothing). Writes NN-name.log files and summary.md.
set -u
OUTDIR="${1:-${OUT:-gpu-check-out}}"
mkdir -p "$OUTDIR"
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1  # a step killed at its limit still leaves its output in the log
SUMMARY="$OUTDIR/summary.md"
echo "# GPU check $(date -u +%FT%TZ)" > "$SUMMARY"

step() {  # step NAME LIMIT_S COMMAND...
  local name="$1" limit="$2"; shift 2
  local start=$SECONDS
  echo "== $name (limit ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" > "$OUTDIR/$name.log" 2>&1
  local rc=$?
  local verdict="ok"; [ $rc -eq 124 ] && verdict="TIMEOUT"; [ $rc -ne 0 ] && [ $rc -ne 124 ] && verdict="FAILED"
  echo "- $name: $verdict (rc $rc, $((SECONDS - start)) s)" | tee -a "$SUMMARY"
  tail -n 5 "$OUTDIR/$name.log"
}

step 01-versions 30 bash -c "nvidia-smi; $PY -c 'import torch, sys; print(sys.version); print(torch.__version__, torch.version.cuda, torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)'"
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
step 02-build-ops 120 bash -c build_ops
# -m gpu over tests/ covers tests/torch_utils/ops/test_cuda_ops.py and every other gpu-marked test.
step 03-gpu-tests 90 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests
step 04-ops-training 60 "$PY" benchmarks/gpu_ops_training_check.py --steps=4
step 05-train-speed 240 "$PY" benchmarks/train_speed.py --device=cuda --sections=D --reps=2 \
  --out "$OUTDIR/train_speed.md"
step 06-step-profile 45 "$PY" benchmarks/step_profile.py --device=cuda --out "$OUTDIR/step_profile.md"

{ echo; echo "## train_speed tables"; cat "$OUTDIR/train_speed.md" 2>/dev/null || echo "(none: see 05-train-speed.log)"; } >> "$SUMMARY"
{ echo; cat "$OUTDIR/step_profile.md" 2>/dev/null || echo "(no profile: see 06-step-profile.log)"; } >> "$SUMMARY"
echo "done: $OUTDIR (summary.md)"
