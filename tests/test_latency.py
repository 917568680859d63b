"""The latency cost model (issue 19): fitting, the table and its key, and a search that targets it."""
import json
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from factory import stop_after
from prunekit import latency as lat
from prunekit.architecture import Architecture
from prunekit.bench import BenchSettings, bench, format_table
from prunekit.cli import cli
from prunekit.errors import PrunekitError
from prunekit.flops import ModelShape
from prunekit.models import load_teacher
from prunekit.search import SearchSettings, search
from prunekit.selection import select_to_latency, trim_to_latency

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = ModelShape(num_layers=6, hidden_size=32, num_heads=4, head_dim=8, intermediate_size=64, num_labels=0)  # minilm6
GRID = [0, 16, 32, 48, 64]
A = [0.0, 1.0, 1.2, 1.9, 2.0]  # a head's cost is not linear: the first one costs the most


def F(w):  # the FFN's cost, as the module names it
    return 0.5 * (w > 0) + 0.02 * w


HIDDEN = [4, 8, 16, 24]  # lat.default_hidden_grid(32)


def base_at(d, rest=2.0, fixed=0.3, shape=SHAPE):  # the no-heads model's time at hidden width d: linear in d
    return (rest + shape.num_layers * fixed) * (0.25 + 0.75 * d / shape.hidden_size)


def scale_at(d, shape=SHAPE):  # the head and FFN work at hidden width d over the full width's
    return 0.1 + 0.9 * d / shape.hidden_size


def synthetic(shape=SHAPE, rest=2.0, fixed=0.3, heads=A, f=F, grid=GRID, noise=None, overhead=None, hidden=HIDDEN):
    """The timings an additive model predicts for the uniform models profile() times; ``overhead``:
    the full compact model's time over the original's (the original timed too); ``hidden``: the
    narrower hidden widths timed (base_at and scale_at; None: a table made before they were)."""
    def t(h, w, layers=shape.num_layers):
        return rest + layers * (fixed + heads[h] + f(w))

    m = {"num_layers": shape.num_layers, "head_times": [t(h, shape.intermediate_size) for h in range(shape.num_heads + 1)],
         "width_grid": list(grid), "width_times": [t(shape.num_heads, w) for w in grid], "zero": t(0, 0), "zero_one_layer": t(0, 0, 1)}
    if noise is not None:
        m["head_times"] = [v + n for v, n in zip(m["head_times"], noise)]
    if overhead is not None:
        m["original"] = m["head_times"][-1] / overhead
    if hidden is not None:
        work = t(shape.num_heads, shape.intermediate_size) - t(0, 0)
        m.update(hidden_grid=list(hidden), hidden_zero_times=[base_at(d, rest, fixed, shape) for d in hidden],
                 hidden_full_times=[base_at(d, rest, fixed, shape) + scale_at(d, shape) * work for d in hidden])
    return m


def write_table(path, shape, key, **kw):
    model = lat.fit(synthetic(shape, **kw), shape)
    model.key = key
    model.save_table(path)
    return model


def test_fit_reproduces_additive_timings_on_the_grid():
    m = synthetic()
    model = lat.fit(m, SHAPE)
    L, H, W = SHAPE.num_layers, SHAPE.num_heads, SHAPE.intermediate_size
    for h, t in enumerate(m["head_times"]):
        assert model.latency([h] * L, [W] * L) == pytest.approx(t, rel=1e-12)
    for w, t in zip(GRID, m["width_times"]):
        assert model.latency([H] * L, [w] * L) == pytest.approx(t, rel=1e-12)
    assert model.latency([0] * L, [0] * L) == pytest.approx(m["zero"])
    assert model.rest == pytest.approx(2.0) and model.fixed == pytest.approx(0.3)
    assert model.head_knots == pytest.approx(A) and model.ffn_knots == pytest.approx([F(w) for w in GRID])
    assert model.measurements["additivity_error"] == pytest.approx(0.0, abs=1e-12)
    assert model.floor() == pytest.approx((2.0 + 6 * 0.3) / m["head_times"][-1])
    assert model.ratio([H] * L, [W] * L) == pytest.approx(1.0)


def test_fit_of_the_hidden_width_is_exact_on_its_grid_and_differentiable():
    m = synthetic()
    model = lat.fit(m, SHAPE)
    L, H, W, D = SHAPE.num_layers, SHAPE.num_heads, SHAPE.intermediate_size, SHAPE.hidden_size
    assert model.has_hidden and model.hidden_widths == HIDDEN + [D] and lat.default_hidden_grid(D) == HIDDEN
    for d, full, zero in zip(HIDDEN, m["hidden_full_times"], m["hidden_zero_times"]):
        assert model.latency([H] * L, [W] * L, d) == pytest.approx(full, rel=1e-9)
        assert model.latency([0] * L, [0] * L, d) == pytest.approx(zero, rel=1e-9)
    # the full width is the model without the hidden terms, exactly
    assert model.latency([2] * L, [16] * L, D) == model.latency([2] * L, [16] * L)
    assert model.floor(hidden=True) == pytest.approx(base_at(4) / m["head_times"][-1])
    assert model.floor(hidden=True) < model.floor()
    assert all(np.diff(model.hidden_base) >= 0) and all(np.diff(model.hidden_scale) >= 0) and model.hidden_scale[-1] == 1.0
    g = torch.Generator().manual_seed(0)
    hard_h, hard_f = (torch.rand(6, 4, generator=g) < 0.5).float(), (torch.rand(6, 64, generator=g) < 0.4).float()
    hard_d = (torch.rand(D, generator=g) < 0.6).float()
    arch = Architecture.from_masks(hard_h, hard_f, None, hard_d)
    assert arch.hidden_size < D
    assert float(model.expected_ratio(hard_h, hard_f, hard_d)) == pytest.approx(
        model.ratio(arch.head_counts, arch.ffn_widths, arch.hidden_size), rel=1e-6)
    hidden = torch.full((D,), 0.6, requires_grad=True)
    model.expected_ratio(torch.full((6, 4), 0.7), torch.full((6, 64), 0.3), hidden).backward()
    assert (hidden.grad > 0).all() and model.hidden_share() > 0
    # a table made before the hidden terms were measured: a --prune-hidden use is refused in one line
    old = lat.fit(synthetic(hidden=None), SHAPE)
    assert not old.has_hidden and old.ratio([H] * L, [W] * L) == pytest.approx(1.0)
    with pytest.raises(PrunekitError, match="no hidden-width measurements.*--reprofile"):
        old.ratio([H] * L, [W] * L, 16)


