"""A measured latency model of a BERT encoder on one backend: what ``search --cost latency`` targets.

The model is additive over layers (``docs`` of issue 19)::

    latency(arch) = rest + sum_l [fixed + A(h_l) + F(w_l)]

``rest``: the model-level cost (embeddings, pooler/classifier or pooling, the call's overhead);
``fixed``: a layer with no heads and no FFN (its residuals and LayerNorms); ``A``: a monotone
piecewise-linear function of the layer's head count (a knot at every h = 0..H, A(0) = 0); ``F``:
the same over the FFN width, with knots on a grid of widths (0 and I included, F(0) = 0).

Fitting (:func:`fit`) from the times of uniform models (every layer the same), L layers:
``T(h, w) = rest + L*fixed + L*A(h) + L*F(w)``, so

* ``A(h) = (T(h, I) - T(0, I)) / L`` (the head sweep, at full FFN width),
* ``F(w) = (T(H, w) - T(H, 0)) / L`` (the width sweep, with every head),
* ``fixed = (T_L(0, 0) - T_1(0, 0)) / (L - 1)`` and ``rest = T_1(0, 0) - fixed`` (the model with no
  heads and no FFN, with L layers and with 1).

With ``--prune-hidden`` the hidden (residual) width d enters as one factor per width, fitted from
two more models at each of a few widths (every head and neuron, and none)::

    latency(arch, d) = base(d) + s(d) * sum_l [A(h_l) + F(w_l)]

``base(d)``: the no-heads, no-FFN model at width d (embeddings, LayerNorms, residuals: rest + L*fixed at
d = full width); ``s(d)``: the full model's time over the no-heads model's, at d over at full width (the
projections shrink with d; attention's own work does not, which one factor per width averages). Both
are monotone in d and exact at the full width, where the model is the one above.

When the measured times are additive this reproduces every one of them exactly; otherwise the full
model's prediction misses its measured time by ``T(0,0) + T(H,I) - T(0,I) - T(H,0)`` (recorded as
``additivity_error``). A and F are made monotone by isotonic regression (monotone input is kept as
it is), so that pruning never predicts a slower model. Ratios are the model's prediction over its
prediction of the full model, times ``overhead``: the full-size compact model's measured time over
the original's, both as the backend runs them (a random-weight original of the base config is timed
beside the compact models; on a compact-only backend the original runs on its counterpart, as bench's
speedup does: ``triton-fp16-graph`` over ``torch-fp16-graph``; 1 without a base config).

Times are drift-corrected (:mod:`prunekit.timing`): every model once per round, each one's median
ratio to the full-size compact model in the same round, so that a shared machine's change of speed
over the profile does not bend the curves.

The measurements (:func:`profile`) are compact models with random weights timed through
:func:`prunekit.backends.build_runner`, interleaved as bench does. For a compact-only backend
(``triton*``, ``*-packed``) the reference is the original on the counterpart backend (above).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import PrunekitError
from .flops import ModelShape
from .io import atomic_write_text, read_json
from .timing import drift_corrected

log = logging.getLogger(__name__)

FORMAT = "prunekit-latency-table"
VERSION = 1
# The profiled models' vocabulary: an embedding lookup costs the same for any table size (to first
# order), and BERT's 30k rows would make every saved model 90 MB larger.
PROFILE_VOCAB = 1024


def default_hidden_grid(hidden_size: int) -> list[int]:
    """Hidden widths to time besides the full one: 1/8, 1/4, 1/2 and 3/4 of it."""
    return sorted({max(1, round(hidden_size * k / 8)) for k in (1, 2, 4, 6)} - {hidden_size})


def _isotonic(xs: list[float], ys: list[float]) -> list[float]:
    """The non-decreasing least-squares fit of ``ys`` over ``xs``, non-negative."""
    from sklearn.isotonic import IsotonicRegression

    return [max(0.0, float(v)) for v in IsotonicRegression(increasing=True).fit_transform(np.asarray(xs, float), np.asarray(ys, float))]


def default_width_grid(intermediate_size: int, points: int = 9) -> list[int]:
    """FFN widths to time: ``points`` evenly spaced from 0 to I (each distinct once)."""
    return sorted({round(intermediate_size * k / (points - 1)) for k in range(points)})


def _monotone(xs: list[float], ys: list[float]) -> list[float]:
    """The isotonic (non-decreasing) fit of ``ys``, non-negative, 0 at the first knot."""
    out = _isotonic(xs, ys)
    out[0] = 0.0
    return out


def _interp(x: torch.Tensor, kx: list[float], ky: list[float]) -> torch.Tensor:
    """Piecewise-linear interpolation of the knots (kx, ky) at ``x``, differentiable in ``x``."""
    knots_x = torch.tensor(kx, dtype=x.dtype, device=x.device)
    knots_y = torch.tensor(ky, dtype=x.dtype, device=x.device)
    i = (torch.searchsorted(knots_x, x.detach().contiguous(), right=True) - 1).clamp(0, len(kx) - 2)
    x0, x1, y0, y1 = knots_x[i], knots_x[i + 1], knots_y[i], knots_y[i + 1]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


@dataclass
class LatencyModel:
    """rest + sum over layers of [fixed + A(heads) + F(width)], in seconds per batch."""

    shape: ModelShape
    rest: float
    fixed: float
    head_knots: list[float]  # A(h), h = 0..H
    ffn_widths: list[int]  # the width grid (0 .. I)
    ffn_knots: list[float]  # F(w) on the grid
    key: dict = field(default_factory=dict)  # what it was measured on (table_key)
    measurements: dict = field(default_factory=dict)
    # The full-size compact model's time over the original's, both as the backend runs them (the original on
    # the counterpart of a compact-only backend; 1: not measured): ratios are over the original, which a user compares with.
    overhead: float = 1.0
    # The hidden width's terms (module docstring), on a grid of widths ending at the full one; empty
    # in a table made before they were measured (a --prune-hidden search asks for a new one).
    hidden_widths: list[int] = field(default_factory=list)
    hidden_base: list[float] = field(default_factory=list)  # base(d), seconds
    hidden_scale: list[float] = field(default_factory=list)  # s(d), 1 at the full width
    # A search's calibration (prunekit.search.calibrate_latency): one architecture timed before the gates
    # learn, its measured over predicted ratio ("scale") multiplying every ratio; empty: not calibrated.
    calibration: dict = field(default_factory=dict)

    @property
    def has_hidden(self) -> bool:
        return len(self.hidden_widths) >= 2

    @property
    def base(self) -> float:
        """The no-heads, no-FFN model at full width: rest + L * fixed."""
        return self.rest + self.shape.num_layers * self.fixed

    def _require_hidden(self) -> None:
        if not self.has_hidden:
            raise PrunekitError("this latency table has no hidden-width measurements (made before --prune-hidden used them): "
                                "re-measure it with --reprofile")

    def _hidden_terms(self, hidden: float | None) -> tuple[float, float]:
        """(base(d), s(d)) at hidden width ``hidden`` (None or the full width: :attr:`base`, 1)."""
        if hidden is None or hidden >= self.shape.hidden_size:
            return self.base, 1.0
        self._require_hidden()
        return (float(np.interp(hidden, self.hidden_widths, self.hidden_base)),
                float(np.interp(hidden, self.hidden_widths, self.hidden_scale)))

    def head_cost(self, heads: float) -> float:
        return float(np.interp(heads, range(len(self.head_knots)), self.head_knots))

    def ffn_cost(self, width: float) -> float:
        return float(np.interp(width, self.ffn_widths, self.ffn_knots))

    def latency(self, heads_per_layer, ffn_per_layer, hidden: float | None = None) -> float:
        base, scale = self._hidden_terms(hidden)
        return base + scale * sum(self.head_cost(h) + self.ffn_cost(w) for h, w in zip(heads_per_layer, ffn_per_layer))

    def full(self) -> float:
        s = self.shape
        return self.latency([s.num_heads] * s.num_layers, [s.intermediate_size] * s.num_layers)

    @property
    def scale(self) -> float:
        """What every ratio is multiplied by: the backend's full-size compact model over the original
        (:attr:`overhead`) times the calibration's measured over predicted ratio."""
        return self.overhead * float(self.calibration.get("scale", 1.0))

    def ratio(self, heads_per_layer, ffn_per_layer, hidden: float | None = None) -> float:
        """The compact model's latency over the original's (``hidden``: its hidden width, None: full)."""
        return self.scale * self.latency(heads_per_layer, ffn_per_layer, hidden) / self.full()

    def floor(self, hidden: bool = False) -> float:
        """The ratio with every head and neuron pruned: the fastest pruning can make the model
        (``hidden``: at the narrowest hidden width profiled, for a --prune-hidden search)."""
        base = self.hidden_base[0] if hidden and self.has_hidden else self.base
        return self.scale * base / self.full()

    def expected_ratio(self, head_gates: torch.Tensor, ffn_gates: torch.Tensor, hidden_gates: torch.Tensor | None = None) -> torch.Tensor:
        """The differentiable ratio under gates in [0, 1]: each layer's expected head count and
        width (sums of gate probabilities) through A and F, and the expected hidden width through
        base and s when its gates are given."""
        heads, widths = head_gates.sum(dim=1), ffn_gates.sum(dim=1)
        a = _interp(heads, [float(h) for h in range(len(self.head_knots))], self.head_knots)
        f = _interp(widths, [float(w) for w in self.ffn_widths], self.ffn_knots)
        if hidden_gates is None:
            base, scale = self.base, 1.0
        else:
            self._require_hidden()
            d = hidden_gates.sum().reshape(1)
            widths_d = [float(w) for w in self.hidden_widths]
            base, scale = _interp(d, widths_d, self.hidden_base)[0], _interp(d, widths_d, self.hidden_scale)[0]
        return self.scale * (base + scale * (a.sum() + f.sum())) / self.full()

    def hidden_share(self) -> float:
        """A hidden dimension's average share of the full latency (the search's gradient scale)."""
        s = self.shape
        d0 = self.hidden_widths[0]
        full_heads, full_ffn = [s.num_heads] * s.num_layers, [s.intermediate_size] * s.num_layers
        drop = self.full() - self.latency(full_heads, full_ffn, d0)
        return max(drop / max(1, s.hidden_size - d0) / self.full(), 1e-9)

    def head_marginals(self) -> list[float]:
        """The latency the (h+1)-th head adds to a layer, h = 0..H-1."""
        return list(np.diff(self.head_knots))

    def ffn_marginals(self) -> list[float]:
        """The latency the (w+1)-th neuron adds to a layer, w = 0..I-1."""
        return list(np.diff(np.interp(np.arange(self.shape.intermediate_size + 1), self.ffn_widths, self.ffn_knots)))

    def mean_group_costs(self) -> tuple[float, float]:
        """A head's and a neuron's average share of the full latency (the search's gradient scale)."""
        s, full = self.shape, self.full()
        head = self.head_knots[-1] / max(1, s.num_heads) / full
        neuron = self.ffn_knots[-1] / max(1, s.intermediate_size) / full
        return max(head, 1e-9), max(neuron, 1e-9)

    def to_dict(self) -> dict:
        out = {"rest": self.rest, "fixed": self.fixed, "head_knots": list(self.head_knots),
               "ffn_widths": list(self.ffn_widths), "ffn_knots": list(self.ffn_knots), "overhead": self.overhead}
        if self.has_hidden:
            out.update(hidden_widths=list(self.hidden_widths), hidden_base=list(self.hidden_base), hidden_scale=list(self.hidden_scale))
        if self.calibration:
            out["calibration"] = dict(self.calibration)
        return out

    def save_table(self, path: str | os.PathLike) -> None:
        """The table as JSON: the fitted model, its key and the raw measurements."""
        data = {"format": FORMAT, "version": VERSION, "key": self.key, "shape": self.shape.to_dict(),
                "model": self.to_dict(), "floor": self.floor(), "measurements": self.measurements}
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(path), json.dumps(data, indent=1) + "\n")


