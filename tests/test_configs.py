"""config.json checks that bound what building a model allocates (prunekit/configs.py).

Each size alone is range-checked; these cases are the ones where only the product is absurd, or
where there is no safetensors header to compare against (.bin weights)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from factory import kept_arch, make_compact_dir, make_tiny_model
from prunekit.configs import MAX_PARAMS, check_model_config, estimated_params
from prunekit.errors import PrunekitError


def _edit(path: Path, **changes) -> None:
    cfg = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    path.write_text(json.dumps(cfg))


def _as_bin(model_dir: Path) -> None:
    """Re-save a model dir's weights as pytorch_model.bin (no safetensors header left to read)."""
    from safetensors.torch import load_file

    st = model_dir / "model.safetensors"
    torch.save(load_file(str(st)), model_dir / "pytorch_model.bin")
    st.unlink()


@pytest.fixture
def teacher(tmp_path):
    return make_tiny_model(tmp_path / "teacher", "minilm6", "classification")


def test_estimate_matches_the_built_model(teacher):
    from transformers import AutoModel

    cfg = check_model_config(teacher)
    built = AutoModel.from_pretrained(teacher)
    n = sum(p.numel() for name, p in built.named_parameters() if not name.startswith("pooler"))
    # The estimate leaves out biases and LayerNorms: a lower bound within a few percent.
    assert estimated_params(cfg) <= n <= 1.05 * estimated_params(cfg)


def test_bin_weights_with_a_huge_ffn_are_refused_before_building(teacher):
    _as_bin(teacher)
    check_model_config(teacher)  # the untouched .bin model passes
    _edit(teacher / "config.json", intermediate_size=1 << 20)  # in range alone; 12 GB of parameters with the rest
    with pytest.raises(PrunekitError, match="parameters"):
        check_model_config(teacher)


def test_bin_weights_too_small_for_the_config(teacher):
    _as_bin(teacher)
    cfg = json.loads((teacher / "config.json").read_text())
    _edit(teacher / "config.json", intermediate_size=cfg["intermediate_size"] * 8)
    with pytest.raises(PrunekitError, match="does not belong to these weights"):
        check_model_config(teacher)


def test_compact_config_must_list_per_layer_sizes(teacher, tmp_path):
    student = make_compact_dir(tmp_path, teacher, kept_arch())
    _edit(student / "config.json", num_heads_per_layer=None, kept_heads=None)
    with pytest.raises(PrunekitError, match="num_heads_per_layer is missing"):
        check_model_config(student)


def test_compact_config_huge_head_dim_is_refused(teacher, tmp_path):
    student = make_compact_dir(tmp_path, teacher, kept_arch())
    # Every number in range alone and the per-layer lists consistent: 6 layers of 64 heads of 65536.
    _edit(student / "config.json", head_dim=65536, num_attention_heads=64, num_heads_per_layer=[64] * 6,
          kept_heads=[list(range(64))] * 6)
    with pytest.raises(PrunekitError, match=re.escape(f"over {MAX_PARAMS:.0e}")):
        check_model_config(student)


# ------------------------------------------------------------------------------------------------
# The export report beside an .onnx file (<file>.onnx.json), read by eval and bench
@pytest.mark.parametrize("report", [
    "[" * 100_000 + "]" * 100_000,  # nested too deeply for the JSON parser
    '{"params": ' + "9" * 5000 + "}",  # more digits than Python converts
    '{"shape": [1]}',
    '{"shape": {"num_layers": 2, "bogus": 1}}',
    '{"shape": {"num_layers": -3}}',
    '{"kind": 5}',
    '{"heads_per_layer": "abc"}',
    '{"checks": [1, 2]}',
    '"just a string"',
    b"\xff\xfe\x00garbage",
])
def test_corrupt_onnx_report_is_one_clear_error(tmp_path, report):
    from prunekit.backends import load_onnx_file

    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"not read before the report is checked")
    side = tmp_path / "model.onnx.json"
    side.write_bytes(report if isinstance(report, bytes) else report.encode())
    with pytest.raises(PrunekitError, match="model.onnx.json"):
        load_onnx_file(onnx)


def test_valid_onnx_report_is_kept(tmp_path):
    from prunekit.backends import load_onnx_file

    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"x")
    report = {"kind": "embedding", "heads_per_layer": [2, 0], "shape": {"num_layers": 2, "hidden_size": 32, "num_heads": 4,
              "head_dim": 8, "intermediate_size": 64, "num_labels": 0}}
    (tmp_path / "model.onnx.json").write_text(json.dumps(report))
    assert load_onnx_file(onnx).info == report
