"""Timing helpers of the benchmark scripts (a module they import, not a script: it writes nothing).

- :func:`median_ms`: the GPU timing helper of ``gpu_e2e.py``, ``gpu_kernels.py`` and
  ``gpu_probe.py`` (``triton.testing.do_bench``, median; on the CPU a single wall-clock call, which
  only smoke-tests a script: those figures mean nothing).
- :class:`Contention` and :func:`wait_quiet`: timing on a shared CPU machine (``cpu_best.py``,
  ``precision_accuracy.py``): wait for a quiet machine, then record how much of the CPU other
  processes took during the run.

The scripts run as ``python benchmarks/<script>.py`` have ``benchmarks/`` on ``sys.path``, so
``from timing import median_ms`` needs no path patching. Imports nothing from prunekit.
"""
from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable

import torch


def median_ms(fn: Callable[[], object], *, warmup: int = 25, rep: int = 100, on_gpu: bool | None = None) -> float:
    """Median milliseconds of ``fn()`` under ``torch.inference_mode``: one call first (compilation,
    warm-up) outside the timed region, then ``triton.testing.do_bench(fn, warmup, rep)`` on CUDA
    (``warmup`` and ``rep`` in ms, as do_bench takes them). Without CUDA (or ``on_gpu=False``) one
    timed wall-clock call. ``on_gpu`` defaults to ``torch.cuda.is_available()``."""
    if on_gpu is None:
        on_gpu = torch.cuda.is_available()
    with torch.inference_mode():
        fn()
        if not on_gpu:
            t = time.perf_counter()
            fn()
            return (time.perf_counter() - t) * 1e3
        import triton.testing

        torch.cuda.synchronize()
        return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


class Contention:
    """CPU time other processes took while this one ran: (busy - ours) / (wall x cores)."""

    def __init__(self):
        self.start = self._now()

    @staticmethod
    def _now():
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
        r = resource.getrusage(resource.RUSAGE_SELF)
        return busy / os.sysconf("SC_CLK_TCK"), r.ru_utime + r.ru_stime, time.time()

    def foreign(self) -> float:
        b0, o0, t0 = self.start
        b1, o1, t1 = self._now()
        return max(0.0, ((b1 - b0) - (o1 - o0)) / ((t1 - t0) * (os.cpu_count() or 1)))


def wait_quiet(max_load: float, wait: float) -> float:
    """Wait up to ``wait`` s for the 1-minute load average to drop to ``max_load``; return it."""
    t0 = time.time()
    while os.getloadavg()[0] > max_load and time.time() - t0 < wait:
        time.sleep(10)
    return os.getloadavg()[0]
