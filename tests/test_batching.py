"""Batch order: seed-determined and resumable, every example once an epoch, and length grouping
(``--group-by-length``) that cuts the padding without changing the batches per epoch."""
from __future__ import annotations

import math
import random

import pytest

from prunekit.batching import GROUP_BATCHES, batch_order, mean_padded_tokens, padded_tokens

N, BATCH = 1000, 32
PER_EPOCH = math.ceil(N / BATCH)


def _lengths(n: int = N) -> list[int]:
    rng = random.Random(0)  # skewed like real text: many short, a long tail, truncated at 128
    return [min(128, int(rng.lognormvariate(3.5, 0.6)) + 2) for _ in range(n)]


@pytest.mark.parametrize("grouped", [False, True])
def test_every_example_once_an_epoch_and_the_same_batches_on_resume(grouped):
    lengths = _lengths() if grouped else None
    it = batch_order(N, BATCH, seed=3, lengths=lengths)
    first_two = [next(it).tolist() for _ in range(2 * PER_EPOCH)]
    for epoch in range(2):
        seen = sorted(i for b in first_two[epoch * PER_EPOCH:(epoch + 1) * PER_EPOCH] for i in b)
        assert seen == list(range(N))
    assert sorted(len(b) for b in first_two[:PER_EPOCH]) == sorted([BATCH] * (N // BATCH) + [N % BATCH])
    assert first_two[:PER_EPOCH] != first_two[PER_EPOCH:]  # a new order each epoch
    for step in (0, 5, PER_EPOCH - 1, PER_EPOCH + 3):  # a resumed run sees the same batch at the same step
        assert next(batch_order(N, BATCH, seed=3, start_step=step, lengths=lengths)).tolist() == first_two[step]
    assert next(batch_order(N, BATCH, seed=4, lengths=lengths)).tolist() != first_two[0]


def test_grouping_pads_far_less_and_keeps_the_batches_mixed():
    lengths = _lengths()
    plain = mean_padded_tokens(lengths, BATCH, seed=1, grouped=False)
    grouped = mean_padded_tokens(lengths, BATCH, seed=1, grouped=True)
    real = sum(lengths) / PER_EPOCH
    assert plain > 1.8 * real and grouped < 1.2 * real, (plain, grouped, real)
    it = batch_order(N, BATCH, seed=1, lengths=lengths)
    batches = [next(it).tolist() for _ in range(PER_EPOCH)]
    for b in batches[:5]:  # inside a batch the lengths are close: sorted within a group of GROUP_BATCHES batches
        assert max(lengths[i] for i in b) - min(lengths[i] for i in b) <= 0.5 * max(lengths[i] for i in b) + 4
    # the batches are not in length order over the epoch (shuffled), and each draws from all over the data
    widths = [max(lengths[i] for i in b) for b in batches]
    assert widths != sorted(widths) and widths != sorted(widths, reverse=True)
    assert max(max(b) - min(b) for b in batches[:-1]) > N // 2
    assert padded_tokens(lengths, batches[0]) == len(batches[0]) * max(lengths[i] for i in batches[0])
    assert GROUP_BATCHES > 1


def test_an_empty_or_tiny_dataset_still_batches():
    assert next(batch_order(3, BATCH, seed=0, lengths=[5, 9, 2])).tolist().__len__() == 3
    assert next(batch_order(0, BATCH, seed=0)).tolist() == []