def fit(measurements: dict, shape: ModelShape) -> LatencyModel:
    """The latency model of :func:`profile`'s measurements (see the module's docstring for the algebra)."""
    m, L = measurements, shape.num_layers
    th, grid, tw = list(m["head_times"]), list(m["width_grid"]), list(m["width_times"])
    if len(th) != shape.num_heads + 1 or len(grid) != len(tw) or grid[0] != 0 or grid[-1] != shape.intermediate_size:
        raise PrunekitError("latency measurements: need a time for every head count 0..H and a width grid from 0 to I")
    a = _monotone(list(range(len(th))), [(t - th[0]) / L for t in th])
    f = _monotone(grid, [(t - tw[0]) / L for t in tw])
    fixed = max(0.0, (m["zero"] - m["zero_one_layer"]) / (L - 1)) if L > 1 else 0.0
    rest = max(0.0, (m["zero_one_layer"] if L > 1 else m["zero"]) - fixed)
    extra = {"additivity_error": (m["zero"] + th[-1] - th[0] - tw[0]) / th[-1] if th[-1] else 0.0}
    overhead = th[-1] / m["original"] if m.get("original") else 1.0
    model = LatencyModel(shape, rest, fixed, a, [int(w) for w in grid], f, measurements={**m, **extra}, overhead=overhead)
    if m.get("hidden_grid"):  # base(d): the no-heads model at d; s(d): the work over the no-heads model, over the full width's
        d, work = [int(w) for w in m["hidden_grid"]], th[-1] - m["zero"]
        base = [float(t) for t in m["hidden_zero_times"]] + [model.base]
        scale = [max(0.0, (full - zero) / work) if work > 0 else 1.0 for full, zero in zip(m["hidden_full_times"], m["hidden_zero_times"])]
        widths = d + [shape.hidden_size]
        # monotone in d, and exact at the full width (a narrower width never predicted slower than it)
        model.hidden_widths = widths
        model.hidden_base = [min(v, base[-1]) for v in _isotonic(widths, base)[:-1]] + [base[-1]]
        model.hidden_scale = [min(v, 1.0) for v in _isotonic(widths, scale + [1.0])[:-1]] + [1.0]
    return model


