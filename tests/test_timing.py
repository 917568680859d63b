"""Paired timings (prunekit.timing): a drift of the machine's speed over the rounds cancels."""
import pytest

from prunekit.timing import drift_corrected, paired_ratio


def test_a_drift_over_the_rounds_cancels():
    # the machine slows down 40% over the rounds, alike for both models
    drift = [1.0, 1.1, 1.2, 1.3, 1.4]
    a = [2.0 * d for d in drift]
    b = [1.0 * d for d in drift]
    assert paired_ratio(b, a) == pytest.approx(0.5)
    # plain medians compare the machine's states when one model's repeats meet a slow spell
    c = [1.0, 1.0, 5.0, 5.0, 5.0]  # the reference sees the spell (rounds 2-4)
    d = [0.5, 0.5, 2.5, 2.5, 2.5]  # and so does the model: half the reference in every round
    assert paired_ratio(d, c) == pytest.approx(0.5)
    assert drift_corrected([c, d], ref=0) == pytest.approx([5.0, 2.5])


def test_drift_corrected_keeps_the_reference_median_and_the_ratios():
    ref = [3.0, 1.0, 2.0]
    other = [6.0, 2.5, 4.0]  # ratios 2.0, 2.5, 2.0: median 2.0
    assert drift_corrected([ref, other], ref=0) == pytest.approx([2.0, 4.0])


def test_rounds_must_match():
    with pytest.raises(ValueError, match="same rounds"):
        paired_ratio([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="same rounds"):
        paired_ratio([], [])
