"""Distillation on tiny random BERTs: losses, the kept-head mapping, augmentation, resume, best checkpoint, bad input."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from factory import (
    SEQ,
    WORDS,
    assert_one_line_error,
    kept_arch,
    labelled_csv,
    make_compact_dir,
    make_sentences,
    make_tiny_model,
    real_tokenizer,
    scrambled_teacher_dir,
    stop_after,
)
from prunekit.architecture import Architecture
from prunekit.augment import WordReplacer, augment_dataset, build_replacer
from prunekit.cli import cli
from prunekit.compact import compact
from prunekit.data import CORPUS_TASK, TextDataset, load_data
from prunekit.distill import DistillSettings, attention_loss, distill, intermediate_loss
from prunekit.errors import PrunekitError
from prunekit.modeling import load_compact
from prunekit.models import load_teacher

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    teacher = scrambled_teacher_dir(root / "teacher", "classification")
    return {"root": root, "teacher": teacher, "compact": make_compact_dir(root, teacher, kept_arch()), "data": labelled_csv(root / "data.csv")}


def settings(world, out: Path, **kw) -> DistillSettings:
    base = dict(student=str(world["compact"]), data=str(world["data"]), output_dir=str(out), stage1_epochs=2, stage2_epochs=2,
                batch_size=16, max_length=SEQ, augment_copies=0, dropout=0.0, checkpoint_every=3)
    base.update(kw)
    return DistillSettings(**base)


def first_last(log: list[dict], stage: int, key: str = "loss", k: int = 3) -> tuple[float, float]:
    vals = [r[key] for r in log if r.get("stage") == stage and key in r]
    return sum(vals[:k]) / k, sum(vals[-k:]) / k


# ------------------------------------------------------------------------------------------------
def test_stage_losses_decrease(world, tmp_path):
    s = settings(world, tmp_path / "out", stage1_epochs=6, stage2_epochs=6, stage1_lr=2e-3, stage2_lr=2e-3, warmup=0.0)
    r = distill(s, progress=False)
    a, b = first_last(r.log, 1)
    assert b < 0.7 * a, (a, b)
    a, b = first_last(r.log, 2, "kl")
    assert b < 0.7 * a, (a, b)
    stage1 = [x for x in r.log if x.get("stage") == 1 and "hidden" in x]
    assert {"emb", "hidden", "attention"} <= set(stage1[0]) and stage1[0]["attention"] > 0
    out = r.output_dir
    for name in ("config.json", "model.safetensors", "tokenizer.json", "settings.json", "distill_log.jsonl", "distill_report.json", "architecture.json"):
        assert (out / name).is_file(), name
    assert not (tmp_path / "out.partial").exists() and not (out / "checkpoints").exists()
    model = load_compact(out)  # the same format as `prunekit compact` writes
    assert model.config.kept_heads == [[1, 3]] * 6
    assert json.loads((out / "settings.json").read_text())["stage1_lr"] == 2e-3


def test_attention_loss_maps_kept_heads_to_teacher_indices(world):
    teacher = load_teacher(world["teacher"])
    arch = kept_arch()
    student = compact(teacher, arch)
    ids = torch.randint(5, teacher.config.vocab_size, (3, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 5:] = 0
    batch = {"input_ids": ids * mask, "attention_mask": mask}
    with torch.no_grad():
        t = teacher.model(**batch, output_attentions=True, output_hidden_states=True)
        s = student(**batch, output_attentions=True, output_hidden_states=True)
    # Layer 0 sees the same input in both models, so its kept heads' maps are the teacher's heads 1 and 3.
    assert attention_loss(s.attentions[0], t.attentions[0], [1, 3], mask) < 1e-10
    wrong = attention_loss(s.attentions[0], t.attentions[0], [0, 1], mask)
    assert wrong > 1e-3
    # The full stage-1 loss reads the mapping from the config, and a student that keeps everything matches exactly.
    cfg = DistillSettings(student="x")
    _, parts = intermediate_loss(s, t, student.config.kept_heads, mask, cfg)
    assert parts["emb"] < 1e-10 and parts["attention"] > 0
    full = compact(teacher, Architecture.from_masks(torch.ones(6, 4), torch.ones(6, 64)))
    with torch.no_grad():
        f = full(**batch, output_attentions=True, output_hidden_states=True)
    loss, parts = intermediate_loss(f, t, full.config.kept_heads, mask, cfg)
    assert float(loss) < 1e-9
    # and a permuted mapping is honoured: student heads (2, 0) against teacher maps
    perm = t.attentions[2][:, [2, 0]]
    assert attention_loss(perm, t.attentions[2], [2, 0], mask) == 0
    assert attention_loss(perm, t.attentions[2], [0, 2], mask) > 0


# ------------------------------------------------------------------------------------------------
def _special_safe(replacer: WordReplacer, tokenizer):
    special = set(tokenizer.all_special_tokens)
    for w in ("river", "stone", "happy"):
        cands = replacer.neighbours(w) if replacer.mlm is None else replacer.mlm_candidates(f"the {w} runs", [(4, 4 + len(w))])[0]
        assert cands, w
        assert w not in cands
        assert not any(c in special or c.startswith("##") or c.startswith("[") for c in cands)
        assert all(c in WORDS for c in cands)


def test_augmentation_embedding_neighbours(world):
    teacher = load_teacher(world["teacher"])
    replacer = build_replacer(teacher.tokenizer, teacher.model, top_k=5, prob=0.5)
    _special_safe(replacer, teacher.tokenizer)
    texts = ["The river runs [SEP] over the stone [MASK] quickly.", "a green bird sleeps near the old tree [CLS]"] + make_sentences(10, seed=4)
    ds = TextDataset(texts, None, None, CORPUS_TASK, "test")
    aug = augment_dataset(ds, replacer, copies=3, seed=0)
    assert aug.dataset.texts[: len(texts)] == texts and aug.is_original[: len(texts)] == [True] * len(texts)
    copies = aug.dataset.texts[len(texts):]
    assert len(copies) >= len(texts)  # with p = 0.5 nearly every copy changes something
    for text, origin in zip(copies, aug.origin[len(texts):]):
        orig = texts[origin]
        assert text != orig
        assert len(text.split()) == len(orig.split())  # whole words for whole words
        for tok in ("[SEP]", "[MASK]", "[CLS]"):
            assert text.count(tok) == orig.count(tok)  # special tokens are never touched
        assert text[0].isupper() == orig[0].isupper()
    again = augment_dataset(ds, replacer, copies=3, seed=0)
    assert again.dataset.texts == aug.dataset.texts  # deterministic from the seed
    assert augment_dataset(ds, replacer, copies=3, seed=1).dataset.texts != aug.dataset.texts


def test_augmentation_masked_lm(world, tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    teacher = load_teacher(world["teacher"])
    mlm_dir = tmp_path / "mlm"
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(vocab_size=teacher.config.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=64)).save_pretrained(mlm_dir)
    teacher.tokenizer.save_pretrained(mlm_dir)
    replacer = build_replacer(teacher.tokenizer, mlm_dir=str(mlm_dir), top_k=4, prob=1.0)
    _special_safe(replacer, teacher.tokenizer)
    text = "the [MASK] river runs over the stone [SEP] near a tree"
    (copy,) = replacer.copies(text, 1, random.Random(0))
    assert copy != text and len(copy.split()) == len(text.split())
    assert copy.count("[MASK]") == 1 and copy.count("[SEP]") == 1
    with pytest.raises(PrunekitError, match="augment-mlm"):
        build_replacer(teacher.tokenizer, mlm_dir=str(tmp_path / "nope"))


def test_distill_with_augmentation_per_stage(world, tmp_path):
    r = distill(settings(world, tmp_path / "out", stage1_epochs=1, stage2_epochs=1, augment_copies=2, augment_stages="1"), progress=False)
    report = json.loads((r.output_dir / "distill_report.json").read_text())
    n = report["train_examples"]
    assert n < report["augmented_examples"] <= 3 * n
    per_stage = {st: sum(1 for x in r.log if x.get("stage") == st and "loss" in x) for st in (1, 2)}
    assert per_stage[1] == -(-report["augmented_examples"] // 16) and per_stage[2] == -(-n // 16)
    assert not (r.output_dir / "augmented.jsonl").exists()


# ------------------------------------------------------------------------------------------------
def test_stage2_targets_are_the_teacher_outputs_computed_once(world, tmp_path, monkeypatch):
    """Stage 2 runs the teacher once over its data (not at every step), and what it keeps is what an
    fp32 teacher pass gives (within fp32 padding noise), even when the steps run in bf16 autocast."""
    from prunekit import distill as distill_mod
    from prunekit.batching import collate
    from prunekit.models import model_output

    kept = {}
    real = distill_mod._Run.teacher_predictions

    def spy(self, data):
        out = real(self, data)
        kept["run"], kept["data"], kept["out"] = self, data, out
        return out

    monkeypatch.setattr(distill_mod._Run, "teacher_predictions", spy)
    teacher = load_teacher(str(world["teacher"]))
    calls = []
    original_load = distill_mod.load_teacher

    def counting_load(*a, **k):
        t = original_load(*a, **k)
        t.model.register_forward_hook(lambda *_: calls.append(1))
        return t

    monkeypatch.setattr(distill_mod, "load_teacher", counting_load)
    counts = []
    for epochs in (2, 4):
        calls.clear()
        # steps in bf16 autocast: the targets are still an fp32 pass (they are first asked for inside a step)
        s = settings(world, tmp_path / f"out{epochs}", stage1_epochs=0, stage2_epochs=epochs, eval_batch_size=64,
                     mixed_precision="bf16")
        r = distill(s, progress=False)
        counts.append((len(calls), r.steps))
    data, out = kept["data"], kept["out"]
    assert out.shape[0] == len(data) <= 64
    # twice the steps, the same teacher passes (the dev set's, the targets' one batch, the report's)
    assert counts[1][1] == 2 * counts[0][1] and counts[1][0] == counts[0][0] < counts[0][1]
    idx = list(range(0, len(data), 7))
    with torch.no_grad():
        direct = model_output(teacher.model.eval(), "classification", collate(data, idx))
    torch.testing.assert_close(out[idx].to(direct.device), direct, rtol=0, atol=1e-5)


def test_resume_gives_same_weights(world, tmp_path):
    kw = dict(stage1_epochs=3, stage2_epochs=2, augment_copies=1, dropout=0.1)  # dropout on: its RNG must resume too
    full = distill(settings(world, tmp_path / "full" / "out", **kw), progress=False)
    s = settings(world, tmp_path / "cut" / "out", **kw)
    with pytest.raises(KeyboardInterrupt):
        distill(s, progress=False, on_step=stop_after(8))  # killed in stage 1 after step 8: last checkpoint at 6
    partial = tmp_path / "cut" / "out.partial"
    assert partial.is_dir() and not (tmp_path / "cut" / "out").exists()
    assert sorted(p.name for p in (partial / "checkpoints").glob("step-*"))[-1] == "step-0000006"
    with pytest.raises(PrunekitError, match="different settings"):
        distill(settings(world, tmp_path / "cut" / "out", **{**kw, "temperature": 2.0}), progress=False, resume=True)
    resumed = distill(s, progress=False, resume=True)
    a, b = load_file(str(full.output_dir / "model.safetensors")), load_file(str(resumed.output_dir / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    assert resumed.best == full.best
    steps = [r["step"] for r in resumed.log if "loss" in r]
    assert steps == list(range(1, full.steps + 1))


def test_best_checkpoint_is_kept(world, tmp_path, monkeypatch):
    """Dev values scripted 0.5 (end of stage 1), 0.9 (stage 2, epoch 1), 0.3 (end): the 0.9 weights are written."""
    import prunekit.distill as D

    real = D.dev_metrics
    seen: list[torch.Tensor] = []
    values = iter([1.0, 0.1, 0.5, 0.9, 0.3])  # teacher, before, then the three evaluations

    def scripted(kind, outputs, teacher_outputs, dev):
        name, m = real(kind, outputs, teacher_outputs, dev)
        seen.append(outputs.clone())
        return name, {**m, name: next(values)}

    monkeypatch.setattr(D, "dev_metrics", scripted)
    r = distill(settings(world, tmp_path / "out", stage1_epochs=1, stage2_epochs=2, stage2_lr=5e-3), progress=False)
    assert r.best["value"] == 0.9 and r.best["stage"] == 2
    evals = [x for x in r.log if "dev" in x]
    assert [x["stage"] for x in evals] == [1, 2, 2] and r.best["step"] == evals[1]["step"]
    monkeypatch.setattr(D, "dev_metrics", real)
    from prunekit.batching import encode
    from prunekit.scoring import predict

    model = load_compact(r.output_dir)
    dev = load_data(str(world["data"])).split(0.9, 42)[1]
    out = predict(model, "classification", encode(dev, load_teacher(world["teacher"]).tokenizer, SEQ))
    torch.testing.assert_close(out, seen[3], rtol=0, atol=1e-5)
    assert not torch.allclose(out, seen[4], atol=1e-4)  # the last weights differ from the best
    assert json.loads((r.output_dir / "distill_report.json").read_text())["best"]["step"] == r.best["step"]


# ------------------------------------------------------------------------------------------------
def _cli(args):
    return CliRunner().invoke(cli, args)


def _args(world, student, out, *extra):
    return ["distill", str(student), "--data", str(world["data"]), "-o", str(out), "--stage1-epochs", "1", "--stage2-epochs", "1",
            "--batch-size", "16", "--max-length", str(SEQ), "--augment-copies", "0", "--quiet", *extra]


def test_bad_inputs_one_line_each(world, tmp_path):
    root = world["root"]
    assert_one_line_error(_cli(_args(world, tmp_path / "nope", tmp_path / "o1")), "not found")

    corrupt = tmp_path / "corrupt"
    shutil.copytree(world["compact"], corrupt)
    (corrupt / "model.safetensors").write_bytes(b"\x00garbage")
    assert_one_line_error(_cli(_args(world, corrupt, tmp_path / "o2")), "corrupt")
    (corrupt / "model.safetensors").unlink()
    assert_one_line_error(_cli(_args(world, corrupt, tmp_path / "o3")), "missing")

    # a teacher of another vocabulary (same shape), and one whose tokenizer maps tokens differently
    other = real_tokenizer(make_tiny_model(tmp_path / "other-vocab", "minilm6", "classification"))
    cfg = json.loads((other / "config.json").read_text())
    from transformers import BertConfig, BertForSequenceClassification

    cfg["vocab_size"] += 7
    BertForSequenceClassification(BertConfig(**cfg)).save_pretrained(other)
    assert_one_line_error(_cli(_args(world, world["compact"], tmp_path / "o4", "--teacher", str(other))), "vocabulary mismatch")
    swapped = tmp_path / "swapped"
    shutil.copytree(world["teacher"], swapped)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (swapped / f).unlink(missing_ok=True)
    vocab = (swapped / "vocab.txt").read_text().splitlines()
    vocab[10], vocab[11] = vocab[11], vocab[10]
    (swapped / "vocab.txt").write_text("\n".join(vocab) + "\n")
    assert_one_line_error(_cli(_args(world, world["compact"], tmp_path / "o5", "--teacher", str(swapped))), "vocabulary mismatch")

    other_shape = make_tiny_model(tmp_path / "other-shape", "tinybert4", "classification")
    assert_one_line_error(_cli(_args(world, world["compact"], tmp_path / "o6", "--teacher", str(other_shape))), "not compacted from")

    unlabelled = tmp_path / "u.txt"
    unlabelled.write_text("\n".join(make_sentences(20)) + "\n")
    args = _args(world, world["compact"], tmp_path / "o7", "--alpha-gold", "0.3")  # not the recipe's: asked for
    args[args.index("--data") + 1] = str(unlabelled)
    assert_one_line_error(_cli(args), "alpha-gold")

    (tmp_path / "o8").mkdir()
    assert_one_line_error(_cli(_args(world, world["compact"], tmp_path / "o8")), "--force")
    assert_one_line_error(_cli(_args(world, world["compact"], tmp_path / "o9", "--resume")), "nothing to resume")
    for out in ("o1", "o2", "o3", "o4", "o5", "o6", "o7", "o9"):
        assert not (tmp_path / out).exists(), out
    assert root.exists()


def test_recipes_fill_the_options_not_given(world, tmp_path):
    from prunekit.distill import RECIPES

    short, tiny = DistillSettings(student="x"), DistillSettings(student="x", recipe="tinybert", stage2_lr=1e-5)
    for name, value in RECIPES["short"].items():
        assert getattr(short, name) == value
    assert (tiny.stage1_epochs, tiny.augment_copies, tiny.alpha_gold, tiny.stage2_lr, tiny.group_by_length) == (20.0, 4, 0.0, 1e-5, False)
    # what the measurements chose (docs/results.md): one epoch of stage 1 before 5 of stage 2, one augmented copy, grouped batches
    assert (short.stage1_epochs, short.stage2_epochs, short.stage1_share, short.augment_copies, short.group_by_length) == (1.0, 5.0, 0.3, 1, True)
    assert DistillSettings(student="x", group_by_length=False, augment_copies=0).group_by_length is False  # given wins
    assert DistillSettings.from_dict(json.loads(short.to_json())) == short  # settings.json holds the filled values
    with pytest.raises(PrunekitError, match="--recipe"):
        DistillSettings(student="x", recipe="fast")
    # the short recipe's gold labels apply where there are labels: unlabelled text distils on soft targets
    unlabelled = tmp_path / "u.txt"
    unlabelled.write_text("\n".join(make_sentences(24)) + "\n")
    r = distill(settings(world, tmp_path / "o", data=str(unlabelled), stage1_epochs=None, stage2_epochs=None, budget="2steps",
                         augment_copies=None), progress=False)
    assert r.steps == 2 and all("gold" not in x for x in r.log if "loss" in x)


def test_nan_loss_skips_then_stops(world, tmp_path):
    nan_dir = tmp_path / "nan-student"
    shutil.copytree(world["compact"], nan_dir)
    model = load_compact(nan_dir)
    with torch.no_grad():
        model.bert.layers[0].qkv.weight[0, 0] = float("nan")
    model.save_pretrained(nan_dir)
    result = _cli(_args(world, nan_dir, tmp_path / "out", "--stage1-epochs", "4"))
    assert_one_line_error(result, "NaN")
    assert not (tmp_path / "out").exists()
    log = [json.loads(x) for x in (tmp_path / "out.partial" / "distill_log.jsonl").read_text().splitlines()]
    assert len(log) == 10 and all(r.get("skipped") for r in log)


def test_cli_distill_default_output_and_message(world, tmp_path):
    student = tmp_path / "student"
    shutil.copytree(world["compact"], student)
    result = _cli(["distill", str(student), "--data", str(world["data"]), "--stage1-epochs", "1", "--stage2-epochs", "1",
                   "--batch-size", "16", "--max-length", str(SEQ), "--augment-copies", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "dev accuracy: teacher" in result.output and (tmp_path / "student-distilled" / "model.safetensors").is_file()


# ------------------------------------------------------------------------------------------------
def _teacher_scores(monkeypatch, value: float) -> None:
    """The teacher's dev score (the call that compares the teacher's outputs with themselves) set to ``value``."""
    import prunekit.distill as D

    real = D.dev_metrics

    def scripted(kind, outputs, teacher_outputs, dev):
        name, m = real(kind, outputs, teacher_outputs, dev)
        return name, ({**m, name: value} if outputs is teacher_outputs else m)

    monkeypatch.setattr(D, "dev_metrics", scripted)


def test_dev_set_the_teacher_has_seen_is_named(world, tmp_path, monkeypatch):
    """The dev set held out of --data, where the teacher scores near-perfectly (it was fine-tuned on
    --data): the CLI says so in one note and asks for --dev-data, and the report records it. With
    --dev-data, or a teacher that is not near-perfect there, no note."""
    _teacher_scores(monkeypatch, 0.99)
    r = _cli(_args(world, world["compact"], tmp_path / "held"))
    assert r.exit_code == 0, r.output
    # (the tiny student may also get the note that it did not learn: test_a_student_that_did_not_learn_is_named)
    notes = [line for line in r.output.splitlines() if line.startswith("note:") and "dev set" in line]
    assert len(notes) == 1 and "accuracy 0.990 on the dev set held out of --data" in notes[0] and "--dev-data" in notes[0]
    report = json.loads((tmp_path / "held" / "distill_report.json").read_text())
    assert report["dev_held_out_of_data"] is True and "fine-tuned on these examples" in report["dev_warning"]

    dev = labelled_csv(tmp_path / "dev.csv", seed=7)
    r = _cli(_args(world, world["compact"], tmp_path / "given", "--dev-data", str(dev)))
    assert r.exit_code == 0 and "held out of --data" not in r.output, r.output
    assert json.loads((tmp_path / "given" / "distill_report.json").read_text())["dev_held_out_of_data"] is False

    _teacher_scores(monkeypatch, 0.80)
    r = _cli(_args(world, world["compact"], tmp_path / "honest"))
    assert r.exit_code == 0 and "held out of --data" not in r.output, r.output


def test_student_saved_without_a_compact_report_distils_without_a_card(world, tmp_path):
    # a compact model saved by other code (save_pretrained, as benchmarks/arch_speed.py does) has no
    # compact_report.json: distill used to fail at the very end, after training, writing its card
    student = tmp_path / "student"
    shutil.copytree(world["compact"], student)
    (student / "compact_report.json").unlink()
    (student / "README.md").unlink(missing_ok=True)
    r = distill(settings(world, tmp_path / "out", student=str(student), stage1_epochs=0.5, stage2_epochs=0.5), progress=False)
    assert (r.output_dir / "model.safetensors").is_file() and (r.output_dir / "distill_report.json").is_file()
    assert not (r.output_dir / "README.md").exists() and not (tmp_path / "out.partial").exists()


def test_length_groups_train_with_the_same_steps(world, tmp_path):
    # texts of very different lengths (the padding saved is tested in test_batching.py)
    rows = ["text,label"] + [f"{' '.join(random.Random(i).choices(WORDS, k=3 if i % 4 else 40))},{i % 2}" for i in range(96)]
    data = tmp_path / "mixed.csv"
    data.write_text("\n".join(rows) + "\n")
    plans = {}
    for grouped in (False, True):
        r = distill(settings(world, tmp_path / f"out-{grouped}", data=str(data), stage1_epochs=1, stage2_epochs=1,
                             group_by_length=grouped), progress=False)
        assert (r.output_dir / "model.safetensors").is_file()
        report = json.loads((r.output_dir / "distill_report.json").read_text())
        plans[grouped] = report["plan"]
        assert json.loads((r.output_dir / "settings.json").read_text())["group_by_length"] is grouped
    assert plans[True]["stage1_steps"] == plans[False]["stage1_steps"]  # the same batches per epoch
    assert plans[True]["stage2_steps"] == plans[False]["stage2_steps"]


def test_learning_check_against_the_majority_label():
    """A classifier no better on dev than always answering the most frequent label (by one example, counted
    in examples: 6/7 is one more than 5/7 whatever the rounding), or with an MCC <= 0 where the task has no
    accuracy, is named; one that beats it, a teacher that does not, a regression and an unlabelled dev set
    are not checked."""
    from prunekit.data.tasks import TextDataset, _custom_task
    from prunekit.distill import learning_check

    task = _custom_task("classification", 2, ("no", "yes"))
    dev = TextDataset(list("abcdefg"), None, [1, 1, 1, 0, 1, 0, 1], task, "dev")  # 5 of 7 "yes"
    teacher = {"accuracy": 1.0}

    def check(metrics, metric="accuracy", teacher_dev=teacher, stage1=0, data=dev, kind="classification"):
        return learning_check(kind, data, {"metrics": metrics}, metric, teacher_dev, stage1)

    learned, warn = check({"accuracy": 5 / 7})
    assert learned is False and "did not learn" in warn and "'yes' (0.7143)" in warn and "--stage1-epochs 1" in warn
    assert check({"accuracy": 6 / 7}) == (True, None)  # 5/7 + 1/7 != 6/7 in floating point
    assert check({"accuracy": 4 / 7})[0] is False
    assert "picked by f1" in check({"accuracy": 5 / 7, "f1": 0.83}, metric="f1")[1]
    assert "it had 12 steps of stage 1" in check({"accuracy": 5 / 7}, stage1=12)[1]
    assert check({"accuracy": 5 / 7}, teacher_dev={"accuracy": 5 / 7}) == (None, None)  # the teacher cannot either
    assert check({"mcc": 0.0}, metric="mcc", teacher_dev={"mcc": 0.4})[0] is False
    assert check({"mcc": 0.2}, metric="mcc", teacher_dev={"mcc": 0.4}) == (True, None)
    assert check({"accuracy": 5 / 7}, kind="regression") == (None, None)
    unlabelled = TextDataset(["a", "b"], None, None, task, "dev")
    assert check({"accuracy": 0.5}, data=unlabelled) == (None, None)
    assert check(None) == (None, None)


def test_a_student_that_did_not_learn_is_named(world, tmp_path, monkeypatch):
    """The CLI says in one note that the student is no better than the majority label, and the report and
    the model card record it (the student's dev accuracy scripted to 0, the teacher's to 0.9)."""
    import prunekit.distill as D

    real = D.dev_metrics

    def scripted(kind, outputs, teacher_outputs, dev):
        name, m = real(kind, outputs, teacher_outputs, dev)
        return name, {**m, "accuracy": 0.9 if outputs is teacher_outputs else 0.0}  # a teacher above the majority label

    monkeypatch.setattr(D, "dev_metrics", scripted)
    r = _cli(_args(world, world["compact"], tmp_path / "out"))
    assert r.exit_code == 0, r.output
    notes = [line for line in r.output.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "did not learn" in notes[0], r.output
    report = json.loads((tmp_path / "out" / "distill_report.json").read_text())
    assert report["learned"] is False and "did not learn" in report["learn_warning"]
    assert "**Warning:** the student did not learn" in (tmp_path / "out" / "README.md").read_text()


def test_output_spread():
    from prunekit.distill import output_spread

    ref = torch.tensor([[1.0, -1.0], [3.0, 0.0], [-2.0, 4.0]])
    assert output_spread(ref, ref) == pytest.approx(1.0)
    assert output_spread(0.5 * ref + 7.0, ref) == pytest.approx(0.5)  # a shift does not count, a scale does
    assert output_spread(torch.full((3, 2), 0.3), ref) == 0.0
    assert output_spread(ref[:1], ref[:1]) != output_spread(ref[:1], ref[:1])  # NaN: one example has no spread


def _flat_student(world, root: Path) -> Path:
    """The world's compact student with a zero classifier: the same logits for every input."""
    flat = root / "flat-student"
    shutil.copytree(world["compact"], flat)
    model = load_compact(flat)
    with torch.no_grad():
        model.classifier.weight.zero_()
    model.save_pretrained(flat)
    return flat


