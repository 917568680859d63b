"""distill --budget: parsing, the split between the stages, and a run that keeps to its plan."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from factory import (
    SEQ,
    assert_one_line_error,
    kept_arch,
    labelled_csv,
    make_compact_dir,
    scrambled_teacher_dir,
    stop_after,
)
from prunekit.budget import Budget, evaluations, parse_budget, seconds_at, split
from prunekit.cli import cli
from prunekit.distill import DistillSettings, distill
from prunekit.errors import PrunekitError


@pytest.mark.parametrize("text, seconds", [("45m", 2700), ("2h", 7200), ("1h30m", 5400), ("900s", 900), ("1.5h", 5400),
                                           ("10min", 600), (" 2h 5m ", 7500)])
def test_time_budgets(text, seconds):
    assert parse_budget(text) == Budget(seconds=seconds)


def test_step_budgets_and_bad_ones():
    assert parse_budget("3000steps") == Budget(steps=3000) and parse_budget("1 step") == Budget(steps=1)
    for bad in ("", "45", "45x", "m45", "0s", "0steps", "2h-5m", "fast"):
        with pytest.raises(PrunekitError, match="--budget"):
            parse_budget(bad)


def test_split_of_steps_and_of_time():
    assert split(Budget(steps=100), 0.3, {}, 0.0, 10) == (30, 70)
    assert split(Budget(steps=100), 0.0, {}, 0.0, 10) == (0, 100)
    # 1000 s, half each: stage 1 at 1 s/step, stage 2 at 2 s/step; 4 evaluations of 10 s (end of
    # stage 1, 3 epochs of 100 steps in stage 2) come out of the time first
    s1, s2 = split(Budget(seconds=1000), 0.5, {"1": 1.0, "2": 2.0}, 10.0, 100)
    assert (s1, s2) == (480, 240) and s1 * 1.0 + s2 * 2.0 + evaluations(s1, s2, 100) * 10.0 <= 1000
    with pytest.raises(PrunekitError, match="dev evaluations"):
        split(Budget(seconds=15), 0.5, {"1": 1.0, "2": 1.0}, 10.0, 100)
    with pytest.raises(PrunekitError, match="shorter than one step"):
        split(Budget(seconds=1), 0.5, {"1": 5.0, "2": 5.0}, 0.0, 100)
    # the short recipe gives stage 1 no share: it is not timed (0 s a step) and gets no step
    assert split(Budget(seconds=1000), 0.0, {"1": 0.0, "2": 2.0}, 10.0, 100) == (0, 475)  # 475 x 2 s + 5 evaluations x 10 s
    with pytest.raises(PrunekitError, match=r"shorter than one step on this machine \(5"):
        split(Budget(seconds=1), 0.0, {"1": 0.0, "2": 5.0}, 0.0, 100)


def test_seconds_per_step_read_at_the_mean_padded_length():
    # 0.2 s fixed + 1 ms a token, timed at 100 and 500 tokens: 0.5 s at 300 tokens, whichever is given first
    assert seconds_at(300, (100, 0.3), (500, 0.7)) == pytest.approx(0.5)
    assert seconds_at(300, (500, 0.7), (100, 0.3)) == pytest.approx(0.5)
    assert seconds_at(100, (100, 0.3), (500, 0.7)) == pytest.approx(0.3)
    assert seconds_at(9999, (100, 0.3), (500, 0.7)) == pytest.approx(0.7)  # kept between the two times
    # the longer batch no faster (noise) or all batches alike: the mean of the two
    assert seconds_at(300, (100, 0.5), (500, 0.4)) == pytest.approx(0.45)
    assert seconds_at(64, (64, 0.2), (64, 0.4)) == pytest.approx(0.3)


def test_the_estimate_times_the_epochs_shortest_and_longest_batch(world, tmp_path, monkeypatch):
    """distill times an epoch's batch with the fewest padded tokens and the one with the most (grouped
    or not) and reads the line through them at the epoch's mean."""
    import prunekit.distill as d

    seen = []
    monkeypatch.setattr(d, "seconds_at", lambda mean, short, long: seen.append((mean, short[0], long[0])) or 0.01)
    distill(_settings(world, tmp_path / "out", stage1_epochs=1, stage2_epochs=1, group_by_length=True), progress=False)
    assert len(seen) == 2  # stage 1 and stage 2
    for mean, fewest, most in seen:
        assert fewest <= mean <= most and fewest < most


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("budget")
    teacher = scrambled_teacher_dir(root / "teacher", "classification")
    return {"compact": make_compact_dir(root, teacher, kept_arch()), "data": labelled_csv(root / "data.csv")}


