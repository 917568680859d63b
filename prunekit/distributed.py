"""Data-parallel search and distillation: `torchrun --nproc_per_node N -m prunekit search ...`.

The same commands run unchanged under ``torchrun`` and ``accelerate launch`` (both set WORLD_SIZE,
RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT). With more than one process:

- the process group is started here (NCCL on CUDA, one GPU per process by LOCAL_RANK; gloo on CPU);
- ``--batch-size`` stays the global batch: every process draws the same global batch (the one a
  single process would use at that step) and takes its contiguous share of it (sizes differ by at
  most one; a process left without an example runs one with weight 0, as the all-reduce needs it);
- each loss term is normalised by the global batch's counts (examples, real tokens), so the shares
  sum to the single-process loss exactly, however unevenly the batch splits;
- weight gradients are averaged by DistributedDataParallel; the gate logits of the search live
  outside the model, so their gradients are all-reduced here, before the top-k selection;
- only rank 0 touches the run directory (settings, logs, checkpoints, outputs); a checkpoint is read
  on rank 0 and broadcast, so checkpoints do not depend on the number of processes and a run
  resumes on any number of them; an error rank 0 meets (an existing output, a bad --resume)
  reaches every process as the same one-line error.
"""
from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .errors import PrunekitError


@dataclass(frozen=True)
class World:
    """This process's place in the run: rank ``rank`` of ``size``; ``device`` is where collectives run."""

    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def launched_size() -> int:
    """How many processes the launcher started (1 without torchrun/accelerate)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def is_main_process() -> bool:
    """Rank 0 (or a plain run): the one process that prints and writes."""
    return os.environ.get("RANK", "0") == "0"


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise PrunekitError(f"unknown --device {device!r}: use auto, cpu, cuda or cuda:N") from None
    if resolved.type not in ("cpu", "cuda"):  # mps, xpu, meta...: devices torch names, prunekit does not run on
        raise PrunekitError(f"--device {device}: prunekit runs on the CPU or a CUDA GPU; use auto, cpu, cuda or cuda:N")
    if resolved.type == "cpu":
        return torch.device("cpu")  # cpu:1 is the CPU too
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise PrunekitError(f"--device {device} was asked for but this machine has no CUDA GPU: use --device cpu")
    if resolved.type == "cuda" and resolved.index is None and launched_size() > 1:
        resolved = torch.device("cuda", local_rank)  # one GPU per process
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        n = torch.cuda.device_count()
        raise PrunekitError(f"--device {resolved} asked for, but this machine has {n} CUDA GPU{'s' if n != 1 else ''} "
                            f"(cuda:0{f' to cuda:{n - 1}' if n > 1 else ''})")
    return resolved


@contextlib.contextmanager
def launched(device: str) -> Iterator[tuple[World, torch.device]]:
    """The world this process runs in and its device; starts (and ends) the process group when launched
    by torchrun/accelerate with more than one process."""
    size = launched_size()
    if size == 1:
        yield World(), resolve_device(device)
        return
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    try:
        yield World(rank, size, dev if dev.type == "cuda" else torch.device("cpu")), dev
    finally:
        if created:
            dist.destroy_process_group()


def data_parallel(model: torch.nn.Module, device: torch.device, find_unused_parameters: bool = False) -> torch.nn.Module:
    """``model`` wrapped in DistributedDataParallel (gradients averaged over the processes during backward)."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    # The buffers (position ids) are the same everywhere: no need to send them at each forward.
    quiet = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
             else {"broadcast_buffers": False})
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                   find_unused_parameters=find_unused_parameters, **quiet)


def shard(idx: torch.Tensor, world: World) -> tuple[torch.Tensor, bool]:
    """This process's contiguous share of a global batch, and whether it is real (an empty share is
    replaced by the batch's first example, to be weighted 0: the all-reduce waits for every process)."""
    if not world.distributed:
        return idx, True
    part = idx.tensor_split(world.size)[world.rank]
    return (part, True) if len(part) else (idx[:1], False)


