#!/usr/bin/env bash
# One command for a lent GPU machine (see ../shared/tools/device-wheels.sh, carry=[".whl"]):
# installs the stack from .whl/, runs the CUDA tests, then the speed benchmarks, and writes the
# outputs under ${OUT:-gpu-results}/ for docs/performance.md.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-results}"
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl
export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" | tee "$out/versions.txt"
python3 -m pytest -q -m gpu -p no:cacheprovider tests/ 2>&1 | tail -40 | tee "$out/gpu-tests.txt"
python3 benchmarks/bench_updates.py --device cuda 2>&1 | grep -v -i warn | tee "$out/bench_updates.txt"
python3 benchmarks/bench_functional.py --device cuda 2>&1 | grep -v -i warn | tee "$out/bench_functional.txt" || true
python3 benchmarks/bench_replay.py 2>&1 | grep -v -i warn | tee "$out/bench_replay.txt"
