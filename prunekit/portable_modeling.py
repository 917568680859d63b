"""The compact BERT in plain PyTorch (eager and SDPA attention): it needs torch and transformers only.

prunekit copies this file into every compact model dir as ``modeling_prunekit_compact.py`` and
names its classes in the dir's config.json (``auto_map``), so the dir loads wherever its teacher
loaded, without prunekit::

    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, trust_remote_code=True)

With prunekit imported and no ``trust_remote_code``, transformers takes prunekit's registered
classes instead (``prunekit.modeling``): they extend these with the Triton and padding-free paths
and compute the same outputs on the eager and SDPA paths, from the same weights.

A compact model keeps, per layer ``i``, its own number of attention heads ``h_i`` (of the teacher's
head width ``d``) and its own FFN width ``I_i``::

    qkv       Linear(hidden, 3*h_i*d)    packed [Q heads | K heads | V heads]   (absent if h_i == 0)
    attn_out  Linear(h_i*d, hidden), no bias; ``attn_out_bias`` is kept even when h_i == 0
    x = LayerNorm(x + attn_out(attention(qkv(x))) + attn_out_bias)
    up        Linear(hidden, I_i) + activation                                  (absent if I_i == 0)
    down      Linear(I_i, hidden), no bias; ``down_bias`` is kept even when I_i == 0
    x = LayerNorm(x + down(act(up(x))) + down_bias)

A layer with no heads (or no FFN) is therefore exactly what the teacher computes with all its
heads (neurons) masked: the residual plus the projection's bias, normalised.

``hidden_size`` is the width of the residual stream, which may be narrower than the teacher's
(``prunekit search --prune-hidden``: the teacher's kept dimensions); the head width ``head_dim``
stays the teacher's. An embedding model whose hidden width was cut keeps the teacher's output space
through ``output_proj``, Linear(hidden_size, output_size), applied to the mean-pooled embedding
(``config.output_size``; sentence-transformers applies the same weights as its ``Dense`` module).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

try:  # transformers >= 5 names it PreTrainedConfig (PretrainedConfig stays as an alias)
    from transformers import PreTrainedConfig as PretrainedConfig
except ImportError:  # transformers 4.x
    from transformers import PretrainedConfig
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutput, SequenceClassifierOutput

MODEL_TYPE = "prunekit-compact-bert"
POSITION_STYLES = ("absolute", "roberta")  # roberta: positions count real tokens from pad_token_id + 1
# The file name this module has inside a model dir, and the classes config.json's auto_map names.
FILE_NAME = "modeling_prunekit_compact.py"
AUTO_MAP = {
    "AutoConfig": "CompactBertConfig",
    "AutoModel": "CompactBertModel",
    "AutoModelForSequenceClassification": "CompactBertForSequenceClassification",
}


class CompactBertConfig(PretrainedConfig):
    """BERT's fields plus, per layer, the kept head count, the teacher's indices of those heads and
    the FFN width. ``num_attention_heads`` / ``intermediate_size`` stay the teacher's; so does
    ``base_hidden_size``, the teacher's hidden width when ``hidden_size`` was cut (None: not cut)."""

    model_type = MODEL_TYPE

    def __init__(
        self,
        vocab_size: int = 30522,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        head_dim: int | None = None,
        num_heads_per_layer: list | None = None,
        kept_heads: list | None = None,
        intermediate_size: int = 3072,
        intermediate_sizes: list | None = None,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.1,
        classifier_dropout: float | None = None,
        max_position_embeddings: int = 512,
        type_vocab_size: int = 2,
        initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-12,
        pad_token_id: int = 0,
        position_style: str = "absolute",
        base_model_type: str = "bert",
        base_model_name_or_path: str | None = None,
        task_kind: str = "embedding",
        backend: str = "eager",
        output_size: int | None = None,
        base_hidden_size: int | None = None,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.head_dim = head_dim or hidden_size // num_attention_heads
        if kept_heads is None:
            counts = num_heads_per_layer or [num_attention_heads] * num_hidden_layers
            kept_heads = [list(range(n)) for n in counts]
        self.kept_heads = [list(h) for h in kept_heads]
        self.num_heads_per_layer = list(num_heads_per_layer) if num_heads_per_layer is not None else [len(h) for h in self.kept_heads]
        self.intermediate_size = intermediate_size
        self.intermediate_sizes = list(intermediate_sizes) if intermediate_sizes is not None else [intermediate_size] * num_hidden_layers
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.classifier_dropout = classifier_dropout
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.position_style = position_style
        self.base_model_type = base_model_type
        self.base_model_name_or_path = base_model_name_or_path
        self.task_kind = task_kind
        self.backend = backend
        self.output_size = output_size
        self.base_hidden_size = base_hidden_size
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        problem = self.problem()
        if problem:
            self.reject(problem)

    def problem(self) -> str | None:
        """What makes this config unusable, or None."""
        n = self.num_hidden_layers
        if not (len(self.num_heads_per_layer) == len(self.kept_heads) == len(self.intermediate_sizes) == n):
            return (f"compact config: {n} layers but {len(self.num_heads_per_layer)} head counts, {len(self.kept_heads)} "
                    f"kept-head lists and {len(self.intermediate_sizes)} FFN widths; the config.json is corrupt")
        if any(len(h) != c for h, c in zip(self.kept_heads, self.num_heads_per_layer)):
            return "compact config: kept_heads does not match num_heads_per_layer; the config.json is corrupt"
        if self.position_style not in POSITION_STYLES:
            return f"compact config: position_style {self.position_style!r} is not one of {POSITION_STYLES}"
        return None

    def reject(self, problem: str) -> None:
        raise ValueError(problem)


class CompactEmbeddings(nn.Module):
    """BERT's embeddings: word + token type + position, LayerNorm, dropout."""

    def __init__(self, config: CompactBertConfig):
        super().__init__()
        h = config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, h, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, h)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, h)
        self.LayerNorm = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.position_style = config.position_style
        self.pad_token_id = config.pad_token_id

    def position_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.position_style == "roberta":  # fairseq's make_positions, as transformers' RoBERTa
            real = input_ids.ne(self.pad_token_id).int()
            return (torch.cumsum(real, dim=1).type_as(real) * real).long() + self.pad_token_id
        return torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)

    def forward(self, input_ids, token_type_ids, position_ids) -> torch.Tensor:
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(x))


