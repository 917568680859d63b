"""`prunekit search`: learn which attention heads and FFN neurons to keep under a FLOPs target.

The method (docs/method.md): a gate ``sigmoid(alpha)`` on every head and FFN neuron; the loss is
the (normalised) MSE between the gated student's output and the unpruned teacher's, plus
``lambda_cost`` times a banded log-FLOPs loss; the target ratio moves linearly from 1.0 to the
goal; only the top 10% of alpha gradients by magnitude are applied each step; the weights are
trained jointly unless ``freeze_weights``. The same entry point runs the baselines
(random, head importance, magnitude) at the same FLOPs target and writes the same outputs.

With ``cost="latency"`` the ratios (expected, discrete, the band, the final projection) are of the
latency on ``backend`` that :mod:`prunekit.latency`'s measured model predicts; the schedule and the
banded log loss are the same.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from .architecture import Architecture, config_hash
from .batching import EncodedData, batch_order, collate, encode, teacher_outputs
from .card import command_line
from .checkpoint import (
    checkpoint_dirs,
    flatten_optimizer,
    restart_log,
    restore_optimizer,
    restoring,
    run_writes,
    write_checkpoint,
)
from .data import data_key
from .distributed import (
    World,
    all_reduce_sum,
    broadcast_object,
    data_parallel,
    gather_rows,
    latest_checkpoint,
    launched,
    on_main,
    open_log,
    shard,
)
from .errors import PrunekitError
from .flops import expected_flops_ratio, model_flops
from .gates import GateLogits, Gates
from .io import atomic_write_text, check_output_dir, partial_dir, publish_dir
from .models import Teacher, check_max_length, load_teacher, model_output
from .run_dir import resume_free_settings, run_work_dir, start_work_dir
from .selection import select_to_budget, select_to_latency, trim_to_latency, uniform_architecture
from .training import (
    APPLIED,
    MAX_TOTAL_STEPS,
    SKIPPED,
    NonFiniteGuard,
    StepBook,
    autocast,
    check_precision,
    check_total_steps,
    precision_note,
)

log = logging.getLogger(__name__)

METHODS = ("search", "random", "uniform", "head-importance", "magnitude")
COSTS = ("flops", "latency")


@dataclass
class SearchSettings:
    """Every option of a search; saved as settings.json in the run dir."""

    # what a setting added since was in runs made before it (read so by --resume; prunekit.run_dir)
    OLDER_RUNS: ClassVar[dict] = {"group_by_length": False}

    model: str | None = None  # local dir or hub id; None: the packaged all-MiniLM-L6-v2
    kind: str = "auto"  # auto | classification | regression | embedding
    data: str | None = None  # GLUE task name, GLUE task dir, CSV/TSV/JSONL/TXT file; None: the shipped corpus
    split: str = "train"
    text_column: str | None = None
    pair_column: str | None = None
    label_column: str | None = None
    task: str | None = None
    glue_dir: str | None = None
    max_examples: int | None = None
    output_dir: str = "runs/search"
    method: str = "search"
    target: float = 0.3  # final FLOPs ratio to reach, in (0, 1]
    tolerance: float = 0.05  # band (1-t)R .. (1+t)R around the target
    lambda_cost: float = 2.0
    epochs: float = 3.0
    max_steps: int | None = None
    ramp_fraction: float = 0.7  # the target reaches its goal after this fraction of the steps
    batch_size: int = 32
    group_by_length: bool | None = None  # batches of similar lengths (prunekit.batching.GROUP_BATCHES); None: on for --method search
    max_length: int = 128  # tokenizer truncation and the sequence length of the FLOPs model
    lr: float = 2e-5  # weights (jointly trained)
    alpha_lr: float = 1.0
    alpha_optimizer: str = "sgd"  # sgd: steps proportional to the per-FLOP gradient | adam
    alpha_init: float = 2.0
    topk_fraction: float = 0.1
    freeze_weights: bool = False
    seed: int = 42
    device: str = "auto"
    mixed_precision: str = "auto"  # auto (bf16 on CUDA) | no | bf16 | fp16
    checkpoint_every: int = 50
    importance_batches: int = 16  # head-importance: batches to accumulate |dL/dmask| over
    max_nan_steps: int = 10
    cost: str = "flops"  # what --target is a ratio of: flops (analytic) | latency (measured on --backend)
    backend: str | None = None  # --cost latency: the backend whose latency is measured (prunekit.backends)
    latency_batch: int = 16  # the batch and sequence length the latency is measured at
    latency_seq_len: int | None = None  # None: --max-length
    latency_threads: int | None = None  # None: torch's default
    latency_repeats: int = 10
    latency_table: str | None = None  # the table's file; None: the cache (prunekit.latency.cache_dir)
    reprofile: bool = False  # measure the table again even when one matches
    latency_check: int = 3  # time the chosen architecture, re-choose while it is off the target by over LATENCY_AIM: at most this many times (0: off)
    # a fresh run times the uniform architecture the latency model puts at the target and scales the model by measured /
    # predicted (calibrate_latency) before the gates learn; None: on where the check times on the machine (latency_check > 0)
    latency_calibrate: bool | None = None
    # --cost latency: what the gates' loss counts while they learn. flops (default: dev +1.0, test -0.4 on a real task, docs/results.md):
    # the FLOPs loss at the FLOPs ratio the latency model maps the target to, then the choice brought to the latency
    # target by the model and the check; latency: the latency model itself in the loss (it costs a head differently)
    gate_cost: str = "flops"
    prune_hidden: bool = False  # gates on the hidden dimensions too (one per dimension, shared by every layer)

    def __post_init__(self) -> None:
        if self.group_by_length is None:  # grouped batches halve a search's time on text of varied lengths
            self.group_by_length = self.method == "search"

    @property
    def calibrates(self) -> bool:
        """Whether a fresh latency search calibrates its latency model (:func:`calibrate_latency`)."""
        if self.cost != "latency":
            return False
        return self.latency_check > 0 if self.latency_calibrate is None else bool(self.latency_calibrate)

    def validate(self) -> None:
        if not (isinstance(self.target, (int, float)) and 0.0 < self.target <= 1.0) or math.isnan(self.target):
            what = "a latency ratio" if self.cost == "latency" else "a FLOPs ratio"
            raise PrunekitError(f"--target must be in (0, 1] ({what}, e.g. 0.3), got {self.target}")
        self.validate_cost()
        check_precision(self.mixed_precision)
        if not 0.0 <= self.tolerance < 1.0:
            raise PrunekitError(f"--tolerance must be in [0, 1), got {self.tolerance}")
        if self.method not in METHODS:
            raise PrunekitError(f"unknown --method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.alpha_optimizer not in ("sgd", "adam"):
            raise PrunekitError(f"--alpha-optimizer must be sgd or adam, got {self.alpha_optimizer!r}")
        if not 0.0 < self.topk_fraction <= 1.0:
            raise PrunekitError(f"--topk-fraction must be in (0, 1], got {self.topk_fraction}")
        if not 0.0 <= self.ramp_fraction <= 1.0:
            raise PrunekitError(f"--ramp-fraction must be in [0, 1], got {self.ramp_fraction}")
        if self.batch_size < 1:
            raise PrunekitError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.max_length < 8:
            raise PrunekitError(f"--max-length must be >= 8 tokens, got {self.max_length}")
        if not math.isfinite(self.epochs) or (self.epochs <= 0 and not self.max_steps):
            raise PrunekitError("--epochs must be > 0 (or give --max-steps)")
        for name, low in (("lambda_cost", 0.0), ("lr", None), ("alpha_lr", None), ("alpha_init", -math.inf)):
            value = getattr(self, name)
            if not math.isfinite(value) or value < (low or 0.0) or (low is None and value == 0):
                bound = "" if low == -math.inf else (" >= 0" if low == 0.0 else " > 0")
                raise PrunekitError(f"--{name.replace('_', '-')} must be a finite number{bound}, got {value}")
        if self.max_steps is not None and not 1 <= self.max_steps <= MAX_TOTAL_STEPS:
            raise PrunekitError(f"--max-steps must be in 1..{MAX_TOTAL_STEPS}, got {self.max_steps}")
        if self.checkpoint_every < 1 or self.max_nan_steps < 1 or self.importance_batches < 1:
            raise PrunekitError("--checkpoint-every, --max-nan-steps and the importance batches must be >= 1")
        if self.group_by_length and self.method != "search":
            raise PrunekitError("--group-by-length orders the gate search's batches: use --method search with it "
                                "(the baselines train nothing)")
        if self.prune_hidden and self.method != "search":
            raise PrunekitError("--prune-hidden is learned by the gate search: use --method search with it "
                                "(the baselines keep the hidden width)")

    def validate_cost(self) -> None:
        """The --cost options: a latency target needs a known --backend; its options are refused with FLOPs."""
        if self.cost not in COSTS:
            raise PrunekitError(f"unknown --cost {self.cost!r}: choose one of {', '.join(COSTS)}")
        if self.cost == "flops":
            given = [o for o, v in (("--backend", self.backend), ("--latency-table", self.latency_table),
                                    ("--reprofile", self.reprofile),
                                    ("--latency-calibrate/--no-latency-calibrate", self.latency_calibrate is not None)) if v]
            if self.gate_cost != "flops":
                given.append(f"--gate-cost {self.gate_cost}")
            if given:
                raise PrunekitError(f"{', '.join(given)} apply to --cost latency only (this search targets FLOPs)")
            return
        from .backends import BACKENDS

        if self.backend is None or self.backend not in BACKENDS or self.backend == "ort":
            known = ", ".join(b for b in BACKENDS if b != "ort")
            raise PrunekitError(f"--cost latency needs --backend, one of {known}; got {self.backend!r}")
        if self.method == "uniform":
            raise PrunekitError("--method uniform targets FLOPs only for now: use --cost flops, or another method")
        for name in ("latency_batch", "latency_seq_len", "latency_threads", "latency_repeats"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise PrunekitError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if not isinstance(self.latency_check, int) or self.latency_check < 0:
            raise PrunekitError(f"--latency-check must be >= 0 (0: off), got {self.latency_check!r}")
        if self.gate_cost not in COSTS:
            raise PrunekitError(f"unknown --gate-cost {self.gate_cost!r}: choose one of {', '.join(COSTS)}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> SearchSettings:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


    def total_steps(self, examples: int) -> int:
        """The steps of a search over ``examples`` examples: --max-steps, else --epochs passes."""
        if self.max_steps:
            return self.max_steps
        total = max(1, int(math.ceil(self.epochs * max(1, math.ceil(examples / self.batch_size)))))
        check_total_steps(total, f"--epochs {self.epochs:g} over {examples} examples in batches of {self.batch_size}")
        return total


# The options that may differ between a run and its --resume (the help of --resume and the README say
# the same): the first four are what to change when a run stopped on NaN/inf steps (the change is
# logged); --device and --checkpoint-every do not change the result.
RESUME_OPTIONS = ("--lr", "--alpha-lr", "--mixed-precision", "--max-nan-steps", "--device", "--checkpoint-every")
_RESUME_FREE = resume_free_settings(RESUME_OPTIONS)


@dataclass
class SearchResult:
    architecture: Architecture
    output_dir: Path
    achieved_ratio: float
    target: float
    steps: int
    log: list[dict] = field(default_factory=list)
    skipped_steps: int = 0  # steps skipped for a non-finite loss or gradients
    overflow_steps: int = 0  # fp16: steps skipped while the loss scale settled


def target_at(step: int, total_steps: int, goal: float, ramp_fraction: float) -> float:
    """The scheduled FLOPs target: linear from 1.0 to ``goal`` over the first ramp_fraction of steps."""
    ramp = max(1, int(round(ramp_fraction * total_steps)))
    if ramp_fraction <= 0:
        return goal
    progress = min(1.0, step / ramp)
    return 1.0 - (1.0 - goal) * progress


def flops_loss(expected: torch.Tensor, discrete: float, target: float, tolerance: float) -> torch.Tensor:
    """The banded log-FLOPs loss: push down above the band, up below it, nothing inside it."""
    if discrete > (1.0 + tolerance) * target:
        return torch.log(expected)
    if discrete < (1.0 - tolerance) * target:
        return -torch.log(expected)
    return expected.new_zeros(())


def topk_mask(grads: list[torch.Tensor], fraction: float) -> list[torch.Tensor]:
    """Boolean masks selecting the ``fraction`` largest-magnitude entries across all ``grads``."""
    flat = torch.cat([g.flatten().abs() for g in grads])
    k = max(1, int(math.ceil(fraction * flat.numel())))
    idx = torch.topk(flat, k, sorted=False).indices
    sel = torch.zeros_like(flat, dtype=torch.bool)
    sel[idx] = True
    out, start = [], 0
    for g in grads:
        out.append(sel[start : start + g.numel()].view_as(g))
        start += g.numel()
    return out


# ---------------------------------------------------------------- checkpoints (safetensors + JSON)


def save_checkpoint(ckpt_root: Path, step: int, alphas: GateLogits, student: nn.Module | None, opts: dict, keep: int = 2) -> None:
    tensors = {"alpha.head": alphas.head.detach().cpu(), "alpha.ffn": alphas.ffn.detach().cpu()}
    if alphas.hidden is not None:
        tensors["alpha.hidden"] = alphas.hidden.detach().cpu()
    if student is not None:
        for name, p in student.state_dict().items():
            tensors[f"student.{name}"] = p
    meta: dict = {}
    for prefix, opt in opts.items():
        flatten_optimizer(prefix, opt, tensors, meta)
    write_checkpoint(ckpt_root, step, tensors, meta, keep)


def _checkpoint(log_file, ckpt_root: Path, step: int, alphas: GateLogits, student: nn.Module | None, opts: dict) -> None:
    """The log flushed, then checkpoint ``step`` (rank 0; a failed write is one error line)."""
    with run_writes(f"the run log or checkpoint of step {step} in {ckpt_root.parent}"):
        log_file.flush()
        save_checkpoint(ckpt_root, step, alphas, student, opts)


# ---------------------------------------------------------------- the search


def _normalised_mse(student_out: torch.Tensor, teacher_out: torch.Tensor, teacher_batch: torch.Tensor | None = None) -> torch.Tensor:
    """MSE divided by the teacher output's mean square, so that lambda means the same for any head.

    Under data parallelism ``teacher_out`` holds this process's rows and ``teacher_batch`` the whole
    global batch's: the result is this process's share, and the shares sum to the global value."""
    teacher_batch = teacher_out if teacher_batch is None else teacher_batch
    scale = teacher_batch.float().pow(2).mean().clamp_min(1e-8)
    return (student_out.float() - teacher_out.float()).pow(2).sum() / (teacher_batch.numel() * scale)


def run_gate_search(
    settings: SearchSettings,
    teacher: Teacher,
    data: EncodedData,
    work: Path,
    device: torch.device,
    resume: bool,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
    world: World | None = None,
    changed: dict | None = None,
    latency=None,
) -> tuple[Architecture, list[dict], int, torch.Tensor, torch.Tensor]:
    """The differentiable search itself; rank 0 writes checkpoints and search_log.jsonl into ``work``.
    ``changed``: the settings a --resume changed (logged); ``on_step(step)``: called after every step
    that is not skipped for a NaN/inf, once its checkpoint is written. Returns the architecture, the
    log, the step count and the final gate logits (head, FFN). ``latency``: the
    :class:`prunekit.latency.LatencyModel` the ratios come from (None: FLOPs)."""
    run = _GateSearch(settings, teacher, data, work, device, world or World(), latency)
    start_step = run.restore(resume, changed)
    run.loop(start_step, progress, on_step)
    return run.architecture(), run.history, run.total_steps, *(a.detach().cpu() for a in run.alphas.groups())


class _GateSearch:
    """The state of a gate search: the student (a copy of the teacher), its gates, their logits
    (alphas), the optimizers, and the run log."""

    def __init__(self, settings: SearchSettings, teacher: Teacher, data: EncodedData, work: Path, device: torch.device,
                 world: World, latency=None):
        self.s, self.teacher, self.data, self.work, self.device, self.world = settings, teacher, data, work, device, world
        self.latency = latency  # a LatencyModel: the target and the band are of predicted latency, not FLOPs
        self.shape, self.seq_len = teacher.shape, settings.max_length
        # what the gates' loss counts, and its goal: the latency model and the target, or (--gate-cost flops) the
        # FLOPs at the ratio the latency model maps the target to
        self.gate_latency = latency if settings.gate_cost == "latency" else None
        self.gate_target = settings.target if latency is None or self.gate_latency is not None else \
            gate_flops_target(latency, self.shape, self.seq_len, settings.target)
        torch.manual_seed(settings.seed)
        self.student = student = copy.deepcopy(teacher.model).to(device)
        student.eval()  # dropout off: the gates and the FLOPs loss are the regularisers
        self.train_weights = not settings.freeze_weights
        # The embeddings hold most of a small model's parameters and lose no rows (with --prune-hidden,
        # only columns): they stay frozen, which also keeps the weight update cheap. The encoder layers (and any pooler/classifier) train.
        for name, p in student.named_parameters():
            p.requires_grad_(self.train_weights and ".embeddings." not in f".{name}")
        self.gates = Gates(student, self.shape)
        self.alphas = alphas = GateLogits(self.shape, settings.alpha_init, hidden=settings.prune_hidden).to(device)
        alpha_opt = torch.optim.Adam if settings.alpha_optimizer == "adam" else torch.optim.SGD
        self.opts = {"opt_alpha": alpha_opt(alphas.parameters(), lr=settings.alpha_lr)}
        if self.train_weights:
            self.opts["opt_weights"] = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=settings.lr,
                                                         weight_decay=0.0)
        self.total_steps = settings.total_steps(len(data))
        self.ckpt_root, self.log_path = work / "checkpoints", work / "search_log.jsonl"
        self.history: list[dict] = []
        self.saved_at: int | None = None  # the step of the newest checkpoint
        self.book: StepBook | None = None

    def restore(self, resume: bool, changed: dict | None) -> int:
        """The step to start from: the newest intact checkpoint's on --resume (alphas, weights and
        optimizers restored; the learning rates as now given), else 0. Also restarts the run log."""
        s, alphas, start_step = self.s, self.alphas, 0
        found = latest_checkpoint(self.ckpt_root, self.world) if resume else None
        if found is not None:
            start_step, tensors, meta = found
            with restoring(self.ckpt_root), torch.no_grad():
                alphas.head.copy_(tensors["alpha.head"])
                alphas.ffn.copy_(tensors["alpha.ffn"])
                if alphas.hidden is not None:
                    alphas.hidden.copy_(tensors["alpha.hidden"])
                if self.train_weights:
                    self.student.load_state_dict({k[len("student."):]: v for k, v in tensors.items() if k.startswith("student.")})
                for prefix, opt in self.opts.items():
                    restore_optimizer(prefix, opt, tensors, meta)
            for prefix, lr in (("opt_alpha", s.alpha_lr), ("opt_weights", s.lr)):  # these may change on --resume
                for g in self.opts[prefix].param_groups if prefix in self.opts else ():
                    g["lr"] = lr
            self.saved_at = start_step
            log.info("resuming from step %d", start_step)
        self.history = on_main(self.world, lambda: restart_log(self.log_path, start_step, changed)) or []  # [] on the other ranks
        return start_step

    def loop(self, start_step: int, progress: bool, on_step: Callable[[int], None] | None) -> None:
        from tqdm.auto import tqdm

        s, world = self.s, self.world
        # Data parallel: DDP averages the weight gradients; the gate logits' are all-reduced in the step.
        self.forward_model = data_parallel(self.student, self.device) if world.distributed and self.train_weights else self.student
        bar = tqdm(total=self.total_steps, initial=start_step, disable=not (progress and world.main), desc="search", unit="step",
                   dynamic_ncols=True)
        order = batch_order(len(self.data), s.batch_size, s.seed, start_step=start_step, shuffle=True,
                            lengths=self.data.lengths() if s.group_by_length else None)
        if world.main:
            log.info("search: %d steps, in %s", self.total_steps, precision_note(self.device, s.mixed_precision))
        with open_log(self.log_path, world) as log_file:
            self.book = StepBook(self.history, log_file, world, s.mixed_precision, s.max_nan_steps,
                                 "a lower --lr / --alpha-lr, or --mixed-precision no")
            for step in range(start_step, self.total_steps):
                outcome, record = self.step(step, next(order))
                if record is not None:
                    ratio = {"flops" if self.gate_latency is None else "latency": f"{record['discrete_ratio']:.3f}"}
                    bar.set_postfix(loss=f"{record['loss']:.4f}", **ratio, target=f"{record['target']:.3f}", refresh=False)
                bar.update(1)
                if outcome == SKIPPED:  # a NaN/inf step: no checkpoint of it
                    continue
                done = step + 1
                if done % s.checkpoint_every == 0:  # rank 0 writes; a failure there reaches every rank
                    self.checkpoint(log_file, done)
                if on_step is not None:
                    on_step(done)
            # The final state is always checkpointed, even when the last steps were skipped (NaN/inf):
            # `compact --weights search` takes the weights from the newest checkpoint, next to the final gates.
            if self.saved_at != self.total_steps:
                self.checkpoint(log_file, self.total_steps)
        bar.close()
        self.gates.remove()

    def checkpoint(self, log_file, step: int) -> None:
        student = self.student if self.train_weights else None
        on_main(self.world, lambda: _checkpoint(log_file, self.ckpt_root, step, self.alphas, student, self.opts))
        self.saved_at = step

    def step(self, step: int, idx: torch.Tensor) -> tuple[str, dict | None]:
        """One step on the global batch ``idx`` (this process takes its share): the gated student's
        distance to the teacher plus the FLOPs loss, then the top-k gate update and the weights'.
        Returns the outcome and, for an applied step, its log record."""
        s, world, device, alphas = self.s, self.world, self.device, self.alphas
        local, real = shard(idx, world)
        batch = {k: v.to(device) for k, v in collate(self.data, local.tolist()).items()}
        target = target_at(step + 1, self.total_steps, self.gate_target, s.ramp_fraction)
        probs = alphas.probs()  # heads, FFN neurons (and hidden dimensions)
        with torch.no_grad():
            discrete = float(self.cost_ratio(*alphas.hard()))
        with autocast(device, s.mixed_precision), self.gates.active(*probs):
            out = model_output(self.forward_model, self.teacher.kind, batch)
        teacher_out = self.data.teacher_out
        mse = _normalised_mse(out, teacher_out[local].to(device), teacher_out[idx].to(device)) * float(real)
        expected = self.cost_ratio(*probs)
        cost = flops_loss(expected, discrete, target, s.tolerance)
        # Every process adds the (replicated) FLOPs loss; averaging over processes then gives the
        # sum of the MSE shares plus the FLOPs loss once: the single-process gradient.
        loss = world.size * mse + s.lambda_cost * cost
        for opt in self.opts.values():
            opt.zero_grad(set_to_none=True)
        scaler = self.book.scaler
        scaler.backward(loss)
        mse, loss_finite = _reduce_gate_grads(alphas, mse, bool(torch.isfinite(loss)), world)
        loss = mse + s.lambda_cost * cost.detach()
        loss_ok = loss_finite and bool(torch.isfinite(loss))
        trained = alphas.groups() + [p for p in self.student.parameters() if p.requires_grad]
        scaler.unscale_(trained)
        outcome = self.book.settle(step + 1, loss_ok, NonFiniteGuard.reason(loss_ok, trained))
        if outcome != APPLIED:  # nothing applied: alphas, weights and optimizer moments stay as they were
            return outcome, None
        self.update_gates()
        if self.train_weights:
            self.opts["opt_weights"].step()
        return outcome, self.book.applied({
            "step": step + 1, "loss": round(loss.item(), 6), "mse": round(mse.item(), 6), "flops_loss": round(cost.item(), 6),
            "target": round(target, 6), "expected_ratio": round(expected.item(), 6), "discrete_ratio": round(discrete, 6),
        })

    def cost_ratio(self, head_gates: torch.Tensor, ffn_gates: torch.Tensor, hidden_gates: torch.Tensor | None = None) -> torch.Tensor:
        """The (differentiable) ratio the gates' loss counts: of the FLOPs, or of the latency model's prediction."""
        if self.gate_latency is None:
            return expected_flops_ratio(self.shape, self.seq_len, head_gates, ffn_gates, hidden_gates)
        return self.gate_latency.expected_ratio(head_gates, ffn_gates, hidden_gates)

    def update_gates(self) -> None:
        """The gate logits' step: gradients per FLOP, only the top-k of them applied."""
        alphas, shape, seq_len = self.alphas, self.shape, self.seq_len
        if self.gate_latency is None:
            full_flops = model_flops(shape, seq_len).total
            # Gradients per FLOP: a head costs ~70x a neuron, so raw magnitudes would rank every head
            # above every neuron; dividing by each group's cost ranks groups by loss change per FLOP.
            alphas.head.grad.div_(shape.head_cost(seq_len) / full_flops)
            alphas.ffn.grad.div_(shape.neuron_cost(seq_len) / full_flops)
            if alphas.hidden is not None:  # a hidden dimension: its share of every projection
                alphas.hidden.grad.div_(shape.hidden_dim_cost(seq_len) / full_flops)
        else:  # per share of the latency: a head's and a neuron's average cost in the latency model
            head_share, neuron_share = self.gate_latency.mean_group_costs()
            alphas.head.grad.div_(head_share)
            alphas.ffn.grad.div_(neuron_share)
            if alphas.hidden is not None:
                alphas.hidden.grad.div_(self.gate_latency.hidden_share())
        # Apply only the top-k alpha gradients: remember alpha, step, restore the unselected.
        groups = alphas.groups()
        grads = [a.grad for a in groups]
        masks = topk_mask(grads, self.s.topk_fraction)
        before = [a.detach().clone() for a in groups]
        for g, m in zip(grads, masks):
            g.mul_(m)
        self.opts["opt_alpha"].step()
        with torch.no_grad():
            for p, b, m in zip(groups, before, masks):
                p.copy_(torch.where(m, p, b))

    def architecture(self) -> Architecture:
        """The kept heads and neurons: the gates' hard decisions, or, when they ended outside the
        target's band, the groups with the largest alpha until the budget is met. Under a latency
        target the gates' choice is always brought to the target (:func:`trim_to_latency`);
        ``projected`` still says whether they ended outside the band, ``gate_ratio`` where."""
        s, shape, seq_len, alphas = self.s, self.shape, self.seq_len, self.alphas
        hard = alphas.hard()
        hidden = _kept_hidden(alphas)
        arch = Architecture.from_masks(hard[0], hard[1], {"projected": False}, hidden)
        ratio = arch_ratio(arch, shape, seq_len, self.latency)
        lo, hi = (1 - s.tolerance) * s.target, (1 + s.tolerance) * s.target
        inside = lo <= ratio <= hi
        if not inside:  # the band is a promise: a threshold on alpha instead of 0
            log.info("gates ended at %.4f, outside [%.4f, %.4f]: thresholding alpha to the target", ratio, lo, hi)
        if self.latency is not None:
            # A latency target: the gates' choice always brought to the target (trimmed, or topped up
            # with the closed groups of highest alpha), not left anywhere in the band: the last top-k
            # steps swing the hard ratio by several percent (a docstrings run ended 7% under its FLOPs
            # goal on the last step), and a model cut further than asked gives away accuracy for nothing.
            arch = trim_to_latency(alphas.head.detach().cpu(), alphas.ffn.detach().cpu(), self.latency, s.target,
                                   {"projected": not inside, "gate_ratio": ratio}, hidden)
        elif not inside:  # the hidden dimensions as the gates left them; heads and neurons to fit
            arch = select_to_budget(alphas.head.detach().cpu(), alphas.ffn.detach().cpu(), shape, seq_len, s.target,
                                    {"projected": True, "gate_ratio": ratio}, hidden)
        if self.latency is not None and self.gate_latency is None:
            arch.meta["gate_flops_target"] = self.gate_target  # the FLOPs goal the gates learned towards
        arch.meta["skipped_steps"] = self.book.guard.skipped  # non-finite loss or gradients, before a resume too
        if self.book.scaler.enabled:
            arch.meta["overflow_steps"] = self.book.scaler.overflows  # fp16 loss scaling's skipped steps
        return arch


