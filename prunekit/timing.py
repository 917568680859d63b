"""Timings that hold on a shared machine: paired ratios of interleaved repeats.

A machine shared with other work (a cloud VM's neighbours, a laptop's other programs) changes speed
by 10-30% over minutes, and a median over each model's own repeats keeps that drift: two models timed
a minute apart compare the machine's two states as much as the models. Timed interleaved (every model
once per round), each round compares the models under one state of the machine; the median over the
rounds of ``t_model / t_reference`` takes the drift out.
"""
from __future__ import annotations

import statistics
from collections.abc import Sequence


def paired_ratio(times: Sequence[float], reference: Sequence[float]) -> float:
    """The median over rounds of ``times[r] / reference[r]`` (both timed in the same interleaved rounds)."""
    if len(times) != len(reference) or not times:
        raise ValueError(f"paired timings need the same rounds: {len(times)} vs {len(reference)}")
    return statistics.median(t / r for t, r in zip(times, reference))


def drift_corrected(times: Sequence[Sequence[float]], ref: int) -> list[float]:
    """Each runner's seconds as ``paired_ratio`` to runner ``ref`` times ``ref``'s median: the medians the
    runners would have under one state of the machine (``ref``'s own is its plain median)."""
    base = statistics.median(times[ref])
    return [paired_ratio(t, times[ref]) * base for t in times]