def attention(qkv: torch.Tensor, heads: int, head_dim: int, add_mask, backend: str, dropout: float, need_probs: bool):
    """Padded attention from a packed QKV [B, T, 3*h*d] -> context [B, T, h*d] (and probs if asked)."""
    b, t, _ = qkv.shape
    q, k, v = qkv.view(b, t, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)  # [B, h, T, d] views
    scale = 1.0 / math.sqrt(head_dim)
    probs = None
    if backend != "eager" and not need_probs:
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=add_mask, dropout_p=dropout, scale=scale)
    else:
        scores = torch.matmul(q, k.transpose(-1, -2)) * scale
        if add_mask is not None:
            scores = scores + add_mask
        probs = torch.softmax(scores, dim=-1)
        ctx = torch.matmul(F.dropout(probs, dropout, training=dropout > 0), v)
    return ctx.transpose(1, 2).reshape(b, t, heads * head_dim), probs


class CompactLayer(nn.Module):
    def __init__(self, config: CompactBertConfig, index: int):
        super().__init__()
        hidden, d = config.hidden_size, config.head_dim
        self.num_heads, self.head_dim = config.num_heads_per_layer[index], d
        self.ffn_width = config.intermediate_sizes[index]
        inner = self.num_heads * d
        self.qkv = nn.Linear(hidden, 3 * inner) if inner else None
        self.attn_out = nn.Linear(inner, hidden, bias=False) if inner else None
        self.attn_out_bias = nn.Parameter(torch.zeros(hidden))
        self.attn_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.up = nn.Linear(hidden, self.ffn_width) if self.ffn_width else None
        self.down = nn.Linear(self.ffn_width, hidden, bias=False) if self.ffn_width else None
        self.down_bias = nn.Parameter(torch.zeros(hidden))
        self.ffn_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.act = ACT2FN[config.hidden_act]
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.attn_dropout = config.attention_probs_dropout_prob

    def forward(self, x: torch.Tensor, add_mask, backend: str, need_probs: bool = False, weights: tuple | None = None):
        """x [B, T, hidden] (padded). ``weights``: ``(qkv_w, qkv_b, up_w, up_b, down_w)`` to multiply
        with instead of the layer's own, whose outputs are sliced to the layer's widths (prunekit
        passes copies padded to aligned widths on a GPU)."""
        probs = None
        qw, qb, uw, ub, dw = weights if weights is not None else (None,) * 5
        if self.qkv is not None:
            p = self.attn_dropout if self.training else 0.0
            qkv = self.qkv(x) if qw is None else F.linear(x, qw, qb)[..., : self.qkv.out_features]
            ctx, probs = attention(qkv, self.num_heads, self.head_dim, add_mask, backend, p, need_probs)
            x = self.attn_norm(self.dropout(self.attn_out(ctx) + self.attn_out_bias) + x)
        else:
            x = self.attn_norm(x + self.attn_out_bias)
        if self.up is not None:
            h = self.down(self.act(self.up(x))) if uw is None else F.linear(self.act(F.linear(x, uw, ub)), dw)
            x = self.ffn_norm(self.dropout(h + self.down_bias) + x)
        else:
            x = self.ffn_norm(x + self.down_bias)
        if need_probs and probs is None:
            probs = x.new_zeros(x.shape[0], 0, x.shape[1], x.shape[1])
        return x, probs


