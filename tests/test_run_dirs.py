"""The output of a long run (search, distill) and its `<out>.partial` work dir: one process at a time
(a lock), the modes of what is published, no work dir left by a run that failed before its first
checkpoint, and errors that say what to do."""
from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from factory import assert_one_line_error, stop_after
from prunekit.cli import cli
from prunekit.errors import PrunekitError, ResumableError
from prunekit.io import partial_dir
from prunekit.run_dir import prepare_work_dir, start_work_dir
from prunekit.search import SearchSettings, search

pytestmark = pytest.mark.usefixtures("one_thread")


def _search_settings(out: Path, model, data, **kw) -> SearchSettings:
    base = dict(model=str(model), data=str(data), output_dir=str(out), max_steps=6, batch_size=8, max_length=32, checkpoint_every=3,
                target=0.5)
    return SearchSettings(**{**base, **kw})


def _search_args(s: SearchSettings, *extra: str) -> list[str]:
    return ["search", "--model", s.model, "--data", s.data, "-o", s.output_dir, "--max-steps", str(s.max_steps), "--batch-size",
            str(s.batch_size), "--max-length", str(s.max_length), "--checkpoint-every", str(s.checkpoint_every), "--target",
            str(s.target), "--quiet", *extra]


def _tree(root: Path) -> dict:
    """Every file and dir under ``root`` (the dir itself included) with its content, mode and mtime."""
    snap = {}
    for p in [root, *sorted(root.rglob("*"))]:
        st = p.stat()
        snap[str(p.relative_to(root.parent))] = (p.read_bytes() if p.is_file() else None, st.st_mode, st.st_mtime_ns)
    return snap


# ------------------------------------------------------------------------------------------------
# 1. One process per output
_HOLDER = textwrap.dedent("""
    import sys, time
    from prunekit.io import lock_output
    lock = lock_output(sys.argv[1])
    print("locked", flush=True)
    time.sleep(120)
""")


@pytest.mark.skipif(sys.platform == "win32", reason="no fcntl")
def test_a_second_process_on_a_run_dir_is_refused_and_touches_nothing(tiny_models, text_file, tmp_path):
    """The user starts `search ... --resume` (or the same command) while the first run still writes
    runs/F: one error line naming that process, exit 2, the interrupted run untouched; once the first
    process is gone (here: kill -9), --resume works, and a finished run leaves no lock file behind."""
    out = tmp_path / "runs" / "F"
    s = _search_settings(out, tiny_models("minilm6"), text_file)
    with pytest.raises(KeyboardInterrupt):
        search(s, progress=False, on_step=stop_after(4))  # a checkpoint at step 3
    partial = out.with_name("F.partial")
    before = _tree(partial)

    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out)], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).parents[1])
    try:
        assert holder.stdout.readline().strip() == "locked"
        for extra in (("--resume",), (), ("--force",)):
            line = assert_one_line_error(CliRunner().invoke(cli, _search_args(s, *extra)))
            assert line == f"error: another prunekit process (pid {holder.pid}) is writing {out}; wait for it to finish or stop it"
        assert _tree(partial) == before and not out.exists()
        with pytest.raises(PrunekitError, match="another prunekit process"):  # the library refuses alike (distill too)
            from prunekit.distill import DistillSettings, distill

            distill(DistillSettings(student=str(tmp_path / "student"), output_dir=str(out)), progress=False)
    finally:
        holder.kill()  # SIGKILL: the kernel drops its lock, its lock file stays
        holder.wait()
        holder.stdout.close()
    assert (tmp_path / "runs" / ".F.lock").exists()
    r = CliRunner().invoke(cli, _search_args(s, "--resume"))
    assert r.exit_code == 0, r.output
    assert (out / "settings.json").is_file() and (out / "search_log.jsonl").is_file()
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["F"]  # no lock file, no work dir


@pytest.mark.skipif(sys.platform == "win32", reason="no fcntl")
def test_the_lock_is_exclusive_and_released(tmp_path):
    from prunekit.io import lock_output, lock_path

    out = tmp_path / "sub" / "out"
    first = lock_output(out)
    assert lock_path(out).read_text().strip() == str(os.getpid())
    with pytest.raises(PrunekitError, match=rf"another prunekit process \(pid {os.getpid()}\) is writing {re.escape(str(out))}"):
        lock_output(out)  # a second open file description conflicts even within one process
    first.release()
    assert not lock_path(out).exists()
    again = lock_output(out)
    again.release()
    again.release()  # idempotent


