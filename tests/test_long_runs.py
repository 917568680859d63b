"""Long runs: NaN/inf steps are skipped and counted, and a run that keeps failing stops cleanly; a corrupt
checkpoint falls back to the one before; a run killed (kill -9, or os._exit at a chosen point) resumes
to the uninterrupted result; fp16 trains with loss scaling."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

import prunekit.search as S
from factory import assert_one_line_error, stop_after
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
    assert_one_line_error(CliRunner().invoke(cli, args), "NaN/inf for 3 steps in a row (last at step 7)")
    assert not (tmp_path / "run").exists()
    partial = tmp_path / "run.partial"
    ckpts = sorted(p.name for p in (partial / "checkpoints").glob("step-*"))
    assert ckpts == ["step-0000002", "step-0000004"]  # none written during the streak (steps 5-7)
    state = load_file(str(partial / "checkpoints" / "step-0000004" / "state.safetensors"))
    assert all(torch.isfinite(v).all() for v in state.values())
    log = [json.loads(x) for x in (partial / "search_log.jsonl").read_text().splitlines()]
    assert [x.get("skipped") for x in log] == [None] * 4 + ["non-finite loss"] * 3


def test_a_skipped_final_step_leaves_the_final_state_in_the_newest_checkpoint(tiny_models, text_file, tmp_path, monkeypatch):
    """The last step skipped: the run dir's checkpoint (what `compact --weights search` reads) is still the
    final state, beside the final gates, not the one from the last multiple of --checkpoint-every."""
    _poison_mse(monkeypatch, {8})
    r = search(_settings(tmp_path, tiny_models("minilm6"), text_file, max_steps=8, checkpoint_every=3), progress=False)
    assert r.skipped_steps == 1
    ckpts = sorted((r.output_dir / "checkpoints").glob("step-*"))
    assert [c.name for c in ckpts] == ["step-0000008"]
    state, alphas = load_file(str(ckpts[0] / "state.safetensors")), load_file(str(r.output_dir / "alpha.safetensors"))
    for k in ("head", "ffn"):
        torch.testing.assert_close(state[f"alpha.{k}"], alphas[k], rtol=0, atol=0)


def test_search_resumes_after_a_nan_stop_with_a_lower_learning_rate(tiny_models, text_file, tmp_path, monkeypatch):
    """What the NaN stop says to do works: --resume with lower learning rates, another --mixed-precision
    and a larger --max-nan-steps; the change is logged and the new rates are the ones used."""
    real = S._normalised_mse
    _poison_mse(monkeypatch, set(range(5, 100)))
    s = _settings(tmp_path, tiny_models("minilm6"), text_file, max_steps=10, checkpoint_every=2, max_nan_steps=3)
    with pytest.raises(PrunekitError, match="continue from them with --resume and a lower --lr / --alpha-lr"):
        search(s, progress=False)
    monkeypatch.setattr(S, "_normalised_mse", real)  # the lower rate cures it
    changed = dict(lr=1e-5, alpha_lr=0.5, mixed_precision="no", max_nan_steps=5)
    r = search(SearchSettings(**{**s.__dict__, **changed}), progress=False, resume=True)
    resumed = {"step": 4, "resumed_with": {"lr": [2e-5, 1e-5], "alpha_lr": [1.0, 0.5], "mixed_precision": ["auto", "no"], "max_nan_steps": [3, 5]}}
    assert r.log[4] == resumed and [x["step"] for x in r.log if "loss" in x] == list(range(1, 11)) and r.skipped_steps == 0
    assert json.loads((r.output_dir / "search_log.jsonl").read_text().splitlines()[4]) == resumed
    meta = json.loads((r.output_dir / "checkpoints" / "step-0000010" / "state.json").read_text())
    assert [g["lr"] for g in meta["opt_alpha"]["param_groups"]] == [0.5] and [g["lr"] for g in meta["opt_weights"]["param_groups"]] == [1e-5]
    assert json.loads((r.output_dir / "settings.json").read_text())["lr"] == 1e-5
    other = SearchSettings(**{**s.__dict__, "output_dir": str(tmp_path / "other")})
    with pytest.raises(KeyboardInterrupt):
        search(other, progress=False, on_step=stop_after(2))
    with pytest.raises(PrunekitError, match=r"different settings than the interrupted run \(seed: \d+ there, \d+ now\).*only --lr, --alpha-lr,"):
        search(SearchSettings(**{**other.__dict__, "seed": 7}), progress=False, resume=True)  # what changes the result may not


def test_settings_reject_non_finite_and_out_of_range_values(tmp_path):
    for bad in (dict(lr=float("nan")), dict(alpha_lr=0.0), dict(lambda_cost=-1.0), dict(epochs=float("inf")), dict(max_steps=0),
                dict(checkpoint_every=0), dict(max_nan_steps=0), dict(max_steps=10**10)):
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
    """The skipped step leaves the weights and the optimizer's moments (and step count) exactly as they were."""
    import prunekit.distill as D

    real, calls, states = D.intermediate_loss, {"n": 0}, []
    optimizers = []

    class RecordedAdamW(torch.optim.AdamW):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            optimizers.append(self)

    def snapshot(opt) -> dict:
        params = {f"p{i}": p.detach().clone() for i, p in enumerate(q for g in opt.param_groups for q in g["params"])}
        moments = {f"{pid}.{k}": v.clone() for pid, st in opt.state_dict()["state"].items() for k, v in st.items()}
        return {**params, **moments}

    def poisoned(*args, **kwargs):
        if not optimizers:  # the seconds-per-step probe before the run (no optimizer yet): not a training step
            return real(*args, **kwargs)
        states.append(snapshot(optimizers[-1]))  # the state this step starts from: after the step before
        loss, parts = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            loss = loss * float("nan") if how == "loss" else _NanGrad.apply(loss)
        return loss, parts

    monkeypatch.setattr(D, "intermediate_loss", poisoned)
    monkeypatch.setattr(torch.optim, "AdamW", RecordedAdamW)
    r = D.distill(_distill_settings(distill_world, tmp_path / "out"), progress=False)
    after_1, after_2, after_3 = states[1], states[2], states[3]  # stage 1 has 6 steps
    assert after_1.keys() == after_2.keys() and any(".exp_avg_sq" in k for k in after_1)
    for k in after_1:  # step 2 was skipped: nothing moved
        torch.testing.assert_close(after_2[k], after_1[k], rtol=0, atol=0, msg=k)
    assert any(not torch.equal(after_3[k], after_2[k]) for k in after_2)  # step 3 was applied
    train = [x for x in r.log if "dev" not in x]
    assert [x["step"] for x in train] == list(range(1, r.steps + 1))
    assert train[1] == {"step": 2, "skipped": "non-finite loss" if how == "loss" else "non-finite gradients", "stage": 1}
    assert all(x["loss"] == x["loss"] for x in train if x["step"] != 2)
    weights = load_file(str(r.output_dir / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert r.skipped_steps == 1 and json.loads((r.output_dir / "distill_report.json").read_text())["skipped_steps"] == 1


def test_distill_resume_may_change_the_learning_rates(distill_world, tmp_path):
    import prunekit.distill as D

    s = _distill_settings(distill_world, tmp_path / "out", stage2_epochs=1)
    with pytest.raises(KeyboardInterrupt):
        D.distill(s, progress=False, on_step=stop_after(3))  # checkpoint at step 2
    changed = dict(stage1_lr=1e-5, stage2_lr=1e-5, mixed_precision="no", max_nan_steps=4)
    r = D.distill(D.DistillSettings(**{**s.__dict__, **changed}), progress=False, resume=True)
    assert r.log[2] == {"step": 2, "resumed_with": {"stage1_lr": [s.stage1_lr, 1e-5], "stage2_lr": [s.stage2_lr, 1e-5], "mixed_precision": ["auto", "no"],
                                                    "max_nan_steps": [10, 4]}}
    warm = [x for x in r.log if x.get("stage") == 1 and "lr" in x]
    assert warm[1]["lr"] > 1e-5 > warm[2]["lr"]  # the new rate is the one used from the resumed step on


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
    elif how == "state-edited":  # valid JSON, the same step, tensors intact: only the checksum over state.json can tell
        meta = json.loads(js.read_text())
        for opt in ("opt_alpha", "opt1"):
            if opt in meta:
                meta[opt]["param_groups"][0]["lr"] *= 100
        if "best" in meta:
            meta["best"] = {**meta["best"], "value": 1.0}
        js.write_text(json.dumps(meta))
    elif how == "no-checksum":
        meta = json.loads(js.read_text())
        del meta["sha256"]
        js.write_text(json.dumps(meta))
    elif how == "old-format":  # as the prunekit before format 2 wrote it: the checksum of the tensors only
        import hashlib

        meta = json.loads(js.read_text())
        del meta["format"]
        js.write_text(json.dumps({**meta, "sha256": hashlib.sha256(st.read_bytes()).hexdigest()}))


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


@pytest.mark.parametrize("how", ["truncated", "garbled", "bad-json", "non-utf8", "no-json", "wrong-step", "state-edited", "no-checksum",
                                 "old-format"])
def test_corrupt_newest_checkpoint_falls_back_to_the_previous(uninterrupted_search, tmp_path, caplog, how):
    full_settings, full = uninterrupted_search
    s = SearchSettings(**{**full_settings.__dict__, "output_dir": str(tmp_path / "run")})
    with pytest.raises(KeyboardInterrupt):
        search(s, progress=False, on_step=stop_after(7))  # checkpoints at steps 3 and 6
    ckpts = tmp_path / "run.partial" / "checkpoints"
    _corrupt(ckpts / "step-0000006", how)
    resumed = search(s, progress=False, resume=True)
    assert any("step-0000006 is corrupt" in r.getMessage() for r in caplog.records), caplog.text
    a, b = load_file(str(full.output_dir / "alpha.safetensors")), load_file(str(resumed.output_dir / "alpha.safetensors"))
    for k in a:  # resumed from step 3, the result is the uninterrupted run's
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert [r["step"] for r in resumed.log] == list(range(1, 11))


@pytest.fixture(scope="module")
def uninterrupted_distill(distill_world, tmp_path_factory):
    import prunekit.distill as D

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return D.distill(_distill_settings(distill_world, tmp_path_factory.mktemp("distill-full") / "full"), progress=False)
    finally:
        torch.set_num_threads(n)


@pytest.mark.parametrize("how", ["garbled", "state-edited"])
def test_distill_corrupt_checkpoint_falls_back(distill_world, uninterrupted_distill, tmp_path, caplog, how):
    import prunekit.distill as D

    full = uninterrupted_distill
    s = _distill_settings(distill_world, tmp_path / "cut")
    with pytest.raises(KeyboardInterrupt):
        D.distill(s, progress=False, on_step=stop_after(5))  # checkpoints at steps 2 and 4
    _corrupt(tmp_path / "cut.partial" / "checkpoints" / "step-0000004", how)
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


@pytest.fixture(scope="module")
def search_cli(tiny_models, tmp_path_factory):
    """The command line of a 40-step search, and its uninterrupted result."""
    from factory import make_sentences

    root = tmp_path_factory.mktemp("search-cli")
    data = root / "texts.txt"
    data.write_text("\n".join(make_sentences(48)) + "\n")
    common = ["search", "--model", str(tiny_models("minilm6")), "--data", str(data), "--max-steps", "40", "--batch-size", "8",
              "--max-length", "32", "--checkpoint-every", "2", "--target", "0.5", "--quiet"]
    return common, _reference(common, root / "full")


@pytest.fixture(scope="module")
def distill_cli(distill_world, tmp_path_factory):
    """The command line of a distillation (dropout and augmentation on), and its uninterrupted result."""
    from factory import SEQ

    common = ["distill", str(distill_world["compact"]), "--data", str(distill_world["data"]), "--stage1-epochs", "3", "--stage2-epochs", "3",
              "--batch-size", "8", "--max-length", str(SEQ), "--augment-copies", "1", "--dropout", "0.1", "--checkpoint-every", "2", "--quiet"]
    return common, _reference(common, tmp_path_factory.mktemp("distill-cli") / "full")


def _reference(common: list[str], out: Path) -> Path:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = CliRunner().invoke(cli, [*common, "-o", str(out)])
    finally:
        torch.set_num_threads(n)
    assert ref.exit_code == 0, ref.output
    return out


def _assert_same_run(a: Path, b: Path) -> None:
    """Two run dirs hold the same result, bit for bit (same data order, restored optimizer moments and RNG)."""
    if (a / "alpha.safetensors").exists():  # search
        assert json.loads((a / "architecture.json").read_text())["layers"] == json.loads((b / "architecture.json").read_text())["layers"]
        fa, fb = load_file(str(a / "alpha.safetensors")), load_file(str(b / "alpha.safetensors"))
        log = "search_log.jsonl"
    else:  # distill
        fa, fb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
        ra, rb = (json.loads((d / "distill_report.json").read_text()) for d in (a, b))
        assert ra["best"] == rb["best"] and ra["before"] == rb["before"]
        log = "distill_log.jsonl"
    assert fa.keys() == fb.keys()
    for k in fa:
        torch.testing.assert_close(fa[k], fb[k], rtol=0, atol=0, msg=k)
    assert (a / log).read_text() == (b / log).read_text()


@pytest.mark.slow
def test_search_killed_at_random_points_resumes_to_the_uninterrupted_result(search_cli, tmp_path):
    common, full = search_cli
    landed = _run_killing([*common, "-o", str(tmp_path / "cut")], tmp_path / "cut", "search_log.jsonl", SEARCH_FILES, 40, kills=4, seed=6)
    assert sum(x.startswith("step") for x in landed) >= 2, landed  # the seeded draws kill mid-run at least twice
    _assert_same_run(full, tmp_path / "cut")


@pytest.mark.slow
def test_distill_killed_at_random_points_resumes_to_the_uninterrupted_result(distill_cli, tmp_path):
    common, full = distill_cli
    report = json.loads((full / "distill_report.json").read_text())
    steps = report["steps"]["stage1"] + report["steps"]["stage2"]
    landed = _run_killing([*common, "-o", str(tmp_path / "cut")], tmp_path / "cut", "distill_log.jsonl", DISTILL_FILES, steps,
                          kills=4, seed=3)
    assert sum(x.startswith("step") for x in landed) >= 2, landed
    _assert_same_run(full, tmp_path / "cut")


# ------------------------------------------------------------------------------------------------
# A crash at a chosen point (tests/crash_driver.py: os._exit there, no cleanup), then --resume.
def _crash(common: list[str], out: Path, point: str, step: int = 0, extra: tuple[str, ...] = ()) -> None:
    import os
    import subprocess
    import sys

    from crash_driver import CRASHED

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    driver = Path(__file__).with_name("crash_driver.py")
    proc = subprocess.run([sys.executable, str(driver), point, str(step), *common, "-o", str(out), *extra], env=env, capture_output=True,
                          timeout=300)
    assert proc.returncode == CRASHED, f"did not crash at {point}: exit {proc.returncode}\n{proc.stderr.decode()[-2000:]}"


def _finish(common: list[str], out: Path, resume: bool) -> None:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        r = CliRunner().invoke(cli, [*common, "-o", str(out), *(["--resume"] if resume else [])])
    finally:
        torch.set_num_threads(n)
    assert r.exit_code == 0, r.output


@pytest.mark.slow
@pytest.mark.parametrize("point,step", [("work-dir", 0), ("ckpt-tensors", 6), ("ckpt-rename", 6), ("publish", 0)])
def test_search_crash_at_a_chosen_point_then_resume(search_cli, tmp_path, point, step):
    common, full = search_cli
    out, partial = tmp_path / "cut", tmp_path / "cut.partial"
    if point == "publish":  # replacing an older output (--force): killed between moving it aside and moving the new one in
        out.mkdir()
        (out / "older-run").write_text("")
        _crash(common, out, point, extra=("--force",))
        assert not out.exists() and (tmp_path / ".cut.old" / "older-run").exists() and partial.is_dir()
        # Run again as before (no --resume, no --force): the older output is put back, and the error says
        # that --resume publishes the finished run rather than --force discarding it.
        assert_one_line_error(CliRunner().invoke(cli, [*common, "-o", str(out)]), "pass --resume to finish that run")
        assert (out / "older-run").exists() and partial.is_dir()
    else:
        _crash(common, out, point, step)
        assert not out.exists()
    if point == "work-dir":  # nothing a --resume could read: not even the work dir
        assert not partial.exists() and (tmp_path / ".cut.partial.new" / "settings.json").is_file()
    elif point.startswith("ckpt"):  # the half-written checkpoint is not in place: the one before is the newest
        assert sorted(d.name for d in (partial / "checkpoints").glob("step-*")) == ["step-0000002", "step-0000004"]
        assert (partial / "checkpoints" / ".step-0000006.tmp" / "state.safetensors").is_file()
    _finish(common, out, resume=partial.exists())
    assert not (tmp_path / ".cut.old").exists()
    _assert_same_run(full, out)


@pytest.mark.slow
@pytest.mark.parametrize("point,step", [("ckpt-tensors", 4), ("ckpt-rename", 8)])
def test_distill_crash_at_a_chosen_point_then_resume(distill_cli, tmp_path, point, step):
    common, full = distill_cli
    out = tmp_path / "cut"
    _crash(common, out, point, step)
    ckpts = [d.name for d in (tmp_path / "cut.partial" / "checkpoints").glob("step-*")]
    assert f"step-{step:07d}" not in ckpts and f"step-{step - 2:07d}" in ckpts
    _finish(common, out, resume=True)
    _assert_same_run(full, out)


# ------------------------------------------------------------------------------------------------
# Replacing an output, and the best weights a checkpoint names: durable, and repaired after a crash.
def test_an_output_being_replaced_when_the_process_died_is_recovered(tmp_path):
    from prunekit.io import check_output_dir, publish_dir

    out, aside = tmp_path / "out", tmp_path / ".out.old"
    aside.mkdir()  # died after moving the old output aside, before moving the new one in: the old one comes back
    (aside / "old").write_text("")
    with pytest.raises(PrunekitError, match="already exists"):
        check_output_dir(out, force=False)
    assert (out / "old").is_file() and not aside.exists()
    aside.mkdir()  # died after moving the new one in, before deleting the old one: the old one goes
    (tmp_path / ".out.publishing").write_text(str(out.stat().st_ino))
    check_output_dir(out, force=True)
    assert (out / "old").is_file() and not aside.exists() and not (tmp_path / ".out.publishing").exists()
    # ... but an `out` made after the crash (not the dir the journal names) is no licence to delete the
    # old output: both stay, and the error names them.
    aside.mkdir()
    (tmp_path / ".out.publishing").write_text(str(out.stat().st_ino + 1))
    with pytest.raises(PrunekitError, match="replacement of .* was interrupted"):
        check_output_dir(out, force=True)
    assert aside.is_dir() and (out / "old").is_file()
    shutil.rmtree(aside)
    new = tmp_path / "new"
    new.mkdir()
    (new / "new").write_text("")
    publish_dir(new, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (out / "new").is_file()


def test_best_weights_are_synced_before_a_checkpoint_names_them(tmp_path, monkeypatch):
    import os

    import prunekit.distill as D

    synced, real = [], os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    D._save_best(tmp_path, torch.nn.Linear(2, 2), 7)
    assert synced == [str(tmp_path / ".best.safetensors.tmp"), str(tmp_path)]
    assert (tmp_path / "best-0000007.safetensors").is_file()


# ------------------------------------------------------------------------------------------------
# fp16 autocast trains with loss scaling: without it, small gradients flush to zero.
def test_loss_scale_keeps_fp16_gradients_and_finds_its_range():
    from prunekit.training import LossScale

    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 64)
    x = torch.randn(4096, 64)
    with torch.no_grad():
        target = lin(x) + 1e-3 * torch.randn(4096, 64)

    def grad(scaler=None):
        lin.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            y = lin(x)
        loss = ((y.float() - target) ** 2).mean()
        if scaler:
            scaler.backward(loss)
            scaler.unscale_(lin.parameters())
        else:
            loss.backward()
        return lin.weight.grad.clone()

    plain, scaled = grad(None), grad(LossScale(True))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        y16 = lin(x).float()
    ref = 2 * (y16 - target).T @ x / y16.numel()  # the same loss's weight gradient, in fp32
    assert (plain == 0).float().mean() > 0.5  # fp16 without scaling: most weight gradients flushed to zero
    assert (scaled == 0).float().mean() < 0.01
    assert float((scaled - ref).norm() / ref.norm()) < 0.01 < float((plain - ref).norm() / ref.norm())
    # the policy: overflow with a finite loss halves the scale (skip), not at scale <= 1; growth after the interval
    ls = LossScale(True, init_scale=8.0, growth_interval=3)
    assert ls.overflowed(True, False) and ls.scale == 4.0 and ls.good == 0
    assert not ls.overflowed(False, False) and ls.scale == 4.0  # a NaN loss is the guard's
    assert not ls.overflowed(True, True)
    for _ in range(3):
        ls.applied()
    assert ls.scale == 8.0 and ls.good == 0
    ls.applied()
    assert ls.record() == {"loss_scale": 8.0, "scale_good": 1}
    assert not LossScale(True, init_scale=1.0).overflowed(True, False)
    back = LossScale.from_history(True, [{"step": 1, "loss": 0.5, **ls.record()}, {"step": 2, "skipped": "non-finite loss"}], init_scale=2.0)
    assert (back.scale, back.good) == (8.0, 1)
    # fp16, then a stretch in bf16 (records without a scale), then fp16 again: scaling starts afresh
    back = LossScale.from_history(True, [{"step": 1, "loss": 0.5, **ls.record()}, {"step": 2, "loss": 0.4}], init_scale=2.0)
    assert (back.scale, back.good) == (2.0, 0)
    off = LossScale(False)
    assert off.record() == {} and not off.overflowed(True, False) and off.scale == 1.0


class _InfAbove2e18(torch.autograd.Function):
    """Identity; its backward overflows while the loss's gradient (the loss scale) is over 2**18."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("inf") if float(g.abs().max()) > 2.0 ** 18 else g


def test_fp16_updates_are_the_fp32_ones(tiny_models, text_file, distill_world, tmp_path, monkeypatch):
    """The scaled gradients are unscaled exactly once before anything uses them: one search step
    moves the gates as fp32 does, and distill clips the same gradient norms (a missing or doubled
    unscale is off by 65536x)."""
    import prunekit.distill as D

    moved = {}
    for mp in ("no", "fp16"):
        r = search(_settings(tmp_path, tiny_models("minilm6"), text_file, mixed_precision=mp, max_steps=1,
                             output_dir=str(tmp_path / f"s-{mp}")), progress=False)
        a = load_file(str(r.output_dir / "alpha.safetensors"))
        moved[mp] = torch.cat([a["head"].flatten(), a["ffn"].flatten()]) - 2.0  # alpha_init
    assert moved["no"].abs().max() > 0
    assert float((moved["fp16"] - moved["no"]).norm() / moved["no"].norm()) < 1e-2

    norms, real_clip = {}, torch.nn.utils.clip_grad_norm_
    for mp in ("no", "fp16"):
        seen = norms.setdefault(mp, [])
        monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, seen=seen, **k: seen.append(float(real_clip(*a, **k))) or
                            torch.tensor(seen[-1]))
        D.distill(_distill_settings(distill_world, tmp_path / f"d-{mp}", mixed_precision=mp, stage2_epochs=0), progress=False)
    assert len(norms["no"]) >= 3
    for a, b in zip(norms["no"][:3], norms["fp16"][:3]):
        assert b == pytest.approx(a, rel=1e-2)


def test_auto_precision_is_fp32_on_every_cpu_and_bf16_is_suggested_where_native(tiny_models, text_file, tmp_path, monkeypatch,
                                                                                  caplog):
    """--mixed-precision auto: bf16 autocast on CUDA, fp32 on any CPU (the same numbers on every CPU kind);
    a run in fp32 on a CPU with bf16 matrix instructions says that bf16 would be faster; a wrong value
    is refused before anything runs."""
    import logging

    import prunekit.training as T
    from prunekit.distill import DistillSettings

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for native in (True, False):
        monkeypatch.setattr(T, "native_bf16", lambda native=native: native)
        assert T.resolved_precision(cpu, "auto") == "no" and T.resolved_precision(cuda, "auto") == "bf16"
        with T.autocast(cpu, "auto"):
            assert not torch.is_autocast_enabled("cpu")
        with T.autocast(cpu, "bf16"):
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
        hint = "fp32 (this CPU has bf16 matrix instructions; --mixed-precision bf16: "
        assert T.precision_note(cpu, "auto").startswith(hint) == native and T.precision_note(cpu, "no").startswith(hint) == native
        assert T.precision_note(cpu, "bf16") == "bf16 autocast" and T.precision_note(cuda, "auto") == "bf16 autocast"
    for bad in (SearchSettings(mixed_precision="BF16"), DistillSettings(student="x", mixed_precision="fp8")):
        with pytest.raises(PrunekitError, match="unknown --mixed-precision"):
            bad.validate()
    monkeypatch.setattr(T, "native_bf16", lambda: True)
    with caplog.at_level(logging.INFO, logger="prunekit"):
        search(_settings(tmp_path, tiny_models("minilm6"), text_file, max_steps=1), progress=False)
    assert "search: 1 steps, in fp32 (this CPU has bf16 matrix instructions; --mixed-precision bf16:" in caplog.text


def test_search_and_distill_in_fp16_scale_the_loss_and_resume_with_the_scale(tiny_models, text_file, distill_world, tmp_path, monkeypatch):
    """--mixed-precision fp16: every applied step logs its loss scale; a scale too large overflows,
    is halved and the step skipped, counted apart from NaN steps, with checkpoints going on; a
    resumed run continues with the logged scale, equal to an uninterrupted one."""
    import prunekit.distill as D
    from prunekit.training import LossScale

    real_mse, real_inter = S._normalised_mse, D.intermediate_loss
    monkeypatch.setattr(S, "_normalised_mse", lambda *a: _InfAbove2e18.apply(real_mse(*a)))
    monkeypatch.setattr(D, "intermediate_loss", lambda *a, **k: (lambda lp: (_InfAbove2e18.apply(lp[0]), lp[1]))(real_inter(*a, **k)))
    # the default scale, 2**16, fits: no overflow; resumed, the clean-step count goes on
    s = _settings(tmp_path, tiny_models("minilm6"), text_file, mixed_precision="fp16", max_steps=8)
    with pytest.raises(KeyboardInterrupt):
        search(s, progress=False, on_step=stop_after(6))
    r = search(s, progress=False, resume=True)
    log = [json.loads(x) for x in (r.output_dir / "search_log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log] == list(range(1, 9)) and r.skipped_steps == 0 and r.overflow_steps == 0
    assert all(x["loss_scale"] == 2.0 ** 16 and x["scale_good"] == x["step"] for x in log)
    d = D.distill(_distill_settings(distill_world, tmp_path / "dout", mixed_precision="fp16"), progress=False)
    assert all(x["loss_scale"] == 2.0 ** 16 for x in d.log if "loss" in x) and d.skipped_steps == 0 == d.overflow_steps

    # a scale over what the gradients take (2**20): halved per overflowing step, not a NaN step
    real_init = LossScale.__init__
    monkeypatch.setattr(LossScale, "__init__", lambda self, enabled, init_scale=0, growth_interval=2000:
                        real_init(self, enabled, 2.0 ** 20, growth_interval))
    s2 = _settings(tmp_path, tiny_models("minilm6"), text_file, mixed_precision="fp16", max_steps=8, output_dir=str(tmp_path / "run2"))
    with pytest.raises(KeyboardInterrupt):
        search(s2, progress=False, on_step=stop_after(2))  # step 2 overflowed: its checkpoint is written all the same
    assert (tmp_path / "run2.partial" / "checkpoints" / "step-0000002").is_dir()
    r = search(s2, progress=False, resume=True)
    log = [json.loads(x) for x in (r.output_dir / "search_log.jsonl").read_text().splitlines()]
    assert [x.get("overflow") for x in log[:3]] == ["fp16 gradients overflowed; loss scale halved to 524288",
                                                   "fp16 gradients overflowed; loss scale halved to 262144", None]
    assert all(x["loss_scale"] == 2.0 ** 18 for x in log[2:]) and r.skipped_steps == 0 and r.overflow_steps == 2
    assert json.loads((r.output_dir / "architecture.json").read_text())["overflow_steps"] == 2
    fresh = search(_settings(tmp_path, tiny_models("minilm6"), text_file, mixed_precision="fp16", max_steps=8,
                             output_dir=str(tmp_path / "run3")), progress=False)
    assert fresh.log == r.log  # the resumed run is the uninterrupted one
    ds = _distill_settings(distill_world, tmp_path / "dout2", mixed_precision="fp16")
    with pytest.raises(KeyboardInterrupt):
        D.distill(ds, progress=False, on_step=stop_after(2))
    d = D.distill(ds, progress=False, resume=True)
    train = [x for x in d.log if "dev" not in x]
    assert [x.get("overflow", "")[:30] for x in train[:2]] == ["fp16 gradients overflowed; los"] * 2 and "loss" in train[2]
    # (stage 2's loss, not forced, may overflow at 2**18 by itself in CPU fp16: counted the same way)
    n_over = sum("overflow" in x for x in train)
    assert d.skipped_steps == 0 and d.overflow_steps == n_over >= 2 and all(x["loss"] == x["loss"] for x in train if "loss" in x)
    assert json.loads((d.output_dir / "distill_report.json").read_text())["overflow_steps"] == n_over
    fresh = D.distill(_distill_settings(distill_world, tmp_path / "dout3", mixed_precision="fp16"), progress=False)
    assert [x for x in fresh.log if "dev" not in x] == train