class CompactBertPreTrainedModel(PreTrainedModel):
    config_class = CompactBertConfig
    base_model_prefix = "bert"

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, CompactLayer):
            for p in (module.attn_out_bias, module.down_bias):
                if not getattr(p, "_is_hf_initialized", False):  # never overwrite loaded weights
                    with torch.no_grad():
                        p.zero_()


def _capturing(x: torch.Tensor) -> bool:
    """Whether a CUDA graph is being captured (never asked while dynamo traces: it cannot trace it)."""
    return x.is_cuda and not torch.compiler.is_compiling() and torch.cuda.is_current_stream_capturing()


class CompactBertModel(CompactBertPreTrainedModel):
    """The encoder. Returns ``BaseModelOutput`` (``last_hidden_state`` [B, T, hidden], optionally all
    hidden states and, on the eager path, the attention maps of the kept heads). Attention is SDPA
    unless ``config.backend`` is ``eager`` or attention maps are asked for."""

    layer_class = CompactLayer

    def __init__(self, config: CompactBertConfig):
        super().__init__(config)
        self.embeddings = CompactEmbeddings(config)
        self.layers = nn.ModuleList(self.layer_class(config, i) for i in range(config.num_hidden_layers))
        # the map of a narrowed hidden width back to the teacher's output space (see the module's docstring)
        self.output_proj = nn.Linear(config.hidden_size, config.output_size) if config.output_size else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    def layer_weights(self, x: torch.Tensor, backend: str) -> list | None:
        """Per layer, weights to multiply with instead of its own (see :meth:`CompactLayer.forward`), or None."""
        return None

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutput:
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if position_ids is None:
            position_ids = self.embeddings.position_ids(input_ids)
        backend = "eager" if output_attentions or self.config.backend == "eager" else "sdpa"
        x = self.embeddings(input_ids, token_type_ids, position_ids)
        add_mask = None
        # SDPA takes its fastest path with no mask at all, so a batch without padding gets none
        # (a host sync and a data-dependent branch: not while a CUDA graph is captured, nor under
        # torch.compile, where it would break the graph).
        if attention_mask is not None and not (backend == "sdpa" and not torch.compiler.is_compiling() and not _capturing(x)
                                               and bool(attention_mask.all())):
            add_mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        weights = self.layer_weights(x, backend) or [None] * len(self.layers)
        hidden, maps = [x], []
        for layer, w in zip(self.layers, weights):
            x, probs = layer(x, add_mask, backend, need_probs=bool(output_attentions), weights=w)
            hidden.append(x)
            maps.append(probs)
        out = BaseModelOutput(
            last_hidden_state=x,
            hidden_states=tuple(hidden) if output_hidden_states else None,
            attentions=tuple(maps) if output_attentions else None,
        )
        return out if return_dict is not False else out.to_tuple()


class CompactBertForSequenceClassification(CompactBertPreTrainedModel):
    """The encoder plus BERT's pooler (dense + tanh on the first token) and a linear classifier."""

    encoder_class = CompactBertModel

    def __init__(self, config: CompactBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = self.encoder_class(config)
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size)
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(p)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **encoder_kwargs,
    ) -> SequenceClassifierOutput:
        """``encoder_kwargs``: what the encoder's forward takes besides (prunekit's backends take more)."""
        out = self.bert(input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states, output_attentions,
                        **encoder_kwargs)
        res = self.classify(out, labels)
        return res if return_dict is not False else res.to_tuple()

    def classify(self, out: BaseModelOutput, labels: torch.Tensor | None) -> SequenceClassifierOutput:
        """The head on the encoder's output: logits from the first token, and the loss given labels."""
        pooled = torch.tanh(self.pooler(out.last_hidden_state[:, 0]))
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            if self.num_labels == 1 or self.config.problem_type == "regression":
                loss = F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
            else:
                loss = F.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions)
