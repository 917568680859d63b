"""`prunekit distill`: train a compact model back towards its teacher, in two stages (TinyBERT style).

Stage 1 (intermediate layers): the student's embeddings, each layer's hidden states (student layer
i <-> teacher layer i; compaction keeps the layer count) and the attention maps of the heads it
kept, each compared with the teacher's map of the same head (``config.kept_heads`` gives the
teacher's index of every kept head):

    L1 = w_emb * MSE(E_s, E_t) + w_hid * mean_i MSE(H_s^i, H_t^i) + w_att * mean_i A_i
    A_i = sum over keys of (P_s^{i,h} - P_t^{i,kept_heads[i][h]})^2, averaged over kept heads h and real query tokens

(MSEs are over real tokens only; padding is left out.) A student whose hidden width was cut
(``search --prune-hidden``) is compared through a learned linear map of its hidden states into the
teacher's width, as CoFi does (:func:`hidden_map`: trained in stage 1, checkpointed, never saved in
the model); an embedding student's last hidden states go through its own ``output_proj`` instead,
the map it keeps after pooling (which is linear, so it commutes with the mean pooling). An
embedding student made with ``compact --narrow-output`` has no ``output_proj``: its pooled
embeddings are compared through the training-only map in stage 2 too (as stage 1 left it, not
trained further), and it keeps its narrow output (its dev fidelity is the pairwise-similarity
Spearman, which needs no common space).

Stage 2 (prediction layer): soft cross-entropy with the teacher's logits at temperature T (times
T^2, so that T roughly keeps the balance with the gold labels) for a classifier, MSE for a regressor,
MSE of the mean-pooled embeddings (after ``output_proj``, or the map) for an embedding model;
``alpha_gold`` mixes in the gold labels of the original (not augmented) examples.

Both stages can train on TinyBERT-style augmented copies of the data (:mod:`prunekit.augment`).
The dev metric (the task's primary metric on labelled dev data, else fidelity to the teacher) is
measured at the end of stage 1 and after every epoch of stage 2; the best weights are what the
output model dir holds. A run writes into ``<out>.partial`` with checkpoints every
``checkpoint_every`` steps, resumes from there with ``--resume`` (same result as an uninterrupted
run: data order, dropout and learning rates depend only on the step), and is published atomically.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from transformers.modeling_outputs import BaseModelOutput

from .batching import batch_order, collate, encode, padded_tokens
from .budget import Plan, format_duration, parse_budget, seconds_at, split
from .card import command_line, write_card
from .checkpoint import flatten_optimizer, restart_log, restore_optimizer, restoring, run_writes, write_checkpoint
from .data import data_key
from .distributed import (
    World,
    all_reduce_sum,
    broadcast_object,
    data_parallel,
    latest_checkpoint,
    launched,
    on_main,
    open_log,
    shard,
)
from .errors import PrunekitError
from .io import atomic_write_text, check_output_dir, fsync_path, partial_dir, publish_dir
from .modeling import CompactBertPreTrainedModel, load_compact, save_compact
from .models import Teacher, check_max_length, load_teacher, model_output
from .models import quiet as _quiet
from .pooling import output_projection
from .portable import write_sentence_transformers_files
from .run_dir import resume_free_settings, run_work_dir, start_work_dir
from .scoring import predict, score
from .training import APPLIED, NonFiniteGuard, StepBook, autocast, check_precision, check_total_steps, precision_note

log = logging.getLogger(__name__)

AUGMENT_STAGES = ("both", "1", "2", "none")

# A recipe fills the options it names that were not given (None). "short" is what a budget of an hour or
# two on a CPU affords, chosen by measurement (benchmarks/real_tasks, docs/results.md): at equal steps
# on a real task, gold labels mixed into stage 2 and higher learning rates beat the TinyBERT recipe's
# soft targets only, and augmentation's copies multiply the steps. "tinybert" is TinyBERT's task
# distillation (intermediate layers 20 epochs at 5e-5, predictions 3 epochs at 3e-5, 10% warm-up;
# augmentation p=0.4, K=15: the study made 20 copies, 4 keep a CPU run tractable).
RECIPES = {
    # short: measured on real tasks (docs/results.md, "Grouped batches and one augmented copy"; "One epoch of
    # stage 1 before the five of stage 2"): one augmented copy pays (+1.4 points over the originals alone at
    # equal steps), grouped batches cost nothing in accuracy and halve the step time, and one epoch of
    # stage 1 before the 5 of stage 2 pays at 30% of the FLOPs on the two pair tasks (+0.77 over eight
    # seeds, seven up; level within noise on docstrings) for ~25% more time. With --budget stage 1 gets the
    # share of the time that epoch takes on a CPU (its steps run the teacher too: ~2.3x a stage-2 step).
    # A student whose outputs barely depend on its input at the start (FLAT_START) gets one epoch of
    # stage 1 where a run gives stage 1 none: a 10% student kept 2 heads and stayed at chance for 5 epochs
    # of stage 2, and with the epoch of stage 1 it learned (docs/results.md, "A 10% student that did not learn").
    "short": {"stage1_epochs": 1.0, "stage2_epochs": 5.0, "stage1_share": 0.3, "stage1_lr": 1e-4, "stage2_lr": 1e-4,
              "alpha_gold": 0.5, "augment_copies": 1, "group_by_length": True, "flat_start_stage1_epochs": 1.0},
    "tinybert": {"stage1_epochs": 20.0, "stage2_epochs": 3.0, "stage1_share": 0.5, "stage1_lr": 5e-5, "stage2_lr": 3e-5,
                 "alpha_gold": 0.0, "augment_copies": 4, "group_by_length": False, "flat_start_stage1_epochs": 0.0},
}


def resumed_options(out: Path, options: dict) -> dict:
    """``options`` (a distill command's, None where not given) with each option the recipe fills and the
    command does not give taken from the interrupted run at ``out`` (its settings.json), for --resume:
    the run goes on with the values it started with, even where the recipe's defaults have changed since
    (and an older run without a setting reads as what it had: :attr:`DistillSettings.OLDER_RUNS`)."""
    from .io import partial_dir

    try:
        saved = json.loads((partial_dir(out) / "settings.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, RecursionError, ValueError):
        return options  # the resume itself says what is wrong
    recipe = options.get("recipe") or "short"
    if not isinstance(saved, dict) or saved.get("recipe", "short") != recipe:
        return options  # another recipe: the refusal names it
    saved = {**DistillSettings.OLDER_RUNS, **saved}
    return {**options, **{k: saved[k] for k in RECIPES[recipe] if options.get(k) is None and k in saved}}


@dataclass
class DistillSettings:
    """Every option of a distillation run; saved as settings.json (with the recipe's values filled in).
    The options a recipe names (:data:`RECIPES`) are None until ``recipe`` fills those not given."""

    # what a setting added since was in runs made before it (read so by --resume; prunekit.run_dir)
    OLDER_RUNS: ClassVar[dict] = {"group_by_length": False, "flat_start_stage1_epochs": 0.0}

    student: str = ""  # compact model dir (what `prunekit compact` writes)
    teacher: str | None = None  # default: the model the student was compacted from (its config)
    data: str | None = None  # as `prunekit search --data`; None: the shipped corpus
    split: str = "train"
    text_column: str | None = None
    pair_column: str | None = None
    label_column: str | None = None
    task: str | None = None
    glue_dir: str | None = None
    max_examples: int | None = None
    dev_data: str | None = None  # None: hold out dev_fraction of --data
    dev_split: str = "dev"
    dev_fraction: float = 0.1
    dev_max_examples: int | None = None
    output_dir: str = "runs/distill"
    recipe: str = "short"  # short | tinybert: fills the options below that are None (RECIPES)
    stage1_epochs: float | None = None  # None: the recipe's
    stage2_epochs: float | None = None  # None: the recipe's
    budget: str | None = None  # a time (45m, 2h) or steps (3000steps) in place of the epochs; see prunekit.budget
    stage1_share: float | None = None  # None: the recipe's
    flat_start_stage1_epochs: float | None = None  # stage 1 for a student that starts flat (FLAT_START); None: the recipe's
    stage1_lr: float | None = None  # None: the recipe's
    stage2_lr: float | None = None  # None: the recipe's
    batch_size: int = 32
    group_by_length: bool | None = None  # batches of similar lengths (prunekit.batching.GROUP_BATCHES); None: the recipe's
    warmup: float = 0.1  # fraction of each stage's steps with a linear warm-up, then linear decay to 0
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    dropout: float | None = None  # the student's dropout while training; None: its config's (BERT: 0.1)
    max_length: int = 128
    temperature: float = 1.0
    alpha_gold: float | None = None  # None: the recipe's
    embedding_weight: float = 1.0
    hidden_weight: float = 1.0
    attention_weight: float = 1.0
    augment_copies: int | None = None  # None: the recipe's
    augment_prob: float = 0.4
    augment_top_k: int = 15
    augment_stages: str = "both"  # both | 1 | 2 | none
    augment_mlm: str | None = None  # a masked-LM model dir; None: teacher input-embedding neighbours
    seed: int = 42
    device: str = "auto"
    mixed_precision: str = "auto"
    checkpoint_every: int = 200
    eval_batch_size: int = 64
    max_nan_steps: int = 10

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise PrunekitError(f"unknown --recipe {self.recipe!r}: choose one of {', '.join(RECIPES)}")
        for k, v in RECIPES[self.recipe].items():
            if getattr(self, k) is None:
                setattr(self, k, v)

    def validate(self) -> None:
        if not self.student:
            raise PrunekitError("give the compact model dir to distill (what `prunekit compact` wrote)")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise PrunekitError(f"--{f.name.replace('_', '-')} must be a finite number, got {value}")
        if self.stage1_epochs < 0 or self.stage2_epochs < 0 or self.stage1_epochs + self.stage2_epochs <= 0:
            raise PrunekitError("--stage1-epochs and --stage2-epochs must be >= 0, and not both 0")
        if self.budget is not None:
            parse_budget(self.budget)
        if self.flat_start_stage1_epochs < 0:
            raise PrunekitError(f"--flat-start-stage1-epochs must be >= 0, got {self.flat_start_stage1_epochs:g}")
        if not 0.0 <= self.stage1_share <= 1.0:
            raise PrunekitError(f"--stage1-share must be in [0, 1], got {self.stage1_share}")
        if self.stage1_lr <= 0 or self.stage2_lr <= 0:
            raise PrunekitError("learning rates must be > 0")
        if self.batch_size < 1:
            raise PrunekitError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.max_length < 8:
            raise PrunekitError(f"--max-length must be >= 8 tokens, got {self.max_length}")
        if not 0.0 <= self.warmup < 1.0:
            raise PrunekitError(f"--warmup must be a fraction in [0, 1), got {self.warmup}")
        if self.temperature <= 0:
            raise PrunekitError(f"--temperature must be > 0, got {self.temperature}")
        check_precision(self.mixed_precision)
        if not 0.0 <= self.alpha_gold <= 1.0:
            raise PrunekitError(f"--alpha-gold must be in [0, 1], got {self.alpha_gold}")
        if not 0.0 < self.dev_fraction < 1.0:
            raise PrunekitError(f"--dev-fraction must be in (0, 1), got {self.dev_fraction}")
        if self.augment_copies < 0 or not 0.0 <= self.augment_prob <= 1.0 or self.augment_top_k < 1:
            raise PrunekitError("--augment-copies must be >= 0, --augment-prob in [0, 1] and --augment-top-k >= 1")
        if self.augment_stages not in AUGMENT_STAGES:
            raise PrunekitError(f"--augment-stages must be one of {', '.join(AUGMENT_STAGES)}, got {self.augment_stages!r}")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise PrunekitError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.checkpoint_every < 1 or self.max_nan_steps < 1:
            raise PrunekitError("--checkpoint-every and --max-nan-steps must be >= 1")

    def augments(self, stage: int) -> bool:
        return self.augment_copies > 0 and self.augment_stages in ("both", str(stage))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> DistillSettings:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


AUGMENTED_CACHE = "augmented.jsonl"  # in the work dir: made once (slow), reused by a --resume
PLAN_FILE = "plan.json"  # in the work dir: each stage's steps and the time estimate, reused by a --resume

# The options that may differ between a run and its --resume (the help of --resume and the README say
# the same): the first four are what to change when a run stopped on NaN/inf steps (the change is
# logged); --device and --checkpoint-every do not change the result, nor does eval_batch_size (a
# setting of the library, with no option).

RESUME_OPTIONS = ("--stage1-lr", "--stage2-lr", "--mixed-precision", "--max-nan-steps", "--device", "--checkpoint-every")
_RESUME_FREE = resume_free_settings(RESUME_OPTIONS, "eval_batch_size")


@dataclass
class DistillResult:
    output_dir: Path
    metric: str  # the dev metric the best checkpoint was picked by
    teacher_dev: dict
    before: dict  # the student's dev metrics before distillation
    best: dict  # {"step", "stage", "value", "metrics"}
    steps: int
    log: list[dict] = field(default_factory=list)
    skipped_steps: int = 0  # steps skipped for a non-finite loss or gradients
    overflow_steps: int = 0  # fp16: steps skipped while the loss scale settled
    dev_warning: str | None = None  # the dev set looks seen by the teacher (see dev_set_warning)
    learn_warning: str | None = None  # the student is no better than the majority label (see learning_check)


# ------------------------------------------------------------------------------------------------
# Losses
# ------------------------------------------------------------------------------------------------
def _count(given: float | None, local: torch.Tensor) -> torch.Tensor:
    """What a mean divides by: this batch's own count, or (data parallel) the global batch's."""
    return local if given is None else local.new_tensor(float(given))


def masked_mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, tokens: float | None = None) -> torch.Tensor:
    """MSE over the real tokens of [B, T, H] tensors (``mask`` [B, T] is 1 on real tokens); divided by
    ``tokens`` real tokens when given (the global batch's, under data parallelism)."""
    m = mask.float().unsqueeze(-1)  # float: a bf16 count of real tokens rounds (1337 -> 1336)
    return ((a.float() - b.float()).pow(2) * m).sum() / (_count(tokens, m.sum()) * a.shape[-1]).clamp_min(1.0)


def attention_loss(student_maps: torch.Tensor, teacher_maps: torch.Tensor, kept: list[int], mask: torch.Tensor,
                   tokens: float | None = None) -> torch.Tensor:
    """Squared error of one layer's attention probabilities, the student's head h against the
    teacher's head ``kept[h]``: summed over keys, averaged over heads and real query tokens."""
    t = teacher_maps[:, kept]
    m = mask.float()
    m2 = m[:, None, :, None] * m[:, None, None, :]
    err = ((student_maps.float() - t.float()).pow(2) * m2).sum()
    return err / (_count(tokens, m.sum()) * len(kept)).clamp_min(1.0)


def intermediate_loss(s_out, t_out, kept_heads: list[list[int]], mask: torch.Tensor, settings: DistillSettings,
                      tokens: float | None = None) -> tuple[torch.Tensor, dict]:
    """Stage 1's loss from student and teacher outputs with hidden states and attentions (``tokens``: see masked_mse)."""
    emb = masked_mse(s_out.hidden_states[0], t_out.hidden_states[0], mask, tokens)
    hid = torch.stack([masked_mse(s, t, mask, tokens) for s, t in zip(s_out.hidden_states[1:], t_out.hidden_states[1:])]).mean()
    att_terms = [attention_loss(s, t, kept, mask, tokens) for s, t, kept in zip(s_out.attentions, t_out.attentions, kept_heads) if kept]
    att = torch.stack(att_terms).mean() if att_terms else emb.new_zeros(())
    loss = settings.embedding_weight * emb + settings.hidden_weight * hid + settings.attention_weight * att
    return loss, {"emb": emb.detach(), "hidden": hid.detach(), "attention": att.detach()}


def hidden_map(student_width: int, teacher_width: int, kept: list[int] | None, seed: int) -> torch.nn.Linear | None:
    """The learned map of a student's hidden states into its teacher's wider ones (CoFi's W_layer),
    or None when the widths agree (a student with the teacher's width is compared as it is).

    One map shared by the embeddings and every layer, as CoFi does: compaction keeps the same hidden
    dimensions at every depth (one gate per dimension, shared by every layer), so the student's
    residual stream is one space throughout, and one map back to the teacher's is what that implies;
    a map per layer would add (layers + 1) x H' x H parameters that could absorb, layer by layer, the
    drift the student itself should correct. It starts as the scatter of the ``kept`` dimensions
    back into their teacher places (student dimension j -> teacher dimension kept[j]), where the
    compact model and the teacher's hidden states agree on the kept dimensions at the start; without
    ``kept`` (no usable architecture.json), a random init seeded by ``seed``."""
    if student_width == teacher_width:
        return None
    linear = torch.nn.utils.skip_init(torch.nn.Linear, student_width, teacher_width)  # leaves the global RNG as it is
    with torch.no_grad():
        linear.bias.zero_()
        if kept is not None:
            linear.weight.zero_()
            linear.weight[torch.tensor(kept), torch.arange(student_width)] = 1.0
        else:
            bound = 1.0 / math.sqrt(student_width)  # nn.Linear's own init
            linear.weight.uniform_(-bound, bound, generator=torch.Generator().manual_seed(seed))
    return linear


class _Trainee(torch.nn.Module):
    """What a run trains: the student and its :func:`hidden_map` (None at the teacher's width).

    Its forward gives what each stage's loss compares, every map applied inside it, so that under
    data parallelism DDP (which wraps this module) averages the map's and ``output_proj``'s gradients
    as it does the rest of the student's (a parameter used outside DDP's forward is never synced).
    Its state dict is the checkpoint's weights: ``student.*`` and ``hidden_map.*``."""

    def __init__(self, student: CompactBertPreTrainedModel, hidden_map: torch.nn.Linear | None):
        super().__init__()
        self.student, self.hidden_map = student, hidden_map

    def forward(self, stage: int, kind: str, inputs: dict):
        """Stage 1: the student's output with its hidden states in the teacher's width and its
        attention maps; stage 2: its task output (through ``output_proj`` where it has one; a
        narrow-output embedding student's through the map, fixed)."""
        if stage == 2:
            pred = model_output(self.student, kind, inputs)
            if kind == "embedding" and self.hidden_map is not None and output_projection(self.student) is None:
                # compact --narrow-output: the student's narrow embeddings compared with the teacher's through the
                # training-only map as stage 1 left it (linear, so it commutes with the mean pooling), held fixed:
                # a map still learning could absorb what the embeddings the model ships should match
                pred = F.linear(pred, self.hidden_map.weight.detach(), self.hidden_map.bias.detach())
            return pred
        out = self.student(**inputs, output_hidden_states=True, output_attentions=True)
        if self.hidden_map is None:
            return out
        hidden, proj = out.hidden_states, output_projection(self.student)
        if proj is None:
            mapped = [self.hidden_map(h) for h in hidden]
        else:  # an embedding model's last hidden states are its output: through the map it keeps after pooling
            mapped = [self.hidden_map(h) for h in hidden[:-1]] + [proj(hidden[-1])]
        return BaseModelOutput(last_hidden_state=mapped[-1], hidden_states=tuple(mapped), attentions=out.attentions)


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, examples: float | None = None) -> torch.Tensor:
    p = F.softmax(teacher_logits.float() / temperature, dim=-1)
    total = -(p * F.log_softmax(student_logits.float() / temperature, dim=-1)).sum()
    return total / (examples if examples is not None else len(student_logits))


def prediction_loss(kind: str, s_pred: torch.Tensor, t_pred: torch.Tensor, settings: DistillSettings, labels=None, gold_mask=None,
                    examples: float | None = None, gold_examples: float | None = None) -> tuple[torch.Tensor, dict]:
    """Stage 2's loss: soft CE (classification), MSE (regression, pooled embeddings); plus gold labels.
    ``examples`` / ``gold_examples``: what the means divide by (the global batch's, under data parallelism)."""
    n = examples if examples is not None else len(s_pred)
    if kind == "classification":
        # times T^2 (Hinton et al. 2015): the soft term's gradients shrink as 1/T^2, so unscaled a higher
        # --temperature would also hand the gold labels most of the weight --alpha-gold set
        t2 = settings.temperature ** 2
        soft = t2 * soft_cross_entropy(s_pred, t_pred, settings.temperature, n)
        # soft CE = KL + the teacher's entropy, a floor it cannot go below: log the KL too
        entropy = t2 * soft_cross_entropy(t_pred, t_pred, settings.temperature, n)
        parts = {"soft": soft.detach(), "kl": (soft - entropy).detach()}
    else:
        soft = (s_pred.float() - t_pred.float()).pow(2).sum() / (n * s_pred[0].numel())
        parts = {"soft": soft.detach()}
    loss = soft
    a = settings.alpha_gold
    if a > 0 and labels is not None and kind != "embedding":
        keep = gold_mask if gold_mask is not None else torch.ones(len(labels), dtype=torch.bool, device=labels.device)
        n_gold = gold_examples if gold_examples is not None else int(keep.sum())
        if n_gold > 0 and bool(keep.any()):
            if kind == "classification":
                gold = F.cross_entropy(s_pred[keep].float(), labels[keep], reduction="sum") / n_gold
            else:
                gold = F.mse_loss(s_pred[keep].float().squeeze(-1), labels[keep].float(), reduction="sum") / n_gold
        else:
            gold = soft.new_zeros(())
        parts["gold"] = gold.detach()
        loss = (1 - a) * soft + a * gold
    return loss, parts


def stage_steps(settings: DistillSettings, examples: dict[int, int]) -> dict[int, int]:
    """Each stage's steps: its epochs over its data (``examples[stage]`` examples, augmented or not)."""
    steps = {}
    for stage, epochs in ((1, settings.stage1_epochs), (2, settings.stage2_epochs)):
        per_epoch = math.ceil(examples[stage] / settings.batch_size)
        steps[stage] = int(math.ceil(epochs * per_epoch)) if epochs > 0 else 0
    check_total_steps(steps[1] + steps[2], f"--stage1-epochs {settings.stage1_epochs:g} and --stage2-epochs {settings.stage2_epochs:g} "
                                           f"over {examples[1]} and {examples[2]} examples in batches of {settings.batch_size}")
    return steps


def is_eval_point(done: int, s1: int, s2: int, per_epoch2: int) -> bool:
    """Whether the dev data is scored after step ``done``: at the end of stage 1, after every epoch of
    stage 2 (``per_epoch2`` steps; its last may be partial) and at the very end."""
    if done == s1 + s2 or (s1 and done == s1):
        return True
    return s1 < done < s1 + s2 and (done - s1) % per_epoch2 == 0


def lr_factor(step: int, total: int, warmup: float) -> float:
    """Linear warm-up over the first ``warmup`` fraction of ``total`` steps, then linear decay to 0."""
    w = int(round(warmup * total))
    if step < w:
        return (step + 1) / w
    return max(0.0, (total - step) / max(1, total - w))


# ------------------------------------------------------------------------------------------------
# Loading and checks
# ------------------------------------------------------------------------------------------------
def set_dropout(model: torch.nn.Module, p: float) -> None:
    """Set every dropout of a compact model (hidden, attention, classifier) to ``p`` (not saved in its config)."""
    from .modeling import CompactLayer

    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = p
        if isinstance(m, CompactLayer):
            m.attn_dropout = p


def _student_tokenizer(path: Path):
    from transformers import AutoTokenizer

    if not any((path / f).is_file() for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "vocab.json")):
        return None
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001
        raise PrunekitError(f"cannot load the tokenizer files in {path}: {str(e).splitlines()[0][:160]}") from None


def check_compatible(student: CompactBertPreTrainedModel, teacher: Teacher, student_tokenizer=None) -> None:
    """The student must come from this teacher: same layers, hidden size (before a cut of it: the
    config's ``base_hidden_size``), heads, vocabulary, task."""
    c, s = student.config, teacher.shape
    got = (c.num_hidden_layers, getattr(c, "base_hidden_size", None) or c.hidden_size, c.num_attention_heads, c.head_dim)
    want = (s.num_layers, s.hidden_size, s.num_heads, s.head_dim)
    if got != want or c.hidden_size > s.hidden_size:
        raise PrunekitError(
            f"the student (layers, hidden, heads, head size = {got}) was not compacted from {teacher.name_or_path} {want}: "
            "pass the teacher it was compacted from with --teacher"
        )
    if any(j >= s.num_heads for heads in c.kept_heads for j in heads):
        raise PrunekitError("the student's kept_heads name heads the teacher does not have: its config.json is corrupt")
    tv = getattr(teacher.config, "vocab_size", None)
    if c.vocab_size != tv:
        raise PrunekitError(
            f"teacher/student vocabulary mismatch: the student has {c.vocab_size} token embeddings, {teacher.name_or_path} has {tv}; "
            "distil from the teacher the student was compacted from"
        )
    if student_tokenizer is not None and student_tokenizer.get_vocab() != teacher.tokenizer.get_vocab():
        a, b = student_tokenizer.get_vocab(), teacher.tokenizer.get_vocab()
        diff = len(set(a.items()) ^ set(b.items()))
        raise PrunekitError(
            f"teacher/student vocabulary mismatch: their tokenizers differ in {diff} token ids; "
            "distil from the teacher the student was compacted from (or copy its tokenizer files into the student dir)"
        )
    if c.task_kind != teacher.kind:
        raise PrunekitError(f"the student is a {c.task_kind} model but {teacher.name_or_path} is loaded as {teacher.kind}")
    if teacher.kind != "embedding" and c.num_labels != teacher.config.num_labels:
        raise PrunekitError(f"the student has {c.num_labels} labels, the teacher {teacher.config.num_labels}: not the same task")


def _check_task(dataset, kind: str, num_labels: int, what: str) -> None:
    task = dataset.task
    if dataset.labels is None or task.kind == "unlabelled" or kind == "embedding":
        return
    if kind == "classification" and task.kind == "classification" and task.num_labels != num_labels:
        raise PrunekitError(f"{what} has {task.num_labels} classes but the teacher predicts {num_labels}: not the teacher's task")
    if (kind == "regression") != (task.kind == "regression"):
        raise PrunekitError(f"{what} is a {task.kind} task but the teacher is a {kind} model")


def _align(train, dev, kind: str, config, num_labels: int):
    """Train and dev labels in the teacher's class ids (matched by name where it names its classes).
    Where it does not, and train's classes are names, dev is numbered like train; that check comes
    first, so a dev label train lacks is the one error line."""
    from .data import align_labels, class_id_of, model_label_names

    if kind == "embedding":
        return train, dev
    names = train.task.label_names if train.labels is not None and train.task.kind == "classification" else None
    by_train = (model_label_names(config.id2label, num_labels) is None and names is not None
                and any(class_id_of(n) is None for n in names))
    if by_train:
        as_train = {**{i: f"LABEL_{i}" for i in range(num_labels)}, **dict(enumerate(names))}
        dev = align_labels(dev, kind, as_train, num_labels, "the dev data", whose="the training data")
    train = align_labels(train, kind, config.id2label, num_labels, "the training data")
    if not by_train:
        dev = align_labels(dev, kind, config.id2label, num_labels, "the dev data")
    return train, dev


def _load(settings: DistillSettings, source, split, max_examples, **cols):
    from .data import load_data

    return load_data(source, split, task=settings.task, glue_dir=settings.glue_dir, max_examples=max_examples, **cols)


# ------------------------------------------------------------------------------------------------
# Dev metric
# ------------------------------------------------------------------------------------------------
def dev_metrics(kind: str, outputs: torch.Tensor, teacher_outputs: torch.Tensor, dev) -> tuple[str, dict]:
    """(primary metric name, metrics): the task's metrics on labelled dev data, else fidelity to the teacher."""
    primary, metrics, _ = score(kind, outputs, dev, teacher_outputs)
    return primary, metrics


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------
def _augmented(settings: DistillSettings, train, teacher: Teacher, work: Path, device, progress: bool):
    """The augmented training set (cached in the work dir, so a resumed run reuses it)."""
    from .augment import AugmentedData, augment_dataset, build_replacer
    from .data import TextDataset

    cache = work / AUGMENTED_CACHE
    if cache.is_file():
        rows = [json.loads(line) for line in cache.read_text(encoding="utf-8").splitlines() if line.strip()]
        if len(rows) >= len(train) and all("text" in r for r in rows):
            pairs = [r["pair"] for r in rows] if train.pairs is not None else None
            labels = [r["label"] for r in rows] if train.labels is not None else None
            ds = TextDataset([r["text"] for r in rows], pairs, labels, train.task, train.source + " (augmented)")
            return AugmentedData(ds, [r["origin"] for r in rows], [r["origin"] == i for i, r in enumerate(rows)])
    replacer = build_replacer(teacher.tokenizer, teacher.model, settings.augment_mlm, settings.augment_top_k, settings.augment_prob, device)
    aug = augment_dataset(train, replacer, settings.augment_copies, settings.seed, progress=progress)
    ds = aug.dataset
    lines = []
    for i in range(len(ds)):
        row = {"text": ds.texts[i], "origin": aug.origin[i]}
        if ds.pairs is not None:
            row["pair"] = ds.pairs[i]
        if ds.labels is not None:
            row["label"] = ds.labels[i]
        lines.append(json.dumps(row))
    atomic_write_text(cache, "\n".join(lines) + "\n")
    return aug


def _best_path(work: Path, step: int) -> Path:
    return work / f"best-{step:07d}.safetensors"


def _save_best(work: Path, student, step: int) -> None:
    """The best weights so far, named by their step (a checkpoint names the best it knew, so a resumed
    run never mistakes a later run's best file for its own)."""
    from safetensors.torch import save_file

    tmp = work / ".best.safetensors.tmp"
    save_file({k: v.detach().cpu().contiguous() for k, v in student.state_dict().items()}, str(tmp), metadata={"step": str(step)})
    fsync_path(tmp)  # durable before a checkpoint names it
    os.replace(tmp, _best_path(work, step))
    fsync_path(work)


def _drop_unneeded_best(work: Path, ckpt_root: Path, best: dict) -> None:
    """Delete best-weight files that neither the run nor any kept checkpoint refers to."""
    wanted = {best["step"]}
    for d in ckpt_root.glob("step-*"):
        try:
            wanted.add(json.loads((d / "state.json").read_text())["best"]["step"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    keep = {_best_path(work, s).name for s in wanted if isinstance(s, int)}
    for f in work.glob("best-*.safetensors"):
        if f.name not in keep:
            f.unlink(missing_ok=True)


def distill(
    settings: DistillSettings,
    *,
    force: bool = False,
    resume: bool = False,
    progress: bool = True,
    teacher: Teacher | None = None,
    train_data=None,
    dev_data=None,
    on_step: Callable[[int], None] | None = None,
) -> DistillResult:
    """Distil a compact model dir into a new compact model dir (written atomically). The CLI's entry point.

    Under torchrun / accelerate launch with N processes it runs data-parallel (:mod:`prunekit.distributed`):
    ``batch_size`` is the global batch, each process takes 1/N of it; rank 0 evaluates on the dev data
    and writes the run dir (the result on the other ranks has no dev metrics). ``on_step(step)``:
    called after every step, once its evaluation and checkpoint (if due) are written."""
    settings.validate()
    with launched(settings.device) as (world, device):
        if settings.batch_size < world.size:
            raise PrunekitError(f"--batch-size {settings.batch_size} is the global batch, shared by {world.size} processes: give at least {world.size}")
        out = Path(settings.output_dir)
        if Path(settings.student).resolve() == out.resolve():
            raise PrunekitError("the output directory is the student's own directory: choose another -o")
        with run_work_dir(out, settings, world, force=force, resume=resume, resume_free=_RESUME_FREE, options=RESUME_OPTIONS,
                          resumable=(AUGMENTED_CACHE,)) as changed:
            run = _Run(settings, world, device, partial_dir(out), progress)
            run.inputs = _inputs(settings, teacher, train_data, dev_data)  # every input checked before any work
            on_main(world, lambda: start_work_dir(run.work, settings.to_json()))
            run.prepare()
            run.train(resume, changed, on_step)
            result = run.result()
            on_main(world, lambda: run.write_output(out, force or resume))
            return result


@dataclass
class _Inputs:
    """What a run starts from, every one checked: the student, its teacher, the data."""

    student: CompactBertPreTrainedModel
    student_dir: Path
    student_tok: object  # the student dir's own tokenizer, if it has one
    teacher: Teacher
    kind: str
    train: object  # TextDataset, labels in the teacher's class ids
    dev: object
    dev_held_out: bool = False  # the dev set is a share of --data (no --dev-data given)
    kept_hidden: list[int] | None = None  # the teacher's hidden dimensions the student kept (its architecture.json)


def _inputs(settings: DistillSettings, teacher: Teacher | None, train_data, dev_data) -> _Inputs:
    """Load and check the student, the data and the teacher: everything that can be wrong with the
    inputs fails here, before any work."""
    student_dir = Path(settings.student)
    if not student_dir.is_dir():
        raise PrunekitError(f"student model directory not found: {student_dir} (give what `prunekit compact` wrote)")
    student = _quiet(load_compact, student_dir)
    kept_hidden = None
    if (student_dir / "architecture.json").is_file():  # copied into the output: checked now, not passed on corrupt
        from .architecture import Architecture

        kept_hidden = Architecture.load(student_dir / "architecture.json").hidden
    student_tok = _student_tokenizer(student_dir)
    kind = student.config.task_kind
    cols = dict(text_column=settings.text_column, pair_column=settings.pair_column, label_column=settings.label_column)
    train = train_data if train_data is not None else _load(settings, settings.data, settings.split, settings.max_examples, **cols)
    if dev_data is not None:
        dev = dev_data
    elif settings.dev_data is not None:
        dev = _load(settings, settings.dev_data, settings.dev_split, settings.dev_max_examples, **cols)
        if train_data is None and data_key(settings.dev_data) == data_key(settings.data) and settings.dev_split == settings.split:
            log.warning("--dev-data is the training data (%s): the best checkpoint is picked on examples the student "
                        "trains on; give held-out examples", settings.dev_data)
    else:
        train, dev = train.split(1.0 - settings.dev_fraction, settings.seed)
    if teacher is None:
        name = settings.teacher or student.config.base_model_name_or_path
        if not name:
            raise PrunekitError(f"{student_dir}/config.json names no teacher: pass --teacher")
        teacher = load_teacher(name, kind)
    check_compatible(student, teacher, student_tok)
    check_max_length(settings.max_length, teacher.config, teacher.name_or_path)
    check_max_length(settings.max_length, student.config, str(student_dir))
    num_labels = teacher.config.num_labels if kind != "embedding" else 0
    train, dev = _align(train, dev, kind, teacher.config, num_labels)
    _check_task(train, kind, num_labels, "the training data")
    _check_task(dev, kind, num_labels, "the dev data")
    if kind == "embedding" and len(dev) < 3:  # fidelity, the dev metric, ranks pairs of sentences
        if dev_data is None and settings.dev_data is None:
            where = f"held out as --dev-fraction {settings.dev_fraction:g} of {len(train) + len(dev)} examples"
            fix = "give more data, a larger --dev-fraction, or --dev-data"
        else:
            where, fix = f"from {dev.source}", "give a --dev-data with more sentences (or a larger --dev-max-examples)"
        raise PrunekitError(f"embedding fidelity needs at least 3 sentences, got {len(dev)} in the dev data ({where}): {fix}")
    if settings.alpha_gold > 0 and (train.labels is None or kind == "embedding"):
        # the recipe's gold-label weight applies where the data has labels (the loss skips it otherwise);
        # another weight asked for without them is a mistake
        if settings.alpha_gold != RECIPES[settings.recipe]["alpha_gold"]:
            raise PrunekitError("--alpha-gold needs labelled training data and a classification or regression model")
        log.info("no gold labels (unlabelled data or an embedding model): stage 2 matches the teacher's outputs only")
    if settings.budget is None:  # an absurd epoch count fails now (augmentation only adds steps)
        stage_steps(settings, {1: len(train), 2: len(train)})
    held_out = dev_data is None and settings.dev_data is None
    return _Inputs(student, student_dir, student_tok, teacher, kind, train, dev, held_out, kept_hidden)


def _map_starts_at_kept(inp: _Inputs) -> bool:
    """Whether the student's architecture.json names the hidden dimensions it kept (its map's start)."""
    width, full, kept = inp.student.config.hidden_size, inp.teacher.shape.hidden_size, inp.kept_hidden
    return kept is not None and len(kept) == width and max(kept) < full


def _trainee(inp: _Inputs, seed: int) -> _Trainee:
    """The student and, where its hidden width was cut, its :func:`hidden_map`, started from the
    dimensions its architecture.json says it kept (the config does not record them)."""
    width, full, kept = inp.student.config.hidden_size, inp.teacher.shape.hidden_size, inp.kept_hidden
    if width != full and not _map_starts_at_kept(inp):
        log.warning("%s has no architecture.json naming the %d hidden dimensions the student kept: the map of its hidden "
                    "states into the teacher's starts random", inp.student_dir, width)
        kept = None
    return _Trainee(inp.student, hidden_map(width, full, kept, seed))


# A teacher this good on the dev set held out of --data has most likely been fine-tuned on it.
SEEN_DEV_SCORE = 0.95


def dev_set_warning(inp: _Inputs, metric: str, teacher_dev: dict, dev_fraction: float) -> str | None:
    """What to say when the dev set (which picks the best checkpoint) is a share of --data: a teacher
    fine-tuned on --data has seen it, and its labels are then memorised, not held out. A warning when
    the teacher's score there says so (>= SEEN_DEV_SCORE), None otherwise (the run log says where the
    dev set came from either way)."""
    if not inp.dev_held_out or inp.dev.labels is None or inp.kind == "embedding":
        return None
    score = teacher_dev.get(metric)
    if score is None or score < SEEN_DEV_SCORE:
        return None
    return (f"the teacher scores {metric} {score:.3f} on the dev set held out of --data ({dev_fraction:g} of it): it was "
            f"most likely fine-tuned on these examples, so the best checkpoint is picked on labels it memorised; give "
            f"--dev-data with examples the teacher has not seen (its own held-out or dev split)")


def learning_check(kind: str, dev, best: dict, metric: str, teacher_dev: dict, stage1_steps: int) -> tuple[bool | None, str | None]:
    """(learned, what to say) for the distilled classifier: not learned when the best checkpoint's dev
    accuracy (the checkpoint picked by ``metric``) is no better than always answering the most frequent
    label, by at least one example, or its MCC is <= 0 where the task has no accuracy (CoLA) — and only
    where the teacher itself beats that (an imbalanced dev set the teacher cannot read either says
    nothing about the student). A student so small that its [CLS] state barely depends on the input
    when it starts (a 10% search can keep one or two heads) gets almost no gradient from the predictions
    alone and can stay there. (None, None) where the check does not apply: not a classifier, no class
    labels, no dev number."""
    m = best.get("metrics") or {}
    if kind != "classification" or dev.labels is None or dev.task.kind != "classification" or not m or not len(dev.labels):
        return None, None
    n = len(dev.labels)
    top, count = Counter(dev.labels).most_common(1)[0]
    if "accuracy" in m and "accuracy" in teacher_dev:
        if round(teacher_dev["accuracy"] * n) <= count:
            return None, None
        if round(m["accuracy"] * n) > count:
            return True, None
        names = dev.task.label_names
        what = (f"its best dev accuracy {m['accuracy']:.4f}" + (f" (the checkpoint picked by {metric})" if metric != "accuracy" else "")
                + f" is no better than always answering {names[top] if names else top!r} ({count / n:.4f})")
    elif "mcc" in m and "mcc" in teacher_dev:
        if teacher_dev["mcc"] <= 0:
            return None, None
        if m["mcc"] > 0:
            return True, None
        what = f"its best dev MCC {m['mcc']:.4f} is no better than a constant answer (0)"
    else:
        return None, None
    fix = ("give stage 1 some steps (--stage1-epochs 1; with --budget, --stage1-share 0.25), which matches the teacher's "
           "hidden states, another --seed, or keep more of the model (a larger --target)") if stage1_steps == 0 else \
        f"it had {stage1_steps} steps of stage 1: try more (--stage1-epochs), another --seed, or keep more of the model (a larger --target)"
    return False, (f"the student did not learn: {what}. A student this small can start with a [CLS] state that barely "
                   f"depends on the input, and the teacher's predictions alone may not move it: {fix}")


# A student starts flat when its outputs vary across the dev examples less than this share as much as
# the teacher's do: its [CLS] state barely depends on the input (0.00004 and 0.0005 for two 10% students
# with 2 heads, of which one never learned from the predictions alone; 0.05 to 0.67 for every other
# student of the real tasks, benchmarks/real_tasks).
FLAT_START = 0.01


def output_spread(outputs: torch.Tensor, reference: torch.Tensor) -> float:
    """How much ``outputs`` vary across examples (rows) as a share of how much ``reference`` does: the
    mean over output dimensions of the standard deviation across examples, over the reference's. NaN
    with fewer than two examples or a reference that does not vary."""
    o, r = outputs.detach().float().reshape(len(outputs), -1), reference.detach().float().reshape(len(reference), -1)
    if len(o) < 2 or len(r) < 2:
        return float("nan")
    ref = float(r.std(0).mean())
    return float(o.std(0).mean()) / ref if ref > 0 else float("nan")


FAST_BACKEND = "sdpa"  # training and evaluation; stage 1 asks for attention maps, which runs eager


class _Run:
    """One distillation run: :meth:`prepare` (devices, the stages' data, the dev set), :meth:`train`
    (both stages, checkpoints, the best weights by the dev metric), :meth:`write_output` (rank 0)."""

    def __init__(self, settings: DistillSettings, world: World, device: torch.device, work: Path, progress: bool):
        self.s, self.world, self.device, self.work, self.progress = settings, world, device, work, progress
        self.inputs: _Inputs | None = None
        self.trainee: _Trainee | None = None  # the student and its hidden map (prepare)
        self.best = {"step": None, "stage": None, "value": None, "metrics": None}
        self.metric, self.teacher_dev, self.before, self.teacher_dev_out = "", {}, {}, None
        self.start_spread = float("nan")  # the student's output spread on dev before training (output_spread)
        self.teacher_train_out: torch.Tensor | None = None  # stage 2's targets (teacher_predictions)
        self.history: list[dict] = []
        self.book: StepBook | None = None
        self.dev_warning: str | None = None

    # -- set-up ------------------------------------------------------------------------------------
    def prepare(self) -> None:
        s, inp, world, device = self.s, self.inputs, self.world, self.device
        inp.teacher.model.to(device).eval()
        self.trainee = _trainee(inp, s.seed).to(device)
        if s.dropout is not None:
            set_dropout(inp.student, s.dropout)
        self.backend = inp.student.config.backend
        tokenizer = inp.teacher.tokenizer
        if (s.stage1_share == 0 if s.budget is not None else not s.stage1_epochs):
            self._check_stage1_not_needed(0)  # before the augmentation and the timing: they take minutes
        self.plain = encode(inp.train, tokenizer, s.max_length)
        plain_orig = torch.ones(len(self.plain), dtype=torch.bool)
        self.aug_enc, aug_orig = self.plain, plain_orig
        if s.augments(1) or s.augments(2):  # made (or read from its cache) on rank 0, sent to the others
            aug = broadcast_object(on_main(world, lambda: _augmented(s, inp.train, inp.teacher, self.work, device, self.progress)), world)
            self.aug_enc = encode(aug.dataset, tokenizer, s.max_length)
            aug_orig = torch.tensor(aug.is_original, dtype=torch.bool)
        self.stage_data = {st: (self.aug_enc, aug_orig) if s.augments(st) else (self.plain, plain_orig) for st in (1, 2)}
        self.per_epoch2 = max(1, math.ceil(len(self.stage_data[2][0]) / s.batch_size))
        self.dev_enc = encode(inp.dev, tokenizer, s.max_length)
        inp.student.config.backend = FAST_BACKEND
        eval_seconds = 0.0
        if world.main:  # the dev metric picks the best checkpoint, which rank 0 keeps
            self.teacher_dev_out = predict(inp.teacher.model, inp.kind, self.dev_enc, device, s.eval_batch_size)
            self.metric, self.teacher_dev = dev_metrics(inp.kind, self.teacher_dev_out, self.teacher_dev_out, inp.dev)
            t0 = time.perf_counter()
            student_out = self.dev_outputs()
            self.before = dev_metrics(inp.kind, student_out, self.teacher_dev_out, inp.dev)[1]
            eval_seconds = time.perf_counter() - t0
            self.start_spread = output_spread(student_out, self.teacher_dev_out)
            self.dev_warning = dev_set_warning(inp, self.metric, self.teacher_dev, s.dev_fraction)
            if self.dev_warning:
                log.warning("%s", self.dev_warning)
        self.plan = broadcast_object(on_main(world, lambda: self._plan(eval_seconds)), world)  # rank 0's, on every rank
        self.steps = {1: self.plan.stage1_steps, 2: self.plan.stage2_steps}
        self.s1, self.total = self.steps[1], self.steps[1] + self.steps[2]
        self._check_stage1_not_needed(self.s1)

    def _check_stage1_not_needed(self, stage1_steps: int) -> None:
        """Refuses a run without stage-1 steps for a student only stage 1 can start: an embedding model
        compacted with --narrow-output, whose map into the teacher's width starts random."""
        inp = self.inputs
        if stage1_steps == 0 and inp.kind == "embedding" and self.trainee.hidden_map is not None and \
                output_projection(inp.student) is None and not _map_starts_at_kept(inp):
            raise PrunekitError(f"{inp.student_dir} (an embedding model compacted with --narrow-output, without the "
                                "architecture.json naming the hidden dimensions it kept) is scored in stage 2 through a map of its "
                                "embeddings that only stage 1 trains: give --stage1-epochs 1 (with --budget: --stage1-share 0.25)")

    def _plan(self, eval_seconds: float) -> Plan:
        """Each stage's steps (from the epochs, or from --budget; a resumed run's from its plan.json)
        and the time they are expected to take on this machine, said before the run starts (rank 0)."""
        s, path = self.s, self.work / PLAN_FILE
        if s.budget is not None and path.is_file():  # a resumed run goes on with the plan it made
            plan = Plan(**json.loads(path.read_text(encoding="utf-8")))
        else:
            flat = self._starts_flat()
            examples = {st: len(self.stage_data[st][0]) for st in (1, 2)}
            if s.budget is None:  # a stage that does not run is not timed
                steps = stage_steps(replace(s, stage1_epochs=s.flat_start_stage1_epochs) if flat else s, examples)
                s1, s2 = steps[1], steps[2]
                per_step = {str(st): self._seconds_per_step(st) if steps[st] else 0.0 for st in (1, 2)}
            else:
                budget, share = parse_budget(s.budget), s.stage1_share
                per_step = {"1": self._seconds_per_step(1) if share > 0 or flat else 0.0,  # a stage given no share
                            "2": self._seconds_per_step(2) if share < 1 else 0.0}  # is not timed
                if flat:  # the epochs of stage 1 asked for, at most half the budget
                    want = s.flat_start_stage1_epochs * math.ceil(examples[1] / s.batch_size)
                    share = min(0.5, want / budget.steps if budget.steps else want * per_step["1"] / budget.seconds)
                s1, s2 = split(budget, share, per_step, eval_seconds, self.per_epoch2)
                if flat and s1 == 0 and s2 > 1:  # rounded down to nothing: one step at least
                    s1, s2 = 1, s2 - 1
                flat = flat and s1 > 0
            plan = Plan(s1, s2, per_step, eval_seconds, s.budget, round(self.start_spread, 6) if flat else None)
            if flat:
                log.warning("the student's outputs barely depend on its input (their spread over the dev set is %.2g of the "
                            "teacher's): stage 1 gets %d steps first, as the teacher's predictions alone may not move it "
                            "(--flat-start-stage1-epochs 0: never)", self.start_spread, s1)
            atomic_write_text(path, json.dumps(plan.to_dict(), indent=1) + "\n")
        line = (f"distill: {plan.stage1_steps + plan.stage2_steps} steps (stage 1: {plan.stage1_steps}, stage 2: "
                f"{plan.stage2_steps}){f' for --budget {s.budget}' if s.budget else ''}, about "
                f"{format_duration(plan.estimate(self.per_epoch2))} on this machine, in {precision_note(self.device, s.mixed_precision)}")
        log.info("%s", line)
        if self.progress:
            from tqdm.auto import tqdm

            tqdm.write(line, file=sys.stderr)
        return plan

    def _learning(self) -> tuple[bool | None, str | None]:
        """:func:`learning_check` of the best checkpoint (rank 0)."""
        return learning_check(self.inputs.kind, self.inputs.dev, self.best, self.metric, self.teacher_dev, self.s1)

    def _starts_flat(self) -> bool:
        """Whether the student gets stage 1 because it starts flat: its outputs' spread over the dev set
        under FLAT_START of the teacher's (rank 0 measured it), where the run gives stage 1 nothing."""
        s, config = self.s, self.inputs.student.config
        heads = getattr(config, "num_heads_per_layer", None) or [config.num_attention_heads]
        return s.flat_start_stage1_epochs > 0 and (s.stage1_share == 0 if s.budget is not None else s.stage1_epochs == 0) \
            and self.start_spread < FLAT_START and any(heads)  # with no head at all, [CLS] cannot see the input

    def _seconds_per_step(self, stage: int, repeats: int = 2) -> float:
        """A training step's seconds for ``stage`` on this machine, at an epoch's mean padded tokens:
        the median of a few forward and backward passes on the epoch's batch with the fewest padded
        tokens and on the one with the most (after a warm-up), read off the line through the two
        (:func:`prunekit.budget.seconds_at`). Nothing is applied (the gradients are dropped; the
        loop reseeds every step, so nothing here changes the run); the optimizer step is not timed."""
        student, data = self.inputs.student, self.stage_data[stage][0]
        if len(data) == 0:
            return 0.0
        s = self.s
        lengths = data.lengths()
        per_epoch = max(1, math.ceil(len(data) / s.batch_size))
        order = batch_order(len(data), s.batch_size, s.seed + stage, lengths=lengths if s.group_by_length else None)
        epoch = [next(order) for _ in range(per_epoch)]
        tokens = [padded_tokens(lengths, b) for b in epoch]
        mean = sum(tokens) / len(tokens)
        short, long = epoch[tokens.index(min(tokens))], epoch[tokens.index(max(tokens))]
        backend = student.config.backend
        student.config.backend = "eager" if stage == 1 else FAST_BACKEND
        self.trainee.train()
        kept = [list(h) for h in student.config.kept_heads]

        def timed(idx: torch.Tensor) -> float:
            t0 = time.perf_counter()
            loss, _ = self._loss(stage, self.trainee, data, self.stage_data[stage][1], idx, idx, kept)
            loss.backward()
            return time.perf_counter() - t0

        timed(long)  # warm-up
        times = {"short": [], "long": []}
        for _ in range(repeats):
            times["short"].append(timed(short))
            times["long"].append(timed(long))
        self.trainee.zero_grad(set_to_none=True)
        student.config.backend = backend
        return seconds_at(mean, (min(tokens), statistics.median(times["short"])), (max(tokens), statistics.median(times["long"])))

    def dev_outputs(self) -> torch.Tensor:
        return predict(self.inputs.student, self.inputs.kind, self.dev_enc, self.device, self.s.eval_batch_size)

    def dev_score(self) -> dict:
        return dev_metrics(self.inputs.kind, self.dev_outputs(), self.teacher_dev_out, self.inputs.dev)[1]

    def _stage_optimizer(self, stage: int, opt_state, ckpt_root: Path) -> torch.optim.Optimizer:
        """AdamW for ``stage``, restored when a resumed run stopped inside it. Weight decay on
        matrices only (not biases, LayerNorms), as BERT fine-tuning does. It holds the hidden map
        too; stage 2 gives it no gradient, and AdamW leaves a parameter without one as it is."""
        s = self.s
        params = [p for p in self.trainee.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": s.weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        opt = torch.optim.AdamW(groups, lr=s.stage1_lr if stage == 1 else s.stage2_lr)
        if opt_state is not None and f"opt{stage}" in opt_state[1]:
            with restoring(ckpt_root):
                restore_optimizer(f"opt{stage}", opt, *opt_state)
        return opt

    # -- the loop ----------------------------------------------------------------------------------
    def train(self, resume: bool, changed: dict, on_step: Callable[[int], None] | None) -> None:
        from tqdm.auto import tqdm

        s, inp, world, device = self.s, self.inputs, self.world, self.device
        student = inp.student
        ckpt_root, log_path = self.work / "checkpoints", self.work / "distill_log.jsonl"
        start, opt_state = 0, None
        found = latest_checkpoint(ckpt_root, world) if resume else None
        if found is not None:
            start, tensors, meta = found
            with restoring(ckpt_root):
                self.trainee.load_state_dict({k: v for k, v in tensors.items() if k.split(".", 1)[0] in ("student", "hidden_map")})
                self.best = meta["best"]
            opt_state = (tensors, meta)
            log.info("resuming from step %d", start)
        self.history = on_main(world, lambda: restart_log(log_path, start, changed)) or []  # [] on the other ranks
        # Data parallel: DDP averages the gradients (the classifier takes no part in stage 1: unused parameters allowed).
        train_model = data_parallel(self.trainee, device, find_unused_parameters=True) if world.distributed else self.trainee
        stage_now, opt, order, bar = None, None, None, None
        kept_heads = [list(h) for h in student.config.kept_heads]
        with open_log(log_path, world) as log_file:
            self.book = book = StepBook(self.history, log_file, world, s.mixed_precision, s.max_nan_steps,
                                        "a lower --stage1-lr / --stage2-lr, or --mixed-precision no")
            for step in range(start, self.total):
                stage = 1 if step < self.s1 else 2
                if stage != stage_now:  # set up the stage: optimizer (restored if resuming inside it), data, bar
                    if bar is not None:
                        bar.close()
                    stage_now, base = stage, (0 if stage == 1 else self.s1)
                    opt, opt_state = self._stage_optimizer(stage, opt_state, ckpt_root), None
                    lr = s.stage1_lr if stage == 1 else s.stage2_lr
                    params = [p for p in self.trainee.parameters() if p.requires_grad]
                    data, orig = self.stage_data[stage]
                    order = batch_order(len(data), s.batch_size, s.seed + stage, start_step=step - base, shuffle=True,
                                        lengths=data.lengths() if s.group_by_length else None)
                    desc = "stage 1: layers" if stage == 1 else "stage 2: predictions"
                    bar = tqdm(total=self.steps[stage], initial=step - base, disable=not (self.progress and world.main), desc=desc,
                               unit="step", dynamic_ncols=True)
                    student.config.backend = "eager" if stage == 1 else FAST_BACKEND
                factor = lr_factor(step - base, self.steps[stage], s.warmup)
                for g in opt.param_groups:
                    g["lr"] = lr * factor
                # Dropout depends on the step (and the process) only: resumable.
                torch.manual_seed(s.seed * 1_000_003 + step + 1_000_000_007 * world.rank)
                self.trainee.train()
                idx = next(order)  # the global batch; this process takes its share
                mine, real = shard(idx, world)
                loss, parts = self._loss(stage, train_model, data, orig, idx, mine, kept_heads)
                opt.zero_grad(set_to_none=True)
                done = step + 1
                book.scaler.backward(loss * (world.size * float(real)))  # DDP averages: the sum of the shares
                loss, parts, loss_finite = _reduce_shares(loss * float(real), parts, real, world)
                book.scaler.unscale_(params)
                # The norm is computed anyway (clipping); a NaN/inf one means a non-finite gradient.
                norm = torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm if s.max_grad_norm > 0 else math.inf)
                if book.settle(done, loss_finite, NonFiniteGuard.reason(loss_finite, grad_norm=norm), {"stage": stage}) == APPLIED:
                    opt.step()
                    record = book.applied({"step": done, "stage": stage, "loss": round(loss, 6),
                                           **{k: round(v, 6) for k, v in parts.items()}, "lr": lr * factor})
                    bar.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
                bar.update(1)
                # Rank 0 alone evaluates and writes; on_main tells every rank if that fails (a full disk),
                # so none is left waiting in the next step's collective.
                if is_eval_point(done, self.s1, self.steps[2], self.per_epoch2):
                    on_main(world, lambda: self._evaluate_dev(done, stage, log_file))
                if done % s.checkpoint_every == 0 or done == self.s1 or done == self.total:
                    on_main(world, lambda: self._checkpoint(done, stage, opt, log_file, ckpt_root))
                if on_step is not None:
                    on_step(done)
        if bar is not None:
            bar.close()
        student.config.backend = self.backend
        student.eval().to("cpu")
        inp.teacher.model.to("cpu")

    def _loss(self, stage: int, train_model, data, orig, idx, mine, kept_heads) -> tuple[torch.Tensor, dict]:
        """This process's share of the step's loss, and its parts: the layers (stage 1) or the
        predictions (stage 2), as means over the global batch so the shares add up."""
        s, inp, device = self.s, self.inputs, self.device
        batch = {k: v.to(device) for k, v in collate(data, mine.tolist()).items()}
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
        glob = idx.tolist() if self.world.distributed else None  # the global batch's real tokens, examples, originals
        with autocast(device, s.mixed_precision):
            if stage == 1:
                with torch.no_grad():
                    t_out = inp.teacher.model(**inputs, output_hidden_states=True, output_attentions=True)
                s_out = train_model(1, inp.kind, inputs)
                tokens = sum(len(data.input_ids[i]) for i in glob) if glob else None
                return intermediate_loss(s_out, t_out, kept_heads, inputs["attention_mask"], s, tokens)
            t_pred = self.teacher_predictions(data)[mine]
            s_pred = train_model(2, inp.kind, inputs)
            return prediction_loss(inp.kind, s_pred, t_pred, s, batch.get("labels"), orig[mine].to(device),
                                   len(glob) if glob else None, int(orig[idx].sum()) if glob else None)

    def teacher_predictions(self, data) -> torch.Tensor:
        """Stage 2's targets: the teacher's outputs on every example of its training data, computed
        once, in one pass of the teacher over the data, instead of at every step. The teacher is
        frozen and in eval mode (no dropout), so they are what each step would compute (up to the
        padding of its batch); a stage-2 step is then the student's forward and backward alone, which
        at 30% of the FLOPs is about half the step's time on a CPU. Every process computes them all."""
        if self.teacher_train_out is None or len(self.teacher_train_out) != len(data):
            inp = self.inputs
            with torch.autocast(device_type=self.device.type, enabled=False):  # first asked inside a step's autocast: fp32 targets
                self.teacher_train_out = predict(inp.teacher.model, inp.kind, data, self.device, self.s.eval_batch_size).to(self.device)
        return self.teacher_train_out

    def _evaluate_dev(self, done: int, stage: int, log_file) -> None:
        """The dev metric after step ``done``; the best weights so far kept in the work dir (rank 0)."""
        student = self.inputs.student
        student.config.backend = FAST_BACKEND
        m = self.dev_score()
        student.config.backend = "eager" if stage == 1 else FAST_BACKEND
        value = m.get(self.metric, float("nan"))
        rec = {"step": done, "stage": stage, "dev": {k: round(v, 6) for k, v in m.items()}}
        self.history.append(rec)
        with run_writes(f"the run log or the best weights of step {done} in {self.work}"):
            log_file.write(json.dumps(rec) + "\n")
            if not math.isnan(value) and (self.best["value"] is None or value > self.best["value"]):
                _save_best(self.work, student, done)
                self.best = {"step": done, "stage": stage, "value": value, "metrics": m}
            log_file.flush()

    def _checkpoint(self, done: int, stage: int, opt, log_file, ckpt_root: Path) -> None:
        if self.book.guard.streak:  # not in the middle of a run of skipped steps
            return
        with run_writes(f"the run log or checkpoint of step {done} in {self.work}"):
            log_file.flush()
            tensors = dict(self.trainee.state_dict())  # the student's weights and the hidden map's, never in the model dir
            meta = {"best": self.best}
            flatten_optimizer(f"opt{stage}", opt, tensors, meta)
            write_checkpoint(ckpt_root, done, tensors, meta)
            _drop_unneeded_best(self.work, ckpt_root, self.best)

    # -- the outputs -------------------------------------------------------------------------------
    def result(self) -> DistillResult:
        return DistillResult(output_dir=Path(self.s.output_dir), metric=self.metric, teacher_dev=self.teacher_dev,
                             before=self.before, best=self.best, steps=self.total, log=self.history,
                             skipped_steps=self.book.guard.skipped, overflow_steps=self.book.scaler.overflows,
                             dev_warning=self.dev_warning, learn_warning=self._learning()[1])

    def write_output(self, out: Path, overwrite: bool) -> None:
        """The best weights as a compact model dir (config, safetensors, tokenizer), plus the run's record (rank 0)."""
        from safetensors.torch import load_file

        s, inp, work, best = self.s, self.inputs, self.work, self.best
        student, metric = inp.student, self.metric
        if best["step"] is not None:
            try:
                student.load_state_dict(load_file(str(_best_path(work, best["step"]))))
            except Exception as e:  # noqa: BLE001 - deleted or damaged by hand: the run cannot say what its best was
                raise PrunekitError(
                    f"the best weights of this run ({_best_path(work, best['step'])}) are missing or corrupt "
                    f"({str(e).splitlines()[0][:120]}): start over with --force"
                ) from None
        else:
            log.warning("no dev evaluation gave a number; keeping the last weights")
        if best["value"] is not None and self.before.get(metric) is not None and best["value"] < self.before[metric]:
            log.warning("the best distilled %s (%.4f) is below the undistilled student's (%.4f)", metric, best["value"],
                        self.before[metric])
        learned, learn_warning = self._learning()
        # Assembled in a folder of its own inside the work dir, then renamed into place: a kill before
        # the rename leaves the checkpoints (a --resume only redoes this), after it a complete dir.
        final = work / "output"
        shutil.rmtree(final, ignore_errors=True)
        final.mkdir()
        _quiet(save_compact, student, final)
        (inp.student_tok or inp.teacher.tokenizer).save_pretrained(final)
        if inp.kind == "embedding":
            write_sentence_transformers_files(final, str(inp.student_dir), student.config.hidden_size, s.max_length)
        for name in ("architecture.json", "compact_report.json"):  # what the student was cut from, and its cost
            if (inp.student_dir / name).is_file():
                shutil.copyfile(inp.student_dir / name, final / name)
        for name in ("settings.json", "distill_log.jsonl"):
            shutil.copyfile(work / name, final / name)
        scaler = self.book.scaler
        report = {
            "student": str(inp.student_dir), "teacher": inp.teacher.name_or_path, "kind": inp.kind, "metric": metric,
            "teacher_dev": self.teacher_dev, "before": self.before, "best": best,
            "steps": {"stage1": self.s1, "stage2": self.steps[2]}, "plan": self.plan.to_dict(), "train_examples": len(self.plain),
            "augmented_examples": len(self.aug_enc) if self.aug_enc is not self.plain else 0, "dev_examples": len(self.dev_enc),
            "dev_source": inp.dev.source, "dev_held_out_of_data": inp.dev_held_out, "dev_warning": self.dev_warning,
            "learned": learned, "learn_warning": learn_warning,
            "skipped_steps": self.book.guard.skipped, "command": command_line(),
            **({"overflow_steps": scaler.overflows} if scaler.enabled else {}),
        }
        atomic_write_text(final / "distill_report.json", json.dumps(report, indent=1) + "\n")
        if (final / "compact_report.json").is_file():
            write_card(final, name=out.name)
        else:  # a compact model saved by other code (save_pretrained): no report to make a card from
            log.info("no model card: %s has no compact_report.json (`prunekit compact` writes one)", inp.student_dir)
        if out.exists():
            check_output_dir(out, overwrite)
        publish_dir(final, out)
        shutil.rmtree(work, ignore_errors=True)


def _reduce_shares(loss: torch.Tensor, parts: dict, real: bool, world: World) -> tuple[float, dict, bool]:
    """The global batch's loss and its parts (the sum of every process's shares), and whether the loss
    was finite on every process, in one all-reduce; plain numbers in a single process."""
    values = torch.stack([loss.detach().float(), *(v.float() * float(real) for v in parts.values()),
                          loss.new_tensor(0.0 if bool(torch.isfinite(loss)) else 1.0)])
    values = all_reduce_sum(values, world).tolist()
    return values[0], dict(zip(parts, values[1:-1])), values[-1] == 0 and math.isfinite(values[0])
