"""A compact dir loads without prunekit: transformers' Auto classes and pipeline with
``trust_remote_code=True``, and sentence-transformers for an embedding model, in a Python process
where prunekit cannot be imported; the outputs equal prunekit's own within fp32 tolerance."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from factory import edge_architecture, make_run_dir, make_sentences, random_batch
from prunekit.compact import compact_to_dir
from prunekit.modeling import load_compact
from prunekit.models import load_teacher
from prunekit.portable_modeling import FILE_NAME

# Run first in the child: any import of prunekit or prunekit_kernels fails, as where neither is installed.
HIDE_PRUNEKIT = '''
import importlib.abc, sys
class NoPrunekit(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("prunekit", "prunekit_kernels"):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)", name=name)
sys.meta_path.insert(0, NoPrunekit())
'''
TOL = dict(atol=1e-5, rtol=1e-5)  # fp32: the same operations, in the same order, on the same weights


def without_prunekit(code: str, tmp_path: Path) -> dict:
    """Run ``code`` (which sets ``result``) where prunekit cannot be imported; returns ``result``."""
    script = tmp_path / "child.py"
    script.write_text(HIDE_PRUNEKIT + code + '\nassert not any(m.split(".")[0] == "prunekit" for m in sys.modules)\n'
                      'import json; print("RESULT" + json.dumps(result))\n')
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(tmp_path / "hf_modules"), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)  # a trust_remote_code prompt fails at once
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")), None)
    assert line is not None, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(line[len("RESULT"):])


def compact_dir(tiny_models, tmp_path: Path, shape: str, kind: str, seed: int) -> tuple[Path, object]:
    teacher = load_teacher(str(tiny_models(shape, kind)))
    arch = edge_architecture(teacher.shape, seed=seed)  # uneven heads, a layer with none, one with nothing
    assert 0 in arch.head_counts and len(set(arch.head_counts)) > 2
    out = tmp_path / f"{kind}-compact"
    compact_to_dir(make_run_dir(tmp_path / f"{kind}-run", teacher, arch), out_dir=out, measure_fvcore=False)
    return out, teacher


def test_dir_carries_its_modeling_code(tiny_models, tmp_path):
    out, _ = compact_dir(tiny_models, tmp_path, "minilm6", "classification", seed=5)
    cfg = json.loads((out / "config.json").read_text())
    module = FILE_NAME[:-3]
    assert cfg["auto_map"] == {"AutoConfig": f"{module}.CompactBertConfig", "AutoModel": f"{module}.CompactBertModel",
                               "AutoModelForSequenceClassification": f"{module}.CompactBertForSequenceClassification"}
    text = (out / FILE_NAME).read_text()
    assert "prunekit" not in "".join(ln for ln in text.splitlines() if ln.lstrip().startswith(("import ", "from ")))


@pytest.mark.slow  # a child Python that imports transformers: ~10 s
def test_classifier_loads_with_stock_transformers(tiny_models, tmp_path):
    out, teacher = compact_dir(tiny_models, tmp_path, "bert12", "classification", seed=31)
    batch = random_batch(teacher.config.vocab_size, 3, 10, seed=32)
    sentences = make_sentences(4, seed=3)
    code = f'''
import torch
from transformers import AutoModel, AutoModelForSequenceClassification, pipeline
batch = {{k: torch.tensor(v) for k, v in {json.dumps({k: v.tolist() for k, v in batch.items()})}.items()}}
clf = AutoModelForSequenceClassification.from_pretrained({str(out)!r}, trust_remote_code=True).eval()
enc = AutoModel.from_pretrained({str(out)!r}, trust_remote_code=True).eval()
with torch.no_grad():
    result = {{"logits": clf(**batch).logits.tolist(), "hidden": enc(**batch).last_hidden_state.tolist(),
              "eager": AutoModelForSequenceClassification.from_pretrained({str(out)!r}, trust_remote_code=True,
                                                                          ).eval()(**batch, output_attentions=True).logits.tolist(),
              "class": type(clf).__module__}}
pipe = pipeline("text-classification", model={str(out)!r}, trust_remote_code=True, top_k=None)
result["pipeline"] = [{{d["label"]: d["score"] for d in row}} for row in pipe({sentences!r})]
'''
    got = without_prunekit(code, tmp_path)
    assert got["class"].startswith("transformers_modules")  # the dir's own file, not prunekit's classes

    for backend in ("eager", "sdpa"):
        model = load_compact(out, backend=backend)
        with torch.no_grad():
            logits = model(**batch).logits
            hidden = model.bert(**batch).last_hidden_state
        torch.testing.assert_close(torch.tensor(got["logits"]), logits, **TOL)
        torch.testing.assert_close(torch.tensor(got["eager"]), logits, **TOL)
        torch.testing.assert_close(torch.tensor(got["hidden"]), hidden, **TOL)

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    enc = tok(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        probs = load_compact(out)(**enc).logits.softmax(-1)
    id2label = load_compact(out).config.id2label
    for row, p in zip(got["pipeline"], probs):
        assert row.keys() == {id2label[i] for i in range(len(p))}
        np.testing.assert_allclose([row[id2label[i]] for i in range(len(p))], p.numpy(), atol=1e-5)


def test_prunekit_still_takes_its_own_classes(tiny_models, tmp_path):
    """With prunekit imported and no trust_remote_code, the Auto classes give prunekit's model (every backend)."""
    from transformers import AutoModelForSequenceClassification

    from prunekit.modeling import CompactBertForSequenceClassification

    out, _ = compact_dir(tiny_models, tmp_path, "minilm6", "classification", seed=7)
    assert type(AutoModelForSequenceClassification.from_pretrained(out)) is CompactBertForSequenceClassification


