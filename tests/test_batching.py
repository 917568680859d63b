"""Batch order: seed-determined and resumable, every example once an epoch, and length grouping
(``--group-by-length``) that cuts the padding without changing the batches per epoch."""
from __future__ import annotations

import math
import random
import statistics

import pytest

from prunekit.batching import GROUP_BATCHES, batch_order, padded_tokens

N, BATCH = 1000, 32
PER_EPOCH = math.ceil(N / BATCH)


def _lengths(n: int = N) -> list[int]:
    rng = random.Random(0)  # skewed like real text: many short, a long tail, truncated at 128
    return [min(128, int(rng.lognormvariate(3.5, 0.6)) + 2) for _ in range(n)]


def _epochs(lengths, k: int, seed: int = 1) -> list[list[list[int]]]:
    it = batch_order(N, BATCH, seed=seed, lengths=lengths)
    return [[next(it).tolist() for _ in range(PER_EPOCH)] for _ in range(k)]


@pytest.mark.parametrize("grouped", [False, True])
def test_every_example_once_an_epoch_and_the_same_batches_on_resume(grouped):
    lengths = _lengths() if grouped else None
    epochs = _epochs(lengths, 2, seed=3)
    for epoch in epochs:
        assert sorted(i for b in epoch for i in b) == list(range(N))
        assert sorted(len(b) for b in epoch) == sorted([BATCH] * (N // BATCH) + [N % BATCH])
    # a new grouping each epoch: other examples share a batch, not only another order of the batches
    assert {frozenset(b) for b in epochs[0]} != {frozenset(b) for b in epochs[1]}
    flat = [b for epoch in epochs for b in epoch]
    for step in (0, 5, PER_EPOCH - 1, PER_EPOCH + 3):  # a resumed run sees the same batch at the same step
        assert next(batch_order(N, BATCH, seed=3, start_step=step, lengths=lengths)).tolist() == flat[step]
    assert next(batch_order(N, BATCH, seed=4, lengths=lengths)).tolist() != flat[0]


def test_grouping_pads_far_less_and_keeps_the_batches_mixed():
    lengths = _lengths()
    [plain], [grouped] = _epochs(None, 1), _epochs(lengths, 1)
    real = sum(lengths) / PER_EPOCH
    mean_plain = statistics.mean(padded_tokens(lengths, b) for b in plain)
    mean_grouped = statistics.mean(padded_tokens(lengths, b) for b in grouped)
    assert mean_plain > 1.8 * real and mean_grouped < 1.2 * real, (mean_plain, mean_grouped, real)
    # each batch draws from a whole shuffled group, not from neighbouring examples of the file
    assert statistics.median(max(b) - min(b) for b in grouped[:-1]) > 0.8 * N
    # the batches are shuffled across the epoch: no run of GROUP_BATCHES in falling width (a group's sorted order)
    widths = [max(lengths[i] for i in b) for b in grouped]
    runs = [widths[k:k + GROUP_BATCHES] for k in range(len(widths) - GROUP_BATCHES + 1)]
    assert not any(all(a >= b for a, b in zip(r, r[1:])) for r in runs)
    # the widest batch first: an out-of-memory error shows at the first step
    assert padded_tokens(lengths, grouped[0]) == max(padded_tokens(lengths, b) for b in grouped)
    assert padded_tokens(lengths, [0, 1]) == 2 * max(lengths[0], lengths[1])


def test_an_empty_or_tiny_dataset_still_batches():
    for lengths in (None, [5, 9, 2]):
        assert len(next(batch_order(3, BATCH, seed=0, lengths=lengths))) == 3
    for lengths in (None, []):
        assert next(batch_order(0, BATCH, seed=0, lengths=lengths)).tolist() == []