def test_trim_to_latency_keeps_the_hidden_dimensions_and_counts_them():
    model = lat.fit(synthetic(), SHAPE)
    g = torch.Generator().manual_seed(3)
    hp, fp = torch.randn(6, 4, generator=g), torch.randn(6, 64, generator=g)
    hidden = (torch.arange(32) % 2 == 0).float()  # 16 of 32 kept
    narrow = trim_to_latency(hp, fp, model, 0.5, None, hidden)
    wide = trim_to_latency(hp, fp, model, 0.5)
    assert narrow.hidden == list(range(0, 32, 2)) and wide.hidden is None
    assert model.ratio(narrow.head_counts, narrow.ffn_widths, 16) <= 0.5 and model.ratio(wide.head_counts, wide.ffn_widths) <= 0.5
    # a narrower stream makes each head and neuron cheaper: more of them fit the same target
    assert sum(narrow.head_counts) + sum(narrow.ffn_widths) / 16 > sum(wide.head_counts) + sum(wide.ffn_widths) / 16


def test_fit_of_noisy_timings_is_monotone():
    m = synthetic(noise=[0.0, 3.0, -2.5, 0.4, -0.1])  # a slow 1-head model, a fast 2-head one: not monotone
    m["width_times"][2] -= 5.0
    model = lat.fit(m, SHAPE)
    for knots in (model.head_knots, model.ffn_knots):
        assert knots[0] == 0.0 and all(np.diff(knots) >= 0)
    assert all(c >= 0 for c in model.head_marginals() + model.ffn_marginals())


def test_expected_ratio_is_differentiable_and_exact_at_hard_gates():
    model = lat.fit(synthetic(), SHAPE)
    g = torch.Generator().manual_seed(0)
    hard_h = (torch.rand(6, 4, generator=g) < 0.5).float()
    hard_f = (torch.rand(6, 64, generator=g) < 0.4).float()
    arch = Architecture.from_masks(hard_h, hard_f)
    assert float(model.expected_ratio(hard_h, hard_f)) == pytest.approx(model.ratio(arch.head_counts, arch.ffn_widths), rel=1e-6)
    head = torch.full((6, 4), 0.7, requires_grad=True)
    ffn = torch.full((6, 64), 0.3, requires_grad=True)
    r = model.expected_ratio(head, ffn)
    r.backward()
    assert 0 < r.item() < 1 and torch.isfinite(head.grad).all() and (head.grad > 0).all() and (ffn.grad > 0).all()


def test_select_to_latency_fills_the_budget():
    model = lat.fit(synthetic(), SHAPE)
    g = torch.Generator().manual_seed(1)
    for target in (0.9, 0.6, 0.5):
        arch = select_to_latency(torch.rand(6, 4, generator=g), torch.rand(6, 64, generator=g), model, target)
        ratio = model.ratio(arch.head_counts, arch.ffn_widths)
        assert target - 0.02 <= ratio <= target + 1e-12


def test_ratios_are_over_the_original_timed_beside_the_compact_models():
    """A full-size compact model 1.25x the original's time: every ratio (and the floor, the gates'
    expected ratio, the selection's budget) is over the original, so the full compact one is 1.25."""
    plain, model = lat.fit(synthetic(), SHAPE), lat.fit(synthetic(overhead=1.25), SHAPE)
    L, H, W = SHAPE.num_layers, SHAPE.num_heads, SHAPE.intermediate_size
    assert plain.overhead == 1.0 and model.overhead == pytest.approx(1.25)
    assert model.ratio([H] * L, [W] * L) == pytest.approx(1.25) and model.floor() == pytest.approx(1.25 * plain.floor())
    ones_h, ones_f = torch.ones(L, H), torch.ones(L, W)
    assert float(model.expected_ratio(ones_h, ones_f)) == pytest.approx(1.25, rel=1e-6)
    g = torch.Generator().manual_seed(3)
    for target in (0.9, 0.6):
        arch = select_to_latency(torch.rand(L, H, generator=g), torch.rand(L, W, generator=g), model, target)
        assert target - 0.02 <= model.ratio(arch.head_counts, arch.ffn_widths) <= target + 1e-12
    saved = lat.LatencyModel(SHAPE, 0, 0, [0.0] * (H + 1), [0, W], [0.0, 1.0]).to_dict()
    assert saved["overhead"] == 1.0


