#!/usr/bin/env bash
# One lent-GPU session (docs/benchmarks.md, "One H100"): install the carried wheels, then run STEPS in
# the order given:
#   0. one core's speed at the pipeline's host work (benchmarks/host_calibration.py),
#   1. whether a window's bits depend on its batch (benchmarks/gpu_determinism.py),
#   2. the exactness invariant on the GPU (benchmarks/gpu_exactness.py),
#   3. model only: naive, eager and compiled profiles, 388 and 900 px tiles,
#   4. end to end on 1.39 Gpix with 8 GPU-sharing workers x 2 tasks (bf16 eager),
#   5. the same with one worker of 12 threads (one CUDA context, its threads feeding one batcher),
#   6. model-only variants aimed at 220 Mpix/s and a kernel-time table (benchmarks/gpu_model_variants.py;
#      VARIANTS=baseline,fused picks variants by name),
#   7. the same with inductor's max-autotune (minutes of compiling),
#   8. step 4 with 3 tasks per worker and Zarr's codec pool at 4 threads per worker (default: cores + 4),
#   9. end to end with fewer CUDA contexts: 2 workers x 8 tasks and 4 x 4,
#  10. `segment --cluster cuda --workers-per-gpu 4` (GPU-sharing workers pinned per GPU) on the demo model,
#  11. step 4 with the demo model zero-padded to the paper's width (its cells instead of speckle, the same cost),
#  12. four acquisitions on one cluster one after another, then taking turns at the GPU (benchmarks/back_to_back.py),
#  13. the driver's job rate on this host's cores, scheduler in the driver and in a process of its own (no GPU used:
#      benchmarks/driver_job_rate.py),
#  14. step 4 with blocks of one plane (the default config's; 4x the jobs per Mpix of step 4's 4 planes),
#  15. end to end on one volume with several cluster shapes, under MPS too (cluster.mps: the run starts
#      the daemon; benchmarks/gpu_cluster_shapes.py; SHAPES=8x2,4x4:mps picks them; WEIGHTS=random for
#      speckle, demo (cells) by default since 2026-11-27's H200 session),
#  16. step 2 with the workers under an MPS daemon started here (CUDA_MPS_PIPE_DIRECTORY set: the runs
#      use it); "run sha256" equal to step 2's: MPS changes no bits,
#  17. compose's way: `dask scheduler`, `unet-pipeline cluster workers` (8 per GPU, under MPS), then
#      `segment --cluster tcp://` of 8 x 4656² with the demo model (DEVICE=cpu MPS_FLAG= tries it on a CPU).
#  18. step 11 under py-spy (its wheel carried in .whl), summarised by benchmarks/profile_summary.py: which code
#      of the workers' block tasks, file threads and batchers uses the host's CPU.
#  20. step 11 with the workers' memory settings of before 2026-11-28 (MALLOC_ARENA_MAX=0, NUMPY_MADVISE_HUGEPAGE=1
#      in the environment): the A/B of one malloc arena and no NumPy huge pages on a GPU host.
#  19. step 11 with the compiled fp16 profile (the model compiled in the driver for the model-only figure first,
#      so the workers find inductor's cache filled).
# Each step has its own time limit and writes JSON under $OUT, so a late failure keeps the rest.
# Since 2026-11-27 (the H200 session) cluster.mps is auto: the end-to-end steps' 8 GPU-sharing workers run
# under MPS where nvidia-cuda-mps-control is on PATH (bench prints "under MPS"); earlier sessions' figures of
# steps 4, 8, 9, 11 and 14 were without. bench's JSON now holds tail_by_stage and finish_seconds: what ran
# after the last predict task; since 2026-11-28 also each predict section's task-thread CPU beside its wall
# (predict_worker_cpu_seconds), a "file threads" CPU role, each role's kernel part (cpu_system_seconds),
# and bench times the second acquisition on its cluster (a one-block one first: the workers' model loaded,
# and compiled; --no-warm-up for the first). Since 2026-11-28 (seventeenth session) each end-to-end step
# also draws its run (timeline-*.svg: every task on its worker thread, the GPU's busy time beneath).
# The default steps (11 20 18 19: end to end with cells, the same with the memory settings of before,
# under py-spy, compiled) take about 8.5 minutes after the machine starts
# (11 and 20 about 100 s each, 18 about 130 s, 19 about 180 s, its compile the least known: last, so a cut
# call keeps the rest): one call has 10 minutes at most, so exactness (2, about 50 s) goes in a second call;
# speckle (4) and the cluster shapes (15) left them on 2026-11-28: speckle's labels are a worst case, the
# target is read on cells, and 15 ran on 2026-11-27. Step 7 (max-autotune) did not finish in 200 s on 2026-11-27 and now
# has 420 s: it does not fit a 15-minute session beside the defaults; run it alone (or with 2) in a session of
# its own. Earlier sessions ran 0 4 11 8 9 2 13, 14 12 5 10, 0 2 4 14 11, 15 7 and 2 16 15 17 (docs/benchmarks.md).
# Run from the repository root with the wheels in .whl (the list: docs/benchmarks.md).
set -u
OUT=${OUT:-/tmp/gpu-out}
STEPS=${STEPS:-11 20 18 19}
VARIANTS=${VARIANTS:-}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, zarr, dask; print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version(), zarr.__version__, dask.__version__)" | tee -a "$OUT/gpu.txt"
bench=(python3 -c "from pipeline.cli import main; main()" bench --device cuda)
e2e=(--seconds 2 --profiles bf16:cl:eager:16 --e2e-shape 64x4656x4656 --block-tiles 4 --block-planes 4)

