#!/usr/bin/env bash
# The embedded default end to end on the CPU: packaged all-MiniLM-L6-v2, shipped corpus split into
# 4,000 sentences to learn from and 1,000 held out; search to 30% FLOPs, compact, distill, eval.
# Writes benchmarks/results/minilm_pipeline.json (the eval report) and minilm_pipeline.txt (its table); the runs
# go under runs/pipeline/.
# Usage (repo root, after `make setup`): bash benchmarks/minilm_pipeline.sh   (~15 min on 2 cores)
set -euo pipefail
PK=${PK:-.venv/bin/prunekit}
PY=${PY:-.venv/bin/python}
R=runs/pipeline
mkdir -p "$R" benchmarks/results
$PY - "$R" <<'PYEOF'
import sys
from prunekit.data import default_corpus_path
lines = [l for l in default_corpus_path().read_text().splitlines() if l.strip()]
open(f"{sys.argv[1]}/train.txt", "w").write("\n".join(lines[:4000]) + "\n")
open(f"{sys.argv[1]}/heldout.txt", "w").write("\n".join(lines[4000:]) + "\n")
PYEOF
$PK search --data "$R/train.txt" --target 0.3 -o "$R/search" --force --quiet
$PK compact "$R/search" -o "$R/compact" --force
$PK distill "$R/compact" --data "$R/train.txt" -o "$R/distilled" --stage1-epochs 2 --stage2-epochs 1 --stage1-lr 1e-4 --stage2-lr 1e-4 --augment-copies 1 --force
$PK eval "$R/distilled" --data "$R/heldout.txt" --compare "$R/compact" --json benchmarks/results/minilm_pipeline.json | tee benchmarks/results/minilm_pipeline.txt