# ---------------------------------------------------------------- the table's key and file


def table_key(shape: ModelShape, backend: str, device: str, batch: int, seq_len: int, threads: int | None) -> dict:
    """What a latency table holds only for: the machine (CPU model and ISA flags, or the GPU), the
    backend and its dtype, threads, batch, sequence length, library versions and the model's shape."""
    from . import __version__
    from .backends import dtype_of
    from .system import cpu_info

    dev = torch.device(device)
    key = {"backend": backend, "dtype": dtype_of(backend), "device": dev.type, "threads": threads or torch.get_num_threads(),
           "batch": batch, "seq_len": seq_len, "torch": torch.__version__, "prunekit": __version__, "shape": shape.to_dict()}
    if backend.startswith("ort"):
        import onnxruntime

        key["onnxruntime"] = onnxruntime.__version__
    if dev.type == "cuda":
        key["gpu"] = torch.cuda.get_device_name(dev.index if dev.index is not None else torch.cuda.current_device())
    else:
        cpu = cpu_info()
        key["cpu"] = {"model": cpu["model"], "isa": cpu["isa"]}
    return key


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def key_differences(saved: dict, expected: dict) -> list[str]:
    """The fields where two keys differ (nested ones dotted: ``cpu.model``, ``shape.num_layers``)."""
    a, b = _flat(saved), _flat(expected)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def load_table(path: str | os.PathLike, expected_key: dict) -> LatencyModel:
    """A saved table, refused (one line naming the differing fields) when it was measured elsewhere."""
    data = read_json(path, "latency table", "re-measure it with --reprofile")
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("key"), dict):
        raise PrunekitError(f"{path} is not a prunekit latency table: re-measure it with --reprofile")
    diff = key_differences(data["key"], expected_key)
    if diff:
        a, b = _flat(data["key"]), _flat(expected_key)
        told = "; ".join(f"{k}: {a.get(k)!r} there, {b.get(k)!r} here" for k in diff[:4])
        more = f" (and {len(diff) - 4} more)" if len(diff) > 4 else ""
        raise PrunekitError(f"latency table {path} was measured on another setup ({told}{more}): "
                            "re-measure it with --reprofile, or give a matching --latency-table")
    try:
        m = data["model"]
        model = LatencyModel(ModelShape(**data["shape"]), float(m["rest"]), float(m["fixed"]), [float(v) for v in m["head_knots"]],
                             [int(w) for w in m["ffn_widths"]], [float(v) for v in m["ffn_knots"]], data["key"],
                             data.get("measurements") or {}, float(m.get("overhead", 1.0)),
                             [int(w) for w in m.get("hidden_widths", [])], [float(v) for v in m.get("hidden_base", [])],
                             [float(v) for v in m.get("hidden_scale", [])], _calibration(m.get("calibration")))
    except (KeyError, TypeError, ValueError):
        raise PrunekitError(f"latency table {path} is corrupt: re-measure it with --reprofile") from None
    s = model.shape
    if model.hidden_widths and (len(model.hidden_widths) != len(model.hidden_base) or len(model.hidden_widths) != len(model.hidden_scale)
                                or model.hidden_widths[-1] != s.hidden_size):
        raise PrunekitError(f"latency table {path} is corrupt (its hidden widths): re-measure it with --reprofile")
    if len(model.head_knots) != s.num_heads + 1 or model.ffn_widths[:1] != [0] or model.ffn_widths[-1:] != [s.intermediate_size]:
        raise PrunekitError(f"latency table {path} does not cover the model's head counts and FFN widths: re-measure it with --reprofile")
    return model


