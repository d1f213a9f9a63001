#!/usr/bin/env bash
# One lent-GPU session (docs/benchmarks.md, "One H100"): install the carried wheels, then
#   1. whether a window's bits depend on its batch (benchmarks/gpu_determinism.py),
#   2. the exactness invariant on the GPU (benchmarks/gpu_exactness.py),
#   3. model only: naive, eager and compiled profiles, 388 and 900 px tiles,
#   4. end to end on 1.39 Gpix: 8 GPU-sharing workers, then one worker of 12 threads (bf16 eager).
# Each step has its own time limit and writes JSON under $OUT, so a late failure keeps the rest.
# About 7 minutes on an H100 after the machine starts; set STEPS to run fewer (e.g. STEPS="3 4").
# Run from the repository root with the wheels in .whl (the list: docs/benchmarks.md).
set -u
OUT=${OUT:-/tmp/gpu-out}
STEPS=${STEPS:-1 2 3 4}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, zarr, dask; print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version(), zarr.__version__, dask.__version__)" | tee -a "$OUT/gpu.txt"
bench=(python3 -c "from pipeline.cli import main; main()" bench --device cuda)
step() { [[ " $STEPS " == *" $1 "* ]]; }
if step 1; then
  echo "== 1. a window's bits in its batch"
  timeout 90 python3 benchmarks/gpu_determinism.py --json "$OUT/determinism-gpu.json" 2>&1 | tail -8
fi
if step 2; then
  echo "== 2. exactness"
  timeout 120 python3 benchmarks/gpu_exactness.py --json "$OUT/exactness-gpu.json" 2>&1 | grep -v INFO | tail -20
fi
if step 3; then
  echo "== 3. model only"
  timeout 150 "${bench[@]}" --seconds 3 --no-e2e \
    --profiles bf16:nchw:eager:8,bf16:cl:eager:16,bf16:cl:eager:32:benchmark,fp16:cl:eager:32,bf16:cl:compiled:16,bf16:cl:compiled:32 \
    --json "$OUT/bench-gpu-model.json" 2>&1 | grep -v INFO | tail -10
  timeout 90 "${bench[@]}" --seconds 3 --no-e2e --tile 900 --profiles bf16:cl:eager:8,bf16:cl:compiled:8 \
    --json "$OUT/bench-gpu-tile900.json" 2>&1 | grep -v INFO | tail -4
fi
if step 4; then
  echo "== 4. end to end"
  timeout 150 "${bench[@]}" --seconds 2 --profiles bf16:cl:eager:16 --e2e-shape 64x4656x4656 \
    --workers 8 --tasks-per-worker 2 --block-tiles 4 --block-planes 4 \
    --json "$OUT/bench-gpu-e2e.json" 2>&1 | grep -v INFO | tail -5
  # one worker per GPU (one CUDA context), its threads feeding one batcher
  timeout 150 "${bench[@]}" --seconds 2 --profiles bf16:cl:eager:16 --e2e-shape 64x4656x4656 \
    --workers 1 --tasks-per-worker 12 --block-tiles 4 --block-planes 4 \
    --json "$OUT/bench-gpu-e2e-one-worker.json" 2>&1 | grep -v INFO | tail -5
fi
ls -la "$OUT"
