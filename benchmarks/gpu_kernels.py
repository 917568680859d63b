#!/usr/bin/env python
"""Correctness on hardware and timings of prunekit's Triton kernels, in one self-contained run.

Made for a lent GPU machine with its own torch/Triton, no prunekit installed and no network:

    PYTHONUNBUFFERED=1 python benchmarks/gpu_kernels.py          # from the repo root
    bash benchmarks/gpu_session.sh                               # how the published files were made (--budget 60 90)

It imports ``prunekit_kernels`` from ``<repo>/kernels/`` (never imports prunekit), then

1. checks every kernel against its PyTorch reference (float64) on many shapes, dtypes and head
   counts, with poisoned (NaN-filled) outputs; a case passes when it is finite and its relative
   error ``||out - ref|| / ||ref||`` is at most twice that of the same computation done by PyTorch
   in the kernel's dtype, plus the dtype's epsilon;
2. times (``triton.testing.do_bench``, median) the fused attention against PyTorch SDPA and eager
   attention per layer shape, padded vs varlen on a mixed-length batch, a small launch-config
   sweep, and the epilogues against their torch equivalents.

Each case runs inside its own try/except and the parts have time budgets, so one failure or a slow
compile never loses the rest. Writes ``gpu_kernels.{json,md}`` under ``--out``, else ``$OUT``, else
``benchmarks/results/``; the published copies, renamed after each run with the device (and the
session), are ``benchmarks/results/gpu_kernels_h100.{json,md}`` and
``gpu_kernels_h200_run{1,2,3}.{json,md}``. Exits 1 if any correctness case failed (after writing
everything).

``--quick`` shrinks everything and writes ``gpu_kernels_quick.*``; without CUDA it runs the kernels
under ``TRITON_INTERPRET=1`` and its timings are single interpreted calls (``--skip-timings`` to
leave them out), so the script can be smoke-tested on a CPU-only machine:

    python benchmarks/gpu_kernels.py --quick --skip-timings --out /tmp/kernels
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
import zlib
from pathlib import Path

import torch
from checkout_imports import use_checkout
from gpu_common import T0, environment, log, md_table, mixed_lengths, out_dir, rel_err
from timing import median_ms

# ------------------------------------------------------------------------------------------------
# Part 1: correctness
# ------------------------------------------------------------------------------------------------


class Checker:
    """Runs cases, each isolated, and keeps one record per case."""

    def __init__(self, deadline: float):
        self.records: list[dict] = []
        self.deadline = deadline

    def run(self, kind: str, params: dict, fn) -> None:
        rec = {"kind": kind, **params}
        if time.time() > self.deadline:
            rec.update(status="SKIP", error="time budget of part 1 spent")
            self.records.append(rec)
            return
        torch.manual_seed(zlib.crc32(json.dumps(rec, sort_keys=True, default=str).encode()))
        try:
            out, ref_hi, ref_same, dtype = fn()
            finite = bool(torch.isfinite(out).all().item())
            rk, rt = rel_err(out, ref_hi), rel_err(ref_same, ref_hi)
            tol = 2.0 * rt + torch.finfo(dtype).eps
            rec.update(rel_err=rk, torch_rel_err=rt, tol=tol, finite=finite)
            rec["status"] = "PASS" if finite and rk <= tol else "FAIL"
            if rec["status"] == "FAIL":
                diff = (out.double() - ref_hi.double()).abs()
                diff = torch.nan_to_num(diff, nan=float("inf"))
                flat = int(diff.reshape(-1).argmax().item())
                idx = [int(i) for i in torch.unravel_index(torch.tensor(flat), diff.shape)]
                rec.update(max_abs_err=float(diff.reshape(-1)[flat].item()), where=idx)
        except Exception as exc:  # noqa: BLE001 - one bad shape must not stop the run
            rec.update(status="ERROR", error=f"{type(exc).__name__}: {exc}"[:500])
            traceback.print_exc(limit=3)
        self.records.append(rec)
        if rec["status"] != "PASS" and rec["status"] != "SKIP":
            log(f"  {rec['status']}: {rec}")


def _dt(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def lengths_for(batch: int, seqlen: int, gen: torch.Generator) -> list[int]:
    """Random lengths in [1, T], with a length-1 and a full-length sequence whenever B allows."""
    lens = torch.randint(1, seqlen + 1, (batch,), generator=gen).tolist()
    lens[0] = 1
    if batch > 1:
        lens[1] = seqlen
    return lens


def correctness(pk, cfg: dict, dev: str, deadline: float) -> list[dict]:
    chk = Checker(deadline)
    gen = torch.Generator().manual_seed(0)

    for dtype in cfg["dtypes"]:
        for d in cfg["head_dims"]:
            for h in cfg["heads"]:
                log(f"attention {dtype} d={d} h={h}")
                for batch in cfg["batches"]:
                    for seqlen in cfg["seqlens"]:
                        lens = lengths_for(batch, seqlen, gen)
                        params = dict(dtype=_dt(dtype), d=d, h=h, B=batch, T=seqlen)
                        shared: dict = {}

                        def padded(batch=batch, seqlen=seqlen, lens=lens, h=h, d=d, dtype=dtype):
                            qkv = torch.randn(batch, seqlen, 3 * h * d, device=dev).to(dtype)
                            mask = torch.arange(seqlen, device=dev)[None, :] < torch.tensor(lens, device=dev)[:, None]
                            out = torch.full((batch, seqlen, h * d), float("nan"), dtype=dtype, device=dev)
                            pk.fused_attention(qkv, mask, h, d, out=out)
                            ref_hi = pk.fused_attention_reference(qkv.double(), mask, h, d)
                            ref_same = pk.fused_attention_reference(qkv, mask, h, d, upcast=False)
                            shared.update(qkv=qkv, mask=mask, ref_hi=ref_hi, ref_same=ref_same)
                            return out, ref_hi, ref_same, dtype

                        def varlen(h=h, d=d, dtype=dtype):
                            if "ref_hi" not in shared:
                                raise RuntimeError("padded case failed; no inputs for varlen")
                            qkv, mask = shared["qkv"], shared["mask"]
                            packed, idx, cu, max_len = pk.unpad_input(qkv, mask)
                            out = torch.full((packed.shape[0], h * d), float("nan"), dtype=dtype, device=dev)
                            pk.fused_attention_varlen(packed, cu, max_len, h, d, out=out)
                            # Right padding: the varlen result is the padded one at the valid rows.
                            flat = lambda t: t.reshape(-1, h * d).index_select(0, idx)  # noqa: E731
                            return out, flat(shared["ref_hi"]), flat(shared["ref_same"]), dtype

                        def nomask(batch=batch, seqlen=seqlen, h=h, d=d, dtype=dtype):
                            qkv = torch.randn(batch, seqlen, 3 * h * d, device=dev).to(dtype)
                            out = torch.full((batch, seqlen, h * d), float("nan"), dtype=dtype, device=dev)
                            pk.fused_attention(qkv, None, h, d, out=out)
                            ref_hi = pk.fused_attention_reference(qkv.double(), None, h, d)
                            ref_same = pk.fused_attention_reference(qkv, None, h, d, upcast=False)
                            return out, ref_hi, ref_same, dtype

                        chk.run("attn_padded", params, padded)
                        chk.run("attn_varlen", params, varlen)
                        if batch == cfg["nomask_batch"]:
                            chk.run("attn_nomask", params, nomask)
                        shared.clear()

    # Edge cases: a fully masked (length-0) sequence, a mask with holes, non-bool masks, strided qkv.
    for dtype in cfg["dtypes"]:
        h, d, batch, seqlen = 4, 32, 4, cfg["edge_T"]

        def empty_row(dtype=dtype):
            qkv = torch.randn(batch, seqlen, 3 * h * d, device=dev).to(dtype)
            mask = torch.ones(batch, seqlen, dtype=torch.int32, device=dev)
            mask[2] = 0
            mask[3, ::3] = 0  # holes
            out = torch.full((batch, seqlen, h * d), float("nan"), dtype=dtype, device=dev)
            pk.fused_attention(qkv, mask, h, d, out=out)
            if not bool((out[2] == 0).all()):
                raise AssertionError("fully masked sequence did not come out as zeros")
            return out, pk.fused_attention_reference(qkv.double(), mask, h, d), pk.fused_attention_reference(qkv, mask, h, d, upcast=False), dtype

        def varlen_empty(dtype=dtype):
            lens = [5, 0, seqlen, 1]
            mask = torch.arange(seqlen, device=dev)[None, :] < torch.tensor(lens, device=dev)[:, None]
            qkv = torch.randn(batch, seqlen, 3 * h * d, device=dev).to(dtype)
            packed, idx, cu, max_len = pk.unpad_input(qkv, mask)
            out = torch.full((packed.shape[0], h * d), float("nan"), dtype=dtype, device=dev)
            pk.fused_attention_varlen(packed, cu, max_len, h, d, out=out)
            ref_hi = pk.fused_attention_varlen_reference(packed.double(), cu, max_len, h, d)
            ref_same = pk.fused_attention_varlen_reference(packed, cu, max_len, h, d, upcast=False)
            return out, ref_hi, ref_same, dtype

        def strided_float_mask(dtype=dtype):
            big = torch.randn(batch, seqlen, 3 * h * d + 16, device=dev).to(dtype)
            qkv = big[..., 8 : 8 + 3 * h * d]
            mask = (torch.rand(batch, seqlen, device=dev) < 0.7).float()
            mask[:, 0] = 1.0
            out = pk.fused_attention(qkv, mask, h, d, scale=0.2)
            return out, pk.fused_attention_reference(qkv.double(), mask, h, d, scale=0.2), pk.fused_attention_reference(qkv, mask, h, d, scale=0.2, upcast=False), dtype

        chk.run("attn_edge_empty_and_holes", dict(dtype=_dt(dtype)), empty_row)
        chk.run("attn_edge_varlen_empty_seq", dict(dtype=_dt(dtype)), varlen_empty)
        chk.run("attn_edge_strided_float_mask", dict(dtype=_dt(dtype)), strided_float_mask)

    # Epilogues.
    log("epilogues")
    for dtype in cfg["dtypes"]:
        for width in cfg["widths"]:
            for rows in cfg["rows"]:
                params = dict(dtype=_dt(dtype), N=width, rows=rows)

                def gelu(width=width, rows=rows, dtype=dtype):
                    x = (2 * torch.randn(rows, width, device=dev)).to(dtype)
                    bias = torch.randn(width, device=dev).to(dtype)
                    out = pk.bias_gelu(x, bias, out=torch.full_like(x, float("nan")))
                    return out, pk.bias_gelu_reference(x.double(), bias.double()), pk.bias_gelu_reference(x, bias, upcast=False), dtype

                def layernorm(width=width, rows=rows, dtype=dtype):
                    x = (torch.randn(rows, width, device=dev) + 3 * torch.randn(rows, 1, device=dev)).to(dtype)
                    res = (4 * torch.randn(rows, width, device=dev)).to(dtype)
                    bias = torch.randn(width, device=dev).to(dtype)
                    w = (1 + 0.1 * torch.randn(width, device=dev)).to(dtype)
                    b = (0.1 * torch.randn(width, device=dev)).to(dtype)
                    out = pk.bias_residual_layernorm(x, bias, res, w, b, 1e-12, out=torch.full_like(x, float("nan")))
                    ref_hi = pk.bias_residual_layernorm_reference(*(t.double() for t in (x, bias, res, w, b)), 1e-12)
                    ref_same = pk.bias_residual_layernorm_reference(x, bias, res, w, b, 1e-12, upcast=False)
                    return out, ref_hi, ref_same, dtype

                chk.run("bias_gelu", params, gelu)
                chk.run("bias_residual_layernorm", params, layernorm)

    # Padding helpers (exact).
    def roundtrip():
        lens = [1, 17, 0, 33]
        hidden = torch.randn(4, 33, 24, device=dev, dtype=torch.float16)
        mask = torch.arange(33, device=dev)[None, :] < torch.tensor(lens, device=dev)[:, None]
        packed, idx, cu, max_len = pk.unpad_input(hidden, mask)
        back = pk.pad_input(packed, idx, 4, 33)
        expected = torch.where(mask[..., None], hidden, torch.zeros_like(hidden))
        if cu.tolist() != [0, 1, 18, 18, 51] or max_len != 33:
            raise AssertionError(f"cu_seqlens {cu.tolist()} / max_seqlen {max_len} wrong")
        return back, expected, expected, torch.float16

    chk.run("pad_unpad_roundtrip", {}, roundtrip)
    return chk.records


def summarize(records: list[dict]) -> list[dict]:
    """One row per (kind, dtype): counts and the worst relative errors."""
    groups: dict[tuple, dict] = {}
    for r in records:
        key = (r["kind"], r.get("dtype", "-"))
        g = groups.setdefault(key, dict(kind=key[0], dtype=key[1], cases=0, passed=0, failed=0, skipped=0,
                                        max_rel_err=0.0, max_torch_rel_err=0.0, worst_ratio=0.0))
        g["cases"] += 1
        if r["status"] == "PASS":
            g["passed"] += 1
        elif r["status"] == "SKIP":
            g["skipped"] += 1
        else:
            g["failed"] += 1
        if "rel_err" in r:
            g["max_rel_err"] = max(g["max_rel_err"], r["rel_err"])
            g["max_torch_rel_err"] = max(g["max_torch_rel_err"], r["torch_rel_err"])
            g["worst_ratio"] = max(g["worst_ratio"], r["rel_err"] / max(r["tol"], 1e-300))
    return list(groups.values())


# ------------------------------------------------------------------------------------------------
# Part 2: timings
# ------------------------------------------------------------------------------------------------
def bench(fn, quick: bool) -> float | None:
    """Median ms of ``fn`` (:func:`timing.median_ms`; on CPU one interpreted call, which only
    smoke-tests this code), or None when it fails (logged)."""
    try:
        return median_ms(fn, warmup=10 if quick else 25, rep=20 if quick else 100)
    except Exception as exc:  # noqa: BLE001
        log(f"  bench failed: {type(exc).__name__}: {str(exc)[:200]}")
        return None


def ratio(a, b):
    return round(a / b, 3) if a is not None and b is not None and b > 0 else None


def torch_attention_fns(qkv: torch.Tensor, mask: torch.Tensor, h: int, d: int):
    """What a model hands SDPA/eager: q, k, v views of the packed projection, output re-laid out."""
    import torch.nn.functional as F

    batch, seqlen, _ = qkv.shape
    q, k, v = qkv.view(batch, seqlen, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)  # [B, h, T, d] views
    bool_mask = mask.view(batch, 1, 1, seqlen)
    add_mask = torch.zeros(batch, 1, 1, seqlen, dtype=qkv.dtype, device=qkv.device)
    add_mask.masked_fill_(~bool_mask, torch.finfo(qkv.dtype).min)
    scale = 1.0 / math.sqrt(d)

    def merge(ctx):  # [B, h, T, d] -> [B, T, h*d], the layout the output projection reads
        return ctx.transpose(1, 2).reshape(batch, seqlen, h * d)

    def sdpa_bool():
        return merge(F.scaled_dot_product_attention(q, k, v, attn_mask=bool_mask))

    def sdpa_additive():
        return merge(F.scaled_dot_product_attention(q, k, v, attn_mask=add_mask))

    def sdpa_nomask():
        return merge(F.scaled_dot_product_attention(q, k, v))

    def eager():
        scores = torch.matmul(q, k.transpose(-1, -2)) * scale + add_mask
        return merge(torch.matmul(torch.softmax(scores, dim=-1), v))

    return dict(sdpa_bool=sdpa_bool, sdpa_additive=sdpa_additive, sdpa_nomask=sdpa_nomask, eager=eager)


def timings(pk, cfg: dict, dev: str, deadline: float) -> dict:
    from prunekit_kernels import attention as attn_mod

    dtype = torch.float16
    res: dict = {"attention": [], "sweep": [], "varlen": [], "epilogues": []}
    gen = torch.Generator().manual_seed(1)

    def over() -> bool:
        if time.time() > deadline:
            log("  time budget of part 2 spent; skipping the rest")
            return True
        return False

    # Attention per layer shape: padded batch with ~GLUE-like padding (lengths uniform in [T/4, T]).
    log("timing: attention per layer shape")
    seqlen = cfg["bench_T"]
    for h, d in cfg["bench_shapes"]:
        for batch in cfg["bench_batches"]:
            if over():
                break
            row = dict(h=h, d=d, B=batch, T=seqlen)
            try:
                qkv = torch.randn(batch, seqlen, 3 * h * d, device=dev, dtype=dtype)
                lens = torch.randint(seqlen // 4, seqlen + 1, (batch,), generator=gen)
                lens[0] = seqlen
                mask = torch.arange(seqlen)[None, :] < lens[:, None]
                mask = mask.to(dev)
                row["mean_len"] = round(float(lens.float().mean()), 1)
                bm, bn, _, warps, stages = attn_mod._launch_config(
                    seqlen, batch * h, d, dtype, qkv.device, None, None, None, None)
                row["triton_config"] = f"{bm}x{bn} w{warps} s{stages}"
                row["triton_mask_ms"] = bench(lambda: pk.fused_attention(qkv, mask, h, d), cfg["quick"])
                row["triton_nomask_ms"] = bench(lambda: pk.fused_attention(qkv, None, h, d), cfg["quick"])
                for name, fn in torch_attention_fns(qkv, mask, h, d).items():
                    row[f"{name}_ms"] = bench(fn, cfg["quick"])
                row["sdpa_bool/triton"] = ratio(row["sdpa_bool_ms"], row["triton_mask_ms"])
                row["sdpa_additive/triton"] = ratio(row["sdpa_additive_ms"], row["triton_mask_ms"])
                row["eager/triton"] = ratio(row["eager_ms"], row["triton_mask_ms"])
                row["sdpa_nomask/triton_nomask"] = ratio(row["sdpa_nomask_ms"], row["triton_nomask_ms"])
            except Exception as exc:  # noqa: BLE001
                row["error"] = f"{type(exc).__name__}: {exc}"[:300]
                log(f"  error {row}")
            res["attention"].append(row)
            log(f"  {row}")

    # Launch-config sweep (masked, fp16) to tune the defaults next time.
    log("timing: launch-config sweep")
    for h, d, batch in cfg["sweep_shapes"]:
        if over():
            break
        try:
            qkv = torch.randn(batch, seqlen, 3 * h * d, device=dev, dtype=dtype)
            lens = torch.randint(seqlen // 4, seqlen + 1, (batch,), generator=gen)
            mask = (torch.arange(seqlen)[None, :] < lens[:, None]).to(dev)
            for bm, bn, warps, stages in cfg["sweep_configs"]:
                ms = bench(lambda: pk.fused_attention(qkv, mask, h, d, block_m=bm, block_n=bn,
                                                      num_warps=warps, num_stages=stages), cfg["quick"])
                res["sweep"].append(dict(h=h, d=d, B=batch, T=seqlen, config=f"{bm}x{bn} w{warps} s{stages}", ms=ms))
            default = bench(lambda: pk.fused_attention(qkv, mask, h, d), cfg["quick"])
            res["sweep"].append(dict(h=h, d=d, B=batch, T=seqlen, config="default", ms=default))
        except Exception as exc:  # noqa: BLE001
            log(f"  sweep error h={h} d={d} B={batch}: {exc}")

    # Padded vs varlen on a mixed-length batch (mean length ~ 1/3 of max).
    log("timing: padded vs varlen")
    for h, d in cfg["varlen_shapes"]:
        if over():
            break
        batch, max_len = cfg["varlen_B"], cfg["bench_T"]
        row = dict(h=h, d=d, B=batch, max_T=max_len)
        try:
            lens = mixed_lengths(batch, max_len, 1.0 / 3.0).tolist()
            row["mean_len"] = round(sum(lens) / len(lens), 1)
            qkv = torch.randn(batch, max_len, 3 * h * d, device=dev, dtype=dtype)
            mask = (torch.arange(max_len)[None, :] < torch.tensor(lens)[:, None]).to(dev)
            packed, idx, cu, mx = pk.unpad_input(qkv, mask)

            def with_pad():
                p, i, c, m = pk.unpad_input(qkv, mask)
                return pk.pad_input(pk.fused_attention_varlen(p, c, m, h, d), i, batch, max_len)

            row["triton_padded_ms"] = bench(lambda: pk.fused_attention(qkv, mask, h, d), cfg["quick"])
            row["triton_varlen_ms"] = bench(lambda: pk.fused_attention_varlen(packed, cu, mx, h, d), cfg["quick"])
            row["triton_varlen_with_unpad_pad_ms"] = bench(with_pad, cfg["quick"])
            ctx_packed = pk.fused_attention_varlen(packed, cu, mx, h, d)
            row["unpad_pad_only_ms"] = bench(
                lambda: (pk.unpad_input(qkv, mask), pk.pad_input(ctx_packed, idx, batch, max_len)), cfg["quick"])
            fns = torch_attention_fns(qkv, mask, h, d)
            row["sdpa_bool_ms"] = bench(fns["sdpa_bool"], cfg["quick"])
            row["padded/varlen"] = ratio(row["triton_padded_ms"], row["triton_varlen_ms"])
            row["padded/varlen_with_unpad_pad"] = ratio(row["triton_padded_ms"], row["triton_varlen_with_unpad_pad_ms"])
            row["sdpa_bool/varlen"] = ratio(row["sdpa_bool_ms"], row["triton_varlen_ms"])
        except Exception as exc:  # noqa: BLE001
            row["error"] = f"{type(exc).__name__}: {exc}"[:300]
        res["varlen"].append(row)
        log(f"  {row}")

    # Epilogues vs torch (fp16, B*T rows).
    log("timing: epilogues")
    import torch.nn.functional as F

    rows = cfg["epi_rows"]
    for width in cfg["epi_widths"]:
        if over():
            break
        row = dict(rows=rows, N=width)
        try:
            x = torch.randn(rows, width, device=dev, dtype=dtype)
            res_ = torch.randn(rows, width, device=dev, dtype=dtype)
            bias = torch.randn(width, device=dev, dtype=dtype)
            w = torch.randn(width, device=dev, dtype=dtype)
            b = torch.randn(width, device=dev, dtype=dtype)
            row["triton_bias_gelu_ms"] = bench(lambda: pk.bias_gelu(x, bias), cfg["quick"])
            row["torch_bias_gelu_ms"] = bench(lambda: F.gelu(x + bias), cfg["quick"])
            row["triton_bias_res_ln_ms"] = bench(lambda: pk.bias_residual_layernorm(x, bias, res_, w, b, 1e-12), cfg["quick"])
            row["torch_bias_res_ln_ms"] = bench(lambda: F.layer_norm(x + bias + res_, (width,), w, b, 1e-12), cfg["quick"])
            row["gelu torch/triton"] = ratio(row["torch_bias_gelu_ms"], row["triton_bias_gelu_ms"])
            row["ln torch/triton"] = ratio(row["torch_bias_res_ln_ms"], row["triton_bias_res_ln_ms"])
            # Effective bandwidth of the fused kernels (bytes read + written once).
            el = rows * width * 2
            if row["triton_bias_gelu_ms"]:
                row["gelu_GBps"] = round(2 * el / row["triton_bias_gelu_ms"] / 1e6, 1)
            if row["triton_bias_res_ln_ms"]:
                row["ln_GBps"] = round(3 * el / row["triton_bias_res_ln_ms"] / 1e6, 1)
        except Exception as exc:  # noqa: BLE001
            row["error"] = f"{type(exc).__name__}: {exc}"[:300]
        res["epilogues"].append(row)
        log(f"  {row}")
    return res


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------
def write_report(folder: Path, stem: str, result: dict) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.json").write_text(json.dumps(result, indent=2, default=str))
    env = result["environment"]
    md = [f"# prunekit Triton kernels on {env.get('device')}\n",
          "torch {torch}, triton {triton}, CUDA {cuda}, python {python}; {date}; total {secs:.0f} s\n\n".format(
              date=result["date"], secs=result["seconds"], **env),
          "## Correctness (relative error vs a float64 reference; tol = 2 x torch-same-dtype error + eps)\n\n",
          md_table(result["correctness_summary"], ["kind", "dtype", "cases", "passed", "failed", "skipped",
                                                   "max_rel_err", "max_torch_rel_err", "worst_ratio"])]
    bad = [r for r in result["correctness"] if r["status"] not in ("PASS", "SKIP")]
    if bad:
        md.append(f"\n**{len(bad)} failing cases** (first 30):\n")
        md.append(md_table(bad[:30], ["kind", "dtype", "d", "h", "B", "T", "N", "rows", "status", "rel_err", "tol", "max_abs_err", "where", "error"]))
    t = result.get("timings")
    if t:
        if not result["environment"].get("sm"):
            md.append("\n_CPU smoke run: the figures below are single interpreter calls, not timings._\n")
        md.append("\n## Attention, fp16, T={}, padded batch (median ms; ratio > 1 = Triton faster)\n\n".format(
            t["attention"][0]["T"] if t["attention"] else "?"))
        md.append("SDPA/eager get q/k/v as views of the packed QKV and their output re-laid out to [B, T, h*d] "
                  "(what a model does); Triton reads the packed QKV and writes [B, T, h*d] itself.\n\n")
        md.append(md_table(t["attention"], ["h", "d", "B", "mean_len", "triton_config", "triton_mask_ms", "sdpa_bool_ms",
                                            "sdpa_additive_ms", "eager_ms", "sdpa_bool/triton", "eager/triton",
                                            "triton_nomask_ms", "sdpa_nomask_ms", "sdpa_nomask/triton_nomask"]))
        md.append("\n## Padded vs varlen (fp16, mean length ~1/3 of max)\n\n")
        md.append(md_table(t["varlen"], ["h", "d", "B", "max_T", "mean_len", "triton_padded_ms", "triton_varlen_ms",
                                         "triton_varlen_with_unpad_pad_ms", "unpad_pad_only_ms", "sdpa_bool_ms",
                                         "padded/varlen", "padded/varlen_with_unpad_pad", "sdpa_bool/varlen"]))
        md.append("\n## Launch-config sweep (fp16, masked; ms)\n\n")
        md.append(md_table(t["sweep"], ["h", "d", "B", "T", "config", "ms"]))
        md.append("\n## Epilogues (fp16; ms; ratio > 1 = Triton faster)\n\n")
        md.append(md_table(t["epilogues"], ["rows", "N", "triton_bias_gelu_ms", "torch_bias_gelu_ms", "gelu torch/triton",
                                            "gelu_GBps", "triton_bias_res_ln_ms", "torch_bias_res_ln_ms",
                                            "ln torch/triton", "ln_GBps"]))
    elif result.get("timings_skipped"):
        md.append(f"\n_Timings skipped: {result['timings_skipped']}_\n")
    text = "".join(md)
    (folder / f"{stem}.md").write_text(text)
    return text


# ------------------------------------------------------------------------------------------------
def configs(quick: bool) -> dict:
    if quick:
        return dict(
            quick=True,
            dtypes=[torch.float32, torch.float16, torch.bfloat16], head_dims=[26, 32], heads=[1, 5],
            batches=[1, 3], seqlens=[1, 37], nomask_batch=3, edge_T=20,
            widths=[312, 384], rows=[1, 37],
            bench_T=32, bench_shapes=[(2, 32), (2, 26)], bench_batches=[2],
            sweep_shapes=[(2, 64, 2)], sweep_configs=[(16, 16, 4, 2), (32, 16, 8, 2)],
            varlen_shapes=[(2, 64)], varlen_B=6, epi_rows=64, epi_widths=[384],
            budget_part1=300, budget_total=420,
        )
    return dict(
        quick=False,
        dtypes=[torch.float32, torch.float16, torch.bfloat16], head_dims=[26, 32, 64], heads=[1, 5, 12, 16],
        batches=[1, 8, 32], seqlens=[1, 37, 128, 512], nomask_batch=8, edge_T=77,
        widths=[312, 384, 768, 1536, 3072, 4096], rows=[1, 37, 4096],
        bench_T=128,
        bench_shapes=[(h, d) for d in (32, 64) for h in (2, 4, 6, 8, 12)] + [(4, 26), (12, 26)],
        bench_batches=[32, 128],
        sweep_shapes=[(12, 64, 32), (12, 64, 128), (4, 64, 32), (12, 32, 128), (12, 26, 128)],
        sweep_configs=[(64, 64, 4, 2), (64, 64, 4, 3), (64, 32, 4, 2), (64, 32, 2, 2), (128, 64, 8, 2), (128, 64, 4, 2),
                       (128, 32, 4, 2), (128, 32, 4, 3), (128, 32, 8, 2), (128, 128, 8, 2)],
        varlen_shapes=[(12, 64), (12, 32), (12, 26), (4, 64)], varlen_B=128,
        epi_rows=128 * 128, epi_widths=[384, 768, 1536, 3072],
        # The whole run must stay well inside 10 minutes.
        budget_part1=270, budget_total=480,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny shapes; on CPU, interpreter and no timings")
    ap.add_argument("--out", type=Path, default=None, help="output dir (default $OUT, else benchmarks/results)")
    ap.add_argument("--skip-timings", action="store_true")
    ap.add_argument("--budget", type=float, nargs=2, metavar=("PART1", "TOTAL"), default=None,
                    help="seconds for the correctness part and for everything (default 270 480)")
    args = ap.parse_args()

    use_checkout(args.quick)
    import prunekit_kernels as pk
    cfg = configs(args.quick)
    if args.budget is not None:
        cfg["budget_part1"], cfg["budget_total"] = args.budget
    on_gpu = torch.cuda.is_available()
    dev = "cuda" if on_gpu else "cpu"
    env = environment()
    log(f"environment: {env}")
    log(f"prunekit_kernels from {Path(pk.__file__).parent} ; triton_available: {pk.triton_available(dev)}")
    if on_gpu:
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 references in full precision
        torch.backends.cudnn.allow_tf32 = False

    result: dict = dict(environment=env, date=time.strftime("%Y-%m-%d %H:%M:%S %Z"), quick=args.quick)
    log("part 1: correctness")
    try:
        records = correctness(pk, cfg, dev, deadline=T0 + cfg["budget_part1"])
    except Exception as exc:  # noqa: BLE001 - should not happen: cases are isolated
        traceback.print_exc()
        records = [dict(kind="part1", status="ERROR", error=str(exc))]
    result["correctness"] = records
    result["correctness_summary"] = summarize(records)
    n_bad = sum(r["status"] not in ("PASS", "SKIP") for r in records)
    n_skip = sum(r["status"] == "SKIP" for r in records)
    log(f"part 1 done: {len(records)} cases, {n_bad} failed, {n_skip} skipped")

    if args.skip_timings:
        result["timings_skipped"] = "--skip-timings"
    else:
        log("part 2: timings" + ("" if on_gpu else " (CPU: one call each, a smoke test of the code only)"))
        if on_gpu:  # clocks up from idle before the first timed shape (the H100 run's first shape, 2x32, ran slow)
            a = torch.randn(4096, 4096, device=dev, dtype=torch.float16)
            t_warm = time.time()
            while time.time() - t_warm < 1.0:
                a @ a
                torch.cuda.synchronize()
            del a
        try:
            result["timings"] = timings(pk, cfg, dev, deadline=T0 + cfg["budget_total"])
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            result["timings_skipped"] = f"crashed: {exc}"
    result["seconds"] = time.time() - T0

    results = out_dir(args.out)
    stem = "gpu_kernels_quick" if args.quick else "gpu_kernels"
    text = write_report(results, stem, result)
    log(f"wrote {results / (stem + '.json')} and {stem}.md")
    print()
    print(text, flush=True)
    print(f"RESULT: {'FAIL' if n_bad else 'PASS'} ({len(records)} correctness cases, {n_bad} failed, {n_skip} skipped)", flush=True)
    return 1 if n_bad else 0


if __name__ == "__main__":
    sys.exit(main())
