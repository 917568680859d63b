"""The compact model: a BERT encoder whose layers each keep their own heads and FFN width.

One short model family (nanoGPT / gpt-fast style) that compaction writes and distillation,
evaluation, export and the Triton kernels read. The architecture, its config and its eager / SDPA
forward are :mod:`prunekit.portable_modeling`, the file every model dir carries so that it loads
without prunekit; the classes here extend those with prunekit's backends and GPU paths.

Backends (``config.backend`` / :meth:`CompactBertPreTrainedModel.set_backend`):

* ``eager`` — matmul + softmax (returns attention maps; what fvcore counts);
* ``sdpa`` — ``torch.nn.functional.scaled_dot_product_attention``;
* ``triton`` — inference only: the tokens are packed without padding once at the embeddings
  (``cu_seqlens``), every layer runs ``prunekit_kernels.fused_attention_varlen`` with its own
  head count and the ``bias_gelu`` / ``bias_residual_layernorm`` epilogues, and the result is
  padded back once at the end (padding positions of ``last_hidden_state`` are zeros); a batch
  with no padding at all (found by the same one host sync) skips the packing and runs the padded
  kernels without a mask;
* ``triton-padded`` — the same kernels on the padded batch (``fused_attention`` with the key
  padding mask, every position computed): what the padding-free path is measured against.
* ``sdpa-packed`` — inference only, any device, plain PyTorch: the padding-free path of ``triton``
  for the CPU. The real tokens are packed once; every GEMM, GELU and LayerNorm runs on them alone,
  and only attention sees the padded batch (its Q/K/V scattered back, SDPA with the mask, the
  context gathered again). What it saves is the padding share of a real-length batch; a batch
  without padding takes the ``sdpa`` path.

The padding-free paths (``triton``, ``sdpa-packed``) leave padding positions of the hidden states at
zero. A classifier reads position 0, so on them its inputs must be padded on the right (as every
tokenizer prunekit calls does); left-padded input there pools a zero row, where the padded paths
pool the padding token's state (meaningless either way).

Speed on a GPU, without changing any output:

* FFN widths (and QKV widths) that are not multiples of 8 make fp16/bf16 GEMMs fall off cuBLAS's
  aligned tensor-core kernels (H200: 6.5 vs 4.3 ms for the compact BERT-base at batch 128). For
  inference on CUDA (``sdpa`` without autograd, ``triton*`` always) each layer therefore multiplies
  with copies of its weights padded to multiples of ``ffn_align`` (default 8; inert zero neurons),
  made once and cached beside the layer, never saved: the saved model keeps its real widths.
* The packed path syncs with the host once per forward (to size the packed rows) and nowhere in
  the layers; with ``token_capacity`` it does not sync at all, so a whole forward can be captured
  in a CUDA graph: :meth:`CompactBertPreTrainedModel.capture_cuda_graph` returns a
  :class:`CudaGraphRunner`, which removes the ~100 kernel launches' host cost at small batches.

One speed-up on a GPU changes outputs within half precision's error: in fp16/bf16 on CUDA,
``triton`` computes each FFN up projection's bias + GELU in the GEMM's cuBLASLt epilogue, which is
the tanh form of GELU (within 4.7e-4 of erf GELU); ``set_backend(..., exact_gelu=True)`` keeps the
model's own GELU there.

``import prunekit`` registers the classes with transformers' Auto classes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutput

from . import portable_modeling as portable
from .errors import PrunekitError
from .pooling import output_projection, task_output
from .portable_modeling import MODEL_TYPE, attention

# The compact model's attention implementations (set_backend); bench and eval's runners are prunekit.backends.BACKENDS.
ATTENTION_BACKENDS = ("eager", "sdpa", "sdpa-packed", "triton", "triton-padded")


class CompactBertConfig(portable.CompactBertConfig):
    """The portable config, whose problems (and an unknown backend) are prunekit's one-line errors."""

    def __init__(self, **kwargs):  # an __init__ of its own: transformers >= 5.25 makes a config class without one a dataclass
        super().__init__(**kwargs)

    def problem(self) -> str | None:
        if self.backend not in ATTENTION_BACKENDS:
            return f"unknown backend {self.backend!r}: use one of {', '.join(ATTENTION_BACKENDS)}"
        return super().problem()

    def reject(self, problem: str) -> None:
        raise PrunekitError(problem)


