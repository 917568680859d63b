"""Long runs: NaN/inf steps are skipped and counted, and a run that keeps failing stops cleanly."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

import prunekit.search as S
from prunekit.cli import cli
from prunekit.errors import PrunekitError
from prunekit.search import SearchSettings, search

pytestmark = pytest.mark.usefixtures("one_thread")




class _NanGrad(torch.autograd.Function):
    """The identity forward; a NaN gradient backward (an overflow that shows only in backward)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("nan")


def _poison_mse(monkeypatch, bad_steps, how: str = "loss"):
    """Make the search's MSE non-finite (its value, or only its gradient) at the given 1-based steps."""
    real, calls = S._normalised_mse, {"n": 0}

    def poisoned(*args):
        calls["n"] += 1
        mse = real(*args)
        if calls["n"] in bad_steps:
            return mse * float("nan") if how == "loss" else _NanGrad.apply(mse)
        return mse

    monkeypatch.setattr(S, "_normalised_mse", poisoned)


def _settings(tmp_path, model, data, **kw):
    base = dict(model=str(model), data=str(data), output_dir=str(tmp_path / "run"), max_steps=8, batch_size=8, max_length=32,
                checkpoint_every=2, target=0.5)
    base.update(kw)
    return SearchSettings(**base)


@pytest.mark.parametrize("how", ["loss", "grad"])
def test_search_skips_a_non_finite_step_and_counts_it(tiny_models, text_file, tmp_path, monkeypatch, how):
    _poison_mse(monkeypatch, {3}, how)
    r = search(_settings(tmp_path, tiny_models("minilm6"), text_file), progress=False)
    log = [json.loads(x) for x in (r.output_dir / "search_log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log] == list(range(1, 9))
    why = "non-finite loss" if how == "loss" else "non-finite gradients"
    assert log[2] == {"step": 3, "skipped": why}
    assert all("loss" in x and x["loss"] == x["loss"] for i, x in enumerate(log) if i != 2)  # finite, not NaN
    # nothing of the bad step reached the gates: they are finite, and the run ends in the band
    alphas = load_file(str(r.output_dir / "alpha.safetensors"))
    assert torch.isfinite(alphas["head"]).all() and torch.isfinite(alphas["ffn"]).all()
    assert 0.475 <= r.achieved_ratio <= 0.525
    assert r.skipped_steps == 1
    assert json.loads((r.output_dir / "architecture.json").read_text())["skipped_steps"] == 1


def test_search_stops_when_nan_persists_and_keeps_the_good_checkpoint(tiny_models, text_file, tmp_path, monkeypatch):
    _poison_mse(monkeypatch, set(range(5, 100)))
    args = ["search", "--model", str(tiny_models("minilm6")), "--data", str(text_file), "-o", str(tmp_path / "run"), "--max-steps", "12",
            "--batch-size", "8", "--max-length", "32", "--checkpoint-every", "2", "--max-nan-steps", "3", "--quiet"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "NaN/inf for 3 steps in a row (last at step 7)" in lines[0], result.output
    assert not (tmp_path / "run").exists()
    partial = tmp_path / "run.partial"
    ckpts = sorted(p.name for p in (partial / "checkpoints").glob("step-*"))
    assert ckpts == ["step-0000002", "step-0000004"]  # none written during the streak (steps 5-7)
    state = load_file(str(partial / "checkpoints" / "step-0000004" / "state.safetensors"))
    assert all(torch.isfinite(v).all() for v in state.values())
    log = [json.loads(x) for x in (partial / "search_log.jsonl").read_text().splitlines()]
    assert [x.get("skipped") for x in log] == [None] * 4 + ["non-finite loss"] * 3


def test_settings_reject_non_finite_and_out_of_range_values(tmp_path):
    for bad in (dict(lr=float("nan")), dict(alpha_lr=0.0), dict(lambda_cost=-1.0), dict(epochs=float("inf")), dict(max_steps=0),
                dict(checkpoint_every=0), dict(max_nan_steps=0)):
        with pytest.raises(PrunekitError):
            SearchSettings(output_dir=str(tmp_path / "x"), **bad).validate()


# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def distill_world(tmp_path_factory):
    from factory import kept_arch, labelled_csv, make_compact_dir, scrambled_teacher_dir

    root = tmp_path_factory.mktemp("distill-world")
    teacher = scrambled_teacher_dir(root / "teacher", "classification")
    return {"teacher": teacher, "compact": make_compact_dir(root, teacher, kept_arch()), "data": labelled_csv(root / "data.csv")}


def _distill_settings(world, out, **kw):
    from factory import SEQ
    from prunekit.distill import DistillSettings

    base = dict(student=str(world["compact"]), data=str(world["data"]), output_dir=str(out), stage1_epochs=2, stage2_epochs=2,
                batch_size=16, max_length=SEQ, augment_copies=0, dropout=0.0, checkpoint_every=2)
    base.update(kw)
    return DistillSettings(**base)


@pytest.mark.parametrize("how", ["loss", "grad"])
def test_distill_skips_a_non_finite_step(distill_world, tmp_path, monkeypatch, how):
    import prunekit.distill as D

    real, calls = D.intermediate_loss, {"n": 0}

    def poisoned(*args, **kwargs):
        loss, parts = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            loss = loss * float("nan") if how == "loss" else _NanGrad.apply(loss)
        return loss, parts

    monkeypatch.setattr(D, "intermediate_loss", poisoned)
    r = D.distill(_distill_settings(distill_world, tmp_path / "out"), progress=False)
    train = [x for x in r.log if "dev" not in x]
    assert [x["step"] for x in train] == list(range(1, r.steps + 1))
    assert train[1] == {"step": 2, "skipped": "non-finite loss" if how == "loss" else "non-finite gradients", "stage": 1}
    assert all(x["loss"] == x["loss"] for x in train if x["step"] != 2)
    weights = load_file(str(r.output_dir / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert r.skipped_steps == 1 and json.loads((r.output_dir / "distill_report.json").read_text())["skipped_steps"] == 1


# ------------------------------------------------------------------------------------------------
# A corrupt checkpoint is detected, and the one before it is used.
def _corrupt(ckpt, how: str) -> None:
    st, js = ckpt / "state.safetensors", ckpt / "state.json"
    if how == "truncated":
        st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    elif how == "garbled":  # same size, header intact: only the checksum can tell
        data = bytearray(st.read_bytes())
        for i in range(len(data) - 64, len(data), 7):
            data[i] ^= 0x5A
        st.write_bytes(bytes(data))
    elif how == "bad-json":
        js.write_bytes(b'{"step": 6, "opt_alpha": {"param_gr')
    elif how == "non-utf8":
        js.write_bytes(b"\xff\xfe\x00garbage")
    elif how == "no-json":
        js.unlink()
    elif how == "wrong-step":
        meta = json.loads(js.read_text())
        js.write_text(json.dumps({**meta, "step": 3}))


@pytest.fixture(scope="module")
def uninterrupted_search(tiny_models, tmp_path_factory):
    from factory import make_sentences

    root = tmp_path_factory.mktemp("uninterrupted")
    data = root / "texts.txt"
    data.write_text("\n".join(make_sentences(48)) + "\n")
    s = _settings(root, tiny_models("minilm6"), data, max_steps=10, checkpoint_every=3)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return s, search(s, progress=False)
    finally:
        torch.set_num_threads(n)


@pytest.mark.parametrize("how", ["truncated", "garbled", "bad-json", "non-utf8", "no-json", "wrong-step"])
def test_corrupt_newest_checkpoint_falls_back_to_the_previous(uninterrupted_search, tmp_path, caplog, how):
    full_settings, full = uninterrupted_search
    s = SearchSettings(**{**full_settings.__dict__, "output_dir": str(tmp_path / "run")})
    with pytest.raises(KeyboardInterrupt):
        search(s, progress=False, _interrupt_after=7)  # checkpoints at steps 3 and 6
    ckpts = tmp_path / "run.partial" / "checkpoints"
    _corrupt(ckpts / "step-0000006", how)
    resumed = search(s, progress=False, resume=True)
    assert any("step-0000006 is corrupt" in r.getMessage() for r in caplog.records), caplog.text
    a, b = load_file(str(full.output_dir / "alpha.safetensors")), load_file(str(resumed.output_dir / "alpha.safetensors"))
    for k in a:  # resumed from step 3, the result is the uninterrupted run's
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert [r["step"] for r in resumed.log] == list(range(1, 11))


def test_distill_corrupt_checkpoint_falls_back(distill_world, tmp_path, caplog):
    import prunekit.distill as D

    full = D.distill(_distill_settings(distill_world, tmp_path / "full"), progress=False)
    s = _distill_settings(distill_world, tmp_path / "cut")
    with pytest.raises(KeyboardInterrupt):
        D.distill(s, progress=False, _interrupt_after=5)  # checkpoints at steps 2 and 4
    _corrupt(tmp_path / "cut.partial" / "checkpoints" / "step-0000004", "garbled")
    resumed = D.distill(s, progress=False, resume=True)
    assert any("step-0000004 is corrupt" in r.getMessage() for r in caplog.records), caplog.text
    a, b = load_file(str(full.output_dir / "model.safetensors")), load_file(str(resumed.output_dir / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert resumed.best == full.best and not (tmp_path / "cut.partial").exists()


# ------------------------------------------------------------------------------------------------
# kill -9 at random points, several times, then --resume: the result of an uninterrupted run.
SEARCH_FILES = ("architecture.json", "alpha.safetensors", "search_log.jsonl", "settings.json", "architecture.png")
DISTILL_FILES = ("config.json", "model.safetensors", "distill_report.json", "settings.json", "distill_log.jsonl")


def _last_logged_step(log: Path) -> int:
    try:
        lines = log.read_text().splitlines()
    except OSError:
        return -1
    for line in reversed(lines):
        try:
            return json.loads(line)["step"]
        except (ValueError, KeyError):
            continue
    return 0


def _run_killing(cmd: list[str], out: Path, log_name: str, files: tuple[str, ...], total_steps: int, kills: int, seed: int) -> list[str]:
    """Run ``cmd`` (resuming after each kill) and SIGKILL it ``kills`` times at random points drawn from
    a seeded RNG: while it starts and loads, or just after a random step was logged (often in the middle
    of writing a checkpoint, as they are written every step or two). The output dir must never be seen
    half-written. Returns where each kill landed."""
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    rng = random.Random(seed)
    partial = out.with_name(out.name + ".partial")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    landed: list[str] = []

    def check_complete() -> None:
        if out.exists():  # it appears by a rename, so it is whole from its first moment
            missing = [f for f in files if not (out / f).is_file()]
            assert not missing, f"{out} is half-written: {missing} missing"

    for attempt in range(kills + 1):
        if out.exists():  # killed after the output was renamed into place: the run is complete
            break
        args = [sys.executable, "-m", "prunekit", *cmd] + (["--resume"] if partial.exists() else [])
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        if attempt == kills:
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err.decode()
            break
        if rng.random() < 0.25:  # during start-up: imports, loading the models and data (at the latest, as training begins)
            kill_at, deadline = ("startup", time.time() + rng.uniform(0.5, 4.0)), None
        else:
            kill_at, deadline = ("step", rng.randint(1, max(1, total_steps * 9 // 10))), time.time() + 300
        extra = rng.uniform(0.0, 0.03)
        logged_before = _last_logged_step(partial / log_name)
        while proc.poll() is None:
            check_complete()
            if kill_at[0] == "startup" and (time.time() >= kill_at[1] or _last_logged_step(partial / log_name) > logged_before):
                break
            if kill_at[0] == "step" and (_last_logged_step(partial / log_name) >= kill_at[1] or time.time() > deadline):
                time.sleep(extra)
                break
            time.sleep(0.005)
        if proc.poll() is not None:  # finished before the kill point: nothing left to kill
            assert proc.returncode == 0, proc.stderr.read().decode()
            landed.append("finished")
            break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        landed.append(f"{kill_at[0]} {kill_at[1] if kill_at[0] == 'step' else ''} (log at {_last_logged_step(partial / log_name)})")
        check_complete()
    check_complete()
    assert out.is_dir()
    return landed


def test_search_killed_at_random_points_resumes_to_the_uninterrupted_result(tiny_models, text_file, tmp_path):
    model = tiny_models("minilm6")
    steps = 40
    common = ["--model", str(model), "--data", str(text_file), "--max-steps", str(steps), "--batch-size", "8", "--max-length", "32",
              "--checkpoint-every", "2", "--target", "0.5", "--quiet"]
    ref = CliRunner().invoke(cli, ["search", *common, "-o", str(tmp_path / "full")])
    assert ref.exit_code == 0, ref.output
    landed = _run_killing(["search", *common, "-o", str(tmp_path / "cut")], tmp_path / "cut", "search_log.jsonl", SEARCH_FILES, steps, kills=4, seed=6)
    assert sum(x.startswith("step") for x in landed) >= 2, landed  # the seeded draws kill mid-run at least twice

    a, b = tmp_path / "full", tmp_path / "cut"
    assert json.loads((a / "architecture.json").read_text())["layers"] == json.loads((b / "architecture.json").read_text())["layers"]
    fa, fb = load_file(str(a / "alpha.safetensors")), load_file(str(b / "alpha.safetensors"))
    for k in fa:  # bitwise: same data order, restored optimizer moments, no randomness in the search
        torch.testing.assert_close(fa[k], fb[k], rtol=0, atol=0)
    assert (a / "search_log.jsonl").read_text() == (b / "search_log.jsonl").read_text()


def test_distill_killed_at_random_points_resumes_to_the_uninterrupted_result(distill_world, tmp_path):
    from factory import SEQ

    common = [str(distill_world["compact"]), "--data", str(distill_world["data"]), "--stage1-epochs", "3", "--stage2-epochs", "3",
              "--batch-size", "8", "--max-length", str(SEQ), "--augment-copies", "1", "--dropout", "0.1", "--checkpoint-every", "2", "--quiet"]
    ref = CliRunner().invoke(cli, ["distill", *common, "-o", str(tmp_path / "full")])
    assert ref.exit_code == 0, ref.output
    report = json.loads((tmp_path / "full" / "distill_report.json").read_text())
    steps = report["steps"]["stage1"] + report["steps"]["stage2"]
    landed = _run_killing(["distill", *common, "-o", str(tmp_path / "cut")], tmp_path / "cut", "distill_log.jsonl", DISTILL_FILES, steps,
                          kills=4, seed=3)
    assert sum(x.startswith("step") for x in landed) >= 2, landed

    a, b = tmp_path / "full", tmp_path / "cut"
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    for k in wa:  # bitwise: data order, dropout and learning rate depend on the step only
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0, msg=k)
    ra, rb = (json.loads((d / "distill_report.json").read_text()) for d in (a, b))
    assert ra["best"] == rb["best"] and ra["before"] == rb["before"]
    assert (a / "distill_log.jsonl").read_text() == (b / "distill_log.jsonl").read_text()