def test_trim_keeps_the_gates_choice_and_changes_the_least():
    """From the gates' own choice (alpha > 0): over the target, the lowest-alpha groups go until it
    fits, then the highest-alpha dropped ones come back while they fit; what the gates kept and the
    target allows stays kept, and a layer keeps its attention where the gates gave it some."""
    model = lat.fit(synthetic(), SHAPE)
    g = torch.Generator().manual_seed(5)
    head, ffn = torch.randn(6, 4, generator=g), torch.randn(6, 64, generator=g)
    start = model.ratio((head > 0).sum(1).tolist(), (ffn > 0).sum(1).tolist())
    for target in (start * 0.8, start * 1.15):
        arch = trim_to_latency(head, ffn, model, target)
        ratio = model.ratio(arch.head_counts, arch.ffn_widths)
        assert target - 0.02 <= ratio <= target + 1e-12
        kept_h = torch.zeros(6, 4)
        for layer, heads in enumerate(arch.heads):
            kept_h[layer, heads] = 1.0
        if target < start:  # only removals, lowest alpha first: every kept head had alpha > 0 and beat every dropped one of its layer
            assert bool(((kept_h > 0) <= (head > 0)).all())
            for layer in range(6):
                if 0 < arch.head_counts[layer] < 4:
                    assert head[layer][kept_h[layer] > 0].min() > head[layer][kept_h[layer] == 0].max()
        else:  # only additions: everything the gates kept stays
            assert bool(((head > 0) <= (kept_h > 0)).all())
    # a budget under the floor (a check's correction can ask for one): nothing kept, no error
    empty = trim_to_latency(head, ffn, model, model.floor() / 2)
    assert sum(empty.head_counts) == 0 and sum(empty.ffn_widths) == 0


def test_knapsack_matches_brute_force():
    """The per-layer choice is the best one: every combination of 4 groups' options checked."""
    import itertools

    from prunekit.selection import _best_counts

    rng = np.random.default_rng(0)
    for _ in range(20):
        groups = [(np.concatenate([[0.0], np.cumsum(rng.random(4))]), np.concatenate([[0.0], np.cumsum(rng.random(4) * 2)]))
                  for _ in range(4)]
        budget = rng.uniform(1.0, 8.0)

        def best(limit):
            combos = [c for c in itertools.product(range(5), repeat=4) if sum(g[1][k] for g, k in zip(groups, c)) <= limit]
            return max(sum(g[0][k] for g, k in zip(groups, c)) for c in combos)

        counts = _best_counts(groups, budget, bins=4000)
        assert sum(g[1][k] for g, k in zip(groups, counts)) <= budget + 1e-12
        # rounding each cost up to a whole step costs at most one step per group
        assert sum(g[0][k] for g, k in zip(groups, counts)) >= best(budget * (1 - 4 / 4000)) - 1e-12


def test_select_to_latency_keeps_a_layer_attention_whole_when_its_first_head_is_the_cost():
    """The first head of a layer costs 0.8 of all four, the next ones little: the top-priority layer
    keeps all its heads, and no budget is spent on a lone head (a greedy pass by priority would pay
    the first head's jump in several layers, or in none)."""
    model = lat.fit(synthetic(heads=[0.0, 1.6, 1.7, 1.8, 2.0]), SHAPE)
    g = torch.Generator().manual_seed(3)
    head_p, ffn_p = torch.rand(6, 4, generator=g), torch.rand(6, 64, generator=g)
    head_p[2] += 10.0  # layer 2's heads rank above everything
    for target in (0.7, 0.5, 0.4):
        arch = select_to_latency(head_p, ffn_p, model, target)
        assert arch.head_counts[2] == 4 and all(h in (0, 3, 4) for h in arch.head_counts), (target, arch.head_counts)
        assert target - 0.02 <= model.ratio(arch.head_counts, arch.ffn_widths) <= target + 1e-12


def test_table_key_mismatch_is_refused_in_one_line(tmp_path):
    key = lat.table_key(SHAPE, "torch-sdpa", "cpu", 16, 32, 1)
    path = tmp_path / "table.json"
    write_table(path, SHAPE, dict(key, backend="ort-opt", threads=4, cpu=dict(key["cpu"], model="Another CPU")))
    with pytest.raises(PrunekitError) as e:
        lat.load_table(path, key)
    msg = str(e.value)
    assert "\n" not in msg and "backend" in msg and "threads" in msg and "cpu.model" in msg and "--reprofile" in msg
    write_table(path, SHAPE, key)
    assert lat.load_table(path, key).rest == pytest.approx(2.0)
    path.write_text("{}")
    with pytest.raises(PrunekitError, match="not a prunekit latency table"):
        lat.load_table(path, key)


def _settings(tmp_path, model, data, **kw):
    base = dict(output_dir=str(tmp_path / "run"), max_steps=12, batch_size=8, max_length=32, checkpoint_every=100,
                model=str(model), data=str(data), cost="latency", backend="torch-sdpa", latency_table=str(tmp_path / "table.json"),
                latency_check=0, device="cpu")  # a synthetic table (keyed to the CPU): no real timing to check it against
    base.update(kw)
    return SearchSettings(**base)


def _key(model_dir, **kw):
    shape = load_teacher(str(model_dir)).shape
    args = dict(backend="torch-sdpa", device="cpu", batch=16, seq_len=32, threads=None)
    args.update(kw)
    return shape, lat.table_key(shape, **args)


@pytest.mark.parametrize("target", [0.7, 0.5])
def test_search_reaches_the_latency_band(tiny_models, text_file, tmp_path, target):
    model_dir = tiny_models("minilm6")
    shape, key = _key(model_dir)
    table = write_table(tmp_path / "table.json", shape, key)
    s = _settings(tmp_path, model_dir, text_file, target=target)
    result = search(s, progress=False)
    arch = Architecture.load(result.output_dir, shape)
    predicted = table.ratio(arch.head_counts, arch.ffn_widths)
    assert (1 - s.tolerance) * target <= predicted <= (1 + s.tolerance) * target
    assert result.achieved_ratio == pytest.approx(predicted)
    saved = json.loads((result.output_dir / "architecture.json").read_text())
    assert saved["cost"] == "latency" and saved["target_latency_ratio"] == target and "target_flops_ratio" not in saved
    assert saved["predicted_latency_ratio"] == pytest.approx(predicted)
    assert saved["flops_ratio"] == pytest.approx(arch.flops_ratio(shape, 32))
    assert saved["latency_model"]["backend"] == "torch-sdpa"
    assert (result.output_dir / "latency_table.json").is_file()
    assert result.log[-1]["expected_ratio"] < result.log[0]["expected_ratio"]


