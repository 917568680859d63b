#!/usr/bin/env bash
# One call on a lent GPU machine (torch/Triton/transformers preinstalled, prunekit not installed),
# in priority order, each part under its own time limit (limits sum to 560 s + 5 s grace each, under the 600 s call; ~5.5 min expected on an H100):
#   1. end-to-end compact-model timings (issue 4's targets; the original + CUDA graph baseline; a profile),
#      then gpu_probe.py (the device's copy/matmul ceilings, every kernel by name, the GELU-epilogue A/B);
#   2. the CLI on CUDA: bench --device cuda, export-onnx --fp16, eval --device cuda (issue 5);
#   3. prunekit's tests on CUDA (every CUDA backend and fp16 export first, then search, compact, CUDA graphs, distill,
#      fp16 training with loss scaling);
#   4. the kernels' correctness cases and attention timings.
# Usage (repo root): bash benchmarks/gpu_session.sh
# Writes under $OUT (default benchmarks/results): the logs e2e.log, probe.log, bench_cli.log, pytest_cuda.log and
# kernels.log, and the scripts' results gpu_e2e.{json,md}, gpu_probe.{json,md}, gpu_bench/ and gpu_kernels.{json,md}.
# The published files are these renamed after the run with the device (gpu_e2e_h100.*, gpu_e2e_h200.*, gpu_probe_h100.*,
# gpu_bench_h100/, gpu_kernels_h100.*, gpu_kernels_h200_run{1,2,3}.*, pytest_cuda_h100.log, pytest_cuda_h200.log).
set -u
R=$(pwd)
OUT=${OUT:-$R/benchmarks/results}
export PYTHONUNBUFFERED=1
T="timeout -k 5"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader
$T 30 python -c "import torch, triton, transformers, onnx, onnxruntime as o; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, 'onnx', onnx.__version__, 'onnxruntime', o.__version__, o.get_available_providers())" 2>&1 | tail -1

# prunekit and prunekit_kernels from this checkout, nothing installed (benchmarks/checkout_imports.py
# says how; the Python scripts call it themselves, pytest below needs the variable).
PYTHONPATH=$(python benchmarks/checkout_imports.py)
export PYTHONPATH

$T 120 python benchmarks/gpu_e2e.py --budget 85 > "$OUT/e2e.log" 2>&1; echo "gpu_e2e rc=$?"
$T 50 python benchmarks/gpu_probe.py > "$OUT/probe.log" 2>&1; echo "gpu_probe rc=$?"
$T 160 python benchmarks/gpu_bench.py > "$OUT/bench_cli.log" 2>&1; echo "gpu_bench rc=$?"

# Collection errors (a package missing on the image) must not stop the rest.
(cd /tmp && $T 100 python -m pytest -q -p no:cacheprovider --continue-on-collection-errors \
    "$R/tests/test_backends.py" "$R/tests/test_export.py" "$R/tests/test_compact.py" "$R/tests/test_search_units.py" \
    "$R/tests/test_gates.py" "$R/tests/test_search.py" "$R/tests/test_distill.py" "$R/tests/test_long_runs.py" \
    -k "not kill and not fvcore and (not test_backends or cuda or shape_graphs) and (not test_export or fp16) and (not test_long_runs or fp16)" \
    > "$OUT/pytest_cuda.log" 2>&1); echo "pytest on CUDA rc=$?"

$T 100 python benchmarks/gpu_kernels.py --budget 60 90 > "$OUT/kernels.log" 2>&1; echo "gpu_kernels rc=$?"

echo "=== pytest ==="; grep -E "^(FAILED|ERROR)|skipped \(" "$OUT/pytest_cuda.log" | head -20; tail -2 "$OUT/pytest_cuda.log"
echo "=== e2e ==="; grep -E "^- |RESULT" "$OUT/e2e.log" | head -30
echo "=== probe ==="; grep -E "^ceilings|^- |RESULT" "$OUT/probe.log" | head -12
echo "=== bench --device cuda ==="; grep -E "^=== |^\| bert|^best|RESULT|^error" "$OUT/bench_cli.log" | head -50
echo "=== kernels ==="; grep -E "RESULT|^\| (2|4|6|8|12) \| (26|32|64) \| 128 \|" "$OUT/kernels.log" | head -30