def _kept_hidden(alphas: GateLogits) -> torch.Tensor | None:
    """The hidden dimensions the gates keep (alpha > 0), at least the one with the largest alpha; None
    when the hidden width is not searched, or when every dimension is kept (nothing to cut)."""
    if alphas.hidden is None:
        return None
    a = alphas.hidden.detach().cpu()
    kept = (a > 0).float()
    if not kept.any():
        log.warning("the gates keep no hidden dimension: keeping the one with the largest gate (raise --target)")
        kept[int(a.argmax())] = 1.0
    if kept.all():
        log.info("the gates keep every hidden dimension: the hidden width is not cut")
        return None
    return kept


def gate_flops_target(latency, shape, seq_len: int, target: float) -> float:
    """The FLOPs ratio the gates learn towards under a latency ``target`` (``--gate-cost flops``): that
    of the uniform architecture (the same fraction of every layer's heads and FFN neurons) whose
    predicted latency ratio is ``target``. The gates then choose where the FLOPs go, as a FLOPs search
    does, and the latency model and the check bring the choice to the target."""
    layers, heads, width = shape.num_layers, shape.num_heads, shape.intermediate_size
    q = _uniform_fraction(latency, shape, target)
    ratio = model_flops(shape, seq_len, [q * heads] * layers, [q * width] * layers).total / model_flops(shape, seq_len).total
    return min(1.0, max(0.01, ratio))


