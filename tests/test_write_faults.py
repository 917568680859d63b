"""Every verb's output under a full file system and a read-only folder: one `error:` line naming the
path, the cause and the fix, exit status 2, the existing output untouched, no temp files left.

Real file systems where the machine allows it (a tmpfs filled to the last byte; a tmpfs remounted
read-only; both need root), else the same errors injected at the shared write path (the output's
lock, the first thing every verb writes)."""
from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from factory import assert_one_line_error, edge_architecture, make_run_dir
from prunekit import io as pio
from prunekit.cli import cli
from prunekit.compact import compact_to_dir
from prunekit.models import load_teacher

pytestmark = pytest.mark.usefixtures("one_thread")


def _mount(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True).returncode == 0


@pytest.fixture
def faulty(tmp_path, monkeypatch):
    """``faulty(kind, existing)`` -> a folder that is full (``ENOSPC``) or read-only (``EROFS``), holding
    ``existing`` (a name -> bytes mapping: the output a failed write must leave as it was)."""
    mounts = []

    def make(kind: str, existing: dict) -> Path:
        folder = tmp_path / f"fs-{kind}-{uuid.uuid4().hex[:6]}"
        if _mount(folder, "size=1m"):
            mounts.append(folder)
            for name, data in existing.items():
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                (folder / name).write_bytes(data)
            if kind == "full":
                with open(folder / "filler", "wb", buffering=0) as f:  # every byte taken
                    try:
                        while True:
                            f.write(b"\0" * 4096)
                    except OSError:
                        pass
            else:
                subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
            return folder
        # No mounts here (not root): the same errors at the output's lock, through the shared path.
        for name, data in existing.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
        code = errno.ENOSPC if kind == "full" else errno.EROFS

        def refuse(out):
            raise OSError(code, os.strerror(code), str(pio.lock_path(out)))

        monkeypatch.setattr(pio, "lock_output", refuse)
        return folder

    yield make
    for m in mounts:
        subprocess.run(["umount", "-l", str(m)], capture_output=True)


