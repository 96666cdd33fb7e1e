"""Fused HyperAttention forward on CUDA: the same algorithm and random draws as the
plain-torch path, with the attention itself in two Triton kernels.

Hashing, sorting and tile packing stay in torch (cheap, O(n) passes over integers);
each recursion level is one kernel launch that merges into the output in place, and
the exact diagonal blocks are one launch. Nothing of size O(n * d) is copied except
when the causal recursion needs padding (lengths not divisible by 2**levels).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from ..config import HyperAttentionConfig
from .hyper import (
    BlockPlan,
    _Randomness,
    causal_levels,
    level_ranks,
    pack_query_tiles,
    plan_blocks,
)
from .lsh import angular_lsh_rank

FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# (BLOCK_M, BLOCK_N, num_warps, num_stages) for 16-bit inputs with head_dim <= 128,
# chosen by timing on an H100 (benchmarks/tune_fused.py; float32 and larger heads use
# small tiles).
# Causal 131k, 32 heads, bf16: (64, 64, 4, 2) beat (128, 64, 8, 2) by 18% at head_dim
# 64; (128, 64, 8, 3) beat it by 7% at 128; the dense kernel was flat within 2%.
TUNING = {
    "dense": (128, 64, 8, 3),
    "block_sample_d64": (64, 64, 4, 2),
    "block_sample_d128": (128, 64, 8, 3),
    "block_sample_small": (64, 64, 4, 2),
}
MAX_HEAD_DIM = 256


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401

        from . import triton_kernels  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def fused_unsupported_reason(q: Tensor, k: Tensor, v: Tensor) -> str | None:
    """Why the fused kernels cannot run these inputs (None if they can)."""
    if not q.is_cuda:
        return f"the fused kernels need CUDA tensors; q is on {q.device}"
    if not triton_available():
        return "the fused kernels need triton (pip install triton)"
    if q.dtype not in FUSED_DTYPES:
        return f"the fused kernels support fp16/bf16/fp32; got {q.dtype}"
    if max(q.shape[-1], v.shape[-1]) > MAX_HEAD_DIM:
        return f"the fused kernels support head_dim <= {MAX_HEAD_DIM}"
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        return "the fused kernels are forward-only; gradients need backend='torch'"
    return None


def _row_alignment(*tensors: Tensor) -> int:
    """Elements per 16 bytes if every row of every tensor starts 16-byte aligned, else 1."""
    per_16b = 16 // tensors[0].element_size()
    for t in tensors:
        strides_ok = all(s % per_16b == 0 for s in t.stride()[:-1])
        if t.data_ptr() % 16 or not strides_ok:
            return 1
    return per_16b


def _pow2(n: int) -> int:
    return max(16, 1 << (n - 1).bit_length())


class _Problem:
    """Strided inputs [b, hq, n, d] / [b, hk, n, d], the output rows and kernel options."""

    def __init__(self, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, scale: float):
        self.q, self.k, self.v, self.out, self.lse = q, k, v, out, lse
        b, hq, self.n_query, self.dim = q.shape
        hk = k.shape[1]
        self.g, self.z, self.dv = hq // hk, b * hk, v.shape[-1]
        self.qk_scale = scale * 1.4426950408889634
        self.ieee = q.dtype == torch.float32
        self.align = _row_alignment(q, k, v)
        # 32-bit offsets halve the index traffic whenever every element offset fits
        spans = (t.untyped_storage().nbytes() // t.element_size() for t in (q, k, v, out))
        self.index_dtype = torch.int32 if max(spans) < 2**31 else torch.int64
        dev = q.device
        bi = torch.arange(b, device=dev).repeat_interleave(hk)
        hki = torch.arange(hk, device=dev).repeat(b)
        gi = torch.arange(self.g, device=dev)
        heads = hki[:, None] * self.g + gi[None, :]  # [z, g] query head index
        self.q_base = bi[:, None] * q.stride(0) + heads * q.stride(1)  # [z, g]
        self.k_base = bi * k.stride(0) + hki * k.stride(1)  # [z]
        self.v_base = bi * v.stride(0) + hki * v.stride(1)
        # output rows: [b, hq, n] row-major == [z, g, n]
        self.o_base = (torch.arange(self.z * self.g, device=dev) * self.n_query).view(self.z, -1)

    def common(self) -> dict:
        return dict(
            D=self.dim, DV=self.dv, D_PAD=_pow2(self.dim), DV_PAD=_pow2(self.dv),
            IEEE=self.ieee, ALIGN=self.align,
        )  # fmt: skip

    def tiles(self) -> tuple[int, int, int, int]:
        """(BLOCK_M, BLOCK_N, num_warps, num_stages) of the dense kernel."""
        if self.ieee or max(self.dim, self.dv) > 128:
            return 64, 32, 4, 2
        return TUNING["dense"]

    def sample_tiles(self, rows_per_block: float) -> tuple[int, int, int, int]:
        """(BLOCK_M, BLOCK_N, num_warps, num_stages) of the block-sample kernel."""
        if self.ieee or max(self.dim, self.dv) > 128:
            return 64, 32, 4, 2
        if rows_per_block < 192:
            return TUNING["block_sample_small"]
        return TUNING["block_sample_d64" if max(self.dim, self.dv) <= 64 else "block_sample_d128"]

    def dense(
        self, q_base: Tensor, o_base: Tensor, kv_index: Tensor, k_base: Tensor,
        v_base: Tensor, n_query: int, n_key: int, *, causal: bool, merge: bool,
    ) -> None:  # fmt: skip
        """Exact attention for each problem zq: rows q_base[zq] + t * stride(seq)."""
        from .triton_kernels import dense_kernel

        block_m, block_n, warps, stages = self.tiles()
        grid = (q_base.numel() * math.ceil(n_query / block_m),)
        dense_kernel[grid](
            self.q, self.k, self.v, self.out, self.lse,
            q_base, o_base, kv_index, k_base, v_base,
            n_query, n_key, self.q.stride(2), self.k.stride(2), self.v.stride(2),
            self.qk_scale,
            BLOCK_M=block_m, BLOCK_N=block_n, CAUSAL=causal, MERGE=merge,
            num_warps=warps, num_stages=stages, **self.common(),
        )  # fmt: skip

    def block_sample(
        self, q_off: Tensor, o_row: Tensor, k_pos: Tensor, k_base: Tensor, v_base: Tensor,
        plan: BlockPlan, *, merge: bool,
    ) -> None:  # fmt: skip
        """HyperAttention of one batch of problems zp.

        q_off, o_row [zp, rows]: element offset in q and output row of each query;
        k_pos [zp, nk]: key sequence position at each sorted position (plan.k_order
        already shifted); k_base, v_base [zp]: element offset of position 0.
        """
        from .triton_kernels import block_sample_kernel

        zp, n_rows = q_off.shape
        n_key = k_pos.shape[1]
        block_m, block_n, warps, stages = self.sample_tiles(n_rows / plan.n_blocks)
        pack = pack_query_tiles(plan.q_block.reshape(zp, n_rows), plan.n_blocks, block_m)
        sentinel = torch.full((zp, 1), -1, dtype=torch.int64, device=q_off.device)
        slot_q = torch.gather(torch.cat((q_off, sentinel), 1), 1, pack.slot_query)
        slot_o = torch.gather(torch.cat((o_row, sentinel), 1), 1, pack.slot_query)
        k_off = k_base[:, None] + k_pos * self.k.stride(2)
        v_off = v_base[:, None] + k_pos * self.v.stride(2)
        if plan.sample is not None:
            s_pos = torch.gather(k_pos, 1, plan.sample)
            s_koff = k_base[:, None] + s_pos * self.k.stride(2)
            s_voff = v_base[:, None] + s_pos * self.v.stride(2)
            s_block = plan.sample // plan.key_block
            n_sample = plan.sample.shape[1]
            bias = math.log2(n_key / n_sample)
        else:
            s_koff = s_voff = s_block = k_off
            n_sample, bias = 0, 0.0
        index = self.index_dtype
        slot_q, slot_o, k_off, v_off, s_koff, s_voff = (
            t.to(index) for t in (slot_q, slot_o, k_off, v_off, s_koff, s_voff)
        )
        grid = (zp * pack.n_tiles,)
        block_sample_kernel[grid](
            self.q, self.k, self.v, self.out, self.lse,
            slot_q, slot_o, pack.tile_block.to(torch.int32), k_off, v_off, s_koff, s_voff,
            s_block.to(torch.int32),
            pack.n_tiles * block_m, pack.n_tiles, n_key, plan.key_block, n_sample,
            self.qk_scale, bias,
            BLOCK_M=block_m, BLOCK_N=block_n, HAS_SAMPLE=plan.sample is not None,
            MERGE=merge, num_warps=warps, num_stages=stages,
            **self.common(),
        )  # fmt: skip

    # -- whole problems ------------------------------------------------------------

    def exact(self, k_start: int, n_key: int, *, causal: bool, merge: bool) -> None:
        """All queries against keys [k_start, k_start + n_key) of their head."""
        z, g = self.z, self.g
        kv_index = torch.arange(z, device=self.q.device).repeat_interleave(g)
        self.dense(
            self.q_base.reshape(-1), self.o_base.reshape(-1), kv_index,
            self.k_base + k_start * self.k.stride(2), self.v_base + k_start * self.v.stride(2),
            self.n_query, n_key, causal=causal, merge=merge,
        )  # fmt: skip

    def hyper(
        self, q_rank: Tensor, k_rank: Tensor, k_start: int, config, rng, *, merge: bool
    ) -> None:
        """Non-causal HyperAttention of all queries against keys [k_start, k_start + nk)."""
        plan = plan_blocks(q_rank, k_rank, config, rng)
        t = torch.arange(self.n_query, device=self.q.device)
        q_off = (self.q_base[:, :, None] + t * self.q.stride(2)).reshape(self.z, -1)
        o_row = (self.o_base[:, :, None] + t).reshape(self.z, -1)
        self.block_sample(
            q_off, o_row, plan.k_order + k_start,
            self.k_base, self.v_base, plan, merge=merge,
        )  # fmt: skip

    def causal_square(self, q_rank: Tensor, k_rank: Tensor, config, rng) -> None:
        """Causal HyperAttention when q, k, v have the same (padded) length N."""
        n = self.n_query
        _, base, levels = causal_levels(n, config.min_seq_len)
        blocks = n // base
        z, g, dev = self.z, self.g, self.q.device
        # diagonal blocks, problems ordered (z, g, block)
        blk = torch.arange(blocks, device=dev)
        q_base = (self.q_base[:, :, None] + blk * base * self.q.stride(2)).reshape(-1)
        o_base = (self.o_base[:, :, None] + blk * base).reshape(-1)
        kv_index = (torch.arange(z, device=dev)[:, None, None] * blocks + blk).expand(z, g, -1)
        k_base = (self.k_base[:, None] + blk * base * self.k.stride(2)).reshape(-1)
        v_base = (self.v_base[:, None] + blk * base * self.v.stride(2)).reshape(-1)
        self.dense(
            q_base, o_base, kv_index.reshape(-1), k_base, v_base, base, base,
            causal=True, merge=False,
        )  # fmt: skip

        for level in levels:
            size, pairs = level.size, level.pairs
            q_rank_l, k_rank_l = level_ranks(q_rank, k_rank, level)
            plan = plan_blocks(q_rank_l, k_rank_l, config, rng)
            pair = torch.arange(pairs, device=dev)
            t = torch.arange(size, device=dev)
            # query (z, pair, g, t) sits at sequence position (2 pair + 1) size + t
            q_pos = (2 * pair + 1)[:, None, None] * size + t  # [pairs, 1, size]
            q_off = self.q_base[:, None, :, None] + q_pos * self.q.stride(2)
            o_row = self.o_base[:, None, :, None] + q_pos
            k_first = (2 * pair * size)[None, :]  # first key position of each pair
            zp_k_base = (self.k_base[:, None] + k_first * self.k.stride(2)).reshape(-1)
            zp_v_base = (self.v_base[:, None] + k_first * self.v.stride(2)).reshape(-1)
            self.block_sample(
                q_off.reshape(z * pairs, g * size), o_row.reshape(z * pairs, g * size),
                plan.k_order, zp_k_base, zp_v_base, plan, merge=True,
            )  # fmt: skip


def _pad_seq(x: Tensor, rows: int) -> Tensor:
    return torch.nn.functional.pad(x, (0, 0, 0, rows))


def fused_hyper_attention_with_lse(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool,
    scale: float,
    config: HyperAttentionConfig,
    rng: _Randomness,
    hash_dims: int | None = None,
) -> tuple[Tensor, Tensor]:
    """HyperAttention forward with Triton kernels; inputs already validated.

    Same draws in the same order as the torch path (hyperplanes once, then one sample
    per level, then the prefix's), so both give the same result up to rounding.
    """
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    b, hq, n_query, dim = q.shape
    hk, n_key, dv = k.shape[1], k.shape[2], v.shape[-1]
    g = hq // hk
    out = torch.empty(b, hq, n_query, dv, dtype=q.dtype, device=q.device)
    lse = torch.empty(b, hq, n_query, dtype=torch.float32, device=q.device)
    problem = _Problem(q, k, v, out, lse, scale)
    q_rank = k_rank = None
    if n_query > config.min_seq_len:
        hd = dim if hash_dims is None else hash_dims
        planes = rng.hyperplanes(hd, config.lsh_num_projs)
        q_rank = angular_lsh_rank(q[..., :hd], planes).reshape(b * hk, g, n_query)
        k_rank = angular_lsh_rank(k[..., :hd], planes).reshape(b * hk, n_key)

    if not causal:
        if min(n_query, n_key) <= config.min_seq_len:
            problem.exact(0, n_key, causal=False, merge=False)
        else:
            problem.hyper(q_rank, k_rank, 0, config, rng, merge=False)
        return out, lse

    if n_query <= config.min_seq_len:  # short: exact, cached prefix included
        problem.exact(0, n_key, causal=True, merge=False)
        return out, lse

    offset = n_key - n_query
    padded_n, _, _ = causal_levels(n_query, config.min_seq_len)
    pad = padded_n - n_query
    q_sq, k_sq, v_sq = q, k[:, :, offset:], v[:, :, offset:]
    square_out, square_lse = out, lse
    q_rank_sq, k_rank_sq = q_rank, k_rank[:, offset:]
    if pad:
        # Zero rows at the end, seen only by discarded padded queries; they hash to 0.
        q_sq, k_sq, v_sq = (_pad_seq(t, pad) for t in (q_sq, k_sq, v_sq))
        square_out = out.new_empty(b, hq, padded_n, dv)
        square_lse = lse.new_empty(b, hq, padded_n)
        q_rank_sq = torch.nn.functional.pad(q_rank_sq, (0, pad))
        k_rank_sq = torch.nn.functional.pad(k_rank_sq, (0, pad))
    square = _Problem(q_sq, k_sq, v_sq, square_out, square_lse, scale)
    square.causal_square(q_rank_sq, k_rank_sq.contiguous(), config, rng)
    if pad:
        out.copy_(square_out[:, :, :n_query])
        lse.copy_(square_lse[:, :, :n_query])
        del square_out, square_lse
    if offset:  # the cached prefix is visible to every query
        if min(n_query, offset) <= config.min_seq_len:
            problem.exact(0, offset, causal=False, merge=True)
        else:
            problem.hyper(q_rank, k_rank[:, :offset].contiguous(), 0, config, rng, merge=True)
    return out, lse


__all__ = ["fused_hyper_attention_with_lse", "fused_unsupported_reason", "triton_available"]
