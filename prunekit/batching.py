"""Tokenising a TextDataset once, and batching it with dynamic padding in a seed-determined order."""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .errors import PrunekitError


@dataclass
class EncodedData:
    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    pad_id: int
    labels: torch.Tensor | None = None
    teacher_out: torch.Tensor | None = None  # [N, ...] cached teacher outputs (self-distillation)

    def __len__(self) -> int:
        return len(self.input_ids)

    def lengths(self) -> list[int]:
        return [len(x) for x in self.input_ids]

    def subset(self, idx: list[int]) -> EncodedData:
        """The examples at ``idx`` (teacher outputs are left out)."""
        return EncodedData([self.input_ids[i] for i in idx], None if self.token_type_ids is None else [self.token_type_ids[i] for i in idx],
                           self.pad_id, None if self.labels is None else self.labels[idx])


def encode(dataset, tokenizer, max_length: int) -> EncodedData:
    """Tokenise texts (and text pairs) with truncation, without padding."""
    if len(dataset) == 0:
        raise PrunekitError("the data has no examples: give a file with at least one text")
    kwargs = dict(truncation=True, max_length=max_length, padding=False)
    enc = tokenizer(list(dataset.texts), list(dataset.pairs), **kwargs) if dataset.pairs else tokenizer(list(dataset.texts), **kwargs)
    labels = None
    if dataset.labels is not None:
        dtype = torch.float32 if dataset.task.kind == "regression" else torch.long
        labels = torch.tensor(dataset.labels, dtype=dtype)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return EncodedData(enc["input_ids"], enc.get("token_type_ids"), pad_id, labels)


def collate(data: EncodedData, idx: list[int]) -> dict[str, torch.Tensor]:
    width = max(len(data.input_ids[i]) for i in idx)
    ids = torch.full((len(idx), width), data.pad_id, dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    types = torch.zeros((len(idx), width), dtype=torch.long)
    for row, i in enumerate(idx):
        seq = data.input_ids[i]
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
        if data.token_type_ids is not None:
            types[row, : len(seq)] = torch.tensor(data.token_type_ids[i])
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    if data.labels is not None:
        batch["labels"] = data.labels[idx]
    return batch


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> torch.Tensor:
    if not shuffle:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


# Length grouping (``--group-by-length``): each epoch's shuffled examples are cut into groups of this
# many batches, each group sorted by length into its batches, and the epoch's batches shuffled, the
# one with the most padded tokens put first (an out-of-memory error shows at a run's first step, not
# hours in). A batch is then padded to lengths close to its examples' (on CPython's docstrings, 1.08x
# the real tokens against 2.6x for random batches), while the batches still differ from one epoch to
# the next. Hugging Face's ``group_by_length`` (its ``LengthGroupedSampler``) works alike (groups of
# 50 batches, kept in order).
GROUP_BATCHES = 16


def _grouped(order: torch.Tensor, lengths: list[int], batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """``order``'s examples as batches of similar lengths (see :data:`GROUP_BATCHES`), in a random
    order but for the widest, which comes first."""
    span = GROUP_BATCHES * batch_size
    batches = []
    for start in range(0, len(order), span):
        group = sorted(order[start : start + span].tolist(), key=lambda i: -lengths[i])  # stable: ties keep their shuffled order
        batches += [torch.tensor(group[b : b + batch_size]) for b in range(0, len(group), batch_size)]
    if not batches:
        return [order]
    batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    widest = max(range(len(batches)), key=lambda b: padded_tokens(lengths, batches[b]))
    batches[0], batches[widest] = batches[widest], batches[0]
    return batches


def batch_order(n: int, batch_size: int, seed: int, start_step: int = 0, shuffle: bool = True,
                lengths: list[int] | None = None) -> Iterator[torch.Tensor]:
    """Endless global batches of example indices; batch ``s`` depends only on (seed, s), so a resumed
    run (on any number of processes) sees the same data. ``lengths`` (the examples' token counts):
    group the batches by length (:data:`GROUP_BATCHES`), as many batches per epoch; only with ``shuffle``."""
    per_epoch = max(1, math.ceil(n / batch_size))
    step, cached = start_step, (None, None)
    while True:
        epoch, pos = divmod(step, per_epoch)
        if cached[0] != epoch:
            order = epoch_order(n, seed, epoch, shuffle)
            if lengths is not None and shuffle:
                gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 7_919)
                cached = (epoch, _grouped(order, lengths, batch_size, gen))
            else:
                cached = (epoch, [order[b : b + batch_size] for b in range(0, n, batch_size)] or [order])
        yield cached[1][pos]
        step += 1


def padded_tokens(lengths: list[int], idx) -> int:
    """The tokens a batch of ``idx`` computes on, padding included (dynamic padding: to its longest)."""
    idx = [int(i) for i in idx]
    return len(idx) * max((lengths[i] for i in idx), default=0)


def iterate_batches(
    data: EncodedData, batch_size: int, seed: int, start_step: int = 0, shuffle: bool = True
) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """Endless (indices, collated batch) pairs in :func:`batch_order`."""
    for idx in batch_order(len(data), batch_size, seed, start_step, shuffle):
        yield idx, collate(data, idx.tolist())


def sequential_batches(data: EncodedData, batch_size: int) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """One pass in length-sorted order (fast inference); yields the original indices too."""
    order = sorted(range(len(data)), key=lambda i: len(data.input_ids[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        yield torch.tensor(idx), collate(data, idx)


@torch.no_grad()
def teacher_outputs(teacher, data: EncodedData, device, batch_size: int = 64) -> torch.Tensor:
    """The teacher's output for every example, cached once (the search's self-distillation target)."""
    from .models import model_output

    outs: list[torch.Tensor | None] = [None] * len(data)
    teacher.model.eval()
    for idx, batch in sequential_batches(data, batch_size):
        batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
        out = model_output(teacher.model, teacher.kind, batch).float().cpu()
        for row, i in enumerate(idx.tolist()):
            outs[i] = out[row]
    return torch.stack(outs)  # type: ignore[arg-type]