class CompactLayer(portable.CompactLayer):
    """The portable layer, plus aligned weight copies (GPU) and the row-wise path of the packed backends."""

    def __init__(self, config: CompactBertConfig, index: int):
        super().__init__(config, index)
        self.exact_gelu = config.hidden_act == "gelu"  # what the bias_gelu kernel computes
        self.tanh_gelu_ok = config.hidden_act in TANH_GELU_CLOSE  # see _gelu_in_gemm
        self._aligned_cache = None  # (key, weights) of aligned_weights(); never saved


    def aligned_weights(self, align: int) -> tuple:
        """``(qkv_w, qkv_b, up_w, up_b, down_w)`` with the QKV and FFN widths rounded up to
        multiples of ``align`` by inert rows/columns: zero QKV rows and bias (their outputs are
        sliced off), zero up rows and bias (``act(0) = 0``) and zero down columns, so every output
        is unchanged. Plain tensors, for inference (no autograd to the parameters); cached and
        rebuilt when a parameter changes (storage, dtype, device or an in-place update). With
        ``align <= 1``, or widths already aligned, these are the parameters themselves."""
        qkv, up, down = self.qkv, self.up, self.down
        pad_qkv = qkv is not None and align > 1 and qkv.out_features % align != 0
        pad_ffn = up is not None and align > 1 and self.ffn_width % align != 0
        plain = (qkv.weight if qkv else None, qkv.bias if qkv else None, up.weight if up else None,
                 up.bias if up else None, down.weight if down else None)
        if not (pad_qkv or pad_ffn) or torch.compiler.is_compiling():
            return plain  # under torch.compile inductor pads matmuls itself (and a data_ptr cache key cannot be traced)
        # Inference tensors (parameters made inside torch.inference_mode) have no version counter;
        # they cannot change in place outside inference mode, so their storage identifies them.
        key = (align,) + tuple((id(t), t.data_ptr(), -1 if t.is_inference() else t._version, t.dtype, t.device)
                               for t in plain if t is not None)
        if self._aligned_cache is not None and self._aligned_cache[0] == key:
            return self._aligned_cache[1]

        with torch.inference_mode(False), torch.no_grad():  # normal tensors, usable outside inference mode
            qw, qb, uw, ub, dw = plain
            if pad_qkv:
                qw, qb = _pad_dim(qw, 0, align), _pad_dim(qb, 0, align)
            if pad_ffn:
                uw, ub, dw = _pad_dim(uw, 0, align), _pad_dim(ub, 0, align), _pad_dim(dw, 1, align)
        weights = (qw, qb, uw, ub, dw)
        self._aligned_cache = (key, weights)
        return weights

    def forward_rows(self, x: torch.Tensor, attend, pk, align: int = 1, gelu_in_gemm: bool = False):
        """Triton path: x [N, hidden], one row per token; ``attend(qkv, heads, head_dim)`` -> context.
        Per layer: QKV GEMM (bias fused), attention, output GEMM, bias+residual+LayerNorm, up GEMM,
        bias+GELU (in the GEMM's epilogue with ``gelu_in_gemm``: see :func:`_gelu_in_gemm`), down
        GEMM, bias+residual+LayerNorm: 7-8 launches, no copies, no host syncs."""
        eps = self.attn_norm.eps
        qw, qb, uw, ub, dw = self.aligned_weights(align)
        if self.qkv is not None:
            qkv = F.linear(x, qw, qb)
            if qkv.shape[-1] != self.qkv.out_features:  # aligned: a strided view, no copy
                qkv = qkv[:, : self.qkv.out_features]
            ctx = attend(qkv, self.num_heads, self.head_dim)
            a = F.linear(ctx, self.attn_out.weight)
            x = pk.bias_residual_layernorm(a, self.attn_out_bias, x, self.attn_norm.weight, self.attn_norm.bias, eps)
        else:
            x = F.layer_norm(x + self.attn_out_bias, x.shape[-1:], self.attn_norm.weight, self.attn_norm.bias, eps)
        if self.up is not None:
            if gelu_in_gemm and self.tanh_gelu_ok:
                u = torch._addmm_activation(ub, x, uw.t(), use_gelu=True)
            elif self.exact_gelu:
                u = pk.bias_gelu(F.linear(x, uw), ub)
            else:
                u = self.act(F.linear(x, uw, ub))
            x = pk.bias_residual_layernorm(F.linear(u, dw), self.down_bias, x, self.ffn_norm.weight, self.ffn_norm.bias, eps)
        else:
            x = F.layer_norm(x + self.down_bias, x.shape[-1:], self.ffn_norm.weight, self.ffn_norm.bias, eps)
        return x



