"""A distillation budget in time or steps, and how it is split between the two stages.

``--budget`` takes a time (``45m``, ``2h``, ``1h30m``, ``900s``) or a number of steps (``3000steps``).
A step budget is split by ``stage1_share``; a time budget is turned into steps with each stage's
seconds per step, measured on this machine before the run (a few forward and backward passes on the
shortest and the longest batch of an epoch, read at the epoch's mean padded length), less
the time the dev evaluations will take. The plan is written into the run's work dir once, so a
``--resume`` continues the same plan instead of measuring again.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

from .errors import PrunekitError

_UNITS = {"h": 3600.0, "m": 60.0, "min": 60.0, "s": 1.0}
_TIME = re.compile(r"(\d+(?:\.\d+)?)(h|min|m|s)")


@dataclass(frozen=True)
class Budget:
    seconds: float | None = None
    steps: int | None = None

    def __str__(self) -> str:
        return f"{self.steps} steps" if self.steps is not None else format_duration(self.seconds)


def parse_budget(text: str) -> Budget:
    """``"45m"``, ``"1h30m"``, ``"900s"`` -> a time; ``"3000steps"`` -> steps. One line for anything else."""
    t = str(text).strip().lower().replace(" ", "")
    m = re.fullmatch(r"(\d+)steps?", t)
    if m:
        if int(m.group(1)) < 1:
            raise PrunekitError(f"--budget {text!r}: give at least 1 step")
        return Budget(steps=int(m.group(1)))
    parts = _TIME.findall(t)
    if not parts or "".join(a + u for a, u in parts) != t:
        raise PrunekitError(f"--budget {text!r} is neither a time (45m, 2h, 1h30m, 900s) nor a step count (3000steps)")
    seconds = sum(float(a) * _UNITS[u] for a, u in parts)
    if not seconds > 0:
        raise PrunekitError(f"--budget {text!r}: give a time above 0")
    return Budget(seconds=seconds)


def format_duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    h, rest = divmod(s, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


@dataclass
class Plan:
    """Each stage's steps, and what the time estimate was made of (seconds per step, per dev evaluation)."""

    stage1_steps: int
    stage2_steps: int
    seconds_per_step: dict  # {"1": s, "2": s}, measured on this machine
    seconds_per_eval: float
    budget: str | None = None
    flat_start: float | None = None  # the student's output spread when stage 1 was given to it for starting flat

    def estimate(self, per_epoch2: int) -> float:
        """The run's expected seconds: its steps and its dev evaluations."""
        return (self.stage1_steps * self.seconds_per_step["1"] + self.stage2_steps * self.seconds_per_step["2"]
                + evaluations(self.stage1_steps, self.stage2_steps, per_epoch2) * self.seconds_per_eval)

    def to_dict(self) -> dict:
        return asdict(self)


def seconds_at(tokens: float, short: tuple[float, float], long: tuple[float, float]) -> float:
    """A step's seconds for a batch of ``tokens`` padded tokens, from two timed batches given as
    (padded tokens, seconds): the line through them (a fixed cost per step plus a cost per token),
    kept between the two times. When the longer batch did not time slower (noise, or a step whose
    fixed costs dominate), the mean of the two."""
    (p1, t1), (p2, t2) = sorted((short, long))
    if p2 <= p1 or t2 <= t1:
        return (t1 + t2) / 2
    t = t1 + (t2 - t1) * (tokens - p1) / (p2 - p1)
    return min(max(t, t1), t2)


def evaluations(s1: int, s2: int, per_epoch2: int) -> int:
    """How many times the dev data is scored: the end of stage 1 and every epoch of stage 2 (the end)."""
    return (1 if s1 else 0) + (math.ceil(s2 / per_epoch2) if s2 else 0)


def split(budget: Budget, stage1_share: float, seconds_per_step: dict, seconds_per_eval: float, per_epoch2: int) -> tuple[int, int]:
    """(stage 1 steps, stage 2 steps) for ``budget``: ``stage1_share`` of it to stage 1 (of the steps, or
    of the time), the rest to stage 2; a time budget pays for the dev evaluations first."""
    if budget.steps is not None:
        s1 = int(round(stage1_share * budget.steps))
        return s1, budget.steps - s1
    t1, t2 = float(seconds_per_step["1"]), float(seconds_per_step["2"])

    def steps(share: float, seconds: float, per_step: float) -> int:  # a stage with no share is not timed
        return int(share * seconds / per_step) if share > 0 else 0

    s1, s2 = steps(stage1_share, budget.seconds, t1), steps(1.0 - stage1_share, budget.seconds, t2)
    for _ in range(2):  # the evaluations' time comes out of both stages in proportion
        spare = budget.seconds - evaluations(s1, s2, per_epoch2) * seconds_per_eval
        if spare <= 0:
            raise PrunekitError(f"--budget {budget} does not cover even the dev evaluations ({format_duration(seconds_per_eval)} "
                                f"each on this machine): give more time, or a smaller --dev-data / --dev-max-examples")
        s1, s2 = steps(stage1_share, spare, t1), steps(1.0 - stage1_share, spare, t2)
    if s1 + s2 < 1:
        shortest = min(t for t, share in ((t1, stage1_share), (t2, 1.0 - stage1_share)) if share > 0)
        raise PrunekitError(f"--budget {budget} is shorter than one step on this machine ({format_duration(shortest)}): give more time")
    return s1, s2
