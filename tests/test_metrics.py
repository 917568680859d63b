"""prunekit.metrics against values worked out by hand."""
import math

import numpy as np
import pytest
import torch

from prunekit.data import AX_TASK, CORPUS_TASK, GLUE_TASKS, TaskSpec
from prunekit.errors import PrunekitError
from prunekit.metrics import compute_metrics, embedding_fidelity, primary_metric

# Six examples: TP=2 (0,1), FN=1 (2), TN=2 (3,4), FP=1 (5).
Y = [1, 1, 1, 0, 0, 0]
P = [1, 1, 0, 0, 0, 1]


def test_mcc_accuracy_f1_by_hand():
    # MCC = (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (4 - 1) / sqrt(3*3*3*3) = 1/3
    assert compute_metrics(GLUE_TASKS["cola"], P, Y) == {"mcc": pytest.approx(1 / 3)}
    # precision = recall = 2/3, so F1 = 2/3; accuracy = 4/6
    out = compute_metrics(GLUE_TASKS["mrpc"], P, Y)
    assert list(out) == ["f1", "accuracy"]
    assert out["f1"] == pytest.approx(2 / 3) and out["accuracy"] == pytest.approx(4 / 6)


def test_f1_positive_class_is_one():
    # All predictions 1: precision 3/6, recall 1 -> F1 = 2*0.5*1/1.5 = 2/3. (Positive class 0 would give 0.)
    assert compute_metrics(GLUE_TASKS["qqp"], [1] * 6, Y)["f1"] == pytest.approx(2 / 3)
    assert compute_metrics(GLUE_TASKS["qqp"], [0] * 6, Y)["f1"] == 0.0


def test_logits_argmax_and_tensors():
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 0.0], [0.0, 0.0, 0.5], [0.0, 1.0, 0.0]])
    labels = torch.tensor([1, 0, 1, 1])
    out = compute_metrics(GLUE_TASKS["mnli"], logits, labels)
    assert out == {"accuracy": pytest.approx(3 / 4)}
    assert compute_metrics(GLUE_TASKS["sst2"], np.array([0.0, 1.0]), [0, 1]) == {"accuracy": 1.0}


def test_pearson_spearman():
    x = np.arange(10, dtype=float)
    out = compute_metrics(GLUE_TASKS["stsb"], 3 * x - 2, x)
    assert out["pearson"] == pytest.approx(1.0) and out["spearman"] == pytest.approx(1.0)
    # Monotone but not linear: Spearman 1, Pearson below 1.
    out = compute_metrics(GLUE_TASKS["stsb"], np.exp(x), x)
    assert out["spearman"] == pytest.approx(1.0) and out["pearson"] < 0.9
    # x = [1,2,3], y = [1,3,2]: deviations (-1,0,1) and (-1,1,0) -> r = 1 / sqrt(2*2) = 0.5; ranks equal values.
    out = compute_metrics(GLUE_TASKS["stsb"], torch.tensor([[1.0], [2.0], [3.0]]), [1.0, 3.0, 2.0])
    assert out["pearson"] == pytest.approx(0.5) and out["spearman"] == pytest.approx(0.5)
    assert math.isnan(compute_metrics(GLUE_TASKS["stsb"], [2.0, 2.0, 2.0], [1.0, 2.0, 3.0])["pearson"])


def test_primary_metric():
    expected = {"cola": "mcc", "sst2": "accuracy", "mrpc": "f1", "qqp": "f1", "stsb": "spearman",
                "mnli": "accuracy", "qnli": "accuracy", "rte": "accuracy", "wnli": "accuracy"}
    assert {k: primary_metric(t) for k, t in GLUE_TASKS.items()} == expected
    assert primary_metric(AX_TASK) == "mcc"
    assert primary_metric(CORPUS_TASK) == "similarity_spearman"
    out = compute_metrics(GLUE_TASKS["mrpc"], P, Y)
    assert next(iter(out)) == primary_metric(GLUE_TASKS["mrpc"])