def test_a_student_that_starts_flat_gets_stage1(world, tmp_path):
    """A student whose outputs do not vary over the dev set gets --flat-start-stage1-epochs of stage 1
    where the run gives stage 1 none (from the epochs, and with --budget at most half of it); 0 turns
    that off, and a student that starts varied gets none."""
    flat = _flat_student(world, tmp_path)
    r = distill(settings(world, tmp_path / "flat", student=str(flat), stage1_epochs=0, stage2_epochs=1), force=True)
    report = json.loads((tmp_path / "flat" / "distill_report.json").read_text())
    per_epoch = -(-report["train_examples"] // 16)
    assert report["plan"]["stage1_steps"] == per_epoch and report["plan"]["flat_start"] == 0.0
    assert [x["stage"] for x in r.log][0] == 1  # the first evaluation ends stage 1

    distill(settings(world, tmp_path / "off", student=str(flat), stage1_epochs=0, stage2_epochs=1,
                     flat_start_stage1_epochs=0), force=True)
    assert json.loads((tmp_path / "off" / "distill_report.json").read_text())["plan"]["stage1_steps"] == 0

    distill(settings(world, tmp_path / "budget", student=str(flat), budget="20steps", stage1_share=0.0), force=True)
    plan = json.loads((tmp_path / "budget" / "distill_report.json").read_text())["plan"]
    assert (plan["stage1_steps"], plan["stage2_steps"]) == (min(per_epoch, 10), 20 - min(per_epoch, 10))

    distill(settings(world, tmp_path / "one", student=str(flat), budget="1steps", stage1_share=0.0), force=True)  # no room for stage 1
    plan = json.loads((tmp_path / "one" / "distill_report.json").read_text())["plan"]
    assert (plan["stage1_steps"], plan["stage2_steps"], plan["flat_start"]) == (0, 1, None)

    distill(settings(world, tmp_path / "varied", stage1_epochs=0, stage2_epochs=1), force=True)
    plan = json.loads((tmp_path / "varied" / "distill_report.json").read_text())["plan"]
    assert plan["stage1_steps"] == 0 and plan["flat_start"] is None
