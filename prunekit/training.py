"""What the two training loops (search, distill) share: skipping steps whose loss or gradients are
not finite, fp16's loss scaling (:class:`LossScale`), the per-step outcome and log
(:class:`StepBook`), and the autocast of ``--mixed-precision``.

A NaN or inf loss (an overflow in mixed precision, a poisoned batch, a learning rate too high)
must not reach the weights: the step is skipped (no optimizer update), logged and counted, and
the run goes on. When it keeps happening the run stops with a clear message; the checkpoints
written before the streak began are left as they were, so nothing good is lost, and ``--resume``
continues from them with a lower learning rate, another ``--mixed-precision`` or a larger
``--max-nan-steps`` (settings a resumed run may change).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable

import torch

from .errors import PrunekitError, ResumableError
from .system import native_bf16

log = logging.getLogger(__name__)


def grads_finite(params: Iterable[torch.Tensor]) -> bool:
    """True when every gradient of ``params`` (those that have one) is finite; one device sync."""
    flags = [torch.isfinite(p.grad).all() for p in params if p.grad is not None]
    return bool(torch.stack(flags).all()) if flags else True


class LossScale:
    """Dynamic loss scaling for fp16 autocast (bf16 and fp32 train without it).

    Under fp16 autocast the backward runs in fp16, whose smallest number is 6e-8: a mean squared
    error over a batch's hidden states gives each activation a gradient below that, which flushes
    to zero, and the run trains on a fraction of its gradients without a word (a 64-wide linear
    layer on 4,096 rows: 80% of its weight gradients exactly 0). So the loss is multiplied by
    ``scale`` before backward and the gradients divided by it after. When the gradients overflow
    while the loss is finite, the scale is halved and the step skipped: that is loss scaling
    finding its range, logged but not counted as a NaN step. ``growth_interval`` applied steps in
    a row double it. That is torch.amp.GradScaler's policy, written out here because these loops
    reduce gradients across processes and take top-k updates, which GradScaler.step cannot see.
    The state is logged with every applied step (``loss_scale``, ``scale_good``), so a resumed run
    takes it from the run log.
    """

    def __init__(self, enabled: bool, init_scale: float = 2.0 ** 16, growth_interval: int = 2000):
        self.enabled = enabled
        self.scale = float(init_scale) if enabled else 1.0
        self.growth_interval = growth_interval
        self.good = 0  # applied steps since the scale last changed
        self.overflows = 0  # steps skipped for an overflow, before a resume too
        self.announce_overflow = True  # log overflows (off on ranks other than 0)

    @classmethod
    def from_history(cls, enabled: bool, history: list[dict], **kwargs) -> LossScale:
        """The scaler a resumed run continues with: the state of the last step the log records."""
        ls = cls(enabled, **kwargs)
        # the last step the log records (applied or overflowed): without a scale (a stretch in bf16
        # or fp32 since), scaling starts afresh
        last = next((h for h in reversed(history) if "loss" in h or "overflow" in h), None)
        if enabled and last is not None and "loss_scale" in last:
            ls.scale, ls.good = float(last["loss_scale"]), int(last.get("scale_good", 0))
        ls.overflows = sum(1 for h in history if "overflow" in h)
        return ls

    def backward(self, loss: torch.Tensor) -> None:
        (loss * self.scale if self.enabled else loss).backward()

    def unscale_(self, params: Iterable[torch.Tensor]) -> None:
        if self.enabled:
            for p in params:
                if p.grad is not None:
                    p.grad.div_(self.scale)

    def overflowed(self, loss_finite: bool, grads_ok: bool) -> bool:
        """After :meth:`unscale_`: True when the gradients overflowed at this scale with a finite
        loss (the scale is halved; skip the step, not as a NaN step). At a scale of 1 or below an
        overflow is the model's own and left to :class:`NonFiniteGuard`."""
        if not self.enabled or not loss_finite or grads_ok or self.scale <= 1.0:
            return False
        self.scale /= 2.0
        self.good = 0
        self.overflows += 1
        if self.scale <= 1.0 and self.announce_overflow:
            log.warning("the fp16 loss scale is down to %g: the gradients overflow even unscaled, and small ones "
                        "flush to zero again; --mixed-precision bf16 (or no) trains without either", self.scale)
        return True

    def applied(self) -> None:
        if self.enabled:
            self.good += 1
            if self.good >= self.growth_interval:
                self.scale *= 2.0
                self.good = 0

    def record(self) -> dict:
        """What an applied step's log record carries (nothing without fp16)."""
        return {"loss_scale": self.scale, "scale_good": self.good} if self.enabled else {}

    def overflow_record(self, step: int) -> dict:
        if self.announce_overflow:
            log.info("step %d skipped: fp16 gradients overflowed; loss scale now %g", step, self.scale)
        return {"step": step, "overflow": f"fp16 gradients overflowed; loss scale halved to {self.scale:g}",
                "loss_scale": self.scale, "scale_good": self.good}