class _TorchEpilogues:
    """The two epilogues ``forward_rows`` calls, in plain PyTorch in the model's dtype (what the
    padded ``sdpa`` path computes), for the ``sdpa-packed`` backend."""

    @staticmethod
    def bias_gelu(x, bias):
        return F.gelu(x + bias)

    @staticmethod
    def bias_residual_layernorm(x, bias, residual, weight, ln_bias, eps):
        h = x + residual if bias is None else x + bias + residual
        return F.layer_norm(h, h.shape[-1:], weight, ln_bias, eps)


def _pad_dim(t: torch.Tensor, dim: int, align: int) -> torch.Tensor:
    """A copy of ``t`` with dim ``dim`` zero-padded up to a multiple of ``align``."""
    shape = list(t.shape)
    shape[dim] = -(-shape[dim] // align) * align
    out = t.new_zeros(shape)
    out.narrow(dim, 0, t.shape[dim]).copy_(t)
    return out


# ------------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------------
# Activations that cuBLASLt's bias + GELU GEMM epilogue (the tanh form of GELU on CUDA) computes
# to within 5e-4 on every input: the tanh forms exactly, erf GELU within 4.7e-4 (at x = +-2.70).
# Not gelu_10 (clipped at 10), nor quick_gelu (2e-2 away).
TANH_GELU_CLOSE = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu_python", "gelu_python_tanh",
                   "gelu_accurate")


def _gelu_in_gemm(x: torch.Tensor, exact_gelu: bool) -> bool:
    """Whether the Triton path computes each FFN up projection as one cuBLASLt GEMM with bias + GELU
    in its epilogue (``torch._addmm_activation``), instead of a GEMM and the exact ``bias_gelu``
    kernel: on CUDA in fp16/bf16, unless ``set_backend(..., exact_gelu=True)``. One pass less over
    the FFN activations. The epilogue is tanh GELU, within 4.7e-4 of erf GELU per activation (the
    size of fp16's rounding there). Its speed and error on an H100: docs/method.md."""
    return not exact_gelu and x.is_cuda and x.dtype in (torch.float16, torch.bfloat16)


_KERNELS_OK: dict = {}  # device -> the kernels module, once a forward has checked that it can run there


def _kernels_for_forward(device: torch.device):
    pk = _KERNELS_OK.get(device)
    if pk is None:
        pk = _KERNELS_OK[device] = _import_kernels(device)
    return pk


def _import_kernels(device: torch.device):
    try:
        import prunekit_kernels as pk
    except ImportError:
        raise PrunekitError(
            "the triton backend needs the prunekit_kernels package (installed with prunekit); "
            "use backend='sdpa' or 'eager'"
        ) from None
    ok, why = pk.triton_available(device)
    if not ok:
        raise PrunekitError(f"the triton backend cannot run on {device}: {why}; use backend='sdpa' or 'eager'")
    return pk


