"""CUDA graphs of a compact model's forward: :class:`CudaGraphRunner` (one input shape, graphs keyed
by the packed token count) and :func:`capture_graph`, which the bench backends share."""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import torch

from .errors import PrunekitError

if TYPE_CHECKING:
    from .modeling import CompactBertPreTrainedModel


FULL = "full"  # CudaGraphRunner's graph key for a batch without padding


def on_cuda_device(device: torch.device):
    """A context making ``device`` the current CUDA device (graphs capture and replay on the current
    device's streams); nothing for a device that is not CUDA."""
    return torch.cuda.device(device) if torch.device(device).type == "cuda" else contextlib.nullcontext()


def capture_graph(fn, device: torch.device, warmup: int = 2, pool=None) -> tuple:
    """``(graph, output)``: ``fn()`` warmed up on a side stream (Triton compiles, cuBLAS picks its
    kernels and makes its workspace), as ``torch.cuda.graphs`` recommends, then captured; replaying
    the graph reruns ``fn`` on whatever its input tensors hold then, into the same output memory."""
    # On the model's device (cuda:1 too): torch.cuda.graph captures on a stream of the current device.
    with on_cuda_device(device):
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(warmup):
                fn()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # on this device's own stream: torch.cuda.graph's default capture stream is made once per
        # process, on whichever GPU was current at the first capture
        with torch.inference_mode(), torch.cuda.graph(graph, pool=pool, stream=side):
            out = fn()
    return graph, out


class CudaGraphRunner:
    """Replays CUDA graphs of a compact model's forward for inputs of one shape ``[batch_size, seqlen]``.

    Why: a compact layer is ~8 kernel launches, and at batch 1-32 (or on short mixed-length batches)
    launching them costs the host more time than the GPU needs to run them (H200: ~4 ms for 12
    layers whatever the batch). A graph replays all of a forward's launches at once.

    How: inputs are copied into static buffers and a graph captured on first use is replayed; with
    the padding-free ``triton`` backend the call counts the real tokens (one host sync), rounds the
    count up to a multiple of ``token_granularity`` (default: 1/16 of ``batch_size * seqlen``, at
    least 64) and keeps one graph per such capacity, so a batch still costs what its real tokens
    cost; a batch with no padding at all gets a graph of its own (key ``FULL``) that skips the
    packing and runs the padded kernels without a mask. The backend is the model's at construction (``eager``, ``sdpa``, ``triton``,
    ``triton-padded``); output attentions and hidden states are not offered.

    Outputs are cloned out of the graph's memory (``clone_outputs=False``: returned as they are,
    valid until the next call). The graphs read the weights as they were at capture: make a new
    runner after changing the model (weights, dtype, device, backend).

    Without CUDA this raises a :class:`PrunekitError`, or with ``fallback=True`` calls the model
    directly (same results, no graph), so that one code path serves both.
    """

    def __init__(self, model: CompactBertPreTrainedModel, batch_size: int, seqlen: int, *,
                 token_granularity: int | None = None, clone_outputs: bool = True, warmup: int = 2,
                 fallback: bool = False):
        if batch_size < 1 or seqlen < 1:
            raise PrunekitError(f"CudaGraphRunner: batch_size and seqlen must be >= 1, got {batch_size} and {seqlen}")
        self.model, self.batch_size, self.seqlen = model, int(batch_size), int(seqlen)
        self.backend = model.config.backend
        if self.backend == "sdpa-packed":  # it sizes its packed rows on the host: no capture can hold that
            raise PrunekitError(
                "CudaGraphRunner cannot capture the 'sdpa-packed' backend (it reads the batch's token count on "
                "the host every call): use 'triton' (padding-free, graphed by token count) or 'sdpa'"
            )
        self.clone_outputs, self.warmup = clone_outputs, max(1, int(warmup))
        device = next(model.parameters()).device
        self.device = device
        self.graphed = device.type == "cuda" and torch.cuda.is_available()
        if not self.graphed and not fallback:
            raise PrunekitError(
                f"CUDA graphs need the model on a CUDA device, but it is on {device}: move it with "
                "model.to('cuda'), or pass fallback=True to run the model without a graph"
            )
        if model.training:
            raise PrunekitError("CudaGraphRunner is for inference: call model.eval() first")
        total = self.batch_size * self.seqlen
        self.packed = self.backend == "triton"
        if token_granularity is None:
            token_granularity = max(64, -(-total // 16 // 64) * 64)
        if token_granularity < 1:
            raise PrunekitError(f"token_granularity must be >= 1, got {token_granularity}")
        self.token_granularity = int(token_granularity)
        self.graphs: dict = {}  # capacity (None unless packed; FULL: no padding) -> (graph, static outputs)
        if self.graphed:
            z = dict(dtype=torch.long, device=device)
            self.static = {"input_ids": torch.zeros(self.batch_size, self.seqlen, **z),
                           "attention_mask": torch.ones(self.batch_size, self.seqlen, **z),
                           "token_type_ids": torch.zeros(self.batch_size, self.seqlen, **z)}
            self._pool = torch.cuda.graph_pool_handle()  # one pool: graphs are replayed one at a time

    def capacity_for(self, num_tokens: int) -> int | None:
        """The packed-row capacity (graph key) for a batch with ``num_tokens`` real tokens."""
        if not self.packed:
            return None
        g = self.token_granularity
        return min(max(g, -(-int(num_tokens) // g) * g), self.batch_size * self.seqlen)

    def _check(self, input_ids, attention_mask, token_type_ids) -> None:
        want = (self.batch_size, self.seqlen)
        for name, t in (("input_ids", input_ids), ("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if t is not None and tuple(t.shape) != want:
                raise PrunekitError(
                    f"CudaGraphRunner was made for inputs of shape {list(want)}, got {name} {list(t.shape)}: "
                    "pad the batch to that shape or make another runner (model.capture_cuda_graph(batch, seqlen))"
                )
        if self.model.config.backend != self.backend:
            raise PrunekitError(
                f"the model's backend changed from {self.backend!r} to {self.model.config.backend!r} after the "
                "graph was captured: make a new runner"
            )

    def _capture(self, capacity):
        kwargs = dict(self.static)
        if capacity == FULL:  # no padding at all: the padded kernels without a mask, nothing packed
            del kwargs["attention_mask"]
        elif capacity is not None:
            kwargs["token_capacity"] = capacity
        self.graphs[capacity] = capture_graph(lambda: self.model(**kwargs), self.device, self.warmup, self._pool)
        return self.graphs[capacity]

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 token_type_ids: torch.Tensor | None = None):
        self._check(input_ids, attention_mask, token_type_ids)
        if not self.graphed:
            with torch.inference_mode():
                return self.model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        st = self.static
        st["input_ids"].copy_(input_ids)
        if attention_mask is None:
            st["attention_mask"].fill_(1)
        else:
            st["attention_mask"].copy_(attention_mask)
        if token_type_ids is None:
            st["token_type_ids"].zero_()
        else:
            st["token_type_ids"].copy_(token_type_ids)
        capacity = None
        if self.packed:
            real = int(st["attention_mask"].count_nonzero())
            capacity = FULL if real == self.batch_size * self.seqlen else self.capacity_for(real)
        graph, out = self.graphs.get(capacity) or self._capture(capacity)
        with on_cuda_device(self.device):  # replayed on the current stream of the model's device
            graph.replay()
        if not self.clone_outputs:
            return out
        return type(out)(**{k: (v.clone() if torch.is_tensor(v) else v) for k, v in out.items()})
