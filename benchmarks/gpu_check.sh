#!/usr/bin/env bash
# The GPU section in one prepared run (issue 17): the tests that need a GPU, the packed-vs-one-at-a-time
# benchmark, and one `_gpu` study end to end. Made for a short loan of a GPU machine: each part has its
# own time limit, so one that hangs cannot eat the others' time; everything it prints and writes goes
# under OUT (default: ./gpu_check_out), for RESULTS.md.
#
#   bash benchmarks/gpu_check.sh     # at most 10 minutes (the parts' limits add up to 585 s)
#
# It needs scalesweep's requirements installed (the README's install command; torch with CUDA). Where the
# package itself is not installed it runs from the checkout (PYTHONPATH).
set -u
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
log() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$OUT/summary.txt"; }

log "machine"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; free -g | head -2; } >"$OUT/machine.txt" 2>&1
python3 -c "import torch, ray, mlflow; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.device_count()); print('ray', ray.__version__, 'mlflow', mlflow.__version__)" >>"$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt" | tee -a "$OUT/summary.txt"

log "tests that need a GPU (tests/test_gpu.py)"
timeout 120 python3 -m pytest -q -n 0 -p no:cacheprovider tests/test_gpu.py >"$OUT/tests.txt" 2>&1
echo "exit $?" >>"$OUT/tests.txt"
tail -3 "$OUT/tests.txt" | tee -a "$OUT/summary.txt"

log "benchmark: packed fractional gpus_per_run vs one run at a time (benchmarks/compare.py --gpu)"
timeout 270 python3 benchmarks/compare.py --gpu --reps 1 >"$OUT/compare_gpu.txt" 2>&1
echo "exit $?" >>"$OUT/compare_gpu.txt"
tail -8 "$OUT/compare_gpu.txt" | tee -a "$OUT/summary.txt"

log "one _gpu study end to end: sweeps/coord_check_gpu.yaml (run, then report)"
study="$OUT/study"
mkdir -p "$study" && cp sweeps/coord_check_gpu.yaml "$study/"
(
  cd "$study" || exit 1
  start=$(date +%s)
  timeout 150 python3 -m scalesweep run coord_check_gpu.yaml >run.txt 2>&1
  echo "run exit $? after $(($(date +%s) - start)) s" >>run.txt
  timeout 45 python3 -m scalesweep report coord_check_gpu.yaml >report.txt 2>&1
  echo "report exit $?" >>report.txt
  cp reports/coord_check_gpu/verdicts.csv . 2>/dev/null
  rm -rf mlflow.db mlartifacts  # the store stays behind: only the outcome comes back
)
tail -4 "$study/run.txt" "$study/report.txt" | tee -a "$OUT/summary.txt"
log "done"
