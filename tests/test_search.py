"""The search end to end on tiny random BERTs: target bands, outputs, baselines, resume."""
import json

import pytest
import torch
from safetensors.torch import load_file

from factory import make_sentences, stop_after
from prunekit.architecture import Architecture
from prunekit.data import load_data
from prunekit.models import load_teacher
from prunekit.search import SearchSettings, search

pytestmark = pytest.mark.usefixtures("one_thread")


def _settings(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "run"), max_steps=8, batch_size=8, max_length=32, checkpoint_every=4)
    base.update(kw)
    return SearchSettings(**base)


@pytest.mark.parametrize("shape", ["tinybert4", "minilm6", "bert12"])
@pytest.mark.parametrize("target", [0.9, 0.5, 0.3, 0.1])
def test_search_lands_in_target_band(tiny_models, text_file, tmp_path, shape, target):
    s = _settings(tmp_path, model=str(tiny_models(shape)), data=str(text_file), target=target)
    result = search(s, progress=False)
    t = load_teacher(s.model)
    arch = Architecture.load(result.output_dir, t.shape)
    ratio = arch.flops_ratio(t.shape, s.max_length)
    assert (1 - s.tolerance) * target <= ratio <= (1 + s.tolerance) * target
    saved = json.loads((result.output_dir / "architecture.json").read_text())
    assert saved["achieved_flops_ratio"] == pytest.approx(ratio)
    assert saved["target_flops_ratio"] == target
    assert len(saved["layers"]) == t.shape.num_layers
    assert saved["data_source"] == str(text_file.resolve())  # what eval checks its data against


def test_search_with_length_groups_lands_in_target_band(tiny_models, text_file, tmp_path):
    s = _settings(tmp_path, model=str(tiny_models("minilm6")), data=str(text_file), target=0.3, group_by_length=True)
    result = search(s, progress=False)
    t = load_teacher(s.model)
    ratio = Architecture.load(result.output_dir, t.shape).flops_ratio(t.shape, s.max_length)
    assert (1 - s.tolerance) * 0.3 <= ratio <= (1 + s.tolerance) * 0.3
    assert json.loads((result.output_dir / "settings.json").read_text())["group_by_length"] is True


def test_search_outputs_and_log(tiny_models, text_file, tmp_path):
    s = _settings(tmp_path, model=str(tiny_models("minilm6")), data=str(text_file), target=0.5, max_steps=12)
    result = search(s, progress=False)
    out = result.output_dir
    for name in ("architecture.json", "alpha.safetensors", "search_log.jsonl", "settings.json", "architecture.png"):
        assert (out / name).is_file(), name
    assert not (tmp_path / "run.partial").exists()
    alphas = load_file(str(out / "alpha.safetensors"))
    assert alphas["head"].shape == (6, 4) and alphas["ffn"].shape == (6, 64)
    log = [json.loads(line) for line in (out / "search_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 13))
    assert {"loss", "mse", "flops_loss", "target", "expected_ratio", "discrete_ratio"} <= set(log[0])
    # the target moves from ~1.0 down to the goal and stays
    assert log[0]["target"] > 0.9 and log[-1]["target"] == pytest.approx(0.5)
    assert all(a["target"] >= b["target"] for a, b in zip(log, log[1:]))
    # the gates really move: the expected FLOPs ratio drops as the target drops
    assert log[-1]["expected_ratio"] < log[0]["expected_ratio"]


def test_search_prunes_gates_without_projection_given_time(tiny_models, text_file, tmp_path):
    """With enough steps the gates themselves reach the band (no alpha thresholding needed)."""
    s = _settings(tmp_path, model=str(tiny_models("tinybert4")), data=str(text_file), target=0.5, max_steps=100, checkpoint_every=1000)
    result = search(s, progress=False)
    assert result.architecture.meta.get("projected") is False
    assert result.log[-1]["discrete_ratio"] == pytest.approx(result.achieved_ratio, abs=1e-6)


@pytest.mark.parametrize("method", ["random", "uniform", "head-importance", "magnitude"])
@pytest.mark.parametrize("kind", ["embedding", "classification"])
def test_baselines_hit_same_target(tiny_models, tmp_path, method, kind):
    data = tmp_path / "data.csv"
    rows = ["text,label"] + [f"{s},{i % 2}" for i, s in enumerate(make_sentences(40))]
    data.write_text("\n".join(rows) + "\n")
    s = _settings(tmp_path, model=str(tiny_models("tinybert4", kind)), data=str(data), target=0.3, method=method)
    result = search(s, progress=False)
    assert 0.285 <= result.achieved_ratio <= 0.315
    saved = json.loads((result.output_dir / "architecture.json").read_text())
    assert saved["method"] == method and saved["base_model"]["kind"] == kind


def test_random_baseline_depends_on_seed(tiny_models, text_file, tmp_path):
    a = search(_settings(tmp_path / "a", model=str(tiny_models()), data=str(text_file), method="random", seed=1), progress=False)
    b = search(_settings(tmp_path / "b", model=str(tiny_models()), data=str(text_file), method="random", seed=2), progress=False)
    c = search(_settings(tmp_path / "c", model=str(tiny_models()), data=str(text_file), method="random", seed=1), progress=False)
    assert a.architecture.heads == c.architecture.heads and a.architecture.neurons == c.architecture.neurons
    assert a.architecture.neurons != b.architecture.neurons


@pytest.mark.parametrize("freeze,grouped", [(False, False), (True, False), (False, True)])
def test_resume_gives_same_architecture(tiny_models, text_file, tmp_path, freeze, grouped):
    model = str(tiny_models("minilm6"))
    opts = dict(model=model, data=str(text_file), max_steps=14, freeze_weights=freeze, checkpoint_every=3, group_by_length=grouped)
    full = search(_settings(tmp_path / "full", **opts), progress=False)

    s = _settings(tmp_path / "cut", **opts)
    with pytest.raises(KeyboardInterrupt):
        search(s, progress=False, on_step=stop_after(8))  # killed after step 8: last checkpoint at step 6
    partial = tmp_path / "cut" / "run.partial"
    assert partial.is_dir() and not (tmp_path / "cut" / "run").exists()
    assert sorted(p.name for p in (partial / "checkpoints").glob("step-*"))[-1] == "step-0000006"
    resumed = search(s, progress=False, resume=True)

    assert resumed.architecture.heads == full.architecture.heads
    assert resumed.architecture.neurons == full.architecture.neurons
    a = load_file(str(full.output_dir / "alpha.safetensors"))
    b = load_file(str(resumed.output_dir / "alpha.safetensors"))
    torch.testing.assert_close(a["head"], b["head"], rtol=0, atol=1e-6)
    torch.testing.assert_close(a["ffn"], b["ffn"], rtol=0, atol=1e-6)
    log = [json.loads(line)["step"] for line in (resumed.output_dir / "search_log.jsonl").read_text().splitlines()]
    assert log == list(range(1, 15))


def test_labelled_classifier_teacher_and_pairs(tiny_models, tmp_path):
    data = tmp_path / "pairs.jsonl"
    sents = make_sentences(30, seed=3)
    data.write_text("\n".join(json.dumps({"sentence1": a, "sentence2": b, "label": i % 3}) for i, (a, b) in enumerate(zip(sents, sents[1:]))) + "\n")
    s = _settings(tmp_path, model=str(tiny_models("minilm6", "classification")), data=str(data), target=0.4)
    result = search(s, progress=False)
    assert 0.38 <= result.achieved_ratio <= 0.42
    assert load_data(str(data)).pairs is not None