def test_search_prunes_the_hidden_width_under_a_latency_target(tiny_models, text_file, tmp_path):
    """--prune-hidden with --cost latency: the hidden gates in the latency loss, the band reached with
    the hidden width the model counts; a table without hidden measurements is refused in one line."""
    model_dir = tiny_models("minilm6")
    shape, key = _key(model_dir)
    write_table(tmp_path / "old.json", shape, key, hidden=None)
    with pytest.raises(PrunekitError) as e:
        search(_settings(tmp_path, model_dir, text_file, target=0.5, prune_hidden=True, latency_table=str(tmp_path / "old.json")),
               progress=False)
    assert "\n" not in str(e.value) and "no hidden-width measurements" in str(e.value) and "--reprofile" in str(e.value)
    table = write_table(tmp_path / "table.json", shape, key)
    s = _settings(tmp_path, model_dir, text_file, target=0.45, prune_hidden=True, max_steps=40)
    result = search(s, progress=False)
    arch = Architecture.load(result.output_dir, shape)
    assert arch.hidden is not None and arch.hidden_size < shape.hidden_size
    predicted = table.ratio(arch.head_counts, arch.ffn_widths, arch.hidden_size)
    assert (1 - s.tolerance) * 0.45 <= predicted <= (1 + s.tolerance) * 0.45
    saved = json.loads((result.output_dir / "architecture.json").read_text())
    assert saved["predicted_latency_ratio"] == pytest.approx(predicted)
    assert saved["latency_model"]["floor"] == pytest.approx(table.floor(hidden=True))


def test_gates_learn_on_flops_towards_the_ratio_the_latency_model_maps_the_target_to(tiny_models, text_file, tmp_path):
    """The default --gate-cost flops: the gates' loss is the FLOPs loss, its goal the FLOPs ratio of the
    uniform architecture the latency model predicts at the target; the choice is then in the latency band."""
    from prunekit.flops import model_flops
    from prunekit.search import gate_flops_target

    model = lat.fit(synthetic(), SHAPE)
    L, H, W = SHAPE.num_layers, SHAPE.num_heads, SHAPE.intermediate_size
    for target in (0.4, 0.7):
        f = gate_flops_target(model, SHAPE, 32, target)
        # the uniform fraction q whose FLOPs ratio is f has the predicted latency ratio asked
        lo, hi = 0.0, 1.0
        for _ in range(60):
            q = (lo + hi) / 2
            ratio = model_flops(SHAPE, 32, [q * H] * L, [q * W] * L).total / model_flops(SHAPE, 32).total
            lo, hi = (q, hi) if ratio < f else (lo, q)
        assert model.ratio([q * H] * L, [q * W] * L) == pytest.approx(target, rel=1e-4)
    assert gate_flops_target(model, SHAPE, 32, 0.4) < gate_flops_target(model, SHAPE, 32, 0.7)
    model_dir = tiny_models("minilm6")
    shape, key = _key(model_dir)
    table = write_table(tmp_path / "table.json", shape, key, overhead=1.25)  # the latency model's full ratio: 1.25
    result = search(_settings(tmp_path, model_dir, text_file, target=0.5, max_steps=40), progress=False)
    goal = gate_flops_target(table, shape, 32, 0.5)
    assert result.log[-1]["target"] == pytest.approx(goal, abs=1e-6)  # the ramp's end: the FLOPs goal
    first = result.log[0]
    assert first["discrete_ratio"] == pytest.approx(1.0)  # the FLOPs of every gate open, not the latency model's 1.25
    arch = Architecture.load(result.output_dir, shape)
    assert 0.475 <= table.ratio(arch.head_counts, arch.ffn_widths) <= 0.525
    saved = json.loads((result.output_dir / "architecture.json").read_text())
    assert saved["gate_cost"] == "flops" and saved["gate_flops_target"] == pytest.approx(goal)
    with pytest.raises(PrunekitError, match="--gate-cost latency apply to --cost latency only"):
        SearchSettings(gate_cost="latency").validate()


def test_search_gates_reach_the_latency_band_given_time(tiny_models, text_file, tmp_path):
    """With enough steps the gates themselves reach the band (a near-linear table: the concave one
    above makes the last heads of a layer cheap, and the gates slower to give them up)."""
    model_dir = tiny_models("minilm6")
    shape, key = _key(model_dir)
    write_table(tmp_path / "table.json", shape, key, heads=[0.0, 0.5, 1.0, 1.5, 2.0], f=lambda w: 0.03 * w)
    result = search(_settings(tmp_path, model_dir, text_file, target=0.6, max_steps=120, gate_cost="latency"), progress=False)
    assert result.architecture.meta.get("projected") is False and result.architecture.meta["gate_cost"] == "latency"
    meta = result.architecture.meta  # the gates' own choice, in the band; then brought to the target from below
    assert meta["gate_ratio"] == pytest.approx(result.log[-1]["discrete_ratio"], abs=1e-6)
    assert 0.57 <= meta["gate_ratio"] <= 0.63 and 0.59 <= result.achieved_ratio <= 0.6


def _slow_machine(monkeypatch, table, factor: float) -> list:
    """A machine on which every architecture measures ``factor`` x the table's prediction; returns
    the list of (heads, widths) timed, in order."""
    timed = []

    def measure(heads, widths, *a, **k):
        timed.append((list(heads), list(widths)))
        return factor * table.ratio(heads, widths)

    monkeypatch.setattr(lat, "measure_ratio", measure)
    return timed


