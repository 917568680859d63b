"""Data-parallel search and distillation: 2 CPU processes (torchrun, gloo) against one process with the same global batch.

Tolerance. The two runs do the same arithmetic in a different order: each process pads its share of
the batch to its own longest sentence (other GEMM shapes), and the loss shares and gradients are
summed across processes by the all-reduce instead of inside one reduction. In fp32 that moves each
step's values by a few ulps (~1e-7 relative); over these runs we measured at most 5e-7 on the gate
logits (search, 24 steps) and 3e-6 on the weights (distill, 30 steps, AdamW), and equal losses at
the 6 decimals the logs keep. We allow 1e-4 absolute on gate logits (|alpha| ~ 2) and weights
(|w| ~ 0.15), 1e-4 relative on every logged loss, and demand the same architecture and the same best
checkpoint: 20-30x above what summation order gives, far below what a wrong normalisation gives (a
mean of per-process means with shares of 5 and 4 examples is off by ~1e-2, and a missed all-reduce
of the gate gradients changes the architecture).

The data sizes make the last batch of an epoch uneven (41 examples, batch 8: a last batch of one
example, so one process has nothing and runs with weight 0).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from factory import SEQ, kept_arch, make_compact_dir, make_sentences, scrambled_teacher_dir, stop_after
from prunekit.distill import DistillSettings, distill
from prunekit.search import SearchSettings, search

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]  # two torchrun processes per test: ~10 s each

ATOL = 1e-4
LOSS_RTOL = 1e-4


def torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "prunekit", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _log(run: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (run / name).read_text().splitlines()]


def assert_same_losses(a: list[dict], b: list[dict], keys: tuple[str, ...]) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b):
        for k in keys:
            if k in x:
                assert y[k] == pytest.approx(x[k], rel=LOSS_RTOL, abs=1e-6), (x["step"], k, x[k], y[k])


def assert_close_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=ATOL, msg=k)


@pytest.fixture(scope="module")
def search_inputs(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp-search")
    data = root / "texts.txt"
    data.write_text("\n".join(make_sentences(41, seed=2)) + "\n")
    return root, tiny_models("minilm6"), data


def _search_settings(out: Path, model, data) -> SearchSettings:
    return SearchSettings(model=str(model), data=str(data), output_dir=str(out), max_steps=24, batch_size=8, max_length=SEQ,
                          checkpoint_every=4, target=0.5)


def _search_args(s: SearchSettings) -> list[str]:
    return ["search", "--model", s.model, "--data", s.data, "-o", s.output_dir, "--max-steps", str(s.max_steps), "--batch-size",
            str(s.batch_size), "--max-length", str(s.max_length), "--checkpoint-every", str(s.checkpoint_every), "--target",
            str(s.target), "--quiet"]


def test_search_on_two_processes_equals_one(search_inputs, tmp_path):
    root, model, data = search_inputs
    one = search(_search_settings(tmp_path / "one", model, data), progress=False)
    s = _search_settings(tmp_path / "two", model, data)
    proc = torchrun(_search_args(s), tmp_path)
    assert proc.stdout.count("architecture: ") == 1  # rank 0 alone reports
    two = tmp_path / "two"
    arch = json.loads((two / "architecture.json").read_text())
    assert 0.475 <= arch["achieved_flops_ratio"] <= 0.525  # (a) in the target band
    assert arch["layers"] == json.loads((one.output_dir / "architecture.json").read_text())["layers"]  # (b) the same architecture
    assert_close_tensors(load_file(str(one.output_dir / "alpha.safetensors")), load_file(str(two / "alpha.safetensors")))
    assert_same_losses(_log(one.output_dir, "search_log.jsonl"), _log(two, "search_log.jsonl"), ("loss", "mse", "flops_loss", "discrete_ratio"))
    assert not (tmp_path / "two.partial").exists()


def test_search_checkpoint_of_one_process_resumes_on_two(search_inputs, tmp_path):
    root, model, data = search_inputs
    one = search(_search_settings(tmp_path / "one", model, data), progress=False)
    s = _search_settings(tmp_path / "cut", model, data)
    with pytest.raises(KeyboardInterrupt):
        search(s, progress=False, on_step=stop_after(10))  # one process; checkpoints at steps 4 and 8
    torchrun(_search_args(s) + ["--resume"], tmp_path)  # two processes from step 8
    cut = tmp_path / "cut"
    assert json.loads((cut / "architecture.json").read_text())["layers"] == json.loads((one.output_dir / "architecture.json").read_text())["layers"]
    assert_close_tensors(load_file(str(one.output_dir / "alpha.safetensors")), load_file(str(cut / "alpha.safetensors")))
    assert_same_losses(_log(one.output_dir, "search_log.jsonl"), _log(cut, "search_log.jsonl"), ("loss", "mse"))


def test_distill_on_two_processes_equals_one(tmp_path_factory, tmp_path):
    root = tmp_path_factory.mktemp("ddp-distill")
    teacher = scrambled_teacher_dir(root / "teacher", "classification")
    student = make_compact_dir(root, teacher, kept_arch())
    data = root / "data.csv"  # 46 rows: 41 to train on (a last batch of one), 5 dev
    data.write_text("text,label\n" + "\n".join(f"{t},{int('river' in t or 'tree' in t)}" for t in make_sentences(46, seed=1)) + "\n")
    common = dict(student=str(student), data=str(data), stage1_epochs=2, stage2_epochs=2, batch_size=8, max_length=SEQ,
                  augment_copies=1, dropout=0.0, checkpoint_every=3)  # dropout masks depend on how the batch is split
    one = distill(DistillSettings(output_dir=str(tmp_path / "one"), **common), progress=False)
    args = ["distill", str(student), "--data", str(data), "-o", str(tmp_path / "two"), "--stage1-epochs", "2", "--stage2-epochs", "2",
            "--batch-size", "8", "--max-length", str(SEQ), "--augment-copies", "1", "--dropout", "0", "--checkpoint-every", "3", "--quiet"]
    proc = torchrun(args, tmp_path)
    assert proc.stdout.count("wrote ") == 1
    two = tmp_path / "two"
    assert_close_tensors(load_file(str(one.output_dir / "model.safetensors")), load_file(str(two / "model.safetensors")))
    report = json.loads((two / "distill_report.json").read_text())
    assert report["best"]["step"] == one.best["step"] and report["best"]["metrics"] == pytest.approx(one.best["metrics"])
    assert report["augmented_examples"] == 82  # augmented on rank 0, sent to rank 1
    train = ("loss", "emb", "hidden", "attention", "soft", "kl")
    assert_same_losses([r for r in _log(one.output_dir, "distill_log.jsonl") if "dev" not in r],
                       [r for r in _log(two, "distill_log.jsonl") if "dev" not in r], train)


@pytest.mark.parametrize("point,message", [("ckpt-enospc", "cannot write checkpoint"),
                                           ("log-enospc", "cannot write the run log or checkpoint of step 8")])
def test_rank0_checkpoint_failure_stops_every_process(search_inputs, tmp_path, point, message):
    """Two processes started as a launcher without torchrun's watchdog starts them (each with RANK,
    WORLD_SIZE and a rendezvous address, as `accelerate launch` does): rank 0's checkpoint write (or the
    run log's flush before it) at step 8 fails (disk full). Both must stop within seconds with exit status 2 — rank 0 with one
    error line that names the cause and --resume, rank 1 told by rank 0 rather than left waiting in
    the next step's all-reduce (gloo's 30-minute timeout) — and leave the checkpoint of step 4
    intact, from which one process then finishes the run."""
    import socket

    root, model, data = search_inputs
    s = _search_settings(tmp_path / "full", model, data)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    driver = Path(__file__).with_name("crash_driver.py")
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, str(driver), point, "8", *_search_args(s)], cwd=tmp_path,
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=90))  # a rank left in a collective (or in its shutdown) would hang here
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [2, 2], outs
    errors = [line for line in outs[0][1].splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and "No space left on device" in errors[0] \
        and "--resume" in errors[0], outs[0][1][-2000:]
    assert "Traceback" not in outs[0][1] + outs[1][1], outs
    ckpts = tmp_path / "full.partial" / "checkpoints"
    assert sorted(d.name for d in ckpts.iterdir()) == ["step-0000004"]  # no half-written step 8 left behind
    done = search(s, progress=False, resume=True)
    assert json.loads((Path(done.output_dir) / "architecture.json").read_text())["achieved_flops_ratio"] > 0
