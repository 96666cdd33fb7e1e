"""Triton kernels of the fused HyperAttention forward (CUDA only; imported lazily).

Both kernels address rows through element offsets, so they read strided views (GQA
groups, recursion halves, transposed model layouts) without copying, and write into
a row-major output `[rows, dv]` with its float32 natural-log LSE `[rows]`. With MERGE
they fold their result into what those rows already hold (an in-place LSE merge), so
the causal recursion never materialises per-level partial outputs.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import LN2, band_cut, key_tile, masked_load, slot_rows


@triton.jit
def tile_scores(q, k, IEEE: tl.constexpr):
    if IEEE:  # noqa: SIM108 (constexpr branch)
        s = tl.dot(q, k, input_precision="ieee")
    else:
        s = tl.dot(q, k)
    return s


@triton.jit
def online_step(s, v, m_i, l_i, acc, IEEE: tl.constexpr):
    """Fold a tile of scores s (log2 units, -inf = excluded) into (m_i, l_i, acc)."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.math.exp2(m_i - m_safe)
    p = tl.math.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    if IEEE:  # noqa: SIM108 (constexpr branch)
        pv = tl.dot(p, v.to(tl.float32), input_precision="ieee")
    else:
        pv = tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc * alpha[:, None] + pv


@triton.jit
def _update(q, k, v, keep, m_i, l_i, acc, qk_scale, IEEE: tl.constexpr):
    """One online-softmax step over a key tile; keep [BLOCK_M, BLOCK_N] masks scores."""
    s = tl.where(keep, tile_scores(q, k, IEEE) * qk_scale, float("-inf"))
    return online_step(s, v, m_i, l_i, acc, IEEE)


@triton.jit
def _update_biased(q, k, v, bias, m_i, l_i, acc, qk_scale, IEEE: tl.constexpr):
    """`_update` with a per-key bias [BLOCK_N] in log2 units (-inf excludes a key)."""
    s = tile_scores(q, k, IEEE) * qk_scale + bias[None, :]
    return online_step(s, v, m_i, l_i, acc, IEEE)


@triton.jit
def _update_cut(q, k, v, bias, key, cut, m_i, l_i, acc, qk_scale, IEEE: tl.constexpr):
    """`_update_biased` that also excludes, per row, the keys at or past its cut [BLOCK_M]
    (the band corner, attended exactly elsewhere)."""
    s = tile_scores(q, k, IEEE) * qk_scale + bias[None, :]
    s = tl.where(key[None, :] >= cut[:, None], float("-inf"), s)
    return online_step(s, v, m_i, l_i, acc, IEEE)


@triton.jit
def finish_rows(
    Out, LSE, o_row, row_ok, offs_dv, m_i, l_i, acc,
    DV: tl.constexpr, FULL_DV: tl.constexpr, MERGE: tl.constexpr, STORE_LSE: tl.constexpr,
):  # fmt: skip
    """Normalise, optionally merge with the rows' current (out, lse), and store (the
    lse only with STORE_LSE: a call whose caller drops it keeps no table for it)."""
    has_mass = l_i > 0
    l_safe = tl.where(has_mass, l_i, 1.0)
    out = acc / l_safe[:, None]
    lse = tl.where(has_mass, (m_i + tl.math.log2(l_safe)) * LN2, float("-inf"))
    dv_ok = offs_dv < DV
    o_ptrs = Out + o_row[:, None] * DV + offs_dv[None, :]
    io_mask = row_ok[:, None] & dv_ok[None, :]
    if MERGE:
        lse_old = tl.load(LSE + o_row, mask=row_ok, other=float("-inf"))
        o_old = masked_load(o_ptrs, row_ok[:, None], dv_ok[None, :], FULL_DV).to(tl.float32)
        top = tl.maximum(lse_old, lse)
        top = tl.where(top == float("-inf"), 0.0, top)
        w_old = tl.exp(lse_old - top)
        w_new = tl.exp(lse - top)
        total = w_old + w_new
        total_safe = tl.where(total > 0, total, 1.0)
        out = (o_old * w_old[:, None] + out * w_new[:, None]) / total_safe[:, None]
        lse = tl.where(total > 0, top + tl.log(total_safe), float("-inf"))
    if FULL_DV:
        tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None])
    else:
        tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=io_mask)
    if STORE_LSE:
        tl.store(LSE + o_row, lse, mask=row_ok)