def test_latency_check_rechooses_until_the_measurement_is_in_the_band(tiny_models, text_file, tmp_path, monkeypatch):
    """The machine runs every architecture 1.3x slower than the table predicts: the check times the
    model's choice, then chooses again with a smaller budget until the measured ratio is in the band."""
    model_dir = tiny_models("minilm6")
    shape, key = _key(model_dir)
    table = write_table(tmp_path / "table.json", shape, key)
    timed = _slow_machine(monkeypatch, table, 1.3)
    s = _settings(tmp_path, model_dir, text_file, target=0.6, latency_check=3, method="magnitude", latency_calibrate=False)
    result = search(s, progress=False)
    saved = json.loads((result.output_dir / "architecture.json").read_text())
    rounds = saved["latency_check"]
    assert len(rounds) >= 2 and len(timed) == len(rounds)
    assert rounds[0]["measured"] > (1 + s.tolerance) * 0.6  # the model's own choice misses
    assert (1 - s.tolerance) * 0.6 <= saved["measured_latency_ratio"] <= (1 + s.tolerance) * 0.6
    assert saved["measured_latency_ratio"] == pytest.approx(1.3 * saved["predicted_latency_ratio"])
    assert result.achieved_ratio == pytest.approx(saved["measured_latency_ratio"])
    arch = Architecture.load(result.output_dir, shape)
    assert timed[-1] == (arch.head_counts, arch.ffn_widths)
    # the check gives up after --latency-check rounds (no error) and keeps the round measured closest
    answers = iter([0.9, 0.66, 0.3])
    monkeypatch.setattr(lat, "measure_ratio", lambda *a, **k: next(answers))
    result = search(_settings(tmp_path, model_dir, text_file, target=0.6, latency_check=2, method="magnitude", latency_calibrate=False,
                              output_dir=str(tmp_path / "run2")), progress=False)
    saved = json.loads((result.output_dir / "architecture.json").read_text())
    assert len(saved["latency_check"]) == 3 and saved["latency_check_kept"] == 1 and saved["measured_latency_ratio"] == 0.66


def test_latency_check_aims_at_the_target_inside_the_band(tiny_models, text_file, tmp_path, monkeypatch):
    """The machine runs every architecture 2% slower than the table predicts: the first choice is
    inside half the 5% band but 2% off, so the check chooses again (it aims within 1%: a choice
    left at the band's fast edge is a student cut further than asked), and the model it keeps is the
    one measured closest to the target."""
    model_dir = tiny_models("minilm6")
    shape, key = _key(model_dir)
    table = write_table(tmp_path / "table.json", shape, key)
    _slow_machine(monkeypatch, table, 1.02)
    s = _settings(tmp_path, model_dir, text_file, target=0.6, latency_check=3, method="magnitude", latency_calibrate=False, tolerance=0.05)
    saved = json.loads((search(s, progress=False).output_dir / "architecture.json").read_text())
    rounds = saved["latency_check"]
    assert 0.01 < abs(rounds[0]["measured"] / 0.6 - 1) <= 0.025  # inside half the band, off the aim
    assert len(rounds) >= 2 and abs(saved["measured_latency_ratio"] / 0.6 - 1) <= 0.01
    assert saved["measured_latency_ratio"] == min((r["measured"] for r in rounds), key=lambda m: abs(m / 0.6 - 1))


def test_latency_check_stops_when_a_new_budget_chooses_a_model_already_timed(tiny_models, text_file, tmp_path, monkeypatch):
    """A machine where everything measures far faster than asked: the budget grows to the full model,
    and once a new budget chooses a model already timed the check stops instead of timing it again."""
    model_dir = tiny_models("minilm6")
    shape, key = _key(model_dir)
    write_table(tmp_path / "table.json", shape, key)
    timed = []
    monkeypatch.setattr(lat, "measure_ratio", lambda heads, widths, *a, **k: timed.append((list(heads), list(widths))) or 0.2)
    s = _settings(tmp_path, model_dir, text_file, target=0.6, latency_check=8, method="magnitude", latency_calibrate=False)
    saved = json.loads((search(s, progress=False).output_dir / "architecture.json").read_text())
    assert len(saved["latency_check"]) == len(timed) < 9
    assert len({tuple(map(tuple, t)) for t in timed}) == len(timed)  # no model timed twice


def test_latency_check_stays_inside_its_bracket(tiny_models, text_file, tmp_path, monkeypatch):
    """A machine where the model is wrong by a factor that changes with the budget (steep: 3x the
    prediction less 1): scaling the budget by target/measured alone jumps past the band back and
    forth; every budget stays between the largest one measured faster than the target and the
    smallest slower (the bracket is split at the target)."""
    model_dir = tiny_models("minilm6")
    shape, key = _key(model_dir)
    table = write_table(tmp_path / "table.json", shape, key)
    monkeypatch.setattr(lat, "measure_ratio", lambda heads, widths, *a, **k: max(0.01, 3 * table.ratio(heads, widths) - 1.0))
    s = _settings(tmp_path, model_dir, text_file, target=0.6, latency_check=8, method="magnitude", latency_calibrate=False, tolerance=0.05)
    saved = json.loads((search(s, progress=False).output_dir / "architecture.json").read_text())
    rounds = saved["latency_check"]
    assert 0.57 <= saved["measured_latency_ratio"] <= 0.63 and len(rounds) >= 3
    for i in range(1, len(rounds)):
        fast = [r["budget"] for r in rounds[:i] if r["measured"] < 0.6]
        slow = [r["budget"] for r in rounds[:i] if r["measured"] > 0.6]
        assert max(fast, default=0.0) < rounds[i]["budget"] < min(slow, default=float("inf"))