def _uniform_fraction(latency, shape, target: float) -> float:
    """The fraction q of every layer's heads and FFN neurons whose predicted latency ratio is ``target``."""
    layers, heads, width = shape.num_layers, shape.num_heads, shape.intermediate_size
    lo, hi = 0.0, 1.0
    for _ in range(50):  # the predicted ratio is monotone in the fraction kept
        q = (lo + hi) / 2
        lo, hi = (q, hi) if latency.ratio([q * heads] * layers, [q * width] * layers) < target else (lo, q)
    return (lo + hi) / 2


def calibrate_latency(settings: SearchSettings, teacher: Teacher, model):
    """``--latency-calibrate``: the latency model scaled by one measurement made before the search chooses.
    The uniform architecture the model puts at the target (the same share of every layer's heads and
    neurons, rounded; at the full hidden width) is timed beside the original as the check times
    (random weights); every ratio of the model is then multiplied by measured / predicted. It corrects
    the model's scale at the target, not its error between structures (which the check measures).
    Why: uncorrected, the scale sets the gates' FLOPs goal. On docstrings (docs/results.md, issue 19)
    the model put a 0.318 latency target at 0.342 of the FLOPs, where the FLOPs search's 0.30 students
    measured about as fast; the gates learned the larger model and the check cut it by its lowest gates
    into students with 3-9% fewer FLOPs than FLOPs students of the same speed. Returns the calibrated
    model (the calibration recorded in it)."""
    from . import latency as lat

    s, key, shape = settings, model.key, teacher.shape
    q = _uniform_fraction(model, shape, s.target)
    heads = [max(1, round(q * shape.num_heads))] * shape.num_layers
    widths = [max(1, round(q * shape.intermediate_size))] * shape.num_layers
    predicted = model.ratio(heads, widths)
    measured = lat.measure_ratio(heads, widths, shape, s.backend, key["device"], key["batch"], key["seq_len"], key["threads"],
                                 teacher.config, s.latency_repeats)
    scale = measured / predicted
    if not math.isfinite(scale) or scale <= 0:
        raise PrunekitError(f"latency calibration measured {measured!r} on {s.backend}: rerun, or pass --no-latency-calibrate")
    log.info("latency calibration: %d heads and %d FFN neurons per layer predicted %.3f, measured %.3f: the latency model "
             "scaled by %.3f", heads[0], widths[0], predicted, measured, scale)
    return replace(model, calibration={"scale": scale, "heads": heads[0], "ffn_width": widths[0], "predicted": predicted,
                                       "measured": measured})