class NonFiniteGuard:
    """Decides whether a step is applied, counts the skipped ones (``skipped``: the run's total, those
    before a resume included) and stops the run after ``max_streak`` skipped steps in a row."""

    def __init__(self, max_streak: int, hint: str, announce: bool = True, skipped: int = 0):
        self.max_streak = max_streak
        self.hint = hint  # what to change before resuming, e.g. "a lower --lr"
        self.announce = announce  # log a warning per skipped step (off on ranks other than 0)
        self.streak = 0
        self.skipped = skipped

    @staticmethod
    def reason(loss_finite: bool, params: Iterable[torch.Tensor] = (), grad_norm: torch.Tensor | None = None) -> str | None:
        """Why the step must be skipped (None: apply it). Call after backward, before the optimizer.
        ``grad_norm``: the gradients' total norm when the caller computed it anyway (clipping), which
        is non-finite exactly when a gradient is; else the gradients of ``params`` are checked."""
        if not loss_finite:
            return "non-finite loss"
        finite = bool(torch.isfinite(grad_norm)) if grad_norm is not None else grads_finite(params)
        return None if finite else "non-finite gradients"

    def applied(self) -> None:
        self.streak = 0

    def skip(self, step: int, why: str) -> dict:
        """Count a skipped step and return its log record (write it, then call :meth:`stop_if_persistent`)."""
        self.streak += 1
        self.skipped += 1
        if self.announce:
            log.warning("step %d skipped: %s (%d in a row)", step, why, self.streak)
        return {"step": step, "skipped": why}

    def stop_if_persistent(self, step: int) -> None:
        if self.streak >= self.max_streak:
            raise ResumableError(
                f"the loss or its gradients were NaN/inf for {self.streak} steps in a row (last at step {step}); "
                f"the checkpoints from before are kept: continue from them with --resume and {self.hint} "
                f"(or a larger --max-nan-steps)"
            )


def skipped_in(history: list[dict]) -> int:
    """How many steps a run log records as skipped."""
    return sum(1 for h in history if "skipped" in h)


# A run longer than this is a mistake in --epochs / --max-steps (10^9 steps: decades at BERT speed),
# not a plan: it is refused before anything is built for it.
MAX_TOTAL_STEPS = 10**9


def check_total_steps(total: int, what: str) -> None:
    if total > MAX_TOTAL_STEPS:
        raise PrunekitError(f"{what} come to {total:.3g} steps; a run may have at most {MAX_TOTAL_STEPS:.0e}: give fewer")


PRECISIONS = ("auto", "no", "bf16", "fp16")


def check_precision(mixed_precision: str) -> None:
    if mixed_precision not in PRECISIONS:
        raise PrunekitError(f"unknown --mixed-precision {mixed_precision!r}: use auto, no, bf16 or fp16")