class CompactBertPreTrainedModel(portable.CompactBertPreTrainedModel):
    config_class = CompactBertConfig

    @property
    def backend(self) -> str:
        return self.config.backend

    def set_backend(self, backend: str, ffn_align: int | None = None,
                    exact_gelu: bool = False) -> CompactBertPreTrainedModel:
        """Switch attention implementation; ``triton`` is checked against this model's device now.

        ``ffn_align``: multiple to pad QKV/FFN widths to at inference (see :meth:`CompactLayer.aligned_weights`);
        None (default) = 8 on CUDA for ``sdpa``/``triton*``, off otherwise; 1 = off. Outputs do not change.
        ``exact_gelu``: on CUDA in fp16/bf16 ``triton`` takes bias + GELU in the up projection's
        cuBLASLt epilogue, the tanh form of GELU (see :func:`_gelu_in_gemm`); True keeps the model's
        own GELU there (a GEMM and the exact ``bias_gelu`` kernel), at one more pass over the FFN
        activations. Every other path always computes the model's own activation.
        """
        if backend not in ATTENTION_BACKENDS:
            raise PrunekitError(f"unknown backend {backend!r}: use one of {', '.join(ATTENTION_BACKENDS)}")
        if ffn_align is not None and (not isinstance(ffn_align, int) or ffn_align < 1):
            raise PrunekitError(f"ffn_align must be a positive int (1 = off), got {ffn_align!r}")
        if backend.startswith("triton"):
            _import_kernels(next(self.parameters()).device)
        self.config.backend = backend
        self._encoder()._ffn_align = ffn_align
        self._encoder()._exact_gelu = bool(exact_gelu)
        return self

    def _encoder(self) -> CompactBertModel:
        return self if isinstance(self, CompactBertModel) else self.bert

    def capture_cuda_graph(self, batch_size: int, seqlen: int, **kwargs):
        """A :class:`prunekit.cuda_graphs.CudaGraphRunner` replaying this model's forward for ``[batch_size, seqlen]`` inputs."""
        from .cuda_graphs import CudaGraphRunner

        return CudaGraphRunner(self, batch_size, seqlen, **kwargs)


