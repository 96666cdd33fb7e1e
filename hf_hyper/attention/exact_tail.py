"""Exact attention for the last rows of a causal call: the exact tail.

The last queries of a prefill are where generation reads the context (a LongBench or
needle prompt ends with its question), and one needle token thousands back is what an
approximation loses first. Attending those W rows exactly costs W n work, nothing next to
the call's n^2 / 2, but one tile of W rows per head against n keys leaves most of a GPU
idle in a plain kernel launch. So on CUDA the keys before the tail are cut into chunks,
viewed (not copied) as a batch of independent problems for PyTorch's flash kernel, and
the chunks merge by their log-sum-exp, as flash-decoding does. Elsewhere, and wherever a
gradient must reach the queries through the log-sum-exp, torch ops compute it.

Layout: [batch, heads, seq, head_dim], key/value heads may be fewer (GQA).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .blockwise import attention_with_lse, causal_mask_fn, merge_by_lse

# Keys per chunk at least: shorter chunks spend more on the merge than they save.
MIN_CHUNK_KEYS = 512
# Query rows of one flash-kernel tile, and tiles per streaming multiprocessor the split
# aims at (two waves hide the shorter last chunk).
FLASH_TILE_ROWS = 128
TILES_PER_SM = 2


def exact_tail_attention(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Causal exact attention of the last rows: q [b, hq, w, d] are the last w positions
    of k [b, hk, n, d], v [b, hk, n, dv] -> (out [b, hq, w, dv] float32 or float64,
    lse [b, hq, w] of the same dtype)."""
    chunks = _flash_chunks(q, k, v, k.shape[2] - q.shape[2])
    if chunks:
        return _split_keys_attention(q, k, v, scale, chunks)
    return _torch_ops_attention(q, k, v, scale)


def _torch_ops_attention(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    b, hq, w, d = q.shape
    hk, n, dv = k.shape[1], k.shape[2], v.shape[-1]
    # [b, h, n, d] -> the internal layout [b*hk, g, n, d] / [b*hk, n, d]; blockwise, not
    # torch_backend, so this module stays below the fused package in the import order
    out, lse = attention_with_lse(
        q.reshape(b * hk, hq // hk, w, d), k.reshape(b * hk, n, d), v.reshape(b * hk, n, dv),
        scale, causal_mask_fn(w, n, q.device),
    )  # fmt: skip
    return out.reshape(b, hq, w, dv), lse.reshape(b, hq, w)


def _flash_chunks(q: Tensor, k: Tensor, v: Tensor, n_before: int) -> int:
    """How many key chunks the flash split cuts the n_before keys before the tail into,
    or 0 where it does not run: not CUDA, not 16-bit, head sizes the kernel lacks, too
    few keys to split, or a gradient that would need the log-sum-exp's."""
    if not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16):
        return 0
    d, dv = q.shape[-1], v.shape[-1]
    if d != dv or d % 8 or d > 256:
        return 0
    if not hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention"):
        return 0
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        return 0
    if torch.cuda.get_device_capability(q.device) < (8, 0) or n_before < MIN_CHUNK_KEYS:
        return 0
    b, hq, w, _ = q.shape
    hk = k.shape[1]
    tiles_per_chunk = b * hk * math.ceil(hq // hk * w / FLASH_TILE_ROWS)
    sms = torch.cuda.get_device_properties(q.device).multi_processor_count
    wanted = math.ceil(TILES_PER_SM * sms / tiles_per_chunk)
    return max(1, min(wanted, n_before // MIN_CHUNK_KEYS))


def _split_keys_attention(
    q: Tensor, k: Tensor, v: Tensor, scale: float, chunks: int
) -> tuple[Tensor, Tensor]:
    """The exact tail on CUDA: every query sees all keys before the tail, so those form a
    rectangle whose rows are independent; a query head's g rows stack over one key head
    (GQA without repeating keys), and `chunks` equal runs of keys become the batch of one
    flash call. The few keys past the runs (the tail's own, causal) take torch ops."""
    b, hq, w, d = q.shape
    hk, n, dv = k.shape[1], k.shape[2], v.shape[-1]
    g = hq // hk
    run = (n - w) // chunks
    covered = chunks * run
    outs, lses = [], []
    for i in range(b):
        # [hk, covered, d] -> [chunks, hk, run, d]: a view, strides kept
        k_runs = k[i, :, :covered].unflatten(1, (chunks, run)).transpose(0, 1)
        v_runs = v[i, :, :covered].unflatten(1, (chunks, run)).transpose(0, 1)
        q_rows = q[i].reshape(hk, g * w, d).expand(chunks, -1, -1, -1).contiguous()
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention(
            q_rows, k_runs, v_runs, 0.0, False, False, scale=scale
        )[:2]
        lse = lse[..., : g * w]  # [chunks, hk, g*w]
        total = torch.logsumexp(lse, dim=0)
        weight = torch.exp(lse - total)[..., None]  # each run's share of the mass
        merged = (out.float() * weight).sum(0)  # [hk, g*w, dv]
        outs.append(merged.reshape(hq, w, dv))
        lses.append(total.reshape(hq, w))
    out_runs, lse_runs = torch.stack(outs), torch.stack(lses)
    out_rest, lse_rest = _torch_ops_attention(q, k[:, :, covered:], v[:, :, covered:], scale)
    return merge_by_lse(out_runs, lse_runs, out_rest.float(), lse_rest.float())