def arch_ratio(arch: Architecture, shape, seq_len: int, latency=None) -> float:
    """What the target is a ratio of, for ``arch``: its FLOPs ratio, or its predicted latency ratio."""
    if latency is None:
        return arch.flops_ratio(shape, seq_len)
    return latency.ratio(arch.head_counts, arch.ffn_widths, arch.hidden_size)


def _reduce_gate_grads(alphas: GateLogits, mse: torch.Tensor, loss_finite: bool, world: World) -> tuple[torch.Tensor, bool]:
    """Average the gate-logit gradients over the processes (one all-reduce, which also sums the MSE
    shares and spreads a non-finite loss anywhere to every process, so all skip the same steps)."""
    if not world.distributed:
        return mse.detach(), loss_finite
    grads = [a.grad for a in alphas.groups()]
    flat = torch.cat([g.flatten() for g in grads] + [mse.detach().float().view(1),
                                                     torch.tensor([0.0 if loss_finite else 1.0], device=grads[0].device)])
    flat = all_reduce_sum(flat, world)
    start = 0
    for g in grads:
        g.copy_(flat[start: start + g.numel()].view_as(g) / world.size)
        start += g.numel()
    return flat[-2], bool(flat[-1] == 0)


def run_baseline(settings: SearchSettings, teacher: Teacher, data: EncodedData, device: torch.device, latency=None) -> tuple:
    """(the baseline's architecture at the target, its priorities: None for uniform, which has none)."""
    if settings.method == "uniform":
        g = torch.Generator().manual_seed(settings.seed)
        return uniform_architecture(teacher.shape, settings.max_length, settings.target, g, {}), None
    head_p, ffn_p = baseline_priorities(settings, teacher, data, device)
    if latency is not None:
        return select_to_latency(head_p, ffn_p, latency, settings.target, {}), (head_p, ffn_p)
    return select_to_budget(head_p, ffn_p, teacher.shape, settings.max_length, settings.target, {}), (head_p, ffn_p)


