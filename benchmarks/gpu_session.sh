#!/usr/bin/env bash
# One call on a lent GPU machine (torch/Triton/transformers preinstalled, prunekit not installed), the
# parts in the order given (default: pytest latency e2e bench), each under its own time limit:
#   pytest   prunekit's tests on CUDA (limit 170 s): every CUDA backend on a narrow-hidden compact model and on
#            uneven heads, fp16 export, hidden-width training, latency, bench, compact, search, distill, fp16 training;
#   latency  `search --cost latency` on triton-fp16-graph and torch-fp16-graph, 2x and 3x, MiniLM-L6 and BERT-base
#            shapes (random weights), batch 64 x 128, then `prunekit bench` beside them (issue 19; limit 180 s);
#   e2e      end-to-end compact-model timings (the original + CUDA graph baseline; limit 120 s);
#   bench    the CLI on CUDA: bench --device cuda, export-onnx --fp16, eval --device cuda (limit 100 s);
#   probe    the device's copy/matmul ceilings, every kernel by name (limit 50 s);
#   kernels  the kernels' correctness cases and attention timings (limit 100 s);
#   hidden   the docstrings students' architectures with and without --prune-hidden (S, H at 30% of the FLOPs; S10,
#            H10 at 10%), cut from a random-weight MiniLM and timed on triton-fp16-graph and torch-fp16-graph at
#            batch 64 (issue 20's GPU speed; benchmarks/arch_speed.py; limit 90 s).
# The default parts' limits sum to 570 s: one 600 s call (~8-9 min with the machine's start).
# Usage (repo root): bash benchmarks/gpu_session.sh [part ...]
# Every log and result is written under a scratch folder and packed into $OUT/gpu_session.tgz after each part
# (the lent machine returns 8 files at most; a part cut off by the call's limit keeps what came before).
# Logs: pytest_cuda.log, latency.log, e2e.log, bench_cli.log, probe.log, kernels.log, hidden.log; results: latency_target_gpu.{json,md},
# gpu_e2e.{json,md}, gpu_bench/, gpu_probe.{json,md}, gpu_kernels.{json,md}. The published files are these renamed
# after the run with the device (gpu_e2e_h200.*, latency_target_gpu_h200.*, pytest_cuda_h200.log, ...).
set -u
R=$(pwd)
FINAL=${OUT:-$R/benchmarks/results}
W=$(mktemp -d /tmp/gpu-session.XXXXXX)
export OUT=$W  # the scripts write under $OUT
export PYTHONUNBUFFERED=1
T="timeout -k 5"
PARTS=${*:-pytest latency e2e bench}
pack() { tar czf "$FINAL/gpu_session.tgz.part" -C "$W" . && mv "$FINAL/gpu_session.tgz.part" "$FINAL/gpu_session.tgz"; }

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader
$T 30 python -c "import torch, triton, transformers, onnx, onnxruntime as o; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, 'onnx', onnx.__version__, 'onnxruntime', o.__version__, o.get_available_providers())" 2>&1 | tail -1

# prunekit and prunekit_kernels from this checkout, nothing installed (benchmarks/checkout_imports.py
# says how; the Python scripts call it themselves, pytest and latency_target.py need the variable).
PYTHONPATH=$(python benchmarks/checkout_imports.py)
export PYTHONPATH

for part in $PARTS; do
  case $part in
    pytest)
      # Collection errors (a package missing on the image) must not stop the rest; fvcore is not on the image
      # (the two tests that count FLOPs with it are deselected).
      (cd /tmp && $T 170 python -m pytest -q -p no:cacheprovider --continue-on-collection-errors -rs \
          "$R/tests/test_hidden_deploy.py" "$R/tests/test_backends.py" "$R/tests/test_export.py" "$R/tests/test_hidden.py" \
          "$R/tests/test_distill_hidden.py" "$R/tests/test_latency.py" "$R/tests/test_bench.py" "$R/tests/test_compact.py" \
          "$R/tests/test_search_units.py" "$R/tests/test_gates.py" "$R/tests/test_search.py" "$R/tests/test_distill.py" \
          "$R/tests/test_long_runs.py" \
          -k "not kill and not fvcore and (not test_backends or cuda or shape_graphs) and (not test_export or fp16) and (not test_long_runs or fp16) and (not test_hidden_deploy or cuda) and not counts_the_hidden_width and not test_bench_cli_writes" \
          > "$W/pytest_cuda.log" 2>&1); echo "pytest on CUDA rc=$?" ;;
    latency)
      $T 180 python benchmarks/latency_target.py --device cuda --backends triton-fp16-graph torch-fp16-graph --random-weights \
          --batch 64 --seq-len 128 --repeats 7 --bench-repeats 15 --runs /tmp/latency-runs --out "$W/latency_target_gpu" \
          > "$W/latency.log" 2>&1; echo "latency_target rc=$?" ;;
    e2e) $T 120 python benchmarks/gpu_e2e.py --budget 85 > "$W/e2e.log" 2>&1; echo "gpu_e2e rc=$?" ;;
    bench) $T 100 python benchmarks/gpu_bench.py > "$W/bench_cli.log" 2>&1; echo "gpu_bench rc=$?" ;;
    probe) $T 50 python benchmarks/gpu_probe.py > "$W/probe.log" 2>&1; echo "gpu_probe rc=$?" ;;
    kernels) $T 100 python benchmarks/gpu_kernels.py --budget 60 90 > "$W/kernels.log" 2>&1; echo "gpu_kernels rc=$?" ;;
    hidden)
      A=benchmarks/results/real_tasks/archs
      $T 90 python benchmarks/arch_speed.py S=$A/docstrings_S.json H=$A/docstrings_H.json S10=$A/docstrings_S10.json \
          H10=$A/docstrings_H10.json --device cuda --backends triton-fp16-graph torch-fp16-graph --batch 64 --repeats 15 \
          --pairs H:S H10:S10 --runs /tmp/arch-runs --out "$W/arch_speed_gpu" > "$W/hidden.log" 2>&1; echo "arch_speed rc=$?" ;;
    *) echo "unknown part $part (pytest latency e2e bench probe kernels hidden)" ;;
  esac
  pack
done

[ -f "$W/pytest_cuda.log" ] && { echo "=== pytest ==="; grep -E "^(FAILED|ERROR)|^SKIPPED" "$W/pytest_cuda.log" | head -20; tail -2 "$W/pytest_cuda.log"; }
[ -f "$W/latency.log" ] && { echo "=== latency ==="; grep -E "^\| (MiniLM|BERT)|Error|error" "$W/latency.log" | head -12; tail -3 "$W/latency.log"; }
[ -f "$W/e2e.log" ] && { echo "=== e2e ==="; grep -E "^- |RESULT" "$W/e2e.log" | head -16; }
[ -f "$W/bench_cli.log" ] && { echo "=== bench --device cuda ==="; grep -E "^=== |^\| bert|^best|RESULT|^error" "$W/bench_cli.log" | head -30; }
[ -f "$W/probe.log" ] && { echo "=== probe ==="; grep -E "^ceilings|^- |RESULT" "$W/probe.log" | head -12; }
[ -f "$W/hidden.log" ] && { echo "=== hidden ==="; grep -E "^\| (S|H)" "$W/hidden.log" | head -12; tail -2 "$W/hidden.log"; }
[ -f "$W/kernels.log" ] && { echo "=== kernels ==="; grep -E "RESULT|^\| (2|4|6|8|12) \| (26|32|64) \| 128 \|" "$W/kernels.log" | head -30; }
true