def all_reduce_sum(t: torch.Tensor, world: World) -> torch.Tensor:
    """``t`` summed over the processes (``t`` itself in a single process)."""
    if not world.distributed:
        return t
    buf = t.detach().to(world.device)
    dist.all_reduce(buf)
    return buf.to(t.device)


def broadcast_object(obj: Any, world: World) -> Any:
    """Rank 0's ``obj`` on every process (picklable Python objects: settings, texts, metadata)."""
    if not world.distributed:
        return obj
    box = [obj if world.main else None]
    dist.broadcast_object_list(box, src=0, device=world.device if world.device.type == "cuda" else None)
    return box[0]


def broadcast_tensors(tensors: dict[str, torch.Tensor] | None, world: World) -> dict[str, torch.Tensor]:
    """Rank 0's dict of CPU tensors (a checkpoint) on every process, tensor by tensor."""
    if not world.distributed:
        return tensors or {}
    spec = broadcast_object({k: (tuple(v.shape), v.dtype) for k, v in (tensors or {}).items()} if world.main else None, world)
    out = {}
    for name, (shape, dtype) in spec.items():
        buf = tensors[name].to(world.device) if world.main else torch.empty(shape, dtype=dtype, device=world.device)
        dist.broadcast(buf, src=0)
        out[name] = buf.cpu()
    return out


def on_main(world: World, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 only, and raise its error on every process (a PrunekitError as one; anything
    else — an OSError, a MemoryError — re-raised on rank 0 and a RuntimeError naming it on the others,
    so no process is left waiting in a collective). Returns ``fn``'s result on rank 0 (None elsewhere)."""
    if not world.distributed:
        return fn()
    result, error, raised = None, None, None
    if world.main:
        try:
            result = fn()
        except PrunekitError as e:  # re-raised here as it is (a ResumableError stays one), as a PrunekitError elsewhere
            error, raised = ("PrunekitError", str(e)), e
        except BaseException as e:  # noqa: BLE001 - told to the other ranks, then re-raised here
            error, raised = (type(e).__name__, str(e)), e
    error = broadcast_object(error, world)
    if raised is not None:
        raise raised
    if error is not None:
        kind, message = error
        if kind == "PrunekitError":
            raise PrunekitError(message)
        raise RuntimeError(f"rank 0 failed ({kind}: {message})")
    return result


def gather_rows(local: torch.Tensor, n: int, world: World) -> torch.Tensor:
    """Every process computed the rows of examples ``rank, rank + size, ...``; all of them, in order, on every process."""
    if not world.distributed:
        return local
    per = math.ceil(n / world.size)
    padded = local.new_zeros((per, *local.shape[1:]))
    padded[: len(local)] = local
    parts = [torch.empty_like(padded, device=world.device) for _ in range(world.size)]
    dist.all_gather(parts, padded.to(world.device))
    out = local.new_empty((n, *local.shape[1:]))
    for r, part in enumerate(parts):
        out[r::world.size] = part[: len(range(r, n, world.size))].to(out.device)
    return out


def latest_checkpoint(ckpt_root, world: World) -> tuple[int, dict, dict] | None:
    """The newest intact checkpoint, read on rank 0 and sent to every process (see
    :func:`prunekit.checkpoint.load_latest_checkpoint`)."""
    from .checkpoint import load_latest_checkpoint

    found = on_main(world, lambda: load_latest_checkpoint(ckpt_root))  # a failure there reaches every rank
    head = broadcast_object((found[0], found[2]) if found else None, world)
    if head is None:
        return None
    return head[0], broadcast_tensors(found[1] if found else None, world), head[1]


def open_log(path, world: World):
    """The run log, appended to by rank 0; the other processes write nowhere."""
    return open(path, "a") if world.main else open(os.devnull, "w")