def baseline_priorities(settings: SearchSettings, teacher: Teacher, data: EncodedData, device: torch.device) -> tuple:
    """A baseline's priority per head [L, H] and per FFN neuron [L, I] (random, magnitude, head importance)."""
    from . import baselines

    shape = teacher.shape
    if settings.method == "random":
        g = torch.Generator().manual_seed(settings.seed)
        head_p, ffn_p = baselines.random_scores(shape, g)
    elif settings.method == "magnitude":
        head_p, ffn_p = baselines.magnitude_scores(teacher.model, shape)
    else:
        head_p, ffn_p = baselines.head_importance_scores(teacher, data, settings, device)
    return head_p, ffn_p


def search(
    settings: SearchSettings,
    *,
    force: bool = False,
    resume: bool = False,
    progress: bool = True,
    teacher: Teacher | None = None,
    dataset=None,
    on_step: Callable[[int], None] | None = None,
) -> SearchResult:
    """Run one search (or baseline) and write its run dir atomically. The library entry point of the CLI.

    Under torchrun / accelerate launch with N processes it runs data-parallel (:mod:`prunekit.distributed`):
    ``batch_size`` is the global batch, each process takes 1/N of it, and rank 0 writes the run dir."""
    settings.validate()
    with launched(settings.device) as (world, device):
        if settings.batch_size < world.size:
            raise PrunekitError(f"--batch-size {settings.batch_size} is the global batch, shared by {world.size} processes: give at least {world.size}")
        return _search(settings, world, device, force, resume, progress, teacher, dataset, on_step)


