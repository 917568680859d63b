"""What the two training loops (search, distill) share: skipping steps whose loss or gradients are not finite.

A NaN or inf loss (an overflow in mixed precision, a poisoned batch, a learning rate too high)
must not reach the weights: the step is skipped (no optimizer update), logged and counted, and
the run goes on. When it keeps happening the run stops with a clear message; the checkpoints
written before the streak began are left as they were, so nothing good is lost, and ``--resume``
continues from them with a lower learning rate, another ``--mixed-precision`` or a larger
``--max-nan-steps`` (settings a resumed run may change).
"""
from __future__ import annotations

import logging
from typing import Iterable

import torch

from .errors import PrunekitError, ResumableError

log = logging.getLogger(__name__)


def grads_finite(params: Iterable[torch.Tensor]) -> bool:
    """True when every gradient of ``params`` (those that have one) is finite; one device sync."""
    flags = [torch.isfinite(p.grad).all() for p in params if p.grad is not None]
    return bool(torch.stack(flags).all()) if flags else True


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
