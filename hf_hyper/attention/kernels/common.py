"""Triton helpers shared by the forward and backward kernels (CUDA, or Triton's CPU
interpreter; imported lazily)."""

from __future__ import annotations

import math

import triton
import triton.language as tl

from .. import numerics

# Triton kernels read module globals only as constexprs.
LOG2E = tl.constexpr(numerics.LOG2E)
LN2 = tl.constexpr(math.log(2.0))


@triton.jit
def masked_load(ptrs, row_mask, col_mask, FULL: tl.constexpr):
    """Masked load; the column mask is left out when the head dim fills its block, so the
    mask stays constant along rows and Triton can vectorise the load."""
    if FULL:
        return tl.load(ptrs, mask=row_mask, other=0.0)
    return tl.load(ptrs, mask=row_mask & col_mask, other=0.0)


@triton.jit
def slot_rows(
    slot_query_ptr, q_base_ptr, o_base_ptr, zp, slot0, n_slots, n_rows, rows_per_head,
    heads, q_stride, BLOCK_M: tl.constexpr,
):  # fmt: skip
    """(query element offsets, output rows, validity, positions) of packed slots
    slot0 + [0, BLOCK_M) of problem zp: row r is head r // rows_per_head at position
    r % rows_per_head; an empty slot holds n_rows."""
    slots = slot0 + tl.arange(0, BLOCK_M)
    row = tl.load(slot_query_ptr + zp * n_slots + slots).to(tl.int32)
    row_ok = row < n_rows
    row = tl.where(row_ok, row, 0)
    head = row // rows_per_head
    t = row - head * rows_per_head
    q_off = tl.load(q_base_ptr + zp * heads + head) + t * q_stride
    o_row = tl.load(o_base_ptr + zp * heads + head) + t
    return q_off, o_row, row_ok, t


@triton.jit
def band_cut(t, band, n_key, HAS_BAND: tl.constexpr):
    """Per query row, the first key index left to the band's exact corner: the first
    `band` queries of a problem (positions t < band) leave its last `band` keys out of
    their blocks and sample; the others keep every key (cut n_key)."""
    if HAS_BAND:
        return tl.where(t < band, n_key - band, n_key)
    return t * 0 + n_key


@triton.jit
def key_tile(
    keys, own_blocks, start, blk, block_pad, n_blocks, in_block, sample_bias, n_sink,
    offs_n, HAS_SAMPLE: tl.constexpr,
):  # fmt: skip
    """(key indices, log2 bias) of the key tile at `start` of a tile's walk over block
    `blk`'s padded run of the key list `keys`, then the sample's run after all blocks:
    -inf on padding, on sampled keys of the tile's own block (own_blocks: each sampled
    key's block, -1 on padding) and on the problem's sink keys (index < n_sink, attended
    exactly elsewhere), log2(n/m) on the other sampled keys."""
    in_sample = start >= block_pad
    first = tl.where(in_sample, n_blocks * block_pad + start - block_pad, blk * block_pad + start)
    key = tl.load(keys + first + offs_n)
    bias = tl.where(start + offs_n < in_block, 0.0, float("-inf"))
    if HAS_SAMPLE:
        own = tl.load(own_blocks + tl.maximum(start - block_pad, 0) + offs_n)
        sampled = tl.where((own != blk) & (own >= 0), sample_bias, float("-inf"))
        bias = tl.where(in_sample, sampled, bias)
    bias = tl.where(key < n_sink, float("-inf"), bias)
    return key, bias
