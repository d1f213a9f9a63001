#!/usr/bin/env bash
# One lent-GPU session (docs/benchmarks.md): install the carried wheels, then the bench (eager
# profiles, bf16-vs-fp32 agreement, end to end), the exactness check, and the compiled profile.
# Each step has its own time limit and writes its JSON under $OUT, so a late failure keeps the rest.
# Run from the repository root with the wheels in .whl (see docs/benchmarks.md for the list).
set -u
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, zarr, dask, distributed; print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version(), zarr.__version__, dask.__version__)" | tee -a "$OUT/gpu.txt"
bench=(python3 -c "from pipeline.cli import main; main()" bench --device cuda)
echo "== determinism of a window's output in its batch"
timeout 90 python3 benchmarks/gpu_determinism.py --json "$OUT/determinism-gpu.json" 2>&1 | tail -12
echo "== bench: eager profiles, agreement, end to end"
timeout 260 "${bench[@]}" --seconds 3 \
  --profiles bf16:nchw:eager:8,bf16:cl:eager:8,bf16:cl:eager:32,bf16:cl:eager:32:benchmark,fp32:cl:eager:32,fp16:cl:eager:32 \
  --e2e-shape "${E2E_SHAPE:-16x4656x4656}" --tasks-per-worker 4 --block-tiles 4 \
  --json "$OUT/bench-gpu-eager.json" 2>&1 | grep -v "^INFO distributed" | tail -40
if [ -n "${EXACTNESS:-}" ]; then
  echo "== exactness"
  timeout 150 python3 benchmarks/gpu_exactness.py --json "$OUT/exactness-gpu.json" 2>&1 | grep -v "INFO" | tail -25
fi
echo "== bench: compiled"
timeout "${COMPILE_SECONDS:-200}" "${bench[@]}" --seconds 3 --profiles bf16:cl:compiled:32 --no-e2e \
  --json "$OUT/bench-gpu-compiled.json" 2>&1 | grep -v "^INFO distributed" | tail -12
ls -la "$OUT"