def _search(settings: SearchSettings, world: World, device: torch.device, force: bool, resume: bool, progress: bool,
            teacher: Teacher | None, dataset, on_step: Callable[[int], None] | None) -> SearchResult:
    with run_work_dir(Path(settings.output_dir), settings, world, force=force, resume=resume, resume_free=_RESUME_FREE,
                      options=RESUME_OPTIONS) as changed:
        return _search_locked(settings, world, device, force, resume, progress, teacher, dataset, on_step, changed)


def _inputs(settings: SearchSettings, world: World, device: torch.device, teacher: Teacher | None, dataset,
            saved_table: Path | None = None, progress: bool = False):
    """The data, the teacher, the latency model (``--cost latency``; else None) and the teacher's outputs
    on every example (computed once, shared by the processes), each checked: everything that can be
    wrong fails before the run dir is started. ``saved_table``: a resumed run's own latency table."""
    if dataset is None:  # before the model: a bad data file fails fast
        from .data import load_data

        dataset = load_data(
            settings.data,
            settings.split,
            text_column=settings.text_column,
            pair_column=settings.pair_column,
            label_column=settings.label_column,
            task=settings.task,
            glue_dir=settings.glue_dir,
            max_examples=settings.max_examples,
        )
    if teacher is None:
        teacher = load_teacher(settings.model, settings.kind, device="cpu")
    if settings.method == "head-importance" and teacher.kind != "embedding":  # its loss reads the labels: in the teacher's ids
        from .data import align_labels

        dataset = align_labels(dataset, teacher.kind, teacher.config.id2label, teacher.config.num_labels, dataset.source)
    if len(dataset) == 0:
        raise PrunekitError("the data has no examples: give a file with at least one text")
    settings.total_steps(len(dataset))  # an absurd --epochs fails here, before the teacher's outputs are computed
    check_max_length(settings.max_length, teacher.config, teacher.name_or_path)
    latency = _latency_model(settings, teacher, device, world, saved_table, progress)
    teacher.model.to(device)
    encoded = encode(dataset, teacher.tokenizer, settings.max_length)
    # The teacher's outputs, cached once: each process computes every size-th example, all get all.
    mine = list(range(world.rank, len(encoded), world.size))
    own = teacher_outputs(teacher, encoded.subset(mine) if world.distributed else encoded, device, batch_size=max(settings.batch_size, 64))
    encoded.teacher_out = gather_rows(own, len(encoded), world)
    return teacher, dataset, encoded, latency