def test_multiclass_custom_f1_is_macro():
    spec = TaskSpec("custom", "classification", 3, ("a", "b", "c"), ("accuracy", "f1"))
    # per-class F1: a: p=1,r=1 -> 1; b: p=1/2, r=1 -> 2/3; c: p=0, r=0 -> 0; macro = 5/9
    out = compute_metrics(spec, [0, 1, 1], [0, 1, 2])
    assert out["f1"] == pytest.approx(5 / 9)


def test_metric_errors():
    sst2 = GLUE_TASKS["sst2"]
    with pytest.raises(PrunekitError, match="3 predictions but 2 labels"):
        compute_metrics(sst2, [0, 1, 1], [0, 1])
    with pytest.raises(PrunekitError, match="empty input"):
        compute_metrics(sst2, [], [])
    with pytest.raises(PrunekitError, match="no labels"):
        compute_metrics(sst2, [0, 1], None)
    with pytest.raises(PrunekitError, match="unlabelled.*embedding_fidelity"):
        compute_metrics(CORPUS_TASK, [0], [0])
    with pytest.raises(PrunekitError, match="gives 3 logits per example but sst2 has 2 labels"):
        compute_metrics(sst2, np.zeros((2, 3)), [0, 1])
    with pytest.raises(PrunekitError, match="must be class ids"):
        compute_metrics(sst2, [0.3, 0.7], [0, 1])
    with pytest.raises(PrunekitError, match="one score per example"):
        compute_metrics(GLUE_TASKS["stsb"], np.zeros((2, 2)), [0.0, 1.0])


def test_embedding_fidelity():
    rng = np.random.default_rng(0)
    t = rng.standard_normal((40, 16))
    same = embedding_fidelity(t.copy(), t)
    assert same["mean_cosine"] == pytest.approx(1.0) and same["similarity_spearman"] == pytest.approx(1.0)
    # A rotation keeps every pairwise similarity (Spearman 1) but moves each vector (mean cosine < 1).
    q, _ = np.linalg.qr(rng.standard_normal((16, 16)))
    rot = embedding_fidelity(torch.tensor(t @ q), torch.tensor(t))
    assert rot["similarity_spearman"] == pytest.approx(1.0) and rot["mean_cosine"] < 0.9
    # Scaling does not matter; negation flips cosine to -1 and keeps the structure.
    assert embedding_fidelity(5 * t, t)["mean_cosine"] == pytest.approx(1.0)
    assert embedding_fidelity(-t, t)["mean_cosine"] == pytest.approx(-1.0)
    # Hand example: cos((1,0),(1,0)) = 1, cos((0,1),(1,1)) = 1/sqrt2, cos((1,1),(0,1)) = 1/sqrt2
    s3 = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    t3 = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    assert embedding_fidelity(s3, t3)["mean_cosine"] == pytest.approx((1 + 2 / math.sqrt(2)) / 3)
    # Unrelated embeddings: structure correlation near 0.
    assert abs(embedding_fidelity(rng.standard_normal((60, 16)), t[:30].repeat(2, 0))["similarity_spearman"]) < 0.2
    with pytest.raises(PrunekitError, match="differ in the number of sentences"):
        embedding_fidelity(t[:5], t[:6])
    # A narrower student (compact --narrow-output): the same pairwise structure in 16 of 24 dims scores
    # Spearman 1; mean_cosine has no common space (left out)
    wide = np.concatenate([t, np.zeros((40, 8))], axis=1)
    narrow = embedding_fidelity(t @ q, wide)
    assert narrow == {"similarity_spearman": pytest.approx(1.0)}
    with pytest.raises(PrunekitError, match="at least 3 sentences"):
        embedding_fidelity(t[:2], t[:2])
    with pytest.raises(PrunekitError, match=r"\[N, D\] matrices"):
        embedding_fidelity(t[0], t[0])