@triton.jit
def block_sample_kernel(
    Q, K, V, Out, LSE,
    slot_query_ptr, tile_block_ptr, q_base_ptr, o_base_ptr, key_list_ptr, k_base_ptr,
    v_base_ptr, sample_block_ptr, sink_keys_ptr,
    n_slots, n_tiles, n_rows, rows_per_head, heads, n_key, key_block, n_blocks, block_pad,
    sample_pad, list_stride, q_stride, k_stride, v_stride, qk_scale, sample_bias,
    D: tl.constexpr, DV: tl.constexpr, D_PAD: tl.constexpr, DV_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_SAMPLE: tl.constexpr, MERGE: tl.constexpr, IEEE: tl.constexpr, ALIGN: tl.constexpr,
    STORE_LSE: tl.constexpr = True, HAS_SINKS: tl.constexpr = False,
    HAS_BAND: tl.constexpr = False, band=0, SINK_N: tl.constexpr = 16,
):  # fmt: skip
    """One tile of queries that share a key block of problem zp: exact over the block's
    sorted keys, then the problem's uniform sample (own-block keys excluded, logits +
    log2(n/m)). key_list [zp, list_stride]: the key index at each sorted position, each
    block's run padded to block_pad (a multiple of BLOCK_N), then the sampled keys'
    indices padded to sample_pad; sample_block [zp, sample_pad]: the sampled keys'
    blocks (-1: padding); sink_keys [zp] (HAS_SINKS): leading keys of each problem (the
    attention sinks), left out of its blocks and sample and attended exactly after them,
    in the same softmax, in tiles of SINK_N keys (a handful of sinks need no BLOCK_N
    tile); band (HAS_BAND): the problem's first `band` queries leave its
    last `band` keys out of their blocks and sample (the corner a causal cut leaves,
    attended exactly by a dense launch).

    Addresses are formed here from the plan itself (query row -> head and position,
    sorted position -> key index), so no per-level offset arrays are built in memory:
    query row r of zp is head r // rows_per_head at position r % rows_per_head, at
    element q_base[zp, head] + position * q_stride; key index j at k_base[zp] + j * k_stride.
    The base arrays' integer type (int32 when every offset fits) sets the index maths.
    """
    pid = tl.program_id(0)
    zp = (pid // n_tiles).to(tl.int64)
    tile = pid % n_tiles
    if tl.load(slot_query_ptr + zp * n_slots + tile * BLOCK_M) >= n_rows:
        return  # tiles fill from their first slot: an empty first slot is an unused tile
    q_off, o_row, row_ok, t = slot_rows(
        slot_query_ptr, q_base_ptr, o_base_ptr, zp, tile * BLOCK_M, n_slots, n_rows,
        rows_per_head, heads, q_stride, BLOCK_M,
    )  # fmt: skip
    q_off = tl.multiple_of(q_off, ALIGN)
    cut = band_cut(t, band, n_key, HAS_BAND)
    idx_ty = k_base_ptr.dtype.element_ty
    k_base = tl.load(k_base_ptr + zp)
    v_base = tl.load(v_base_ptr + zp)
    blk = tl.load(tile_block_ptr + zp * n_tiles + tile).to(tl.int32)
    offs_d = tl.arange(0, D_PAD)
    offs_dv = tl.arange(0, DV_PAD)
    offs_n = tl.arange(0, BLOCK_N)
    d_ok = offs_d < D
    dv_ok = offs_dv < DV
    FULL_D: tl.constexpr = D == D_PAD
    FULL_DV: tl.constexpr = DV == DV_PAD
    q = masked_load(Q + q_off[:, None] + offs_d[None, :], row_ok[:, None], d_ok[None, :], FULL_D)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, DV_PAD], tl.float32)
    # One loop over the block's sorted keys, then the sample's: every key tile is BLOCK_N
    # consecutive entries of key_list, so the index loads are contiguous, the K/V loads
    # unmasked, and exclusions (padding, the sample's own-block keys) are -inf biases.
    # Two loops with masked loads were slower: each ramped its own pipeline and the
    # sample's masks chained its loads.
    keys = key_list_ptr + zp * list_stride
    own_blocks = sample_block_ptr + zp * sample_pad
    in_block = tl.minimum(key_block, n_key - blk * key_block)
    n_sink = 0
    if HAS_SINKS:
        n_sink = tl.load(sink_keys_ptr + zp)
    for start in range(0, block_pad + sample_pad, BLOCK_N):
        key, bias = key_tile(
            keys, own_blocks, start, blk, block_pad, n_blocks, in_block, sample_bias, n_sink,
            offs_n, HAS_SAMPLE,
        )  # fmt: skip
        key = key.to(idx_ty)
        k_off = tl.multiple_of(k_base + key * k_stride, ALIGN)
        v_off = tl.multiple_of(v_base + key * v_stride, ALIGN)
        k = masked_load(K + k_off[None, :] + offs_d[:, None], True, d_ok[:, None], FULL_D)
        v = masked_load(V + v_off[:, None] + offs_dv[None, :], True, dv_ok[None, :], FULL_DV)
        if HAS_BAND:
            m_i, l_i, acc = _update_cut(q, k, v, bias, key, cut, m_i, l_i, acc, qk_scale, IEEE)
        else:
            m_i, l_i, acc = _update_biased(q, k, v, bias, m_i, l_i, acc, qk_scale, IEEE)
    if HAS_SINKS:  # keys [0, n_sink): exact, for every query of the problem
        offs_s = tl.arange(0, SINK_N)
        for start in range(0, n_sink, SINK_N):
            key = start + offs_s
            bias = tl.where(key < n_sink, 0.0, float("-inf"))
            key = tl.where(key < n_sink, key, 0).to(idx_ty)
            k_off = tl.multiple_of(k_base + key * k_stride, ALIGN)
            v_off = tl.multiple_of(v_base + key * v_stride, ALIGN)
            k = masked_load(K + k_off[None, :] + offs_d[:, None], True, d_ok[:, None], FULL_D)
            v = masked_load(V + v_off[:, None] + offs_dv[None, :], True, dv_ok[None, :], FULL_DV)
            m_i, l_i, acc = _update_biased(q, k, v, bias, m_i, l_i, acc, qk_scale, IEEE)
    finish_rows(Out, LSE, o_row, row_ok, offs_dv, m_i, l_i, acc, DV, FULL_DV, MERGE, STORE_LSE)