def _latency_model(settings: SearchSettings, teacher: Teacher, device: torch.device, world: World, saved_table: Path | None,
                   progress: bool = False):
    """``--cost latency``: (the latency model, its table's path), its floor checked against --target; else None.
    A resumed run keeps the table it started with (``saved_table``); otherwise the cached or given table
    is loaded, or measured now (:func:`prunekit.latency.latency_model_for`)."""
    if settings.cost != "latency":
        return None
    from . import latency as lat

    if world.distributed:
        raise PrunekitError("--cost latency runs in one process for now: run the search without torchrun / accelerate launch")
    seq_len = settings.latency_seq_len or settings.max_length
    dev = lat.latency_device(settings.backend, str(device))
    if saved_table is not None and saved_table.is_file():  # a resume: the run's own table, with its calibration
        lat.check_available(settings.backend, dev)
        key = lat.table_key(teacher.shape, settings.backend, dev, settings.latency_batch, seq_len, settings.latency_threads)
        model, path = lat.load_table(saved_table, key), saved_table
    else:
        model, path = lat.latency_model_for(teacher.shape, settings.backend, dev, settings.latency_batch, seq_len,
                                            settings.latency_threads, settings.latency_repeats, settings.latency_table,
                                            settings.reprofile, teacher.config, progress)
        model = replace(model, calibration={})  # a table a run published carries that run's calibration, not this one's
    if settings.prune_hidden and not model.has_hidden:
        raise PrunekitError(f"latency table {path} has no hidden-width measurements (it was made before --prune-hidden used them): "
                            "re-measure it with --reprofile")
    _check_floor(settings, model)
    # the full-size compact model's own measured ratio (the calibration is measured at the target, not at full size)
    if settings.target * (1 - settings.tolerance) > model.overhead:
        raise PrunekitError(f"--target {settings.target:g} is above the latency of the full-size compact model on {settings.backend} "
                            f"({model.overhead:.3f} of the original's: prunekit's layers run faster than the original's here), "
                            f"so there is nothing to prune for; give --target <= {model.overhead:.3f}")
    if saved_table is None and settings.calibrates:  # a fresh run (a resume keeps the calibration it started with)
        model = calibrate_latency(settings, teacher, model)
        _check_floor(settings, model)  # the floor as the calibrated model has it (what a resume checks)
    return model, path


def _check_floor(settings: SearchSettings, model) -> None:
    """A target under what pruning can reach on the backend, refused in one line naming the floor."""
    floor = model.floor(settings.prune_hidden)
    if settings.target < floor:
        what = "heads, FFN neurons and hidden dimensions" if settings.prune_hidden else "heads and FFN neurons"
        raise PrunekitError(f"--target {settings.target:g} is below what pruning {what} can reach on {settings.backend}: "
                            f"the floor is {floor:.3f} of the latency (embeddings, LayerNorms and the call's overhead stay; "
                            f"at most {1 / floor:.2f}x faster); give --target >= {floor:.3f}")


LATENCY_TABLE = "latency_table.json"
# How close to the target the latency check aims: what a quiet machine's timing holds. (On a shared 2-core machine,
# whose timings vary by 3-10%, aiming within 1% instead of half the band changed no real-task student's accuracy:
# the check keeps the round measured closest, docs/results.md.)
LATENCY_AIM = 0.01


def check_latency(settings: SearchSettings, teacher: Teacher, model, arch: Architecture, priorities: tuple) -> tuple:
    """``--latency-check``: time ``arch`` (random weights) beside the original on the backend; while
    the measured ratio is off the target by more than :data:`LATENCY_AIM` (or half the band, if
    narrower), choose again from the same priorities with another budget, at most
    ``latency_check`` times: the budget scaled by target /
    measured (the cost model's error at this point), kept inside the bracket the rounds so far have
    found (a budget measured too slow above, one too fast below; their geometric mean where the
    scaled one falls outside), since a model that is wrong at one point is not wrong by the same
    factor at the next; it stops early when a new budget chooses a model already timed. Returns (the
    architecture measured closest to the target, the record: every round's budget, prediction and
    measurement, and which round was kept)."""
    from . import latency as lat

    s, key = settings, model.key
    lo, hi = (1 - s.tolerance) * s.target, (1 + s.tolerance) * s.target
    aim = min(s.tolerance / 2, LATENCY_AIM)  # a choice at the band's fast edge is cut further than asked: it costs accuracy
    budget, rounds, archs = s.target, [], []
    too_fast, too_slow = 0.0, math.inf  # budgets measured under / over the target
    for i in range(s.latency_check + 1):
        measured = lat.measure_ratio(arch.head_counts, arch.ffn_widths, teacher.shape, s.backend, key["device"], key["batch"],
                                     key["seq_len"], key["threads"], teacher.config, s.latency_repeats, hidden=arch.hidden_size)
        rounds.append({"budget": budget, "predicted": model.ratio(arch.head_counts, arch.ffn_widths, arch.hidden_size),
                       "measured": measured})
        archs.append(arch)
        log.info("latency check %d: predicted %.3f, measured %.3f (target %.3f)", i, rounds[-1]["predicted"], measured, s.target)
        if abs(measured / s.target - 1) <= aim or i == s.latency_check:
            break
        if measured > s.target:  # the bracket, split at the target (each budget is chosen inside it)
            too_slow = min(too_slow, budget)
        else:
            too_fast = max(too_fast, budget)
        guess = min(budget * s.target / measured, model.scale)
        if too_fast > 0 and math.isfinite(too_slow) and not too_fast < guess < too_slow:
            guess = math.sqrt(too_fast * too_slow)
        budget = guess
        if s.method == "search":  # the gates' choice trimmed, its hidden dimensions kept
            arch = trim_to_latency(priorities[0], priorities[1], model, budget, dict(arch.meta), arch.to_masks(teacher.shape)[2])
        else:
            arch = select_to_latency(priorities[0], priorities[1], model, budget, dict(arch.meta))
        if any(_same_sizes(arch, a) for a in archs):  # the new budget chooses a model already timed: nothing left to learn
            break
    kept = min(range(len(rounds)), key=lambda k: abs(math.log(rounds[k]["measured"] / s.target)))
    return archs[kept], {"rounds": rounds, "kept": kept, "measured_ratio": rounds[kept]["measured"],
                         "in_band": lo <= rounds[kept]["measured"] <= hi}