@pytest.mark.slow
def test_embedding_model_loads_with_stock_transformers_and_sentence_transformers(tiny_models, tmp_path):
    out, teacher = compact_dir(tiny_models, tmp_path, "tinybert4", "embedding", seed=41)
    assert json.loads((out / "1_Pooling" / "config.json").read_text())["pooling_mode_mean_tokens"]
    batch = random_batch(teacher.config.vocab_size, 2, 8, seed=42)
    sentences = make_sentences(5, seed=4)
    has_st = importlib.util.find_spec("sentence_transformers") is not None  # a dev dependency
    code = f'''
import torch
from transformers import AutoModel
batch = {{k: torch.tensor(v) for k, v in {json.dumps({k: v.tolist() for k, v in batch.items()})}.items()}}
with torch.no_grad():
    result = {{"hidden": AutoModel.from_pretrained({str(out)!r}, trust_remote_code=True).eval()(**batch).last_hidden_state.tolist()}}
if {has_st}:
    from sentence_transformers import SentenceTransformer
    st = SentenceTransformer({str(out)!r}, trust_remote_code=True, device="cpu")
    result["st"] = st.encode({sentences!r}, convert_to_numpy=True).tolist()
'''
    got = without_prunekit(code, tmp_path)
    model = load_compact(out, backend="sdpa")
    with torch.no_grad():
        torch.testing.assert_close(torch.tensor(got["hidden"]), model(**batch).last_hidden_state, **TOL)
    if not has_st:
        pytest.skip("sentence-transformers is not installed (it is a dev dependency)")
    from transformers import AutoTokenizer

    from prunekit.models import model_output  # what eval scores an embedding model by: mean-pooled states

    enc = AutoTokenizer.from_pretrained(out)(sentences, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        mine = model_output(model, "embedding", dict(enc))
    torch.testing.assert_close(torch.tensor(got["st"]), mine, **TOL)  # no Normalize module: the raw mean


@pytest.mark.slow
def test_onnx_export_runs_in_plain_onnxruntime_with_the_models_tokenizer(tiny_models, tmp_path):
    """The README's snippet: onnxruntime and the model dir's tokenizer, no prunekit."""
    from transformers import AutoTokenizer

    from prunekit.export import ExportSettings, export_onnx

    out, _ = compact_dir(tiny_models, tmp_path, "minilm6", "classification", seed=9)
    onnx_file = tmp_path / "model.onnx"
    export_onnx(out, onnx_file, ExportSettings())
    sentences = make_sentences(3, seed=5)
    code = f'''
import onnxruntime as ort
from transformers import AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained({str(out)!r}, trust_remote_code=True)  # its config names remote code
session = ort.InferenceSession({str(onnx_file)!r}, providers=["CPUExecutionProvider"])
inputs = tokenizer({sentences!r}, padding=True, return_token_type_ids=True, return_tensors="np")
(logits,) = session.run(["logits"], {{k: v for k, v in inputs.items()}})
result = {{"logits": logits.tolist()}}
'''
    got = without_prunekit(code, tmp_path)
    enc = AutoTokenizer.from_pretrained(out)(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = load_compact(out)(**enc).logits
    torch.testing.assert_close(torch.tensor(got["logits"]), want, atol=1e-4, rtol=1e-4)  # export's own check: 1e-4


def test_sentence_transformers_files_of_a_hub_teacher_come_from_the_local_cache(tmp_path, monkeypatch):
    """A hub-id teacher's modules and pooling config are read from the hub cache (never downloaded)."""
    from prunekit.portable import write_sentence_transformers_files

    snapshot = tmp_path / "hub" / "models--org--st-model" / "snapshots" / "abc123"
    (snapshot / "1_Pooling").mkdir(parents=True)
    (tmp_path / "hub" / "models--org--st-model" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--st-model" / "refs" / "main").write_text("abc123")
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
    (snapshot / "modules.json").write_text(json.dumps(modules))
    (snapshot / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 8, "pooling_mode_cls_token": True}))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    dst = tmp_path / "dst"
    dst.mkdir()
    write_sentence_transformers_files(dst, "org/st-model", 8, 64)
    assert json.loads((dst / "modules.json").read_text()) == modules
    assert json.loads((dst / "1_Pooling" / "config.json").read_text())["pooling_mode_cls_token"] is True
    assert (dst / "2_Normalize").is_dir()
    other = tmp_path / "other"
    other.mkdir()
    write_sentence_transformers_files(other, "org/not-cached", 8, 64)  # no cache entry: mean pooling
    assert json.loads((other / "1_Pooling" / "config.json").read_text())["pooling_mode_mean_tokens"] is True
