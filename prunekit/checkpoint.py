"""Checkpoints as safetensors + JSON (no pickles), shared by the stages that train (search, distill).

A checkpoint is a directory ``<root>/step-NNNNNNN`` with ``state.safetensors`` (every tensor:
weights and optimizer moments) and ``state.json`` (the step, optimizer param groups and scalar
state, and whatever the stage adds). It is written into a temp dir and renamed into place, so a
kill leaves either the old or the new one; the last ``keep`` are kept. Loading takes the newest
readable one, skipping one cut short.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch

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


def write_checkpoint(ckpt_root: Path, step: int, tensors: dict, meta: dict, keep: int = 2) -> Path:
    """Write ``tensors`` and ``meta`` (``step`` is added) as checkpoint ``step``, atomically."""
    from safetensors.torch import save_file

    meta = {**meta, "step": step}
    ckpt_root = Path(ckpt_root)
    tmp = ckpt_root / f".step-{step:07d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / "state.safetensors"))
    (tmp / "state.json").write_text(json.dumps(meta))
    final = ckpt_root / f"step-{step:07d}"
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(ckpt_root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_latest_checkpoint(ckpt_root: Path) -> tuple[int, dict, dict] | None:
    """The newest readable checkpoint as (step, tensors, meta) (a corrupt one is skipped with a warning), or None."""
    from safetensors.torch import load_file

    for d in sorted(Path(ckpt_root).glob("step-*"), reverse=True):
        try:
            meta = json.loads((d / "state.json").read_text())
            tensors = load_file(str(d / "state.safetensors"))
            return int(meta["step"]), tensors, meta
        except Exception as e:  # a checkpoint cut short by a kill: fall back to the previous one
            log.warning("checkpoint %s is unreadable (%s); trying the previous one", d, e)
    return None


def read_log(path: Path) -> list[dict]:
    """A JSONL log's records that have a step; a last line cut short by a kill is dropped."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return [r for r in records if isinstance(r, dict) and "step" in r]


def prepare_work_dir(out: Path, settings, *, force: bool, resume: bool, resume_free: set[str]) -> Path:
    """The ``<out>.partial`` dir a run writes into until it is published as ``out``.

    With ``resume`` it must exist and hold the same settings (except ``resume_free``); without,
    an existing output needs ``force`` and a leftover interrupted run is cleared only with ``force``.
    """
    from dataclasses import asdict

    from .errors import PrunekitError
    from .io import check_output_dir, partial_dir

    work = partial_dir(out)
    if resume:
        if not work.is_dir():
            raise PrunekitError(f"nothing to resume: {work} does not exist (run without --resume to start)")
        try:
            saved = json.loads((work / "settings.json").read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            raise PrunekitError(f"{work}/settings.json is missing or corrupt: start over with --force instead of --resume") from None
        current = json.loads(json.dumps(asdict(settings)))
        diff = [k for k in current if k not in resume_free and saved.get(k) != current[k]]
        if diff:
            raise PrunekitError(f"--resume with different settings than the interrupted run ({', '.join(diff)}): use the same options")
    else:
        check_output_dir(out, force)
        if work.exists():
            if not force:
                raise PrunekitError(f"an interrupted run is in {work}: pass --resume to continue it or --force to start over")
            shutil.rmtree(work)
    return work