def _same_sizes(a: Architecture, b: Architecture) -> bool:
    """Whether two architectures have the same per-layer head counts, FFN widths and hidden width (the same time)."""
    return (a.head_counts, a.ffn_widths, a.hidden_size) == (b.head_counts, b.ffn_widths, b.hidden_size)


def _latency_meta(meta: dict, settings: SearchSettings, model, table: Path, ratio: float, flops_ratio: float,
                  checked: dict | None = None) -> None:
    """What architecture.json records of a latency search: the cost model, its prediction, the FLOPs
    ratio, and where it was checked, the measured ratio and each round of the check."""
    meta.pop("target_flops_ratio", None)
    key = model.key
    meta.update({
        "cost": "latency", "target_latency_ratio": settings.target, "predicted_latency_ratio": ratio, "flops_ratio": flops_ratio,
        "gate_cost": settings.gate_cost,
        "latency_model": {"backend": settings.backend, "device": key.get("device"), "batch": key.get("batch"),
                          "seq_len": key.get("seq_len"), "threads": key.get("threads"), "floor": model.floor(settings.prune_hidden),
                          "table": str(table), "machine": key.get("gpu") or (key.get("cpu") or {}).get("model"),
                          **({"calibration": model.calibration} if model.calibration else {})},
    })
    if checked:
        meta.update({"measured_latency_ratio": checked["measured_ratio"], "latency_check": checked["rounds"],
                     "latency_check_kept": checked["kept"]})


def _search_locked(settings: SearchSettings, world: World, device: torch.device, force: bool, resume: bool, progress: bool,
                   teacher: Teacher | None, dataset, on_step: Callable[[int], None] | None, changed: dict) -> SearchResult:
    """The run, with its output locked and its work dir checked (:func:`prunekit.run_dir.run_work_dir`)."""
    from .plot import plot_architecture

    out = Path(settings.output_dir)
    work = partial_dir(out)
    teacher, dataset, encoded, latency = _inputs(settings, world, device, teacher, dataset,
                                                 work / LATENCY_TABLE if resume else None, progress and world.main)
    latency_model = latency[0] if latency else None
    on_main(world, lambda: start_work_dir(work, settings.to_json()))
    if latency:  # the table the run used, kept with it (and reused by its --resume)
        on_main(world, lambda: latency_model.save_table(work / LATENCY_TABLE))
    history: list[dict] = []
    steps = 0
    alphas = None
    if settings.method == "search":
        arch, history, steps, *alphas = run_gate_search(settings, teacher, encoded, work, device, resume, progress, on_step, world, changed,
                                                        latency_model)
        priorities = (alphas[0], alphas[1])  # the gates' logits: what a latency check trims from
    else:  # the baselines are cheap and deterministic: every process computes the same architecture
        arch, priorities = run_baseline(settings, teacher, encoded, device, latency_model)
    teacher.model.to("cpu")
    checked = None
    if latency and settings.latency_check:  # the model's choice timed for real, re-chosen until it is near the target
        arch, checked = broadcast_object(on_main(world, lambda: check_latency(settings, teacher, latency_model, arch, priorities)), world)

    shape, seq_len = teacher.shape, settings.max_length
    arch.meta = {
        "method": settings.method,
        "base_model": {
            "name_or_path": teacher.name_or_path,
            "model_type": teacher.config.model_type,
            "kind": teacher.kind,
            "config_hash": config_hash(shape, getattr(teacher.config, "vocab_size", None)),
        },
        "data": dataset.source,
        "data_source": data_key(settings.data),  # what eval compares its data with (corpus, or a resolved path)
        "target_flops_ratio": settings.target,
        "tolerance": settings.tolerance,
        "seed": settings.seed,
        **({"command": command_line()} if command_line() else {}),
        **arch.meta,
    }
    ratio = arch_ratio(arch, shape, seq_len, latency_model)
    if latency:
        _latency_meta(arch.meta, settings, latency_model, latency[1], ratio, arch.flops_ratio(shape, seq_len), checked)
        ratio = checked["measured_ratio"] if checked else ratio  # what the band holds for: the measurement where there is one
    lo, hi = (1 - settings.tolerance) * settings.target, (1 + settings.tolerance) * settings.target
    if checked and not checked["in_band"]:
        log.warning("the architecture's measured latency ratio %.3f is outside [%.3f, %.3f] after %d re-choices (a busy machine? "
                    "see architecture.json's latency_check)", ratio, lo, hi, len(checked["rounds"]) - 1)
    elif not lo - 1e-9 <= ratio <= hi + 1e-9:  # an internal bug, not a user mistake
        raise RuntimeError(f"architecture at FLOPs ratio {ratio:.4f} outside the band [{lo:.4f}, {hi:.4f}]")

    def write_outputs() -> None:
        from safetensors.torch import save_file

        if alphas:
            save_file(dict(zip(("head", "ffn", "hidden"), (a.contiguous() for a in alphas))), str(work / "alpha.safetensors"))
        else:
            atomic_write_text(work / "search_log.jsonl", "")
        arch.save(work / "architecture.json", shape, seq_len)
        of = f"the predicted latency on {settings.backend}" if latency else "the FLOPs"
        plot_architecture(arch, shape, work / "architecture.png", title=f"{settings.method}: {ratio:.3f} of {of} (target {settings.target})")
        for old in checkpoint_dirs(work / "checkpoints")[:-1]:
            shutil.rmtree(old, ignore_errors=True)
        if out.exists():
            check_output_dir(out, force or resume)
        publish_dir(work, out)

    on_main(world, write_outputs)
    return SearchResult(architecture=arch, output_dir=out, achieved_ratio=ratio, target=settings.target, steps=steps, log=history,
                        skipped_steps=arch.meta.get("skipped_steps", 0), overflow_steps=arch.meta.get("overflow_steps", 0))