def _settings(world, out, **kw) -> DistillSettings:
    base = dict(student=str(world["compact"]), data=str(world["data"]), output_dir=str(out), batch_size=8, max_length=SEQ,
                augment_copies=0, dropout=0.0, checkpoint_every=3)
    return DistillSettings(**{**base, **kw})


def test_step_budget_run_keeps_its_plan_across_a_resume(world, tmp_path):
    """--budget 10steps with stage 1 at 0.3: 3 + 7 steps whatever the epochs say; killed after step 4, the
    resumed run goes on with the plan it wrote (plan.json), and the report records it."""
    s = _settings(world, tmp_path / "out", budget="10steps", stage1_share=0.3, stage1_epochs=50)
    with pytest.raises(KeyboardInterrupt):
        distill(s, progress=False, on_step=stop_after(4))
    plan = json.loads((tmp_path / "out.partial" / "plan.json").read_text())
    assert (plan["stage1_steps"], plan["stage2_steps"]) == (3, 7) and plan["seconds_per_step"]["1"] > 0
    r = distill(s, progress=False, resume=True)
    steps = [x for x in r.log if "loss" in x]
    assert r.steps == 10 and [x["stage"] for x in steps] == [1] * 3 + [2] * 7  # from the checkpoint at step 3 on
    report = json.loads((tmp_path / "out" / "distill_report.json").read_text())
    assert report["steps"] == {"stage1": 3, "stage2": 7} and report["plan"]["budget"] == "10steps"


def test_time_budget_from_the_cli_states_steps_and_time(world, tmp_path):
    """A time budget becomes steps measured on this machine; the CLI says how many and how long first."""
    args = ["distill", str(world["compact"]), "--data", str(world["data"]), "-o", str(tmp_path / "t"), "--batch-size", "8",
            "--max-length", str(SEQ), "--augment-copies", "0", "--budget", "10s", "--stage1-share", "0.5"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    line = next(x for x in r.output.splitlines() if x.startswith("distill: "))
    report = json.loads((tmp_path / "t" / "distill_report.json").read_text())
    total = report["steps"]["stage1"] + report["steps"]["stage2"]
    assert f"distill: {total} steps" in line and "for --budget 10s, about " in line and total >= 1
    plan = report["plan"]
    assert plan["stage1_steps"] * plan["seconds_per_step"]["1"] + plan["stage2_steps"] * plan["seconds_per_step"]["2"] <= 10
    assert_one_line_error(CliRunner().invoke(cli, [*args[:5], str(tmp_path / "u"), "--budget", "soon"]),
                          "--budget 'soon' is neither a time")


def test_budget_with_epochs_is_refused(world, tmp_path):
    """--budget replaces the epochs: both given is one line (the short recipe gives stage 1 no share, so an
    epoch count for it would be dropped silently)."""
    args = ["distill", str(world["compact"]), "--data", str(world["data"]), "-o", str(tmp_path / "t"), "--budget", "10s",
            "--stage1-epochs", "1"]
    assert_one_line_error(CliRunner().invoke(cli, args), "--budget replaces --stage1-epochs and --stage2-epochs")
    assert not (tmp_path / "t").exists()