def resolved_precision(device: torch.device, mixed_precision: str) -> str:
    """What ``--mixed-precision`` means on ``device``: auto is bf16 autocast on CUDA and none (fp32) on a
    CPU, whatever its instructions: the same numbers on every CPU (bf16 is asked for by name)."""
    check_precision(mixed_precision)
    if mixed_precision == "auto":
        return "bf16" if device.type == "cuda" else "no"
    return mixed_precision


def autocast(device: torch.device, mixed_precision: str):
    """The autocast context of ``--mixed-precision`` (:func:`resolved_precision`)."""
    mp = resolved_precision(device, mixed_precision)
    if mp == "no":
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type=device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[mp])


# measured (docs/results.md, "More seeds, two augmented copies, bf16 training and the temperature"); said where it would apply
BF16_CPU_GAIN = "steps ~1.5x faster at the same accuracy on a real task"


def precision_note(device: torch.device, mixed_precision: str) -> str:
    """What a run says it trains in; in fp32 on a CPU with bf16 matrix instructions, that bf16 would be
    faster there (opt-in, as in Hugging Face's Trainer: bf16 changes the numbers)."""
    mp = resolved_precision(device, mixed_precision)
    what = {"no": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}[mp]
    if mp == "no" and device.type == "cpu" and native_bf16():
        what += f" (this CPU has bf16 matrix instructions; --mixed-precision bf16: {BF16_CPU_GAIN})"
    return what



APPLIED, OVERFLOW, SKIPPED = "applied", "overflow", "skipped"


class StepBook:
    """The per-step bookkeeping both training loops share: after the backward pass (and the
    gradients' unscaling), :meth:`settle` decides whether the step is applied, skipped for an fp16
    overflow (the loss scale settling) or skipped for a NaN/inf loss or gradients (counted; the run
    stops after ``max_nan_steps`` in a row), and writes the skipped steps' records; an applied
    step's record goes through :meth:`applied`. Every record goes to ``history`` and the run log.
    The guard's and the loss scale's state come from the log of a resumed run, the same on every
    process (rank 0's)."""

    def __init__(self, history: list[dict], log_file, world, mixed_precision: str, max_nan_steps: int, hint: str):
        from .distributed import broadcast_object

        self.history, self.log_file = history, log_file
        self.guard = NonFiniteGuard(max_nan_steps, hint, announce=world.main,
                                    skipped=broadcast_object(skipped_in(history), world))
        # fp16 autocast needs loss scaling (its gradients flush to zero without it); the state from the log
        self.scaler = LossScale.from_history(mixed_precision == "fp16", history)
        s = self.scaler
        s.scale, s.good, s.overflows = broadcast_object((s.scale, s.good, s.overflows), world)
        s.announce_overflow = world.main

    def write(self, record: dict) -> None:
        self.history.append(record)
        self.log_file.write(json.dumps(record) + "\n")

    def settle(self, step: int, loss_finite: bool, why: str | None, extra: dict | None = None) -> str:
        """APPLIED (apply the update, then log it with :meth:`applied`), OVERFLOW or SKIPPED (nothing
        is applied; the record is written). ``why``: :meth:`NonFiniteGuard.reason`'s answer; ``extra``:
        fields every record of this step carries (distill's stage)."""
        extra = extra or {}
        if self.scaler.overflowed(loss_finite, why is None):  # nothing applied; a smaller scale next
            self.write({**self.scaler.overflow_record(step), **extra})
            return OVERFLOW
        if why is not None:  # nothing applied: weights and optimizer moments stay as they were
            self.write({**self.guard.skip(step, why), **extra})
            self.guard.stop_if_persistent(step)
            return SKIPPED
        self.guard.applied()
        self.scaler.applied()
        return APPLIED

    def applied(self, record: dict) -> dict:
        """Log an applied step (with the loss scale's state under fp16); returns the record."""
        record = {**record, **self.scaler.record()}
        self.write(record)
        return record