def _calibration(saved) -> dict:
    """A saved table's calibration, its scale checked (a positive finite number), or {} where there is none."""
    if saved is None:
        return {}
    scale = float(saved["scale"])
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError("calibration scale")
    return dict(saved)


def cache_dir() -> Path:
    """Where tables are kept between searches: $PRUNEKIT_CACHE, else $XDG_CACHE_HOME/prunekit, else ~/.cache/prunekit."""
    root = os.environ.get("PRUNEKIT_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "prunekit")
    return Path(root) / "latency"


def default_table_path(key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / f"{key['backend']}-{digest}.json"


# ---------------------------------------------------------------- profiling


def check_available(backend: str, device: str) -> None:
    """One line when ``backend`` is unknown or cannot run on ``device`` on this machine."""
    from .backends import check_backend, unavailable

    kind = torch.device(device).type
    check_backend(backend, kind)
    why = unavailable(backend, kind)
    if why:
        raise PrunekitError(f"cannot measure latency on backend {backend} here: {why}")


def _profile_vocab(base_config) -> int:
    """The profiled models' vocabulary size: the teacher's, at most :data:`PROFILE_VOCAB`."""
    return min(PROFILE_VOCAB, getattr(base_config, "vocab_size", None) or PROFILE_VOCAB)


def _random_model_dir(path: Path, shape: ModelShape, layers: int, heads, width, base_config, seq_len: int,
                      hidden: int | None = None) -> Path:
    """A compact model of ``shape`` with random weights, ``heads`` and ``width`` in every one of ``layers``
    layers (or per layer, as lists); ``hidden``: a narrower hidden width (an embedding model maps its
    output back to the full width, as compact's default does)."""
    heads = list(heads) if isinstance(heads, (list, tuple)) else [heads] * layers
    width = list(width) if isinstance(width, (list, tuple)) else [width] * layers
    from .modeling import CompactBertConfig, CompactBertForSequenceClassification, CompactBertModel, save_compact

    get = (lambda name, default: getattr(base_config, name, default) or default) if base_config is not None else (lambda _n, d: d)
    kind = "classification" if shape.num_labels > 0 else "embedding"
    extra = {"num_labels": shape.num_labels} if kind == "classification" else {}
    narrow = {}
    if hidden is not None and hidden < shape.hidden_size:
        narrow = {"base_hidden_size": shape.hidden_size, **({"output_size": shape.hidden_size} if kind == "embedding" else {})}
    config = CompactBertConfig(
        vocab_size=_profile_vocab(base_config), hidden_size=hidden or shape.hidden_size, num_hidden_layers=layers,
        num_attention_heads=shape.num_heads, head_dim=shape.head_dim, num_heads_per_layer=heads,
        intermediate_size=shape.intermediate_size, intermediate_sizes=width, hidden_act=get("hidden_act", "gelu"),
        max_position_embeddings=max(get("max_position_embeddings", 512), seq_len + 2), type_vocab_size=get("type_vocab_size", 2),
        layer_norm_eps=get("layer_norm_eps", 1e-12), task_kind=kind, **extra, **narrow)
    from .models import quiet

    torch.manual_seed(0)
    model = (CompactBertForSequenceClassification if extra else CompactBertModel)(config).eval()
    quiet(save_compact, model, path)
    return path


def _original_model_dir(path: Path, shape: ModelShape, base_config) -> Path:
    """The original architecture (``base_config``, the profile's vocabulary) with random weights."""
    import copy

    from transformers import AutoModel, AutoModelForSequenceClassification

    from .models import quiet

    config = copy.deepcopy(base_config)
    config.vocab_size = _profile_vocab(base_config)
    torch.manual_seed(0)
    if shape.num_labels > 0:
        config.num_labels = shape.num_labels
        model = AutoModelForSequenceClassification.from_config(config)
    else:
        model = AutoModel.from_config(config)
    quiet(model.eval().save_pretrained, path)
    return path


def _plan(shape: ModelShape, grid: list[int], hidden_grid: list[int] = ()) -> list[tuple[str, int, int, int, int | None]]:
    """(label, layers, heads, width, hidden width or None) of every model to time."""
    layers, heads, width = shape.num_layers, shape.num_heads, shape.intermediate_size
    plan = [(f"h{h}", layers, h, width, None) for h in range(heads + 1)]
    plan += [(f"w{w}", layers, heads, w, None) for w in grid if w != width]
    plan += [("zero", layers, 0, 0, None), ("zero1", 1, 0, 0, None)]
    for d in hidden_grid:  # the hidden width's two terms at d: every head and neuron, and none
        plan += [(f"d{d}full", layers, heads, width, d), (f"d{d}zero", layers, 0, 0, d)]
    return plan


def _inputs(batch: int, seq_len: int, vocab: int, device: str, seed: int = 0) -> dict:
    """Full-length random token ids (bench's fixed-length mode)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5 if vocab > 10 else 0, vocab, (batch, seq_len), generator=g)
    feed = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    return {k: v.to(device) for k, v in feed.items()}


def profile(shape: ModelShape, backend: str, device: str = "cpu", batch: int = 16, seq_len: int = 128, threads: int | None = None,
            repeats: int = 10, width_grid: list[int] | None = None, *, warmup: int = 2, base_config=None,
            progress: bool = False, hidden_grid: list[int] | None = None) -> dict:
    """Time uniform compact models of ``shape`` on ``backend``: every head count with the full FFN,
    the width grid with every head, and no heads nor FFN with L layers and with 1 (see :func:`fit`);
    at each narrower hidden width of ``hidden_grid`` (None: :func:`default_hidden_grid`; [] none),
    the full model and the one with no heads nor FFN.
    Warm-up, then ``repeats`` interleaved rounds (every model once per round); the median of each.
    ``progress``: a bar over the models built and the rounds timed."""
    from tqdm.auto import tqdm

    from .backends import build_runner
    from .loading import load_model_dir

    check_available(backend, device)
    grid = sorted(set(width_grid or default_width_grid(shape.intermediate_size)) | {0, shape.intermediate_size})
    hidden_grid = default_hidden_grid(shape.hidden_size) if hidden_grid is None else sorted(set(hidden_grid) - {shape.hidden_size})
    plan, feed = _plan(shape, grid, hidden_grid), _inputs(batch, seq_len, _profile_vocab(base_config), device)
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory(prefix="prunekit-latency-") as tmp, \
                tqdm(total=len(plan) + max(1, warmup) + repeats, disable=not progress, desc=f"profile {backend}", unit="step",
                     dynamic_ncols=True) as bar:
            runners = []
            for label, layers, heads, width, hidden in plan:
                bar.update(1)
                path = _random_model_dir(Path(tmp) / label, shape, layers, heads, width, base_config, seq_len, hidden)
                try:
                    runner = build_runner(load_model_dir(path), label, backend, device, threads, Path(tmp), None)
                except Exception as e:  # noqa: BLE001 - e.g. an export that cannot take a layer with no heads
                    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                    where = f" at hidden width {hidden}" if hidden else ""
                    raise PrunekitError(f"backend {backend} cannot run the profiled model with {heads} heads and FFN width "
                                        f"{width} in each of {layers} layers{where}: {first}") from None
                if runner is None:
                    raise PrunekitError(f"backend {backend} cannot run the profiled compact models")
                runners.append(runner)
            original = _original_runner(Path(tmp), shape, backend, device, threads, base_config)
            times = _time(runners + ([original] if original else []), feed, warmup, repeats, lambda: bar.update(1),
                          ref=[p[0] for p in plan].index(f"h{shape.num_heads}"))

    finally:
        torch.set_num_threads(before)
    t = dict(zip([p[0] for p in plan] + ["original"], times))
    heads, width = shape.num_heads, shape.intermediate_size
    return {"num_layers": shape.num_layers, "head_times": [t[f"h{h}"] for h in range(heads + 1)], "width_grid": grid,
            "width_times": [t[f"h{heads}"] if w == width else t[f"w{w}"] for w in grid], "zero": t["zero"],
            "zero_one_layer": t["zero1"], "original": t.get("original"), "repeats": repeats, "warmup": warmup,
            "hidden_grid": hidden_grid, "hidden_full_times": [t[f"d{d}full"] for d in hidden_grid],
            "hidden_zero_times": [t[f"d{d}zero"] for d in hidden_grid]}


def _original_runner(tmp: Path, shape: ModelShape, backend: str, device: str, threads: int | None, base_config):
    """A runner of the original architecture (what the ratios are over) on ``backend``, on its
    counterpart for a compact-only backend (``triton-fp16-graph``: ``torch-fp16-graph``, as bench's
    speedup is), or None: no base config, or one the backend cannot run (then the ratio is over the
    full-size compact model, logged)."""
    from .backends import COUNTERPART, build_runner
    from .loading import load_model_dir

    if base_config is None:
        return None
    try:
        path = _original_model_dir(tmp / "original", shape, base_config)
        return build_runner(load_model_dir(path), "original", COUNTERPART.get(backend, backend), device, threads, tmp, None)
    except Exception as e:  # noqa: BLE001 - the profile stands without it: ratios over the full compact model
        log.warning("latency profile: the original could not be timed on %s (%s); ratios are over the full-size compact model",
                    backend, (str(e).strip().splitlines() or [type(e).__name__])[0][:200])
        return None


def measure_ratio(heads_per_layer, ffn_per_layer, shape: ModelShape, backend: str, device: str = "cpu", batch: int = 16,
                  seq_len: int = 128, threads: int | None = None, base_config=None, repeats: int = 10, warmup: int = 2,
                  hidden: int | None = None) -> float:
    """The measured latency ratio of a compact model with these per-layer head counts and FFN widths
    (random weights) over the original's on ``backend`` (its counterpart for a compact-only backend; the
    full-size compact model's where the original does not run, as the table's ratios are), paired over
    interleaved repeats."""
    from .backends import build_runner
    from .loading import load_model_dir

    check_available(backend, device)
    feed = _inputs(batch, seq_len, _profile_vocab(base_config), device)
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory(prefix="prunekit-latency-") as tmp:
            layers = shape.num_layers
            path = _random_model_dir(Path(tmp) / "chosen", shape, layers, list(heads_per_layer), list(ffn_per_layer), base_config, seq_len,
                                     hidden)
            chosen = build_runner(load_model_dir(path), "chosen", backend, device, threads, Path(tmp), None)
            reference = _original_runner(Path(tmp), shape, backend, device, threads, base_config)
            if reference is None:
                full = _random_model_dir(Path(tmp) / "full", shape, layers, shape.num_heads, shape.intermediate_size, base_config, seq_len)
                reference = build_runner(load_model_dir(full), "full", backend, device, threads, Path(tmp), None)
            if chosen is None or reference is None:
                raise PrunekitError(f"backend {backend} cannot run the chosen architecture to check its latency: use --latency-check 0")
            t_chosen, t_reference = _time([chosen, reference], feed, warmup, repeats, ref=1)
            return t_chosen / t_reference  # the paired ratio (drift_corrected scales both by the reference's median)
    finally:
        torch.set_num_threads(before)


def _time(runners: list, feed: dict, warmup: int, repeats: int, tick=lambda: None, ref: int = 0) -> list[float]:
    """Seconds per batch of each runner: warm-up, then interleaved repeats (``tick`` after each round;
    each round in a shuffled order, the same for the same ``repeats``),
    each runner's median ratio to runner ``ref`` in the same round times ``ref``'s median
    (:func:`prunekit.timing.drift_corrected`: the machine's drift over the rounds taken out)."""
    for _ in range(max(1, warmup)):
        for r in runners:
            r.run(feed)
        tick()
    for k in range(repeats):  # each round in its own order: no model always runs after the same one (cold caches)
        for r in random.Random(k).sample(runners, len(runners)):
            t0 = time.perf_counter()
            r.run(feed)
            r.times.append(time.perf_counter() - t0)
        tick()
    return drift_corrected([r.times for r in runners], ref)


# ---------------------------------------------------------------- what a search uses


def latency_device(backend: str, search_device: str) -> str:
    """Where the latency is measured: the search's device when the backend runs there, else the
    backend's own (a CPU backend from a GPU search; a CUDA backend from a CPU one)."""
    from .backends import BACKENDS

    if backend not in BACKENDS:
        return search_device
    kind = torch.device(search_device).type
    return search_device if kind in BACKENDS[backend][1] else BACKENDS[backend][1][0]


def latency_model_for(shape: ModelShape, backend: str, device: str, batch: int, seq_len: int, threads: int | None,
                      repeats: int = 10, table: str | None = None, reprofile: bool = False, base_config=None,
                      progress: bool = False) -> tuple[LatencyModel, Path]:
    """The latency model a search uses and its table's path: ``table`` (or the cache's file for this
    key) when it exists and matches, else measured now (``reprofile``: always) and saved there."""
    check_available(backend, device)
    key = table_key(shape, backend, device, batch, seq_len, threads)
    path = Path(table) if table else default_table_path(key)
    if path.is_file() and not reprofile:
        return load_table(path, key), path
    log.info("measuring the latency model of %s on %s (batch %d x %d tokens) into %s", backend, device, batch, seq_len, path)
    model = fit(profile(shape, backend, device, batch, seq_len, threads, repeats, base_config=base_config, progress=progress), shape)
    model.key = key
    model.save_table(path)
    return model, path