class CompactBertModel(CompactBertPreTrainedModel, portable.CompactBertModel):
    """The portable encoder (eager / SDPA) plus the packed and Triton backends (see the module's doc)."""

    layer_class = CompactLayer

    def __init__(self, config: CompactBertConfig):
        super().__init__(config)
        self._ffn_align: int | None = None  # None: automatic (see set_backend)
        self._exact_gelu = False  # see set_backend

    def _align_for(self, device: torch.device, backend: str) -> int:
        if self._ffn_align is not None:
            return self._ffn_align
        return 8 if device.type == "cuda" and backend != "eager" else 1

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        token_capacity: int | None = None,
        packed_indices: torch.Tensor | None = None,
    ) -> BaseModelOutput:
        """``token_capacity`` (``triton`` backend only): pack the real tokens into exactly this many
        rows (>= the real tokens; the rest are spare) instead of asking the GPU how many there are:
        no host sync, shapes independent of the mask (what a CUDA graph needs).

        ``packed_indices`` (``sdpa-packed`` only): the flat indices of the real tokens,
        ``torch.nonzero(attention_mask.flatten()).flatten()``, computed by the caller, so the forward
        has no data-dependent step (what ``torch.compile`` needs: the ``compile-bf16-packed`` backend)."""
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if position_ids is None:
            position_ids = self.embeddings.position_ids(input_ids)
        backend = "eager" if output_attentions else self.config.backend
        if backend == "sdpa-packed":
            if self.training:
                raise PrunekitError("the sdpa-packed backend is inference-only: call model.eval(), or use backend 'sdpa' for training")
            if attention_mask is not None and (packed_indices is not None or not bool(attention_mask.all())):
                return self._forward_packed(input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states,
                                            packed_indices)
            backend = "sdpa"  # no padding, nothing to pack: the padded path has no copies to make
        if backend.startswith("triton"):
            return self._forward_triton(input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states,
                                        backend == "triton", token_capacity)

        return super().forward(input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states,
                               output_attentions, return_dict)

    def layer_weights(self, x: torch.Tensor, backend: str) -> list | None:
        """Aligned weight copies (:meth:`CompactLayer.aligned_weights`) on a GPU, and only where no
        gradient can be asked of the parameters."""
        align = 1 if torch.is_grad_enabled() else self._align_for(x.device, backend)
        return [layer.aligned_weights(align) for layer in self.layers] if align > 1 else None

    def _forward_packed(self, input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states,
                        indices: torch.Tensor | None = None):
        """``sdpa-packed``: the rows of the real tokens through every layer, attention padded."""
        b, t = input_ids.shape
        mask = attention_mask
        if indices is None:
            indices = torch.nonzero(mask.flatten()).flatten()  # one host sync, as the triton path's
        x = self.embeddings(input_ids, token_type_ids, position_ids)
        add_mask = (1.0 - mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        x = x.reshape(b * t, -1).index_select(0, indices)

        def unpack(rows):
            return rows.new_zeros(b * t, rows.shape[-1]).index_copy_(0, indices, rows).view(b, t, -1)

        def attend(qkv, heads, head_dim):
            ctx, _ = attention(unpack(qkv), heads, head_dim, add_mask, "sdpa", 0.0, False)
            return ctx.reshape(b * t, -1).index_select(0, indices)

        hidden = [x]
        for layer in self.layers:
            x = layer.forward_rows(x, attend, _TorchEpilogues, 1)
            hidden.append(x)
        return BaseModelOutput(last_hidden_state=unpack(x),
                               hidden_states=tuple(unpack(h) for h in hidden) if output_hidden_states else None)

    def _forward_triton(self, input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states, packed: bool,
                        token_capacity: int | None = None):
        if self.training:
            raise PrunekitError("the triton backend is inference-only: call model.eval(), or use backend 'sdpa' for training")
        pk = _kernels_for_forward(input_ids.device)
        b, t = input_ids.shape
        align = self._align_for(input_ids.device, "triton")
        ids = torch.stack([input_ids, token_type_ids, position_ids.expand_as(input_ids)], dim=-1).view(b * t, 3)
        if packed and attention_mask is None:
            packed = False  # every token is real: nothing to pack
        if packed:  # pack once: the real tokens' ids, types and positions, with cu_seqlens
            # One host sync (the real-token count) without a capacity, none with one.
            if token_capacity is not None:
                token_capacity = min(int(token_capacity), b * t)
            indices, cu_seqlens, max_seqlen = pk.unpad_indices(attention_mask, token_capacity)
            if token_capacity is None and indices.numel() == b * t:
                packed, attention_mask = False, None  # no padding at all: packing would only copy
        if packed:
            if token_capacity is not None and b * t:
                ids = ids.index_select(0, indices.clamp(max=b * t - 1))  # spare rows: any real ids
            else:
                ids = ids.index_select(0, indices)
            attend = lambda qkv, h, d: pk.fused_attention_varlen(qkv, cu_seqlens, max_seqlen, h, d)  # noqa: E731
            unpack = lambda rows: pk.pad_input(rows, indices, b, t)  # noqa: E731 - pad once at the end
        else:
            attend = lambda qkv, h, d: pk.fused_attention(qkv.view(b, t, -1), attention_mask, h, d).view(b * t, -1)  # noqa: E731
            unpack = lambda rows: rows.view(b, t, -1)  # noqa: E731
        # Each lookup's indices contiguous: a strided index column sends the lookups to a generic,
        # slower gather kernel (measured: docs/method.md)
        words_ids, type_ids, pos_ids = ids.t().contiguous()
        emb = self.embeddings
        words = emb.word_embeddings(words_ids)
        rest = emb.token_type_embeddings(type_ids) + emb.position_embeddings(pos_ids)
        x = pk.bias_residual_layernorm(words, None, rest, emb.LayerNorm.weight, emb.LayerNorm.bias, emb.LayerNorm.eps)
        hidden = [x]
        gelu_in_gemm = _gelu_in_gemm(x, self._exact_gelu)
        for layer in self.layers:
            x = layer.forward_rows(x, attend, pk, align, gelu_in_gemm)
            hidden.append(x)
        return BaseModelOutput(
            last_hidden_state=unpack(x),
            hidden_states=tuple(unpack(h) for h in hidden) if output_hidden_states else None,
        )

    @torch.no_grad()
    def encode(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        """Mean-pooled sentence embeddings, through ``output_proj`` where the model has one (what an
        embedding model is judged by)."""
        out = self(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return task_output(out, "embedding", attention_mask, projection=output_projection(self))


class CompactBertForSequenceClassification(CompactBertPreTrainedModel, portable.CompactBertForSequenceClassification):
    """The portable classifier (BERT's pooler and a linear head) on prunekit's encoder, every backend."""

    encoder_class = CompactBertModel  # the forward passes token_capacity / packed_indices on to it


@torch.no_grad()
def pad_ffn_widths(model: CompactBertPreTrainedModel, multiple: int = 8) -> CompactBertPreTrainedModel:
    """Round every non-zero FFN width up to a multiple of ``multiple`` with inert neurons, in place.

    The added neurons have zero up-projection rows and bias (so ``act(0) = 0``) and zero
    down-projection columns: outputs are unchanged, while fp16/bf16 GEMMs whose sizes are multiples
    of 8 get cuBLAS's faster aligned tensor-core kernels. Costs at most ``multiple - 1`` neurons a layer.
    """
    act_zero = float(ACT2FN[model.config.hidden_act](torch.zeros(1))[0])
    if act_zero != 0.0:
        raise PrunekitError(f"pad_ffn_widths needs act(0) == 0; {model.config.hidden_act} gives {act_zero}")
    base = model if isinstance(model, CompactBertModel) else model.bert
    for i, layer in enumerate(base.layers):
        width = layer.ffn_width
        padded = -(-width // multiple) * multiple
        if width == 0 or padded == width:
            continue
        up, down = layer.up, layer.down
        layer.up = nn.Linear(up.in_features, padded, device=up.weight.device, dtype=up.weight.dtype)
        layer.down = nn.Linear(padded, down.out_features, bias=False, device=down.weight.device, dtype=down.weight.dtype)
        for new, old, dim in ((layer.up.weight, up.weight, 0), (layer.down.weight, down.weight, 1)):
            new.zero_().narrow(dim, 0, width).copy_(old)
        layer.up.bias.zero_()[:width].copy_(up.bias)
        layer.ffn_width = padded
        model.config.intermediate_sizes[i] = padded
    return model


def save_compact(model: CompactBertPreTrainedModel, model_dir) -> None:
    """Save a compact model into ``model_dir`` (config.json + model.safetensors) so that it loads
    with or without prunekit: the portable modeling file beside the weights, its classes named in
    config.json's ``auto_map`` (``from_pretrained(model_dir, trust_remote_code=True)``)."""
    from pathlib import Path

    module = Path(portable.FILE_NAME).stem
    model.config.auto_map = {auto: f"{module}.{cls}" for auto, cls in portable.AUTO_MAP.items()}
    model.save_pretrained(model_dir, safe_serialization=True)
    text = Path(portable.__file__).read_text(encoding="utf-8")
    (Path(model_dir) / portable.FILE_NAME).write_text(text, encoding="utf-8")


def load_compact(path, backend: str | None = None, device: str = "cpu") -> CompactBertPreTrainedModel:
    """Load a compact model dir (classification or bare encoder from its config); one-line errors."""
    from pathlib import Path

    from .configs import model_type_of

    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise PrunekitError(f"{path} is not a compact model dir (no config.json); make one with `prunekit compact`")
    model_type = model_type_of(cfg_file)  # the whole config checked (sizes, against the weights) before any use
    if model_type != MODEL_TYPE:
        raise PrunekitError(f"{path} holds a {model_type!r} model, not a prunekit compact model ({MODEL_TYPE})")
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise PrunekitError(f"{path} has no model.safetensors: the compact model's weights are missing; re-run `prunekit compact`")
    config = CompactBertConfig.from_pretrained(str(path))
    cls = CompactBertForSequenceClassification if config.task_kind in ("classification", "regression") else CompactBertModel
    try:
        model, info = cls.from_pretrained(str(path), config=config, use_safetensors=True, output_loading_info=True)
    except MemoryError:  # not a corrupt file: the machine is out of memory, and should say so
        raise
    except Exception as e:  # noqa: BLE001 - a truncated or corrupt safetensors file, or mismatched shapes
        raise PrunekitError(f"cannot load {weights} (corrupt or incomplete?): {str(e).splitlines()[0][:200]}") from None
    missing = list(info.get("missing_keys") or []) + list(info.get("mismatched_keys") or [])
    if missing:
        raise PrunekitError(f"{weights} lacks or mis-sizes {len(missing)} tensors (e.g. {missing[0]}): it does not match config.json")
    model.eval().to(device)
    if backend is not None:
        model.set_backend(backend)
    return model


AutoConfig.register(MODEL_TYPE, CompactBertConfig, exist_ok=True)
AutoModel.register(CompactBertConfig, CompactBertModel, exist_ok=True)
AutoModelForSequenceClassification.register(CompactBertConfig, CompactBertForSequenceClassification, exist_ok=True)