for step in $STEPS; do
  case $step in
  0)
    echo "== 0. host calibration"
    timeout 60 python3 benchmarks/host_calibration.py --json "$OUT/host-gpu-machine.json" | tail -8
    ;;
  1)
    echo "== 1. a window's bits in its batch"
    timeout 90 python3 benchmarks/gpu_determinism.py --json "$OUT/determinism-gpu.json" 2>&1 | tail -8
    ;;
  2)
    echo "== 2. exactness"
    timeout 120 python3 benchmarks/gpu_exactness.py --json "$OUT/exactness-gpu.json" 2>&1 | grep -v INFO | tail -20
    ;;
  3)
    echo "== 3. model only"
    timeout 150 "${bench[@]}" --seconds 3 --no-e2e \
      --profiles bf16:nchw:eager:8,bf16:cl:eager:16,bf16:cl:eager:32:benchmark,fp16:cl:eager:32,bf16:cl:compiled:16,bf16:cl:compiled:32 \
      --json "$OUT/bench-gpu-model.json" 2>&1 | grep -v INFO | tail -10
    timeout 90 "${bench[@]}" --seconds 3 --no-e2e --tile 900 --profiles bf16:cl:eager:8,bf16:cl:compiled:8 \
      --json "$OUT/bench-gpu-tile900.json" 2>&1 | grep -v INFO | tail -4
    ;;
  4)
    echo "== 4. end to end, 8 workers x 2 tasks"
    timeout 150 "${bench[@]}" "${e2e[@]}" --workers 8 --tasks-per-worker 2 \
      --timeline "$OUT/timeline-gpu-e2e.svg" --json "$OUT/bench-gpu-e2e.json" 2>&1 | grep -v INFO | tail -5
    ;;
  5)
    echo "== 5. end to end, one worker of 12 threads"
    timeout 150 "${bench[@]}" "${e2e[@]}" --workers 1 --tasks-per-worker 12 \
      --timeline "$OUT/timeline-gpu-e2e-one-worker.svg" --json "$OUT/bench-gpu-e2e-one-worker.json" 2>&1 | grep -v INFO | tail -5
    ;;
  6)
    echo "== 6. model-only variants"
    if [[ -n "$VARIANTS" ]]; then
      timeout 200 python3 benchmarks/gpu_model_variants.py --json "$OUT/variants-gpu.json" --only "$VARIANTS" \
        2>&1 | grep -v INFO | tail -12
    else
      timeout 200 python3 benchmarks/gpu_model_variants.py --json "$OUT/variants-gpu.json" \
        --profile "$OUT/kernels-gpu.txt" 2>&1 | grep -v INFO | tail -12
      head -30 "$OUT/kernels-gpu.txt"
    fi
    ;;
  7)
    echo "== 7. max-autotune (fp16, the faster dtype compiled)"
    timeout 420 python3 benchmarks/gpu_model_variants.py --json "$OUT/autotune-gpu.json" --autotune \
      --only "fp16 max-autotune" 2>&1 | grep -v INFO | tail -4
    ;;
  8)
    echo "== 8. end to end, 8 workers x 3 tasks, Zarr's codec pool at 4 threads per worker"
    ZARR_THREADING__MAX_WORKERS=4 timeout 150 "${bench[@]}" "${e2e[@]}" --workers 8 --tasks-per-worker 3 \
      --timeline "$OUT/timeline-gpu-e2e-8x3.svg" --json "$OUT/bench-gpu-e2e-8x3.json" 2>&1 | grep -v INFO | tail -5
    ;;
  9)
    for shape in "2 8" "4 4"; do
      set -- $shape
      echo "== 9. end to end, $1 workers x $2 tasks"
      timeout 150 "${bench[@]}" "${e2e[@]}" --workers "$1" --tasks-per-worker "$2" \
        --timeline "$OUT/timeline-gpu-e2e-${1}x${2}.svg" --json "$OUT/bench-gpu-e2e-${1}x${2}.json" 2>&1 | grep -v INFO | tail -5
    done
    ;;
  10)
    echo "== 10. segment on a cuda cluster of 4 workers per GPU"
    cli=(python3 -c "from pipeline.cli import main; main()")
    rm -rf /tmp/pinned-in.zarr /tmp/pinned-out.ome.zarr
    "${cli[@]}" synth /tmp/pinned-in.zarr --shape 8x3104x3104 --chunks 1x512x512 --seed 3 > /dev/null
    timeout 150 "${cli[@]}" segment /tmp/pinned-in.zarr /tmp/pinned-out.ome.zarr --model models/demo-unet.safetensors \
      --cluster cuda --workers-per-gpu 4 --device cuda --no-progress 2>&1 | grep -v INFO | tail -6
    cp /tmp/pinned-out.ome.zarr/zarr.json "$OUT/pinned-run-record.json" 2>/dev/null
    ;;
  11)
    echo "== 11. end to end, 8 workers x 2 tasks, the demo model at paper width (cells)"
    timeout 150 "${bench[@]}" "${e2e[@]}" --workers 8 --tasks-per-worker 2 --e2e-weights demo \
      --timeline "$OUT/timeline-gpu-e2e-demo-weights.svg" --json "$OUT/bench-gpu-e2e-demo-weights.json" 2>&1 | grep -v INFO | tail -5
    ;;
  12)
    echo "== 12. acquisitions back to back: one after another, then taking turns"
    timeout 240 python3 benchmarks/back_to_back.py --device cuda --base-channels 64 --acquisitions 4 \
      --shape 8x4656x4656 --workers 8 --tasks-per-worker 2 --block-planes 4 --batch-size 16 \
      --json "$OUT/back-to-back-gpu.json" 2>&1 | grep -v INFO | tail -4
    ;;
  13)
    for scheduler in driver subprocess; do
      echo "== 13. the driver's job rate, scheduler in the $scheduler"
      timeout 90 python3 benchmarks/driver_job_rate.py --jobs 4000 --workers 8 --in-flight 24 --scheduler "$scheduler" \
        --json "$OUT/driver-job-rate-$scheduler.json" 2>&1 | grep -v INFO | tail -2
    done
    ;;
  14)
    echo "== 14. end to end, 8 workers x 2 tasks, blocks of one plane"
    timeout 150 "${bench[@]}" "${e2e[@]}" --block-planes 1 --workers 8 --tasks-per-worker 2 \
      --timeline "$OUT/timeline-gpu-e2e-one-plane-blocks.svg" --json "$OUT/bench-gpu-e2e-one-plane-blocks.json" 2>&1 | grep -v INFO | tail -5
    ;;
  15)
    echo "== 15. end to end on one volume, cluster shapes ${SHAPES:-12x2:mps,8x3:mps,8x2}, ${WEIGHTS:-demo} weights"
    timeout 290 python3 benchmarks/gpu_cluster_shapes.py --shapes "${SHAPES:-12x2:mps,8x3:mps,8x2}" --weights "${WEIGHTS:-demo}" \
      --json "$OUT/cluster-shapes-gpu.json" 2>&1 | grep -v INFO | tail -12
    ;;
  18)
    echo "== 18. step 11 under py-spy (50 samples a second, native frames): where the host's CPU goes"
    if [[ -x /tmp/site/bin/py-spy ]]; then
      timeout 200 /tmp/site/bin/py-spy record --subprocesses --native --rate 50 --format raw \
        -o "$OUT/pyspy-e2e-demo.txt" -- "${bench[@]}" "${e2e[@]}" --workers 8 --tasks-per-worker 2 \
        --e2e-weights demo --timeline "$OUT/timeline-gpu-e2e-pyspy.svg" --json "$OUT/bench-gpu-e2e-pyspy.json" 2>&1 | grep -v INFO | tail -8
      python3 benchmarks/profile_summary.py "$OUT/pyspy-e2e-demo.txt" --top 12 \
        --json "$OUT/pyspy-e2e-demo-summary.json" | head -90
    else
      echo "no py-spy: carry its wheel in .whl (pip download --no-deps --only-binary=:all: py-spy)"
    fi
    ;;
  19)
    echo "== 19. end to end with a compiled profile (fp16 b16: a batch holds one shard's 16 windows), cells"
    timeout 300 "${bench[@]}" --seconds 2 --profiles bf16:cl:eager:16 --e2e-profile fp16:cl:compiled:16 \
      --e2e-shape 64x4656x4656 --block-tiles 4 --block-planes 4 --workers 8 --tasks-per-worker 2 \
      --e2e-weights demo --timeline "$OUT/timeline-gpu-e2e-compiled.svg" --json "$OUT/bench-gpu-e2e-compiled.json" 2>&1 | grep -v INFO | tail -8
    ;;
  20)
    echo "== 20. step 11 with the workers' memory as before 2026-11-28 (glibc's arenas, NumPy's huge pages)"
    # a variable in the environment outranks the one the workers are given (Dask's pre-spawn-environ)
    MALLOC_ARENA_MAX=0 NUMPY_MADVISE_HUGEPAGE=1 timeout 150 "${bench[@]}" "${e2e[@]}" --workers 8 \
      --tasks-per-worker 2 --e2e-weights demo --timeline "$OUT/timeline-gpu-e2e-demo-memory-before.svg" --json "$OUT/bench-gpu-e2e-demo-memory-before.json" 2>&1 \
      | grep -v INFO | tail -6
    ;;
  16)
    echo "== 16. exactness under MPS"
    export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
    mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
    nvidia-cuda-mps-control -d && timeout 120 python3 benchmarks/gpu_exactness.py --json "$OUT/exactness-gpu-mps.json" \
      2>&1 | grep -v INFO | tail -20
    echo quit | nvidia-cuda-mps-control
    unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
    ;;
  17)
    echo "== 17. dask scheduler + unet-pipeline cluster workers + segment --cluster tcp://"
    cli=(python3 -c "from pipeline.cli import main; main()")
    rm -rf /tmp/tcp-in.zarr /tmp/tcp-out.ome.zarr /tmp/tcp-scheduler.json
    "${cli[@]}" synth /tmp/tcp-in.zarr --shape 8x4656x4656 --chunks 1x512x512 --seed 3 > /dev/null
    DASK_DISTRIBUTED__SCHEDULER__WORK_STEALING=False \
      python3 -c "from distributed.cli.dask_scheduler import main; main()" --host 127.0.0.1 --port 0 \
      --no-dashboard --scheduler-file /tmp/tcp-scheduler.json > "$OUT/tcp-scheduler.log" 2>&1 &
    scheduler=$!
    for _ in $(seq 60); do [[ -s /tmp/tcp-scheduler.json ]] && break; sleep 0.5; done
    address=$(python3 -c "import json; print(json.load(open('/tmp/tcp-scheduler.json'))['address'])")
    "${cli[@]}" cluster workers "$address" --workers-per-gpu 8 ${MPS_FLAG---mps} > "$OUT/tcp-workers.log" 2>&1 &
    workers=$!
    timeout 150 "${cli[@]}" segment /tmp/tcp-in.zarr /tmp/tcp-out.ome.zarr --model models/demo-unet.safetensors \
      --cluster "$address" --device "${DEVICE:-cuda}" --no-progress 2>&1 | grep -v INFO | tail -4
    "${cli[@]}" inspect /tmp/tcp-out.ome.zarr --json > "$OUT/tcp-run-record.json"
    python3 -c "import json; r=json.load(open('$OUT/tcp-run-record.json'))['runs'][-1]; \
print(r['status'], r['wall_seconds'], r['cluster'], r['stages']['predict'].get('mpix_per_second'))"
    kill -TERM "$workers"; wait "$workers"; echo "workers exited $?"; kill "$scheduler"
    ;;
  *) echo "no step $step" ;;
  esac
done
ls -la "$OUT"
