"""`prunekit bench --device cuda`, `export-onnx --fp16` and `eval --device cuda` on a lent GPU.

What issue 5 asks of the GPU and the CPU cannot show: the CLI's CUDA rows, run as a user runs
them. Builds a random BERT-base-shaped embedding model and its compact 30%-FLOPs model
(random-priority architecture, uneven heads: ``random_models.py``, as the CPU tables), then
through the CLI (``python -m prunekit``):

1. ``bench --device cuda`` at batch 128 x 128 tokens (fixed length) on the CUDA backends
   (fp32 SDPA; fp16 PyTorch with and without CUDA graphs; the compact model's Triton kernels in
   fp16 with and without graphs; onnxruntime's CUDA provider in fp32/fp16 where it exists);
2. the same on real lengths (the shipped corpus, batches of 128 sentences);
3. ``export-onnx --optimize --fp16`` of the compact model (validated on the CUDA provider where
   there is one, else on the CPU provider);
4. ``eval --device cuda`` of the compact model through the fp16 backends (fidelity to the
   original on the shipped corpus; random weights, so only the agreement between backends means
   anything).

Each step has its own time limit. Writes ``bench-fixed/`` and ``bench-real/`` (the CLI's
bench.json/.md/.png), ``compact-fp16.onnx.json`` (the export report; the 70 MB model is deleted) and
one log per step (``bench_fixed.log``, ``bench_real.log``, ``export_fp16.log``, ``eval_cuda.log``)
under ``--out``, else ``$OUT/gpu_bench``, else ``benchmarks/results/gpu_bench``; the published copy
is ``benchmarks/results/gpu_bench_h100/``, renamed after the run. ``--quick``: tiny shapes, for a
CPU smoke test of the script (steps that need CUDA report the CLI's one-line error).

    python benchmarks/gpu_bench.py            # ~2 min on an H100, from the repo root
    bash benchmarks/gpu_session.sh            # how the published files were made
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from checkout_imports import REPO, use_checkout
from gpu_common import out_dir
from random_models import SHAPES, make_compact, make_original

GPU_BACKENDS = "torch-sdpa,torch-fp16,torch-fp16-graph,triton-fp16,triton-fp16-graph,ort-cuda,ort-cuda-fp16"
EVAL_BACKENDS = "torch-fp16,torch-fp16-graph,triton-fp16,triton-fp16-graph"
CORPUS = REPO / "prunekit" / "assets" / "corpus.txt"


def step(name: str, args: list, folder: Path, timeout: int, env: dict, cwd: str) -> int:
    """Run ``python -m prunekit ARGS``; log to ``folder/<name>.log``; print the tail."""
    t0 = time.time()
    log = folder / f"{name}.log"
    try:
        p = subprocess.run([sys.executable, "-m", "prunekit", *args], capture_output=True, text=True, timeout=timeout,
                           env=env, cwd=cwd)
        rc, text = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        def text_of(b):
            return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")

        rc, text = 124, f"{text_of(e.stdout)}{text_of(e.stderr)}\ntimed out after {timeout} s"
    log.write_text(text)
    print(f"=== {name}: rc={rc}, {time.time() - t0:.0f} s ===", flush=True)
    print("\n".join(text.strip().splitlines()[-40:]), flush=True)
    return rc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny shapes: a smoke test of the script on the CPU")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    # prunekit from this checkout, nothing installed; the CLI runs below inherit it through PYTHONPATH.
    use_checkout(args.quick)
    env = dict(os.environ)

    results = out_dir(args.out, "gpu_bench")
    results.mkdir(parents=True, exist_ok=True)
    dims, batch, seq = ((2, 64, 4, 128), 4, 16) if args.quick else (SHAPES["BERT-base"], 128, 128)
    print(f"torch {torch.__version__}, cuda {torch.cuda.is_available()} "
          f"({torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-'})", flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        run = lambda name, cli_args, timeout: step(name, cli_args, results, timeout, env, tmp)  # noqa: E731
        orig = make_original(Path(tmp) / "bert-base", dims, seed=0)
        comp = Path(tmp) / "bert-base-0.3"
        info = make_compact(orig, comp, 0.3, seq, seed=1)
        print(f"compact: FLOPs ratio {info['achieved']:.3f}, heads {info['heads']}", flush=True)
        common = ["--device", "cuda", "--batch", str(batch), "--seq-len", str(seq), "--no-fvcore", "--warmup", "3"]
        rcs = [
            run("bench_fixed", ["bench", str(orig), str(comp), *common, "--repeats", "20", "--backend", GPU_BACKENDS,
                                 "-o", str(results / "bench-fixed"), "--force"], 50),
            run("bench_real", ["bench", str(orig), str(comp), *common, "--repeats", "10", "--backend", GPU_BACKENDS,
                                "--real-lengths", str(CORPUS), "--num-batches", "4", "-o", str(results / "bench-real"),
                                "--force"], 40),
            run("export_fp16", ["export-onnx", str(comp), "-o", str(results / "compact-fp16.onnx"), "--optimize", "--fp16",
                                 "--force"], 40),
            run("eval_cuda", ["eval", str(comp), "--data", str(CORPUS), "--max-examples", "512", "--device", "cuda",
                               "--backend", EVAL_BACKENDS], 30),
        ]
    (results / "compact-fp16.onnx").unlink(missing_ok=True)  # 70 MB: the log and the .json report say what it was
    print(f"RESULT: {'PASS' if not any(rcs) else 'FAIL'} (return codes {rcs})", flush=True)
    return 1 if any(rcs) else 0


if __name__ == "__main__":
    sys.exit(main())
