"""Distilling a student whose hidden width was cut (issue 20): the learned map of its hidden states into
the teacher's width (trained in stage 1, checkpointed, resumed, never saved in the model), and an
embedding student's output_proj in both stages."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import prunekit.distill as distill_module
from factory import SEQ, kept_arch, labelled_csv, make_compact_dir, make_sentences, scrambled_teacher_dir, stop_after
from prunekit.data import CORPUS_TASK, TextDataset
from prunekit.distill import (
    DistillSettings,
    _Inputs,
    _Run,
    _Trainee,
    _trainee,
    check_compatible,
    distill,
    hidden_map,
    intermediate_loss,
)
from prunekit.errors import PrunekitError
from prunekit.evaluate import EvalSettings, evaluate
from prunekit.gates import Gates
from prunekit.modeling import load_compact
from prunekit.models import load_teacher, model_output

pytestmark = pytest.mark.usefixtures("one_thread")

WIDTH = 32  # the factory teacher's hidden size (minilm6)


def kept_hidden(seed: int = 5, n: int = 20) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(WIDTH, generator=g)[:n].tolist())


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    """Per kind: a scrambled teacher and a student compacted from it keeping 20 of its 32 hidden dimensions."""
    root = tmp_path_factory.mktemp("distill-hidden")
    out = {"data": labelled_csv(root / "data.csv", n=40)}
    for kind in ("classification", "embedding"):
        teacher = scrambled_teacher_dir(root / f"teacher-{kind}", kind)
        arch = kept_arch()
        arch.hidden = kept_hidden()
        out[kind] = {"teacher": teacher, "student": make_compact_dir(root, teacher, arch, name=f"compact-{kind}")}
    return out


def settings(worlds, kind: str, out, **kw) -> DistillSettings:
    base = dict(student=str(worlds[kind]["student"]), output_dir=str(out), budget="6steps", batch_size=8, max_length=SEQ,
                augment_copies=0, dropout=0.0, checkpoint_every=2, stage1_lr=1e-3, stage2_lr=1e-3, warmup=0.0,
                stage1_share=0.5)
    base.update(kw)
    return DistillSettings(**base)


def data_for(worlds, kind: str) -> dict:
    if kind == "classification":
        return {"data": str(worlds["data"])}
    return {"train_data": TextDataset(make_sentences(40, seed=2), None, None, CORPUS_TASK, "sentences"),
            "dev_data": TextDataset(make_sentences(8, seed=3), None, None, CORPUS_TASK, "dev sentences")}


def run(worlds, kind: str, out, **kw):
    data = data_for(worlds, kind)
    s = settings(worlds, kind, out, data=data.pop("data", None), **kw)
    return s, data


def scatter(kept: list[int]) -> torch.Tensor:
    w = torch.zeros(WIDTH, len(kept))
    w[torch.tensor(kept), torch.arange(len(kept))] = 1.0
    return w


# ------------------------------------------------------------------------------------------------
def test_the_map_is_none_at_the_teachers_width_and_starts_as_the_scatter():
    assert hidden_map(WIDTH, WIDTH, None, 0) is None
    kept = kept_hidden()
    m = hidden_map(len(kept), WIDTH, kept, 0)
    assert torch.equal(m.weight, scatter(kept)) and not m.bias.any()
    state = torch.random.get_rng_state()
    r1, r2 = hidden_map(len(kept), WIDTH, None, 7), hidden_map(len(kept), WIDTH, None, 7)
    assert torch.equal(r1.weight, r2.weight) and r1.weight.abs().max() > 0  # seeded, without drawing from the global RNG
    assert torch.equal(torch.random.get_rng_state(), state)


def test_without_the_kept_dimensions_the_map_starts_random_and_says_so(worlds, caplog):
    w = worlds["classification"]
    teacher, student = load_teacher(w["teacher"]), load_compact(w["student"])
    check_compatible(student, teacher)  # the teacher's width before the cut is the config's base_hidden_size
    inp = _Inputs(student, w["student"], None, teacher, "classification", None, None, kept_hidden=None)
    m = _trainee(inp, seed=3).hidden_map
    assert m.weight.shape == (WIDTH, 20) and not torch.equal(m.weight, scatter(kept_hidden()))
    assert "starts random" in caplog.text
    assert torch.equal(_trainee(_Inputs(student, w["student"], None, teacher, "classification", None, None,
                                        kept_hidden=kept_hidden()), seed=3).hidden_map.weight, scatter(kept_hidden()))


def test_narrow_output_embedding_student_distils_and_keeps_its_width(worlds, tmp_path, monkeypatch):
    """compact --narrow-output: no output_proj; stage 2 compares the pooled embeddings through the
    training-only map, held fixed (it starts as the scatter: the gated teacher's output on the kept dimensions),
    and the distilled model still outputs its own 20 dimensions, scored by the pairwise-similarity Spearman."""
    from prunekit.architecture import Architecture
    from prunekit.compact import compact_to_dir

    w = worlds["embedding"]
    student_dir = tmp_path / "narrow"
    compact_to_dir(None, w["student"] / "architecture.json", student_dir, model=str(w["teacher"]), measure_fvcore=False,
                   narrow_output=True)
    teacher, student = load_teacher(w["teacher"]), load_compact(student_dir, backend="eager").eval()
    assert student.output_proj is None
    check_compatible(student, teacher)
    arch = Architecture.load(w["student"] / "architecture.json")
    trainee = _Trainee(student, hidden_map(student.config.hidden_size, WIDTH, arch.hidden, 0))
    ids = torch.randint(5, teacher.config.vocab_size, (3, 12), generator=torch.Generator().manual_seed(1))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    gates = Gates(teacher.model, teacher.shape)
    try:
        with torch.no_grad(), gates.active(*arch.to_masks(teacher.shape)):
            t_pred = model_output(teacher.model, "embedding", inputs)
    finally:
        gates.remove()
    with torch.no_grad():
        assert model_output(student, "embedding", inputs).shape == (3, 20)
        mapped = trainee(2, "embedding", inputs)
    assert mapped.shape == t_pred.shape and (mapped - t_pred).abs().max() < 1e-4
    data = data_for(worlds, "embedding")
    r = distill(settings(worlds, "embedding", tmp_path / "out", student=str(student_dir)), progress=False, **data)
    steps = [x for x in r.log if "loss" in x]
    assert [x["stage"] for x in steps] == [1] * 3 + [2] * 3 and all(x["loss"] == x["loss"] for x in steps)
    model = load_compact(r.output_dir)
    assert model.output_proj is None and model.config.hidden_size == 20
    out = model_output(model, "embedding", {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    assert out.shape == (3, 20)
    assert not any("hidden_map" in k for k in load_file(str(r.output_dir / "model.safetensors")))
    assert r.metric == "similarity_spearman" and -1 <= r.best["value"] <= 1
    text = tmp_path / "t.txt"  # prunekit eval scores it against its teacher: the Spearman; no common space for a cosine
    text.write_text("\n".join(make_sentences(12, seed=2)) + "\n")
    res = evaluate(EvalSettings([str(r.output_dir)], data=str(text), reference=str(w["teacher"])))["models"][0]["results"]["dev"]
    assert res["primary"] == "similarity_spearman" and -1 <= res["metrics"]["similarity_spearman"] <= 1
    assert "mean_cosine" not in res["metrics"]

    # without the architecture.json naming the kept dimensions the map starts random, and stage 2 holds it
    # fixed: with no stage 1 (the short recipe's default) it would fit a random projection, so it is refused
    bare = tmp_path / "bare"
    shutil.copytree(student_dir, bare)
    (bare / "architecture.json").unlink()
    def untimed(*a, **k):
        raise AssertionError("augmented or timed a step: the refusal comes before both")

    monkeypatch.setattr(_Run, "_seconds_per_step", untimed)
    monkeypatch.setattr(distill_module, "_augmented", untimed)
    for kw in ({"stage1_share": 0.0}, {"budget": None, "stage1_epochs": 0.0, "stage2_epochs": 1.0, "augment_copies": 1}):
        with pytest.raises(PrunekitError, match=r"only stage 1 trains: give --stage1-epochs 1"):
            distill(settings(worlds, "embedding", tmp_path / "out-bare", student=str(bare), **kw), progress=False, **data)
        assert not (tmp_path / "out-bare").exists()


@pytest.mark.parametrize("kind", ["classification", "embedding"])
def test_mapped_hidden_states_start_equal_to_the_gated_teacher(worlds, kind):
    """Through the scatter map (and an embedding student's output_proj for its last states), the compact
    student's hidden states are the teacher's under the architecture's hard gates: stage 1 compares like with like."""
    from prunekit.architecture import Architecture

    w = worlds[kind]
    teacher, student = load_teacher(w["teacher"]), load_compact(w["student"], backend="eager").eval()
    arch = Architecture.load(w["student"] / "architecture.json")
    trainee = _Trainee(student, hidden_map(student.config.hidden_size, WIDTH, arch.hidden, 0))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, teacher.config.vocab_size, (3, 12), generator=g)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    gates = Gates(teacher.model, teacher.shape)
    try:
        with torch.no_grad(), gates.active(*arch.to_masks(teacher.shape)):
            t_out = teacher.model(**inputs, output_hidden_states=True, output_attentions=True)
            t_pred = model_output(teacher.model, kind, inputs)
    finally:
        gates.remove()
    with torch.no_grad():
        s_out = trainee(1, kind, inputs)
        s_pred = trainee(2, kind, inputs)
    assert len(s_out.hidden_states) == len(t_out.hidden_states)
    for s, t in zip(s_out.hidden_states, t_out.hidden_states):
        assert s.shape == t.shape and (s - t).abs().max() < 1e-4
    _, parts = intermediate_loss(s_out, t_out, student.config.kept_heads, inputs["attention_mask"], DistillSettings(student="x"))
    assert parts["emb"] < 1e-9 and parts["hidden"] < 1e-9 and parts["attention"] < 1e-9
    assert s_pred.shape == t_pred.shape and (s_pred - t_pred).abs().max() < 1e-4


@pytest.mark.parametrize("kind", ["classification", "embedding"])
def test_hidden_pruned_student_distils(worlds, kind, tmp_path):
    s, data = run(worlds, kind, tmp_path / "out")
    r = distill(s, progress=False, **data)
    steps = [x for x in r.log if "loss" in x]
    assert [x["stage"] for x in steps] == [1] * 3 + [2] * 3 and all(x["loss"] == x["loss"] for x in steps)
    model = load_compact(r.output_dir)
    assert model.config.hidden_size == 20 and model.config.base_hidden_size == WIDTH
    saved = load_file(str(r.output_dir / "model.safetensors"))
    assert saved.keys() == load_file(str(worlds[kind]["student"] / "model.safetensors")).keys()
    assert not any("hidden_map" in k for k in saved)  # the map is training's alone
    if kind == "embedding":  # the output space is the teacher's, through an output_proj that stage 1 and 2 trained
        ids = torch.randint(5, model.config.vocab_size, (2, 9))
        out = model_output(model, kind, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
        assert out.shape == (2, WIDTH)
        assert (model.output_proj.weight - scatter(kept_hidden())).abs().max() > 1e-4


@pytest.mark.parametrize("kind", ["classification", "embedding"])
def test_resume_restores_the_hidden_map(worlds, kind, tmp_path):
    """Killed in stage 1 (4 steps) after step 3, the last checkpoint at 2 holding the map, trained away from
    its start, and its AdamW state: the resumed run ends with the uninterrupted run's weights."""
    kw = dict(budget="8steps", dropout=0.1)
    s, data = run(worlds, kind, tmp_path / "full" / "out", **kw)
    full = distill(s, progress=False, **data)
    s, data = run(worlds, kind, tmp_path / "cut" / "out", **kw)
    with pytest.raises(KeyboardInterrupt):
        distill(s, progress=False, on_step=stop_after(3), **data)
    ckpt = load_file(str(tmp_path / "cut" / "out.partial" / "checkpoints" / "step-0000002" / "state.safetensors"))
    assert (ckpt["hidden_map.weight"] - scatter(kept_hidden())).abs().max() > 1e-4  # trained in stage 1
    if kind == "embedding":  # stage 1 compares its last hidden states through output_proj
        assert (ckpt["student.output_proj.weight"] - scatter(kept_hidden())).abs().max() > 1e-4
    assert any(k.startswith("opt1.") and k.endswith(".exp_avg") and v.shape == (WIDTH, 20) for k, v in ckpt.items())
    resumed = distill(s, progress=False, resume=True, **data)
    a, b = load_file(str(full.output_dir / "model.safetensors")), load_file(str(resumed.output_dir / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    assert resumed.best == full.best


@pytest.mark.slow  # two torchrun processes: ~30 s
def test_two_processes_train_the_map_and_output_proj_as_one(worlds, tmp_path):
    """Data parallel: the map and an embedding student's output_proj are used inside the forward DDP wraps,
    so their gradients are averaged like the rest (a map outside it would drift apart per process and
    fail DDP's unused-parameter check). The same weights as one process (tolerance: tests/test_distributed.py)."""
    data = tmp_path / "sentences.txt"
    data.write_text("\n".join(make_sentences(46, seed=4)) + "\n")
    one = distill(settings(worlds, "embedding", tmp_path / "one", data=str(data), budget="6steps", device="cpu"), progress=False)
    args = ["distill", str(worlds["embedding"]["student"]), "--data", str(data), "-o", str(tmp_path / "two"), "--budget", "6steps",
            "--batch-size", "8", "--max-length", str(SEQ), "--augment-copies", "0", "--dropout", "0", "--checkpoint-every", "2",
            "--stage1-lr", "1e-3", "--stage2-lr", "1e-3", "--warmup", "0", "--stage1-share", "0.5", "--device", "cpu", "--quiet"]  # gloo: two processes on one GPU are refused
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "prunekit", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    a, b = load_file(str(one.output_dir / "model.safetensors")), load_file(str(tmp_path / "two" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-4, msg=k)
