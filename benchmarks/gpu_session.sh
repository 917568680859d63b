#!/usr/bin/env bash
# One call on a lent GPU machine (torch/Triton/transformers preinstalled, prunekit not installed):
# end-to-end compact-model timings, prunekit's tests on CUDA, then the kernel correctness + timings.
# Usage (repo root): bash benchmarks/gpu_session.sh   — writes logs and results under $OUT.
set -u
R=$(pwd)
OUT=${OUT:-$R/benchmarks/results}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"

timeout 260 python benchmarks/gpu_e2e.py > "$OUT/e2e.log" 2>&1; echo "gpu_e2e rc=$?"

# prunekit importable without installing it and without the repo root on sys.path (its kernels/
# would shadow the PyPI package `kernels` that transformers probes): link both into a temp dir.
A=$(mktemp -d); ln -s "$R/prunekit" "$A/prunekit"; ln -s "$R/kernels" "$A/prunekit_kernels"
# test_distill needs click (absent on some GPU images): collection errors must not stop the rest.
(cd /tmp && PYTHONPATH="$A" timeout 150 python -m pytest -q -p no:cacheprovider --continue-on-collection-errors \
    "$R/tests/test_search_units.py" "$R/tests/test_gates.py" "$R/tests/test_search.py" "$R/tests/test_compact.py" \
    "$R/tests/test_distill.py" -k "not kill and not fvcore" > "$OUT/pytest_cuda.log" 2>&1); echo "pytest on CUDA rc=$?"

timeout 170 python benchmarks/gpu_kernels.py > "$OUT/kernels.log" 2>&1; echo "gpu_kernels rc=$?"

echo "=== pytest ==="; tail -5 "$OUT/pytest_cuda.log"
echo "=== e2e ==="; sed -n '/^# /,$p' "$OUT/e2e.log" | head -80
echo "=== kernels attention ==="; grep -E "RESULT|^\| (2|4|6|8|12) \| (26|32|64) \| 128 \|" "$OUT/kernels.log" | head -30
