"""The pieces of the search: FLOPs loss bands, top-k update, target schedule, budget selection."""
import pytest
import torch

from prunekit.flops import ModelShape, model_flops
from prunekit.search import flops_loss, target_at, topk_mask
from prunekit.selection import select_to_budget, uniform_architecture


@pytest.mark.parametrize(
    "discrete, sign",
    [(0.50, +1), (0.316, +1), (0.314, 0), (0.30, 0), (0.286, 0), (0.284, -1), (0.10, -1)],
)
def test_flops_loss_bands(discrete, sign):
    # target 0.3, tolerance 0.05: band [0.285, 0.315]
    e = torch.tensor(0.4, requires_grad=True)
    loss = flops_loss(e, discrete, 0.3, 0.05)
    if sign == 0:
        assert float(loss) == 0.0
        return
    assert float(loss.detach()) == pytest.approx(sign * torch.log(torch.tensor(0.4)).item())
    loss.backward()
    # above the band the gradient lowers the expected cost, below it raises it
    assert (e.grad > 0) if sign > 0 else (e.grad < 0)


def test_topk_mask_selects_largest_magnitudes_across_tensors():
    a = torch.tensor([[0.1, -5.0], [0.2, 0.3]])
    b = torch.tensor([4.0, -0.05, 0.0, 3.0, 0.01, -0.02])
    ma, mb = topk_mask([a, b], 0.3)  # 10 entries -> 3 selected
    assert int(ma.sum() + mb.sum()) == 3
    assert ma[0, 1] and mb[0] and mb[3]
    ma, mb = topk_mask([a, b], 0.1)
    assert int(ma.sum() + mb.sum()) == 1 and ma[0, 1]


def test_topk_mask_fraction_of_many():
    g = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    (m,) = topk_mask([g], 0.1)
    assert int(m.sum()) == 100
    assert g.abs()[m].min() >= g.abs()[~m].max()


def test_target_schedule_is_linear_then_flat():
    assert target_at(0, 100, 0.3, 0.7) == pytest.approx(1.0)
    assert target_at(35, 100, 0.3, 0.7) == pytest.approx(0.65)
    assert target_at(70, 100, 0.3, 0.7) == pytest.approx(0.3)
    assert target_at(100, 100, 0.3, 0.7) == pytest.approx(0.3)
    vals = [target_at(s, 100, 0.3, 0.7) for s in range(0, 71)]
    diffs = torch.tensor(vals, dtype=torch.float64).diff()
    torch.testing.assert_close(diffs, torch.full_like(diffs, -0.01), rtol=0, atol=1e-9)
    assert target_at(0, 10, 0.5, 1.0) == 1.0 and target_at(10, 10, 0.5, 1.0) == pytest.approx(0.5)


@pytest.mark.parametrize("target", [0.9, 0.5, 0.3, 0.1])
def test_select_to_budget_hits_target_and_respects_priority(target):
    shape = ModelShape(num_layers=4, hidden_size=312, num_heads=12, head_dim=26, intermediate_size=1200)
    g = torch.Generator().manual_seed(1)
    hp, fp = torch.rand(4, 12, generator=g), torch.rand(4, 1200, generator=g)
    arch = select_to_budget(hp, fp, shape, 128, target)
    ratio = arch.flops_ratio(shape, 128)
    assert target * 0.99 <= ratio <= target
    # every kept FFN neuron has a priority at least that of every dropped one in the greedy prefix
    hm, fm, _ = arch.to_masks(shape)
    assert fp[fm.bool()].min() >= fp[~fm.bool()].max() - 1e-6 or hm.sum() < 48


def test_select_to_budget_full_target_keeps_everything():
    shape = ModelShape(num_layers=2, hidden_size=8, num_heads=2, head_dim=4, intermediate_size=16)
    arch = select_to_budget(torch.rand(2, 2), torch.rand(2, 16), shape, 16, 1.0)
    assert arch.head_counts == [2, 2] and arch.ffn_widths == [16, 16]
    assert model_flops(shape, 16).total == arch.flops(shape, 16).total


UNIFORM_SHAPES = {
    "bert-base": ModelShape(num_layers=12, hidden_size=768, num_heads=12, head_dim=64, intermediate_size=3072, num_labels=2),
    "tinybert4": ModelShape(num_layers=4, hidden_size=312, num_heads=12, head_dim=26, intermediate_size=1200),
    "minilm6": ModelShape(num_layers=6, hidden_size=384, num_heads=12, head_dim=32, intermediate_size=1536),
}


@pytest.mark.parametrize("name", list(UNIFORM_SHAPES))
@pytest.mark.parametrize("target", [0.9, 0.7, 0.5, 0.3, 0.1])
def test_uniform_baseline_same_widths_in_every_layer_at_the_target(name, target):
    """--method uniform: every layer keeps the same head count and FFN width, the FLOPs land in the
    band a search promises (within 5% of the target), and which heads and neurons depends on the seed."""
    shape = UNIFORM_SHAPES[name]
    arch = uniform_architecture(shape, 128, target, torch.Generator().manual_seed(0))
    assert len(set(arch.head_counts)) == 1 and len(set(arch.ffn_widths)) == 1
    assert 0.95 * target <= arch.flops_ratio(shape, 128) <= 1.0 * target + 1e-9
    share_heads = arch.head_counts[0] / shape.num_heads
    assert abs(share_heads - target) <= 0.5 / shape.num_heads + 0.1  # the heads' share follows the target's
    other = uniform_architecture(shape, 128, target, torch.Generator().manual_seed(1))
    assert other.head_counts == arch.head_counts and (other.heads != arch.heads or other.neurons != arch.neurons)


def test_group_by_length_is_the_gate_searchs():
    from prunekit.errors import PrunekitError
    from prunekit.search import SearchSettings

    SearchSettings(output_dir="o", group_by_length=True).validate()
    with pytest.raises(PrunekitError, match="--group-by-length .* --method search"):
        SearchSettings(output_dir="o", method="magnitude", group_by_length=True).validate()