def test_calibration_scales_the_model_before_the_gates_learn(tiny_models, text_file, tmp_path, monkeypatch):
    """The machine runs every architecture 1.3x slower than the table predicts. Calibrated, the search
    times one uniform architecture first, scales the model by 1.3, so the gates aim at fewer FLOPs and
    the check's first timing is on the target; architecture.json records the calibration. Uncalibrated,
    the same run's first timing misses by 30% and its gates aim at more FLOPs."""
    model_dir = tiny_models("minilm6")
    shape, key = _key(model_dir)
    table = write_table(tmp_path / "table.json", shape, key)
    timed = _slow_machine(monkeypatch, table, 1.3)
    saved = {}
    for calibrate in (True, False):
        s = _settings(tmp_path, model_dir, text_file, target=0.6, latency_check=3, latency_calibrate=calibrate,
                      output_dir=str(tmp_path / f"run-{calibrate}"))
        saved[calibrate] = json.loads((search(s, progress=False).output_dir / "architecture.json").read_text())
    cal = saved[True]["latency_model"]["calibration"]
    assert cal["scale"] == pytest.approx(1.3) and cal["measured"] == pytest.approx(1.3 * cal["predicted"])
    assert len(set(timed[0][0])) == 1 and len(set(timed[0][1])) == 1  # the first timing: a uniform architecture
    assert abs(saved[True]["latency_check"][0]["measured"] / 0.6 - 1) <= 0.05  # on the target at the first timing
    assert saved[True]["latency_check"][0]["predicted"] == pytest.approx(saved[True]["latency_check"][0]["measured"])
    assert "calibration" not in saved[False]["latency_model"]
    assert saved[False]["latency_check"][0]["measured"] > 1.05 * 0.6  # the uncalibrated model's choice misses
    assert saved[True]["gate_flops_target"] < saved[False]["gate_flops_target"] - 0.05


def test_calibration_is_kept_on_resume_and_a_bad_one_refused(tiny_models, text_file, tmp_path, monkeypatch):
    """A resumed run keeps the calibration saved with its table (no new timing); a table whose
    calibration scale is not a positive number is refused in one line."""
    model_dir = tiny_models("minilm6")
    shape, key = _key(model_dir)
    table = write_table(tmp_path / "table.json", shape, key)
    timed = _slow_machine(monkeypatch, table, 1.2)
    s = _settings(tmp_path, model_dir, text_file, target=0.6, latency_check=1, max_steps=8, checkpoint_every=4)
    with pytest.raises(KeyboardInterrupt):
        search(s, progress=False, on_step=stop_after(4))
    work = tmp_path / "run.partial"
    saved_table = json.loads((work / "latency_table.json").read_text())
    assert saved_table["model"]["calibration"]["scale"] == pytest.approx(1.2) and len(timed) == 1
    result = search(s, progress=False, resume=True)
    meta = json.loads((result.output_dir / "architecture.json").read_text())
    assert meta["latency_model"]["calibration"] == saved_table["model"]["calibration"]
    assert len(timed) == 1 + len(meta["latency_check"])  # the check's timings only: no second calibration
    bad = json.loads((tmp_path / "table.json").read_text())
    bad["model"]["calibration"] = {"scale": -1.0}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(PrunekitError, match="corrupt") as e:
        lat.load_table(tmp_path / "bad.json", key)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("value", [True, False])
def test_latency_calibrate_is_refused_with_a_flops_target(value):
    with pytest.raises(PrunekitError, match="--latency-calibrate/--no-latency-calibrate apply to --cost latency only"):
        SearchSettings(latency_calibrate=value).validate_cost()
    assert not SearchSettings().calibrates and SearchSettings(cost="latency", backend="torch-sdpa").calibrates
    assert not SearchSettings(cost="latency", backend="torch-sdpa", latency_check=0).calibrates


def test_a_published_table_brings_no_calibration_and_the_floor_is_the_calibrated_one(tiny_models, text_file, tmp_path, monkeypatch):
    """A run's published latency_table.json carries its calibration; given to a new search as --latency-table,
    that calibration is dropped (the new run times its own, or none with --no-latency-calibrate). A target the
    table's floor allows but the calibrated floor does not is refused in one line, before any gate learns."""
    model_dir = tiny_models("minilm6")
    shape, key = _key(model_dir)
    table = write_table(tmp_path / "table.json", shape, key)
    _slow_machine(monkeypatch, table, 1.3)
    first = search(_settings(tmp_path, model_dir, text_file, target=0.6, latency_check=1, output_dir=str(tmp_path / "a")), progress=False)
    published = first.output_dir / "latency_table.json"
    assert json.loads(published.read_text())["model"]["calibration"]["scale"] == pytest.approx(1.3)
    s = _settings(tmp_path, model_dir, text_file, target=0.6, latency_check=1, latency_calibrate=False, latency_table=str(published),
                  output_dir=str(tmp_path / "b"))
    meta = json.loads((search(s, progress=False).output_dir / "architecture.json").read_text())
    assert "calibration" not in meta["latency_model"] and meta["latency_check"][0]["measured"] > 1.05 * 0.6
    floor = table.floor()
    target = 1.1 * floor  # above the table's floor, under 1.3x it
    with pytest.raises(PrunekitError) as e:
        search(_settings(tmp_path, model_dir, text_file, target=target, latency_check=1, output_dir=str(tmp_path / "c")), progress=False)
    assert "\n" not in str(e.value) and f"the floor is {1.3 * floor:.3f}" in str(e.value)
    assert not (tmp_path / "c.partial").exists()


def test_mismatched_table_refused_then_reprofile_remakes_it(tiny_models, text_file, tmp_path, monkeypatch):
    model_dir = tiny_models("minilm6")
    shape, key = _key(model_dir)
    write_table(tmp_path / "table.json", shape, dict(key, backend="ort-opt"))
    with pytest.raises(PrunekitError) as e:
        search(_settings(tmp_path, model_dir, text_file, target=0.6), progress=False)
    assert "\n" not in str(e.value) and "backend: 'ort-opt' there, 'torch-sdpa' here" in str(e.value)
    calls = []
    monkeypatch.setattr(lat, "profile", lambda shape, *a, **k: calls.append(a) or synthetic(shape))
    result = search(_settings(tmp_path, model_dir, text_file, target=0.6, reprofile=True), progress=False)
    assert len(calls) == 1 and calls[0][:4] == ("torch-sdpa", "cpu", 16, 32)
    assert json.loads((tmp_path / "table.json").read_text())["key"] == key
    assert result.achieved_ratio == pytest.approx(0.6, rel=0.05)


