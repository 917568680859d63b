"""Stage 2's loss (prunekit.distill.prediction_loss) against formulas written out here: the gold labels
mixed in on the original examples only, and the soft term's scale under a temperature (times T^2)."""
import pytest
import torch
import torch.nn.functional as F

from prunekit.distill import DistillSettings, prediction_loss


def _settings(**kw) -> DistillSettings:
    return DistillSettings(student="x", **kw)


def _logits(seed: int, n: int = 6, k: int = 4) -> torch.Tensor:
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * 3


def _soft_ce(s: torch.Tensor, t: torch.Tensor, temp: float) -> torch.Tensor:
    return -(F.softmax(t / temp, -1) * F.log_softmax(s / temp, -1)).sum(-1).mean()


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_gold_labels_mixed_in_on_the_original_examples_only(alpha):
    s, t = _logits(0), _logits(1)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    orig = torch.tensor([True, True, False, True, False, True])  # augmented copies have no gold label of their own
    loss, parts = prediction_loss("classification", s, t, _settings(alpha_gold=alpha), labels, orig)
    gold = F.cross_entropy(s[orig], labels[orig])  # a mean over the 4 originals, not the 6 examples
    expected = (1 - alpha) * _soft_ce(s, t, 1.0) + alpha * gold if alpha else _soft_ce(s, t, 1.0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert ("gold" in parts) == (alpha > 0)
    if alpha:
        assert parts["gold"].item() == pytest.approx(gold.item(), rel=1e-6)


def test_no_original_in_the_batch_leaves_the_soft_term_alone():
    s, t = _logits(2), _logits(3)
    labels, none = torch.zeros(6, dtype=torch.long), torch.zeros(6, dtype=torch.bool)
    loss, parts = prediction_loss("classification", s, t, _settings(alpha_gold=0.5), labels, none)
    assert parts["gold"].item() == 0.0
    assert loss.item() == pytest.approx(0.5 * _soft_ce(s, t, 1.0).item(), rel=1e-6)


@pytest.mark.parametrize("temp", [1.0, 2.0, 4.0])
def test_soft_term_is_scaled_by_the_temperature_squared(temp):
    s, t = _logits(4).requires_grad_(), _logits(5)
    loss, parts = prediction_loss("classification", s, t, _settings(temperature=temp))
    assert loss.item() == pytest.approx(temp ** 2 * _soft_ce(s, t, temp).item(), rel=1e-6)
    loss.backward()
    # d/ds of T^2 * CE(softmax(t/T), softmax(s/T)), per example mean: T * (softmax(s/T) - softmax(t/T)) / n
    expected = temp * (F.softmax(s.detach() / temp, -1) - F.softmax(t / temp, -1)) / len(s)
    torch.testing.assert_close(s.grad, expected, rtol=1e-5, atol=1e-7)
    # KL = soft CE - the teacher's entropy, both on the same T^2 scale
    kl = temp ** 2 * (_soft_ce(s.detach(), t, temp) - _soft_ce(t, t, temp))
    assert parts["kl"].item() == pytest.approx(kl.item(), rel=1e-5)


def test_temperature_scales_the_soft_term_only_not_the_gold_one():
    s, t = _logits(8), _logits(9)
    labels = torch.tensor([3, 2, 1, 0, 1, 2])
    loss, _ = prediction_loss("classification", s, t, _settings(temperature=2.0, alpha_gold=0.5), labels)
    expected = 0.5 * 4.0 * _soft_ce(s, t, 2.0) + 0.5 * F.cross_entropy(s, labels)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_high_temperature_keeps_the_gradient_of_logit_matching():
    """At a high T the scaled soft term's gradient tends to (s - t, each centred) / (K n) (Hinton et al.'s
    limit): its size does not vanish as 1/T^2, so --temperature does not silently hand the gold labels
    the weight --alpha-gold gave the teacher."""
    s, t = (_logits(6) * 0.3).requires_grad_(), _logits(7) * 0.3
    loss, _ = prediction_loss("classification", s, t, _settings(temperature=20.0))
    loss.backward()
    k, n = s.shape[1], s.shape[0]
    centred = (s.detach() - s.detach().mean(-1, keepdim=True)) - (t - t.mean(-1, keepdim=True))
    torch.testing.assert_close(s.grad, centred / (k * n), rtol=0.05, atol=1e-4)


def test_regression_and_embeddings_are_mse_and_embeddings_take_no_gold():
    s, t = torch.randn(5, 1), torch.randn(5, 1)
    labels = torch.randn(5)
    loss, parts = prediction_loss("regression", s, t, _settings(alpha_gold=0.25), labels)
    soft = F.mse_loss(s, t)
    assert loss.item() == pytest.approx((0.75 * soft + 0.25 * F.mse_loss(s.squeeze(-1), labels)).item(), rel=1e-6)
    e_s, e_t = torch.randn(5, 8), torch.randn(5, 8)
    loss, parts = prediction_loss("embedding", e_s, e_t, _settings(alpha_gold=0.5), labels)
    assert loss.item() == pytest.approx(F.mse_loss(e_s, e_t).item(), rel=1e-6) and "gold" not in parts


def test_layer_losses_count_real_tokens_exactly_under_bf16():
    """Stage 1's means divide by the real tokens: counted in fp32 even when the states are bf16 (a bf16
    count of 1337 tokens is 1336)."""
    from prunekit.distill import attention_loss, masked_mse

    g = torch.Generator().manual_seed(0)
    mask = torch.ones(11, 128)
    mask[0, 57:] = 0  # 11 * 128 - 71 = 1337 real tokens
    a, b = torch.randn(11, 128, 8, generator=g).bfloat16(), torch.randn(11, 128, 8, generator=g).bfloat16()
    m = mask.unsqueeze(-1)
    expected = ((a.float() - b.float()).pow(2) * m).sum() / (1337 * 8)
    assert masked_mse(a, b, mask).item() == pytest.approx(expected.item(), rel=1e-6)
    s, t = torch.rand(11, 2, 128, 128, generator=g).bfloat16(), torch.rand(11, 3, 128, 128, generator=g).bfloat16()
    m2 = mask[:, None, :, None] * mask[:, None, None, :]
    expected = ((s.float() - t[:, [0, 2]].float()).pow(2) * m2).sum() / (1337 * 2)
    assert attention_loss(s, t, [0, 2], mask).item() == pytest.approx(expected.item(), rel=1e-6)
