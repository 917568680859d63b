"""What the two training loops (search, distill) share: skipping steps whose loss or gradients are not finite.

A NaN or inf loss (an overflow in mixed precision, a poisoned batch, a learning rate too high)
must not reach the weights: the step is skipped (no optimizer update), logged and counted, and
the run goes on. When it keeps happening the run stops with a clear message; the checkpoints
written before the streak began are left as they were, so nothing good is lost.
"""
from __future__ import annotations

import logging
from typing import Iterable

import torch

from .errors import PrunekitError

log = logging.getLogger(__name__)


def grads_finite(params: Iterable[torch.Tensor]) -> bool:
    """True when every gradient of ``params`` (those that have one) is finite; one device sync."""
    flags = [torch.isfinite(p.grad).all() for p in params if p.grad is not None]
    return bool(torch.stack(flags).all()) if flags else True


class NonFiniteGuard:
    """Decides whether a step is applied, and stops the run after ``max_streak`` skipped steps in a row."""

    def __init__(self, max_streak: int, hint: str, announce: bool = True):
        self.max_streak = max_streak
        self.hint = hint
        self.announce = announce  # log a warning per skipped step (off on ranks other than 0)
        self.streak = 0
        self.skipped = 0

    @staticmethod
    def reason(loss_finite: bool, params: Iterable[torch.Tensor]) -> str | None:
        """Why the step must be skipped (None: apply it). Call after backward, before the optimizer."""
        if not loss_finite:
            return "non-finite loss"
        if not grads_finite(params):
            return "non-finite gradients"
        return None

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
            raise PrunekitError(
                f"the loss or its gradients were NaN/inf for {self.streak} steps in a row (last at step {step}); "
                f"the checkpoints from before are kept: {self.hint}"
            )