def test_default_cache_is_reused(tiny_models, text_file, tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    calls = []
    monkeypatch.setattr(lat, "profile", lambda shape, *a, **k: calls.append(a) or synthetic(shape))
    model_dir = tiny_models("minilm6")
    for run in ("a", "b"):
        search(_settings(tmp_path, model_dir, text_file, target=0.6, latency_table=None, output_dir=str(tmp_path / run)), progress=False)
    assert len(calls) == 1 and len(list((tmp_path / "cache" / "latency").glob("torch-sdpa-*.json"))) == 1


def test_resume_keeps_the_run_own_table(tiny_models, text_file, tmp_path, monkeypatch):
    model_dir = tiny_models("minilm6")
    shape, key = _key(model_dir)
    write_table(tmp_path / "table.json", shape, key)
    kw = dict(target=0.6, max_steps=14, checkpoint_every=3)
    full = search(_settings(tmp_path, model_dir, text_file, output_dir=str(tmp_path / "full"), **kw), progress=False)
    s = _settings(tmp_path, model_dir, text_file, output_dir=str(tmp_path / "cut"), **kw)
    with pytest.raises(KeyboardInterrupt):
        search(s, progress=False, on_step=stop_after(8))
    (tmp_path / "table.json").unlink()  # gone: the resumed run reads the one in its own work dir
    monkeypatch.setattr(lat, "profile", lambda *a, **k: pytest.fail("a resumed run measured again"))
    resumed = search(s, progress=False, resume=True)
    assert resumed.architecture.heads == full.architecture.heads and resumed.architecture.neurons == full.architecture.neurons
    assert resumed.achieved_ratio == pytest.approx(full.achieved_ratio)


def test_target_below_the_floor_is_refused(tiny_models, text_file, tmp_path):
    model_dir = tiny_models("minilm6")
    shape, key = _key(model_dir)
    table = write_table(tmp_path / "table.json", shape, key, rest=20.0)
    floor = table.floor()
    assert 0.3 < floor < 0.9
    with pytest.raises(PrunekitError) as e:
        search(_settings(tmp_path, model_dir, text_file, target=floor - 0.1), progress=False)
    assert "\n" not in str(e.value) and f"the floor is {floor:.3f}" in str(e.value)
    assert not (tmp_path / "run.partial").exists()


def test_target_above_the_full_compact_model_is_refused(tiny_models, text_file, tmp_path):
    """Where the compact layers run at half the original's time, a 0.9 target has nothing to prune."""
    model_dir = tiny_models("minilm6")
    shape, key = _key(model_dir)
    write_table(tmp_path / "table.json", shape, key, overhead=0.5)
    with pytest.raises(PrunekitError) as e:
        search(_settings(tmp_path, model_dir, text_file, target=0.9), progress=False)
    assert "\n" not in str(e.value) and "give --target <= 0.500" in str(e.value)
    assert not (tmp_path / "run.partial").exists()


def test_latency_baselines(tiny_models, text_file, tmp_path):
    model_dir = tiny_models("minilm6")
    shape, key = _key(model_dir)
    table = write_table(tmp_path / "table.json", shape, key)
    result = search(_settings(tmp_path, model_dir, text_file, target=0.5, method="magnitude"), progress=False)
    assert 0.475 <= table.ratio(result.architecture.head_counts, result.architecture.ffn_widths) <= 0.525
    with pytest.raises(PrunekitError, match="uniform"):
        _settings(tmp_path, model_dir, text_file, method="uniform").validate()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has the GPU the backend needs")
def test_backend_the_machine_lacks_is_one_line(tiny_models, text_file, tmp_path):
    with pytest.raises(PrunekitError) as e:
        lat.profile(SHAPE, "triton-fp16-graph", "cuda", 2, 16, None, 1)
    assert "\n" not in str(e.value) and "triton-fp16-graph" in str(e.value)
    assert lat.latency_device("triton-fp16-graph", "cpu") == "cuda"
    with pytest.raises(PrunekitError) as e:
        search(_settings(tmp_path, tiny_models("minilm6"), text_file, backend="triton-fp16-graph"), progress=False)
    assert "\n" not in str(e.value) and "CUDA" in str(e.value)


def test_settings_refuse_latency_options_with_flops():
    with pytest.raises(PrunekitError, match="--backend"):
        SearchSettings(backend="torch-sdpa").validate()
    with pytest.raises(PrunekitError, match="needs --backend"):
        SearchSettings(cost="latency").validate()
    with pytest.raises(PrunekitError, match="--latency-batch"):
        SearchSettings(cost="latency", backend="torch-sdpa", latency_batch=0).validate()


def test_cli_target_speedup(tiny_models, text_file, tmp_path):
    model_dir = tiny_models("minilm6")
    shape, key = _key(model_dir)
    write_table(tmp_path / "table.json", shape, key)
    args = ["search", "--model", str(model_dir), "--data", str(text_file), "--max-steps", "6", "--batch-size", "8",
            "--max-length", "32", "--cost", "latency", "--backend", "torch-sdpa", "--latency-table", str(tmp_path / "table.json"),
            "--latency-check", "0", "--device", "cpu", "--quiet", "-o", str(tmp_path / "run")]  # a synthetic CPU table: nothing real to check
    out = CliRunner().invoke(cli, args + ["--target-speedup", "2"])
    assert out.exit_code == 0, out.output
    predicted = float(re.search(r"predicted latency ratio ([0-9.]+) on torch-sdpa \(target 0.5,", out.output).group(1))
    assert 0.475 <= predicted <= 0.525 and "FLOPs ratio" in out.output
    both = CliRunner().invoke(cli, args + ["--target-speedup", "2", "--target", "0.5", "--force"])
    assert both.exit_code == 2 and "not both" in both.output
    # bench puts the search's prediction beside the ratio it measures on the profiled backend
    comp = CliRunner().invoke(cli, ["compact", str(tmp_path / "run"), "-o", str(tmp_path / "c"), "--no-fvcore"])
    assert comp.exit_code == 0, comp.output
    res = bench(BenchSettings(models=[str(model_dir), str(tmp_path / "c")], backends=["torch-sdpa", "torch-eager"], batch=2,
                              seq_len=32, repeats=2, warmup=1, fvcore=False))
    [check] = res["latency_targets"]
    row = next(r for r in res["rows"] if r["model"] == "c" and r["backend"] == "torch-sdpa")
    assert check["backend"] == "torch-sdpa" and check["predicted_ratio"] == pytest.approx(predicted, abs=1e-4)
    assert check["measured_ratio"] == pytest.approx(1 / row["speedup"]) and not check["same_shape"]
    assert "latency ratio predicted" in format_table(res) and "not the same work" in format_table(res)


def test_real_profile_on_torch_sdpa(tiny_models):
    """One real measurement end to end (tiny shape, one repeat): the fit is a usable model."""
    config = load_teacher(str(tiny_models("minilm6"))).config  # its vocabulary is smaller than PROFILE_VOCAB
    m = lat.profile(SHAPE, "torch-sdpa", "cpu", batch=2, seq_len=16, threads=1, repeats=1, width_grid=[0, 32, 64], warmup=1,
                    base_config=config)
    assert len(m["head_times"]) == 5 and m["width_grid"] == [0, 32, 64] and all(t > 0 for t in m["head_times"])
    assert m["hidden_grid"] == HIDDEN and all(t > 0 for t in m["hidden_full_times"] + m["hidden_zero_times"])
    model = lat.fit(m, SHAPE)
    assert 0 < model.floor() <= 1 and all(np.diff(model.head_knots) >= 0) and all(np.diff(model.ffn_knots) >= 0)
    assert model.has_hidden and 0 < model.floor(hidden=True) <= model.floor() and model.hidden_scale[-1] == 1.0
    # the check's measurement of a narrow-hidden architecture (random weights) runs
    ratio = lat.measure_ratio([2] * 6, [32] * 6, SHAPE, "torch-sdpa", "cpu", 2, 16, 1, config, repeats=1, warmup=1, hidden=8)
    assert 0 < ratio < 10


def test_a_compact_only_backend_profiles_over_the_original_on_its_counterpart(tiny_models, monkeypatch):
    """torch-bf16-packed runs compact models only: the original is timed on torch-bf16 (bench's
    speedup for that backend is over it too), so the overhead is measured, not assumed 1."""
    from prunekit import backends as B

    why = B.unavailable("torch-bf16-packed", "cpu")
    if why:
        pytest.skip(why)
    built = []
    real = B.build_runner
    monkeypatch.setattr(B, "build_runner", lambda src, name, backend, *a, **k: built.append((name, backend)) or real(src, name, backend, *a, **k))
    config = load_teacher(str(tiny_models("minilm6"))).config
    m = lat.profile(SHAPE, "torch-bf16-packed", "cpu", batch=2, seq_len=16, threads=1, repeats=1, width_grid=[0, 64], warmup=1,
                    base_config=config)
    assert ("original", "torch-bf16") in built and {b for n, b in built if n != "original"} == {"torch-bf16-packed"}
    assert m["original"] > 0 and lat.fit(m, SHAPE).overhead == pytest.approx(m["head_times"][-1] / m["original"])


def test_profile_verb_writes_the_table_a_search_then_reuses(tiny_models, text_file, tmp_path, monkeypatch):
    model_dir = tiny_models("minilm6")
    opts = ["--backend", "torch-sdpa", "--latency-batch", "2", "--latency-seq-len", "16", "--latency-threads", "1",
            "--latency-table", str(tmp_path / "t.json")]
    out = CliRunner().invoke(cli, ["profile", "--model", str(model_dir), "--latency-repeats", "1", "--quiet", *opts])
    assert out.exit_code == 0, out.output
    assert "at most" in out.output and (tmp_path / "t.json").is_file()
    saved = json.loads((tmp_path / "t.json").read_text())
    assert saved["key"]["backend"] == "torch-sdpa" and saved["key"]["batch"] == 2 and 0 < saved["floor"] < 1
    original = saved["measurements"]["original"]  # the original timed beside the compact models: ratios are over it
    assert original > 0 and saved["model"]["overhead"] == pytest.approx(saved["measurements"]["head_times"][-1] / original)
    # a target between the floor and the full compact model's ratio (a tiny HF original is much slower than it;
    # on a loaded machine the two tiny models' times can come out the other way round: at most 1)
    target = round((saved["floor"] + min(saved["model"]["overhead"], 1.0)) / 2, 3)
    monkeypatch.setattr(lat, "profile", lambda *a, **k: pytest.fail("the search profiled again"))
    run = CliRunner().invoke(cli, ["search", "--model", str(model_dir), "--data", str(text_file), "--max-steps", "2",
                                   "--batch-size", "8", "--max-length", "16", "--cost", "latency", "--target", str(target),
                                   "--quiet", "-o", str(tmp_path / "run"), *opts])
    assert run.exit_code == 0, run.output
    bad = CliRunner().invoke(cli, ["profile", "--model", str(model_dir), "--backend", "no-such-backend"])
    assert bad.exit_code == 2 and "--backend" in bad.output and "Traceback" not in bad.output