@triton.jit
def dense_kernel(
    Q, K, V, Out, LSE,
    q_base_ptr, o_base_ptr, kv_index_ptr, k_base_ptr, v_base_ptr,
    n_query, n_key, q_stride, k_stride, v_stride,
    qk_scale,
    D: tl.constexpr, DV: tl.constexpr, D_PAD: tl.constexpr, DV_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, MERGE: tl.constexpr, IEEE: tl.constexpr, ALIGN: tl.constexpr,
    STORE_LSE: tl.constexpr = True,
):  # fmt: skip
    """Exact attention of one query tile of problem `zq` against its keys: row t at
    q_base[zq] + t * q_stride; causal keeps keys pos <= t + (n_key - n_query)."""
    pid = tl.program_id(0)
    n_row_tiles = tl.cdiv(n_query, BLOCK_M)
    zq = pid // n_row_tiles
    tile = pid % n_row_tiles
    q_base = tl.multiple_of(tl.load(q_base_ptr + zq), ALIGN)
    o_base = tl.load(o_base_ptr + zq)
    kz = tl.load(kv_index_ptr + zq)
    k_base = tl.multiple_of(tl.load(k_base_ptr + kz), ALIGN)
    v_base = tl.multiple_of(tl.load(v_base_ptr + kz), ALIGN)
    rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_query
    offs_d = tl.arange(0, D_PAD)
    offs_dv = tl.arange(0, DV_PAD)
    offs_n = tl.arange(0, BLOCK_N)
    d_ok = offs_d < D
    dv_ok = offs_dv < DV
    FULL_D: tl.constexpr = D == D_PAD
    FULL_DV: tl.constexpr = DV == DV_PAD
    rows64 = rows.to(tl.int64)
    q_ptrs = Q + q_base + rows64[:, None] * q_stride + offs_d[None, :]
    q = masked_load(q_ptrs, row_ok[:, None], d_ok[None, :], FULL_D)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, DV_PAD], tl.float32)
    shift = n_key - n_query
    if CAUSAL:
        hi = tl.minimum(n_key, (tile + 1) * BLOCK_M + shift)
        full = tl.maximum(0, tile * BLOCK_M + shift) // BLOCK_N * BLOCK_N
    else:
        hi = n_key
        full = n_key // BLOCK_N * BLOCK_N
    # key tiles before `full` need no mask; the rest get the causal/end mask
    for start in range(0, full, BLOCK_N):
        pos = (start + offs_n).to(tl.int64)
        k_ptrs = K + k_base + pos[None, :] * k_stride + offs_d[:, None]
        v_ptrs = V + v_base + pos[:, None] * v_stride + offs_dv[None, :]
        k = masked_load(k_ptrs, True, d_ok[:, None], FULL_D)
        v = masked_load(v_ptrs, True, dv_ok[None, :], FULL_DV)
        keep = offs_n[None, :] >= 0
        m_i, l_i, acc = _update(q, k, v, keep, m_i, l_i, acc, qk_scale, IEEE)
    for start in range(full, hi, BLOCK_N):
        pos = start + offs_n
        ok = pos < n_key
        keep = ok[None, :]
        if CAUSAL:
            keep = keep & (pos[None, :] <= rows[:, None] + shift)
        pos64 = pos.to(tl.int64)
        k_ptrs = K + k_base + pos64[None, :] * k_stride + offs_d[:, None]
        v_ptrs = V + v_base + pos64[:, None] * v_stride + offs_dv[None, :]
        k = masked_load(k_ptrs, ok[None, :], d_ok[:, None], FULL_D)
        v = masked_load(v_ptrs, ok[:, None], dv_ok[None, :], FULL_DV)
        m_i, l_i, acc = _update(q, k, v, keep, m_i, l_i, acc, qk_scale, IEEE)
    o_row = o_base + rows64
    finish_rows(Out, LSE, o_row, row_ok, offs_dv, m_i, l_i, acc, DV, FULL_DV, MERGE, STORE_LSE)