def test_without_fcntl_there_is_no_lock(tmp_path, monkeypatch):
    """Windows: no fcntl, so no lock (and no error)."""
    from prunekit.io import lock_output, lock_path

    monkeypatch.setitem(sys.modules, "fcntl", None)  # `import fcntl` raises ImportError
    assert lock_output(tmp_path / "out") is None and not lock_path(tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------
# 2. Modes: what a plain open()/mkdir would give, not mkstemp's 0600 / mkdtemp's 0700
@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def _modes(root: Path) -> set[tuple[str, int]]:
    return {("d" if p.is_dir() else "f", stat.S_IMODE(p.stat().st_mode)) for p in [root, *root.rglob("*")]}


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX modes")
def test_atomic_writes_honour_the_umask(tmp_path, umask_027):
    from prunekit.io import atomic_output_dir, atomic_write_text, current_umask

    assert current_umask() == 0o027
    atomic_write_text(tmp_path / "a.json", "{}")
    with atomic_output_dir(tmp_path / "out", force=False) as work:
        atomic_write_text(work / "b.json", "{}")
        (work / "c.txt").write_text("plain open()")
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o640
    assert _modes(tmp_path / "out") == {("d", 0o750), ("f", 0o640)}


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX modes")
def test_a_published_search_and_its_compact_model_honour_the_umask(tiny_models, text_file, tmp_path, umask_027):
    from prunekit.compact import compact_to_dir

    r = search(_search_settings(tmp_path / "run", tiny_models("minilm6"), text_file, max_steps=2, checkpoint_every=1), progress=False)
    assert {p.name for p in r.output_dir.iterdir()} >= {"settings.json", "architecture.json", "architecture.png", "search_log.jsonl"}
    assert _modes(r.output_dir) == {("d", 0o750), ("f", 0o640)}
    compact_to_dir(r.output_dir, None, tmp_path / "compact", measure_fvcore=False)
    assert _modes(tmp_path / "compact") == {("d", 0o750), ("f", 0o640)}


# ------------------------------------------------------------------------------------------------
# 3. A fresh run that fails before its first checkpoint leaves no work dir
@pytest.fixture(scope="module")
def embedding_world(tmp_path_factory):
    from factory import kept_arch, make_compact_dir, make_sentences, scrambled_teacher_dir

    root = tmp_path_factory.mktemp("embedding-world")
    teacher = scrambled_teacher_dir(root / "teacher", "embedding")
    data = root / "texts.txt"
    data.write_text("\n".join(make_sentences(24, seed=3)) + "\n")
    return {"compact": make_compact_dir(root, teacher, kept_arch()), "data": data}


def _distill_args(world, out: Path, *extra: str) -> list[str]:
    from factory import SEQ

    return ["distill", str(world["compact"]), "--data", str(world["data"]), "-o", str(out), "--stage1-epochs", "1", "--stage2-epochs", "1",
            "--batch-size", "16", "--max-length", str(SEQ), "--augment-copies", "0", "--quiet", *extra]


def test_distill_with_too_few_dev_sentences_says_how_to_fix_it_and_the_corrected_command_runs(embedding_world, tmp_path):
    out = tmp_path / "out"
    assert_one_line_error(CliRunner().invoke(cli, _distill_args(embedding_world, out, "--max-examples", "16")),
                          "embedding fidelity needs at least 3 sentences, got 2 in the dev data (held out as --dev-fraction 0.1 of 16 examples)",
                          "give more data, a larger --dev-fraction, or --dev-data")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no out.partial, no lock file
    r = CliRunner().invoke(cli, _distill_args(embedding_world, out, "--max-examples", "16", "--dev-fraction", "0.25"))
    assert r.exit_code == 0, r.output
    assert (out / "model.safetensors").is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_distill_failing_after_its_work_dir_is_made_removes_it(embedding_world, tmp_path, monkeypatch):
    """Any failure before the first checkpoint (here the dev metric, as the fidelity error did before
    distill checked the dev set's size itself): the work dir goes, so the same command runs again."""
    import prunekit.distill as D

    def fails(*args, **kwargs):
        assert (tmp_path / "out.partial" / "settings.json").is_file()  # made by then
        raise PrunekitError("embedding fidelity needs at least 3 sentences, got 2")

    monkeypatch.setattr(D, "dev_metrics", fails)
    assert_one_line_error(CliRunner().invoke(cli, _distill_args(embedding_world, tmp_path / "out")), "at least 3 sentences")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_search_failing_before_its_first_checkpoint_removes_its_work_dir(tiny_models, text_file, tmp_path, monkeypatch):
    import prunekit.search as S

    s = _search_settings(tmp_path / "run", tiny_models("minilm6"), text_file)
    real = S.run_gate_search

    def fails(*args, **kwargs):
        raise PrunekitError("a mistake found late")

    monkeypatch.setattr(S, "run_gate_search", fails)
    with pytest.raises(PrunekitError, match="found late"):
        search(s, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["texts.txt"]

    # A failure the message says to --resume from (a full disk, NaN steps) keeps it, as does Ctrl-C.
    for stop in (ResumableError("disk full: run it again with --resume"), KeyboardInterrupt()):
        def stops(*args, _stop=stop, **kwargs):
            raise _stop

        monkeypatch.setattr(S, "run_gate_search", stops)
        with pytest.raises(type(stop)):
            search(s, progress=False, force=True)
        assert (tmp_path / "run.partial" / "settings.json").is_file()

    # A --resume that fails keeps the work dir it was given, checkpoint or not.
    monkeypatch.setattr(S, "run_gate_search", fails)
    with pytest.raises(PrunekitError, match="found late"):
        search(s, progress=False, resume=True)
    assert (tmp_path / "run.partial" / "settings.json").is_file()

    # A fresh run that fails after a checkpoint keeps it (that is what --resume is for).
    def fails_after_a_checkpoint(*args, **kwargs):
        real(*args, **kwargs)
        raise PrunekitError("a mistake found at the end")

    monkeypatch.setattr(S, "run_gate_search", fails_after_a_checkpoint)
    with pytest.raises(PrunekitError, match="at the end"):
        search(s, progress=False, force=True)
    assert sorted(p.name for p in (tmp_path / "run.partial" / "checkpoints").iterdir()) == ["step-0000003", "step-0000006"]


# ------------------------------------------------------------------------------------------------
# 4. A corrupt only checkpoint: the warning says the run starts over
def test_a_corrupt_only_checkpoint_says_the_run_starts_from_step_0(tiny_models, text_file, tmp_path, caplog):
    s = _search_settings(tmp_path / "run", tiny_models("minilm6"), text_file)
    with pytest.raises(KeyboardInterrupt):
        search(s, progress=False, on_step=stop_after(4))  # one checkpoint: step 3
    ckpt = tmp_path / "run.partial" / "checkpoints" / "step-0000003"
    (ckpt / "state.json").write_text("{not json")
    r = search(s, progress=False, resume=True)
    warnings = [rec.getMessage() for rec in caplog.records if "is corrupt" in rec.getMessage()]
    assert len(warnings) == 1 and warnings[0].endswith("; no earlier checkpoint: starting from step 0"), warnings
    assert [x["step"] for x in r.log] == list(range(1, 7))


def test_a_corrupt_newest_checkpoint_still_says_it_uses_the_one_before(tmp_path, caplog):
    import torch

    from prunekit.checkpoint import load_latest_checkpoint, write_checkpoint

    for step in (1, 2):
        write_checkpoint(tmp_path, step, {"w": torch.ones(2)}, {})
    (tmp_path / "step-0000002" / "state.json").write_text("[")
    assert load_latest_checkpoint(tmp_path)[0] == 1
    assert [rec.getMessage().split("; ")[-1] for rec in caplog.records if "is corrupt" in rec.getMessage()] == ["using the one before it"]


# ------------------------------------------------------------------------------------------------
# 5. What may change on --resume: the refusal, the help and the README agree, and name real options
def _resume_refusal(kind: str, tmp_path: Path) -> str:

    out = tmp_path / kind
    if kind == "search":
        s = SearchSettings(output_dir=str(out), model="m", data="d")
        run, changed = search, SearchSettings(**{**s.__dict__, "seed": 7})
    else:
        from prunekit.distill import DistillSettings, distill

        s = DistillSettings(student=str(tmp_path / "student"), output_dir=str(out))
        run, changed = distill, DistillSettings(**{**s.__dict__, "seed": 7})
    start_work_dir(partial_dir(out), s.to_json())
    with pytest.raises(PrunekitError, match="--resume with different settings") as e:
        run(changed, progress=False, resume=True)
    return str(e.value)


def test_a_setting_added_since_the_interrupted_run_reads_as_its_default(tmp_path):
    """A run interrupted under an older prunekit has no entry for a setting added since (here gate_cost
    and latency_calibrate, whose default None decides at the run's start, so a resume calibrates nothing):
    resuming with that setting at its default is the same run, not a changed one. Where the default
    has changed since (group_by_length: on for the gate search now, absent and so off before), the old
    run reads as what it was (OLDER_RUNS): resuming needs --no-group-by-length."""
    out = tmp_path / "run"
    s = SearchSettings(output_dir=str(out), model="m", data="d")
    assert s.group_by_length is True  # the gate search's default
    old = {k: v for k, v in json.loads(s.to_json()).items() if k not in ("gate_cost", "group_by_length", "latency_calibrate")}
    start_work_dir(partial_dir(out), json.dumps(old))
    free = frozenset({"output_dir"})
    with pytest.raises(PrunekitError, match=r"different settings than the interrupted run \(group_by_length: false there, true now\)"):
        prepare_work_dir(out, s, force=False, resume=True, resume_free=free)
    ungrouped = SearchSettings(**{**s.__dict__, "group_by_length": False})
    assert prepare_work_dir(out, ungrouped, force=False, resume=True, resume_free=free) == {}
    with pytest.raises(PrunekitError, match=r"different settings than the interrupted run \(gate_cost: \"flops\" there, \"latency\" now\)"):
        prepare_work_dir(out, SearchSettings(**{**ungrouped.__dict__, "gate_cost": "latency"}), force=False, resume=True,
                         resume_free=free)


@pytest.mark.parametrize("kind", ["search", "distill"])
def test_the_options_that_may_change_on_resume_agree_everywhere(kind, tmp_path):
    """The refusal of a --resume with other settings names the options that may change: each one a real
    option of that command (distill has no --eval-batch-size), the same as its --resume help and the README."""
    command = cli.commands[kind]
    real = {o for p in command.params for o in p.opts if o.startswith("--")}
    message = _resume_refusal(kind, tmp_path)
    listed = re.split(r", | and ", re.search(r"only (.*) may change\)$", message).group(1))
    assert set(listed) <= real, (set(listed) - real, message)

    help_text = next(p.help for p in command.params if p.name == "resume")
    in_help = re.findall(r"--[a-z0-9-]+", re.search(r"\((.*) may change\)", help_text).group(1))
    assert listed == in_help, (message, help_text)

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("### Long runs: resume, crash safety, distributed", 1)[1].split("\n- **Checkpoints**", 1)[0]
    in_readme = set(re.findall(r"--[a-z0-9-]+", re.split(r"\.\s+A fresh run", section.split("`--resume` keeps every setting except", 1)[1])[0]))
    assert in_readme == {*listed, *(_resume_options_of_the_other(kind))}, in_readme


def _resume_options_of_the_other(kind: str) -> set[str]:
    """The README names both commands' options in one sentence."""
    other = cli.commands["distill" if kind == "search" else "search"]
    help_text = next(p.help for p in other.params if p.name == "resume")
    return set(re.findall(r"--[a-z0-9-]+", re.search(r"\((.*) may change\)", help_text).group(1)))


# ------------------------------------------------------------------------------------------------
# 6. An existing file as the output: "not a directory" first, with or without --force
@pytest.mark.parametrize("kind", ["search", "distill"])
@pytest.mark.parametrize("force", [False, True])
def test_a_file_as_the_output_is_not_a_directory_first(kind, force, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("README.md").write_text("precious")
    args = (["search", "--model", "m", "--data", "d"] if kind == "search" else ["distill", "student"]) + ["-o", "README.md"]
    for resume in ([], ["--resume"]):
        line = assert_one_line_error(CliRunner().invoke(cli, [*args, *resume, *(["--force"] if force else [])]),
                                     "output path README.md exists and is not a directory")
        assert "--force" not in line
    assert Path("README.md").read_text() == "precious" and sorted(os.listdir(".")) == ["README.md"]


def test_distill_failing_after_augmenting_keeps_the_augmented_data(embedding_world, tmp_path, monkeypatch):
    """The augmented copies are resumable work (slow to make, reused by --resume): a failure on the
    first training step (an out-of-memory, say) keeps the work dir that holds them."""
    import prunekit.distill as D

    def fails(*args, **kwargs):
        raise PrunekitError("out of memory on the first step")

    monkeypatch.setattr(D, "intermediate_loss", fails)
    args = _distill_args(embedding_world, tmp_path / "out", "--dev-fraction", "0.25")
    args[args.index("--augment-copies") + 1] = "1"
    assert_one_line_error(CliRunner().invoke(cli, args), "out of memory")
    assert (tmp_path / "out.partial" / "augmented.jsonl").is_file()


@pytest.mark.skipif(sys.platform == "win32", reason="no fcntl")
def test_the_lock_file_is_never_followed_through_a_link(tmp_path):
    from prunekit.io import lock_output, lock_path

    out = tmp_path / "out"
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    lock_path(out).symlink_to(victim)
    with pytest.raises(PrunekitError, match="is a symbolic link: remove it"):
        lock_output(out)
    assert victim.read_text() == "precious\n" and lock_path(out).is_symlink()


@pytest.mark.skipif(sys.platform == "win32", reason="no fcntl")
def test_a_refused_run_leaves_no_parent_dirs(tiny_models, text_file, tmp_path):
    s = _search_settings(tmp_path / "new" / "sub" / "run", tiny_models("minilm6"), text_file)
    assert_one_line_error(CliRunner().invoke(cli, _search_args(s, "--resume")), "nothing to resume")
    assert not (tmp_path / "new").exists()
    assert_one_line_error(CliRunner().invoke(cli, _search_args(_search_settings(Path("."), s.model, s.data))), "names no directory")


def test_a_distill_run_from_before_a_recipe_change_resumes_with_its_own_values(tmp_path):
    """The short recipe's defaults changed (stage 2 only, one augmented copy, grouped batches): a run
    interrupted under the old ones (1 + 3 epochs, no copies, no group_by_length key) resumes with the
    values it started with when the command gives none of them; a value given that differs is refused."""
    from prunekit.distill import DistillSettings, resumed_options

    out = tmp_path / "d"
    old = json.loads(DistillSettings(student="s", output_dir=str(out), stage1_epochs=1.0, stage2_epochs=3.0,
                                     stage1_share=0.25, augment_copies=0).to_json())
    del old["group_by_length"], old["flat_start_stage1_epochs"]
    start_work_dir(partial_dir(out), json.dumps(old))
    given = {"output_dir": str(out), "recipe": "short", "stage1_epochs": None, "stage2_epochs": None, "stage1_share": None,
             "augment_copies": None, "group_by_length": None, "stage1_lr": None, "stage2_lr": None, "alpha_gold": None}
    filled = DistillSettings(student="s", **resumed_options(out, given))
    assert (filled.stage1_epochs, filled.stage2_epochs, filled.augment_copies, filled.group_by_length,
            filled.flat_start_stage1_epochs) == (1.0, 3.0, 0, False, 0.0)
    assert prepare_work_dir(out, filled, force=False, resume=True, resume_free=frozenset({"output_dir"})) == {}
    changed = DistillSettings(student="s", **resumed_options(out, {**given, "augment_copies": 1}))
    with pytest.raises(PrunekitError, match=r"\(augment_copies: 0 there, 1 now\)"):
        prepare_work_dir(out, changed, force=False, resume=True, resume_free=frozenset({"output_dir"}))
    assert resumed_options(tmp_path / "none", given) == given  # nothing to resume: the resume says so itself
