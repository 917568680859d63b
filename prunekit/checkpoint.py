"""Checkpoints as safetensors + JSON (no pickles), shared by the stages that train (search, distill).

A checkpoint is a directory ``<root>/step-NNNNNNN`` with ``state.safetensors`` (every tensor:
weights and optimizer moments) and ``state.json`` (the step, optimizer param groups and scalar
state, and whatever the stage adds). It is written into a temp dir and renamed into place, so a
kill leaves either the old or the new one; the last ``keep`` are kept. ``state.json`` holds a
SHA-256 over ``state.safetensors`` and the rest of ``state.json`` itself (optimizer param groups and
scalars, the best-so-far, the step): loading takes the newest checkpoint that reads back intact and
matches its checksum, falling back to the one before. The checksum is required: a ``state.json``
without one (edited, or written by a prunekit from before ``format`` 2) is not trusted either.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch

from .io import fsync_path

log = logging.getLogger(__name__)


def flatten_optimizer(prefix: str, opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    """Add ``opt``'s state to ``tensors`` (its tensors, as ``prefix.<param id>.<key>``) and ``meta``."""
    sd = opt.state_dict()
    scalars = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{prefix}.{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    meta[prefix] = {"param_groups": sd["param_groups"], "scalars": scalars}


def restore_optimizer(prefix: str, opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    """The inverse of :func:`flatten_optimizer`."""
    state: dict = {}
    for key, v in tensors.items():
        if key.startswith(prefix + "."):
            _, pid, k = key.split(".", 2)
            state.setdefault(int(pid), {})[k] = v
    for key, v in meta[prefix]["scalars"].items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": meta[prefix]["param_groups"]})


FORMAT = 2  # 2: the checksum covers state.json too, and is required


def _canonical(meta: dict) -> bytes:
    """``meta`` (as read back from JSON) without its checksum, in one byte form."""
    return json.dumps({k: v for k, v in meta.items() if k != "sha256"}, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _checksum(tensor_file: Path, meta: dict) -> str:
    """SHA-256 over the tensors file and the canonical form of the rest of state.json."""
    h = hashlib.sha256()
    with open(tensor_file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 23), b""):
            h.update(chunk)
    h.update(b"\0state.json\0")
    h.update(_canonical(meta))
    return h.hexdigest()


def _checkpoint_step(path: Path) -> int:
    """The step a ``step-NNNNNNN`` dir is named by (-1 for a name that is not one)."""
    tail = path.name.split("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def checkpoint_dirs(ckpt_root: Path) -> list[Path]:
    """The checkpoint dirs under ``ckpt_root``, oldest first (by step number: names outgrow their 7 digits)."""
    return sorted((d for d in Path(ckpt_root).glob("step-*") if _checkpoint_step(d) >= 0), key=_checkpoint_step)


@contextlib.contextmanager
def run_writes(what: str):
    """A run's own writes (its log, checkpoints, best weights): a failure (a full disk, a lost mount,
    permissions) is one :class:`PrunekitError` line (which :func:`prunekit.distributed.on_main` hands
    to every rank), not a traceback."""
    from safetensors import SafetensorError

    from .errors import ResumableError

    try:
        yield
    except (OSError, SafetensorError) as e:
        why = getattr(e, "strerror", None) or (str(e).splitlines() or [""])[0][:200] or type(e).__name__
        raise ResumableError(f"cannot write {what}: {why}; free space (or fix the disk) and run the same command "
                            "with --resume to continue from the last checkpoint") from None


def write_checkpoint(ckpt_root: Path, step: int, tensors: dict, meta: dict, keep: int = 2) -> Path:
    """Write ``tensors`` and ``meta`` (``step`` and the tensors' checksum are added) as checkpoint ``step``.

    Atomic and durable: written into a temp dir, synced, renamed into place; the ``keep`` newest
    are kept, so when the newest turns out unreadable the one before it is still there.
    """
    from safetensors.torch import save_file

    ckpt_root = Path(ckpt_root)
    tmp = ckpt_root / f".step-{step:07d}.tmp"
    final = ckpt_root / f"step-{step:07d}"
    try:
        with run_writes(f"checkpoint {final}"):
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / "state.safetensors"))
            meta = json.loads(json.dumps({**meta, "format": FORMAT, "step": step}))  # hashed as it will read back
            meta["sha256"] = _checksum(tmp / "state.safetensors", meta)
            (tmp / "state.json").write_text(json.dumps(meta))
            for f in ("state.safetensors", "state.json", ""):  # the files, then the dir that lists them
                fsync_path(tmp / f)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            fsync_path(ckpt_root)
    except BaseException:  # the checkpoints before this one are intact; no half-written one is left
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in checkpoint_dirs(ckpt_root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_checkpoint(path: Path) -> tuple[int, dict, dict]:
    """One checkpoint as (step, tensors, meta); raises ValueError (or OSError) when it is corrupt."""
    from safetensors.torch import load_file

    path = Path(path)
    try:
        meta = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (UnicodeDecodeError, RecursionError, ValueError) as e:  # JSONDecodeError is a ValueError
        raise ValueError(f"state.json is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("step"), int) or meta["step"] != _checkpoint_step(path):
        raise ValueError("state.json does not name this checkpoint's step")
    if meta.get("format") != FORMAT or not isinstance(meta.get("sha256"), str):
        raise ValueError("state.json has no checksum (written by an older prunekit, or edited): it cannot be trusted")
    if _checksum(path / "state.safetensors", meta) != meta["sha256"]:
        raise ValueError("state.safetensors or state.json does not match the checksum")
    try:
        tensors = load_file(str(path / "state.safetensors"))
    except MemoryError:  # not a corrupt checkpoint: falling back to an older one would hide it
        raise
    except Exception as e:  # noqa: BLE001 - safetensors raises its own types for a bad header
        raise ValueError(f"state.safetensors is unreadable ({str(e).splitlines()[0][:120]})") from None
    return meta["step"], tensors, meta


def load_latest_checkpoint(ckpt_root: Path, none_left: str = "no earlier checkpoint: starting from step 0"
                           ) -> tuple[int, dict, dict] | None:
    """The newest intact checkpoint as (step, tensors, meta), or None when there is none.

    A corrupt one (cut short, garbled: bad JSON, a safetensors header it cannot read, tensors or
    state that no longer match the checksum written with them, no checksum) is skipped with a
    warning, and the one before it is used (the warning says when there is none: the run starts over).
    """
    found = list(reversed(checkpoint_dirs(ckpt_root)))
    for i, d in enumerate(found):
        try:
            return read_checkpoint(d)
        except (OSError, ValueError) as e:
            then = "using the one before it" if i + 1 < len(found) else none_left
            log.warning("checkpoint %s is corrupt (%s); %s", d, e, then)
    return None


@contextlib.contextmanager
def restoring(ckpt_root: Path) -> Iterator[None]:
    """Around putting a checkpoint's state back: a checkpoint that does not fit the model is a one-line error."""
    from .errors import PrunekitError

    try:
        yield
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise PrunekitError(
            f"the checkpoint in {ckpt_root} does not fit this model ({first}); was the model changed? start over with --force"
        ) from None


def read_log(path: Path) -> list[dict]:
    """A JSONL log's records that have a step; a last line cut short by a kill is dropped."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return [r for r in records if isinstance(r, dict) and "step" in r]


def restart_log(path: Path, step: int, changed: dict | None = None) -> list[dict]:
    """A run log cut back to the records up to ``step`` (the steps after it are redone), rewritten
    atomically; ``changed`` (the settings a --resume changed, see :func:`prepare_work_dir`) is
    recorded in it as ``{"step": step, "resumed_with": changed}``."""
    from .io import atomic_write_text

    history = [h for h in read_log(path) if h["step"] <= step] if step and Path(path).exists() else []
    if changed:
        history.append({"step": step, "resumed_with": changed})
        log.warning("resuming at step %d with changed settings: %s", step, ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()))
    atomic_write_text(path, "".join(json.dumps(h) + "\n" for h in history))
    return history