@pytest.fixture(scope="module")
def models(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    teacher = load_teacher(str(tiny_models("minilm6", "classification")))
    run = make_run_dir(root / "run", teacher, edge_architecture(teacher.shape, seed=5))
    compact_to_dir(run, out_dir=root / "compact", measure_fvcore=False)
    data = root / "data.csv"
    data.write_text("text,label\n" + "".join(f"the river {i} runs,{i % 2}\n" for i in range(8)))
    return {"run": run, "teacher": tiny_models("minilm6", "classification"), "compact": root / "compact", "data": data}


def verb_args(verb: str, m: dict, out: Path) -> list[str]:
    return {
        "compact": ["compact", str(m["run"]), "-o", str(out), "--no-fvcore", "--force"],
        "export-onnx": ["export-onnx", str(m["compact"]), "-o", str(out), "--force"],
        "bench": ["bench", str(m["teacher"]), str(m["compact"]), "--batch", "2", "--seq-len", "8", "--repeats", "1",
                  "--warmup", "1", "--threads", "1", "--backend", "torch-sdpa", "--no-fvcore", "-o", str(out), "--force"],
        "eval": ["eval", str(m["compact"]), "--data", str(m["data"]), "--json", str(out), "--force"],
    }[verb]


EXISTING = {  # what is at -o before the run, per verb: a dir or a file
    "compact": {"out/config.json": b'{"old": true}'},
    "export-onnx": {"out": b"old onnx"},
    "bench": {"out/bench.json": b'{"old": true}'},
    "eval": {"out": b'{"old": true}'},
}


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("kind", ["full", "readonly"])
@pytest.mark.parametrize("verb", ["compact", "export-onnx", "bench", "eval"])
def test_a_failed_write_is_one_line_and_leaves_the_output_as_it_was(verb, kind, models, faulty):
    folder = faulty(kind, EXISTING[verb])
    before = _snapshot(folder)
    r = CliRunner().invoke(cli, verb_args(verb, models, folder / "out"))
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2, r.output
    err = lines[-1]
    assert err.startswith("error: cannot write ") and str(folder) in err, r.output
    cause = "No space left on device" if kind == "full" else "Read-only file system"
    fix = "free space on that file system, or write elsewhere (-o)" if kind == "full" else "read-only: write elsewhere (-o)"
    assert cause in err and fix in err and f"Nothing was written in place of {folder / 'out'}" in err
    assert "Traceback" not in r.output
    kept = re.search(r"kept in (\S+\.json)", err)  # bench and eval keep what they measured in the system's temp dir
    if verb in ("bench", "eval"):
        assert kept and json.loads(Path(kept.group(1)).read_text())["models"], err
        Path(kept.group(1)).unlink()
    assert _snapshot(folder) == before  # the old output as it was; no temp dir, temp file or lock left


def test_a_killed_writers_temp_files_are_removed_by_the_next_run(models, tmp_path):
    out = tmp_path / "m.onnx"
    left = [tmp_path / ".m.onnx.tmp.abc123", tmp_path / ".m.onnx.json.x1y2.tmp"]  # what a kill -9 leaves
    left[0].mkdir()
    (left[0] / "model.onnx").write_bytes(b"\0" * 1000)
    left[1].write_bytes(b"{")
    unrelated = tmp_path / ".other.onnx.tmp.abc"
    unrelated.mkdir()
    r = CliRunner().invoke(cli, ["export-onnx", str(models["compact"]), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert not any(p.exists() for p in left) and unrelated.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".other.onnx.tmp.abc", "m.onnx", "m.onnx.json"])


def test_outputs_take_the_one_writer_lock(models, tmp_path):
    """A second writer of the same output is refused at once, whatever the verb (the holder here: this test)."""
    runner = CliRunner()
    for verb in ("compact", "export-onnx", "bench", "eval"):
        out = tmp_path / f"{verb}-out"
        lock = pio.lock_output(out)
        try:
            r = runner.invoke(cli, verb_args(verb, models, out))
        finally:
            lock.release()
        # bench prints its table before it writes: the error is the last line, not the only one
        assert r.exit_code == 2 and f"another prunekit process (pid {os.getpid()}) is writing {out}" in r.output, (verb, r.output)
        assert not out.exists()


def test_eval_json_is_replaced_only_with_force(models, tmp_path):
    out = tmp_path / "r.json"
    out.write_text('{"old": true}')
    args = ["eval", str(models["compact"]), "--data", str(models["data"]), "--json", str(out)]
    assert_one_line_error(CliRunner().invoke(cli, args), "already exists: pass --force")
    assert json.loads(out.read_text()) == {"old": True}
    r = CliRunner().invoke(cli, args + ["--force"])
    assert r.exit_code == 0, r.output
    assert "models" in json.loads(out.read_text())


def test_a_disk_that_fills_up_midway_leaves_nothing(models, tmp_path, monkeypatch):
    """Room for the lock and the work dir but not for the weights: the error from inside the
    weights' writer (safetensors, or an OSError) is the same one line, and nothing is left."""
    folder = tmp_path / "small"
    if _mount(folder, "size=64k"):  # the tiny model's weights are ~100 kB
        try:
            r = CliRunner().invoke(cli, ["compact", str(models["run"]), "-o", str(folder / "out"), "--no-fvcore"])
            left = sorted(p.name for p in folder.iterdir())
        finally:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)
    else:
        folder.mkdir()

        def full(model, where):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(where) / "model.safetensors"))

        monkeypatch.setattr("prunekit.compact.save_compact", full)
        r = CliRunner().invoke(cli, ["compact", str(models["run"]), "-o", str(folder / "out"), "--no-fvcore"])
        left = sorted(p.name for p in folder.iterdir())
    assert r.exit_code == 2, r.output
    err = r.output.strip().splitlines()[-1]
    assert err.startswith(f"error: cannot write {folder}") and "No space left on device" in err, err
    assert left == [], left
