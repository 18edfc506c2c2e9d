#!/usr/bin/env bash
# The GPU checks for a lent GPU machine (see ../shared/tools/device-wheels.sh; pass carry=[".whl"]):
# installs the stack from .whl/, then runs the stages named on the command line (default: all, in
# this order), writing their outputs under ${OUT:-gpu-results}/ for docs/performance.md.
#
#   bash benchmarks/gpu_checks.sh tests updates      # one device call (a call may run 10 min)
#   bash benchmarks/gpu_checks.sh phase              # the next one
#
# Stages:
#   tests       the CUDA tests (pytest -m gpu): compiled / CUDA-graphed steps equal eager, both
#               graph backends, seed batching
#   updates     bench_updates.py: eager vs graphed (CudaGraphModule) vs graphed_torch (plain
#               CUDAGraph) per hot update, the OPT/TD3 ratio (target <= 1.3x) and eager/graphed
#               (target >= 12x); the compiled-only mode is left out to save compile time
#   functional  bench_functional.py: make_step vs functional steps, 1 vs N seeds in one graph
#   replay      bench_replay.py: the K-ary sum-tree on the GPU
#   phase       bench_phase.py: the whole online phase through run(cfg), 1 and 10 seeds. Full scale
#               (25k + 50k + 275k steps) needs ~600 s + ~1200 s if the targets hold, more than a
#               device call; --scale 0.15 (3750 collected, 7500 pre-training updates, 41250
#               fine-tuning env steps, eval every 750 steps) should take ~270 s if they hold, plus
#               fixed costs (dataset generation, the unmeasured offline run, compilation, which the
#               measured wall-clock includes). The dataset is 200k transitions (B_off only; its
#               size barely changes an update's cost) to keep generation short. The 55
#               evaluations x 10 episodes per seed do not shrink with --scale. The JSON is
#               rewritten after each run, so a cut-off call keeps the finished runs.
#   phase_async the same at 1 seed with graph_backend=torch and prefetch_action (env steps
#               overlapping the updates) for comparison with 'phase'
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-results}"
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl
export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" | tee "$out/versions.txt"
phase=(python3 benchmarks/bench_phase.py --scale 0.15 --dataset-size 200000 --quiet)
for stage in ${*:-tests updates functional replay phase phase_async}; do
  echo "== $stage $(date -u +%H:%M:%S)"
  case "$stage" in
    tests)
      python3 -m pytest -q -m gpu -p no:cacheprovider tests/ 2>&1 | tail -40 | tee "$out/gpu-tests.txt" ;;
    updates)
      python3 benchmarks/bench_updates.py --device cuda --modes eager,graphed,graphed_torch 2>&1 \
        | grep -v -i warn | tee "$out/bench_updates.txt" ;;
    functional)
      python3 benchmarks/bench_functional.py --device cuda 2>&1 | grep -v -i warn | tee "$out/bench_functional.txt" ;;
    replay)
      python3 benchmarks/bench_replay.py 2>&1 | grep -v -i warn | tee "$out/bench_replay.txt" ;;
    phase)
      "${phase[@]}" --seeds 1,10 --out "$out/bench_phase.json" 2> "$out/bench_phase.err" | tee "$out/bench_phase.txt" ;;
    phase_async)
      "${phase[@]}" --seeds 1 --graph-backend torch --prefetch --out "$out/bench_phase_async.json" \
        2> "$out/bench_phase_async.err" | tee "$out/bench_phase_async.txt" ;;
    *)
      echo "unknown stage $stage (tests updates functional replay phase phase_async)" >&2; exit 2 ;;
  esac
done
