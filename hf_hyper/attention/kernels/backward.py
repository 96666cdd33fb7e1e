"""Triton kernels of the fused HyperAttention backward (CUDA only; imported lazily).

Every output row of HyperAttention is one softmax over a union of key sets (its
diagonal block, its LSH block and its weighted sample at each recursion level), so with
the final log-sum-exp L and D = rowsum(dO * O) each part's gradient is independent:
p = exp(s + bias - L), dS = p * (dO.v - D). The kernels replay the forward's plan with
that rule and add into float32 gradient buffers laid out like q, k, v:

- query-centric kernels (dense_dq, block_sample_dq) own their rows and add dQ;
- key-centric kernels own their keys (dense_dkdv over key tiles, block_dkdv over the
  sorted key blocks and the query tiles packed for them) and add dK, dV;
- sample_dkdv: sampled keys are seen by every tile of a problem, so it splits the tiles
  into chunks that add atomically into a float32 scratch row per sample slot, and
  sample_scatter adds each key's slots (a key drawn twice has two) into dK, dV once.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import LOG2E, band_cut, key_tile, masked_load, slot_rows


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _dq_step(q, do, k, v, keep, bias, lse2, delta, dq, qk_scale, IEEE: tl.constexpr):
    """dQ of query rows [M] from one key tile [N] (scores in log2 units, lse2 = L*log2e)."""
    s = _dot(q, tl.trans(k), IEEE)
    s = tl.where(keep, s * qk_scale + bias, float("-inf"))
    p = tl.math.exp2(s - lse2[:, None])
    dp = _dot(do, tl.trans(v), IEEE)
    ds = p * (dp - delta[:, None])
    return dq + _dot(ds.to(k.dtype), k, IEEE)


@triton.jit
def _dkdv_step(k, v, q, do, keep, bias, lse2, delta, dk, dv, qk_scale, IEEE: tl.constexpr):
    """dK, dV of key rows [N] from one query tile [M] (transposed scores, keep [N, M])."""
    st = _dot(k, tl.trans(q), IEEE)
    st = tl.where(keep, st * qk_scale + bias, float("-inf"))
    pt = tl.math.exp2(st - lse2[None, :])
    dv += _dot(pt.to(do.dtype), do, IEEE)
    dpt = _dot(v, tl.trans(do), IEEE)
    dst = pt * (dpt - delta[None, :])
    dk += _dot(dst.to(q.dtype), q, IEEE)
    return dk, dv


@triton.jit
def _rows(X, off, ok, DIM: tl.constexpr, DIM_PAD: tl.constexpr):
    """Rows X[off + 0 .. DIM) as [len(off), DIM_PAD] (rows not ok and pad columns: 0)."""
    cols = tl.arange(0, DIM_PAD)
    return masked_load(X + off[:, None] + cols[None, :], ok[:, None], (cols < DIM)[None, :],
                 DIM == DIM_PAD)  # fmt: skip


@triton.jit
def _add_rows(X, off, ok, value, DIM: tl.constexpr, DIM_PAD: tl.constexpr):
    """Read-modify-write of rows this program owns: the sum in float32, stored in X's dtype."""
    cols = tl.arange(0, DIM_PAD)
    ptrs = X + off[:, None] + cols[None, :]
    mask = ok[:, None] & (cols < DIM)[None, :]
    total = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32) + value
    tl.store(ptrs, total.to(X.dtype.element_ty), mask=mask)


@triton.jit
def _atomic_add_rows(X, off, ok, value, DIM: tl.constexpr, DIM_PAD: tl.constexpr):
    """Add to float32 rows that other programs also add to."""
    cols = tl.arange(0, DIM_PAD)
    mask = ok[:, None] & (cols < DIM)[None, :]
    tl.atomic_add(X + off[:, None] + cols[None, :], value, mask=mask, sem="relaxed")


@triton.jit
def _query_rows(
    Q, DO, LSE, Delta, q_off, o_row, row_ok,
    D: tl.constexpr, DV: tl.constexpr, D_PAD: tl.constexpr, DV_PAD: tl.constexpr,
):  # fmt: skip
    """q and dO rows, L in log2 units (+inf on empty rows: p = 0 there) and D."""
    q = _rows(Q, q_off, row_ok, D, D_PAD)
    do = _rows(DO, o_row * DV, row_ok, DV, DV_PAD)
    lse2 = tl.load(LSE + o_row, mask=row_ok, other=float("inf")) * LOG2E
    delta = tl.load(Delta + o_row, mask=row_ok, other=0.0)
    return q, do, lse2, delta


@triton.jit
def dense_dq_kernel(
    Q, K, V, DO, LSE, Delta, DQ,
    q_base_ptr, o_base_ptr, kv_index_ptr, k_base_ptr, v_base_ptr,
    n_query, n_key, q_stride, k_stride, v_stride, qk_scale, scale,
    D: tl.constexpr, DV: tl.constexpr, D_PAD: tl.constexpr, DV_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, IEEE: tl.constexpr, ALIGN: tl.constexpr,
):  # fmt: skip
    """dQ of one query tile of problem zq against all its keys (`dense_kernel`'s rows)."""
    pid = tl.program_id(0)
    n_row_tiles = tl.cdiv(n_query, BLOCK_M)
    zq = pid // n_row_tiles
    tile = pid % n_row_tiles
    kz = tl.load(kv_index_ptr + zq)
    k_base = tl.multiple_of(tl.load(k_base_ptr + kz), ALIGN)
    v_base = tl.multiple_of(tl.load(v_base_ptr + kz), ALIGN)
    rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_query
    rows64 = rows.to(tl.int64)
    q_off = tl.multiple_of(tl.load(q_base_ptr + zq), ALIGN) + rows64 * q_stride
    o_row = tl.load(o_base_ptr + zq) + rows64
    q, do, lse2, delta = _query_rows(Q, DO, LSE, Delta, q_off, o_row, row_ok, D, DV, D_PAD, DV_PAD)
    dq = tl.zeros([BLOCK_M, D_PAD], tl.float32)
    shift = n_key - n_query
    hi = n_key
    if CAUSAL:
        hi = tl.minimum(n_key, (tile + 1) * BLOCK_M + shift)
    for start in range(0, hi, BLOCK_N):
        pos = start + tl.arange(0, BLOCK_N)
        ok = pos < n_key
        keep = ok[None, :] & row_ok[:, None]
        if CAUSAL:
            keep = keep & (pos[None, :] <= rows[:, None] + shift)
        pos64 = pos.to(tl.int64)
        k = _rows(K, k_base + pos64 * k_stride, ok, D, D_PAD)
        v = _rows(V, v_base + pos64 * v_stride, ok, DV, DV_PAD)
        dq = _dq_step(q, do, k, v, keep, 0.0, lse2, delta, dq, qk_scale, IEEE)
    _add_rows(DQ, q_off, row_ok, dq * scale, D, D_PAD)


@triton.jit
def dense_dkdv_kernel(
    Q, K, V, DO, LSE, Delta, DK, DV_,
    q_base_ptr, o_base_ptr, q_problems_ptr, k_base_ptr, v_base_ptr,
    n_query, n_key, q_stride, k_stride, v_stride, qk_scale, scale, G,
    D: tl.constexpr, DV: tl.constexpr, D_PAD: tl.constexpr, DV_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, IEEE: tl.constexpr, ALIGN: tl.constexpr,
):  # fmt: skip
    """dK, dV of one key tile of key problem kz from the G query problems that read it
    (q_problems [nkz, G]); causal skips query tiles wholly before the key tile."""
    pid = tl.program_id(0)
    n_key_tiles = tl.cdiv(n_key, BLOCK_N)
    kz = pid // n_key_tiles
    ktile = pid % n_key_tiles
    keys = ktile * BLOCK_N + tl.arange(0, BLOCK_N)
    key_ok = keys < n_key
    keys64 = keys.to(tl.int64)
    k_off = tl.multiple_of(tl.load(k_base_ptr + kz), ALIGN) + keys64 * k_stride
    v_off = tl.multiple_of(tl.load(v_base_ptr + kz), ALIGN) + keys64 * v_stride
    k = _rows(K, k_off, key_ok, D, D_PAD)
    v = _rows(V, v_off, key_ok, DV, DV_PAD)
    dk = tl.zeros([BLOCK_N, D_PAD], tl.float32)
    dv = tl.zeros([BLOCK_N, DV_PAD], tl.float32)
    shift = n_key - n_query
    lo = 0
    if CAUSAL:
        lo = tl.maximum(0, ktile * BLOCK_N - shift) // BLOCK_M * BLOCK_M
    for j in range(G):
        zq = tl.load(q_problems_ptr + kz * G + j)
        q_base = tl.multiple_of(tl.load(q_base_ptr + zq), ALIGN)
        o_base = tl.load(o_base_ptr + zq)
        for start in range(lo, n_query, BLOCK_M):
            rows = start + tl.arange(0, BLOCK_M)
            row_ok = rows < n_query
            rows64 = rows.to(tl.int64)
            q, do, lse2, delta = _query_rows(
                Q, DO, LSE, Delta, q_base + rows64 * q_stride, o_base + rows64, row_ok,
                D, DV, D_PAD, DV_PAD,
            )  # fmt: skip
            keep = key_ok[:, None] & row_ok[None, :]
            if CAUSAL:
                keep = keep & (keys[:, None] <= rows[None, :] + shift)
            dk, dv = _dkdv_step(k, v, q, do, keep, 0.0, lse2, delta, dk, dv, qk_scale, IEEE)
    _add_rows(DK, k_off, key_ok, dk * scale, D, D_PAD)
    _add_rows(DV_, v_off, key_ok, dv, DV, DV_PAD)


@triton.jit
def _slot_query_rows(
    Q, DO, LSE, Delta, slot_query_ptr, q_base_ptr, o_base_ptr, zp, slot0, n_slots,
    n_rows, rows_per_head, heads, q_stride,
    D: tl.constexpr, DV: tl.constexpr, D_PAD: tl.constexpr, DV_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, ALIGN: tl.constexpr,
):  # fmt: skip
    """`_query_rows` of packed slots slot0 + [0, BLOCK_M), with their q offsets and
    positions."""
    q_off, o_row, row_ok, t = slot_rows(
        slot_query_ptr, q_base_ptr, o_base_ptr, zp, slot0, n_slots, n_rows, rows_per_head,
        heads, q_stride, BLOCK_M,
    )  # fmt: skip
    q_off = tl.multiple_of(q_off, ALIGN)
    q, do, lse2, delta = _query_rows(Q, DO, LSE, Delta, q_off, o_row, row_ok, D, DV, D_PAD, DV_PAD)
    return q, do, lse2, delta, q_off, row_ok, t


@triton.jit
def block_sample_dq_kernel(
    Q, K, V, DO, LSE, Delta, DQ,
    slot_query_ptr, tile_block_ptr, q_base_ptr, o_base_ptr, key_list_ptr, k_base_ptr,
    v_base_ptr, sample_block_ptr, sink_keys_ptr,
    n_slots, n_tiles, n_rows, rows_per_head, heads, n_key, key_block, n_blocks, block_pad,
    sample_pad, list_stride, q_stride, k_stride, v_stride, qk_scale, scale, sample_bias,
    D: tl.constexpr, DV: tl.constexpr, D_PAD: tl.constexpr, DV_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_SAMPLE: tl.constexpr, IEEE: tl.constexpr, ALIGN: tl.constexpr,
    HAS_SINKS: tl.constexpr = False, HAS_BAND: tl.constexpr = False, band=0,
):  # fmt: skip
    """dQ of one packed query tile: its key block, then the problem's sample, walked as
    `block_sample_kernel` walks them (the forward's key list and -inf biases, one loop:
    the block's and the sample's loads share one pipeline, no masked K/V loads)."""
    pid = tl.program_id(0)
    zp = (pid // n_tiles).to(tl.int64)
    tile = pid % n_tiles
    if tl.load(slot_query_ptr + zp * n_slots + tile * BLOCK_M) >= n_rows:
        return
    q, do, lse2, delta, q_off, row_ok, t = _slot_query_rows(
        Q, DO, LSE, Delta, slot_query_ptr, q_base_ptr, o_base_ptr, zp, tile * BLOCK_M,
        n_slots, n_rows, rows_per_head, heads, q_stride, D, DV, D_PAD, DV_PAD, BLOCK_M,
        ALIGN,
    )  # fmt: skip
    cut = band_cut(t, band, n_key, HAS_BAND)
    idx_ty = k_base_ptr.dtype.element_ty
    k_base = tl.load(k_base_ptr + zp)
    v_base = tl.load(v_base_ptr + zp)
    blk = tl.load(tile_block_ptr + zp * n_tiles + tile).to(tl.int32)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    offs_dv = tl.arange(0, DV_PAD)
    d_ok = offs_d < D
    dv_ok = offs_dv < DV
    FULL_D: tl.constexpr = D == D_PAD
    FULL_DV: tl.constexpr = DV == DV_PAD
    dq = tl.zeros([BLOCK_M, D_PAD], tl.float32)
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
        k = masked_load(K + k_off[:, None] + offs_d[None, :], True, d_ok[None, :], FULL_D)
        v = masked_load(V + v_off[:, None] + offs_dv[None, :], True, dv_ok[None, :], FULL_DV)
        keep = row_ok[:, None]
        if HAS_BAND:  # the band corner took no part in this softmax
            keep = keep & (key[None, :] < cut[:, None])
        dq = _dq_step(q, do, k, v, keep, bias[None, :], lse2, delta, dq, qk_scale, IEEE)
    _add_rows(DQ, q_off, row_ok, dq * scale, D, D_PAD)


@triton.jit
def block_dkdv_kernel(
    Q, K, V, DO, LSE, Delta, DK, DV_,
    slot_query_ptr, block_tile_ptr, block_tiles_ptr, q_base_ptr, o_base_ptr, k_order_ptr,
    k_base_ptr, v_base_ptr, sink_keys_ptr,
    n_slots, n_blocks, n_rows, rows_per_head, heads, n_key, order_stride, key_block, sub_tiles,
    q_stride, k_stride, v_stride, qk_scale, scale,
    D: tl.constexpr, DV: tl.constexpr, D_PAD: tl.constexpr, DV_PAD: tl.constexpr,
    TILE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    IEEE: tl.constexpr, ALIGN: tl.constexpr, HAS_SINKS: tl.constexpr = False,
    HAS_BAND: tl.constexpr = False, band=0,
):  # fmt: skip
    """dK, dV of BLOCK_N sorted keys of one key block from the query tiles packed for that
    block (block_tile [zp, n_blocks]: first tile, block_tiles: how many), read BLOCK_M
    slots at a time; slots past a tile's last row are skipped."""
    pid = tl.program_id(0)
    per_problem = n_blocks * sub_tiles
    zp = (pid // per_problem).to(tl.int64)
    blk = (pid % per_problem) // sub_tiles
    sub = pid % sub_tiles
    count = tl.load(block_tiles_ptr + zp * n_blocks + blk)
    lo = blk * key_block + sub * BLOCK_N
    hi = tl.minimum(blk * key_block + key_block, n_key)
    if count == 0 or lo >= hi:
        return
    first = tl.load(block_tile_ptr + zp * n_blocks + blk)
    pos = lo + tl.arange(0, BLOCK_N)
    key_ok = pos < hi
    idx_ty = k_base_ptr.dtype.element_ty
    key = tl.load(k_order_ptr + zp * order_stride + pos, mask=key_ok, other=0).to(idx_ty)
    k_off = tl.multiple_of(tl.load(k_base_ptr + zp) + key * k_stride, ALIGN)
    v_off = tl.multiple_of(tl.load(v_base_ptr + zp) + key * v_stride, ALIGN)
    k = _rows(K, k_off, key_ok, D, D_PAD)
    v = _rows(V, v_off, key_ok, DV, DV_PAD)
    dk = tl.zeros([BLOCK_N, D_PAD], tl.float32)
    dv = tl.zeros([BLOCK_N, DV_PAD], tl.float32)
    in_softmax = key_ok  # sink keys took no part in this block's softmax
    if HAS_SINKS:
        in_softmax = in_softmax & (key >= tl.load(sink_keys_ptr + zp))
    # the block's tiles are consecutive, so their slots are one run
    for slot0 in range(first * TILE, (first + count) * TILE, BLOCK_M):
        if tl.load(slot_query_ptr + zp * n_slots + slot0) < n_rows:
            q, do, lse2, delta, _, row_ok, t = _slot_query_rows(
                Q, DO, LSE, Delta, slot_query_ptr, q_base_ptr, o_base_ptr, zp, slot0,
                n_slots, n_rows, rows_per_head, heads, q_stride, D, DV, D_PAD, DV_PAD,
                BLOCK_M, ALIGN,
            )  # fmt: skip
            keep = in_softmax[:, None] & row_ok[None, :]
            if HAS_BAND:
                keep = keep & (key[:, None] < band_cut(t, band, n_key, HAS_BAND)[None, :])
            dk, dv = _dkdv_step(k, v, q, do, keep, 0.0, lse2, delta, dk, dv, qk_scale, IEEE)
    _add_rows(DK, k_off, key_ok, dk * scale, D, D_PAD)
    _add_rows(DV_, v_off, key_ok, dv, DV, DV_PAD)


@triton.jit
def sample_dkdv_kernel(
    Q, K, V, DO, LSE, Delta, SK, SV,
    slot_query_ptr, tile_block_ptr, used_tiles_ptr, q_base_ptr, o_base_ptr, k_base_ptr,
    v_base_ptr, sample_ptr, sample_key_ptr, sink_keys_ptr,
    zp0, n_slots, n_tiles, n_rows, rows_per_head, heads, key_block, n_sample, sub_tiles,
    chunk_tiles, n_chunks,
    q_stride, k_stride, v_stride, qk_scale, scale, sample_bias,
    D: tl.constexpr, DV: tl.constexpr, D_PAD: tl.constexpr, DV_PAD: tl.constexpr,
    TILE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    IEEE: tl.constexpr, ALIGN: tl.constexpr, HAS_SINKS: tl.constexpr = False,
    HAS_BAND: tl.constexpr = False, band=0, n_key=0,
):  # fmt: skip
    """dK, dV of BLOCK_N sample slots of problem zp0 + i from one chunk of its query tiles
    (read BLOCK_M slots at a time), added atomically into the float32 scratch rows of
    those slots (SK [zp, n_sample, D], SV [.., DV], problems counted from zp0), which
    every chunk adds to."""
    pid = tl.program_id(0)
    per_problem = sub_tiles * n_chunks
    zs = (pid // per_problem).to(tl.int64)  # problem within this launch's scratch
    zp = zp0 + zs
    sub = (pid % per_problem) // n_chunks
    chunk = pid % n_chunks
    t0 = chunk * chunk_tiles
    t1 = tl.minimum(t0 + chunk_tiles, tl.load(used_tiles_ptr + zp))
    if t0 >= t1:
        return
    idx = sub * BLOCK_N + tl.arange(0, BLOCK_N)
    s_ok = idx < n_sample
    spot_blk = tl.load(sample_ptr + zp * n_sample + idx, mask=s_ok, other=0).to(tl.int32)
    spot_blk = spot_blk // key_block
    idx_ty = k_base_ptr.dtype.element_ty
    key = tl.load(sample_key_ptr + zp * n_sample + idx, mask=s_ok, other=0).to(idx_ty)
    k_off = tl.multiple_of(tl.load(k_base_ptr + zp) + key * k_stride, ALIGN)
    v_off = tl.multiple_of(tl.load(v_base_ptr + zp) + key * v_stride, ALIGN)
    k = _rows(K, k_off, s_ok, D, D_PAD)
    v = _rows(V, v_off, s_ok, DV, DV_PAD)
    dk = tl.zeros([BLOCK_N, D_PAD], tl.float32)
    dv = tl.zeros([BLOCK_N, DV_PAD], tl.float32)
    in_softmax = s_ok  # sampled sink keys were left out of the sample's softmax
    if HAS_SINKS:
        in_softmax = in_softmax & (key >= tl.load(sink_keys_ptr + zp))
    for slot0 in range(t0 * TILE, t1 * TILE, BLOCK_M):
        if tl.load(slot_query_ptr + zp * n_slots + slot0) < n_rows:
            q, do, lse2, delta, _, row_ok, t = _slot_query_rows(
                Q, DO, LSE, Delta, slot_query_ptr, q_base_ptr, o_base_ptr, zp, slot0,
                n_slots, n_rows, rows_per_head, heads, q_stride, D, DV, D_PAD, DV_PAD,
                BLOCK_M, ALIGN,
            )  # fmt: skip
            blk = tl.load(tile_block_ptr + zp * n_tiles + slot0 // TILE).to(tl.int32)
            keep = (in_softmax & (spot_blk != blk))[:, None] & row_ok[None, :]
            if HAS_BAND:
                keep = keep & (key[:, None] < band_cut(t, band, n_key, HAS_BAND)[None, :])
            dk, dv = _dkdv_step(k, v, q, do, keep, sample_bias, lse2, delta, dk, dv, qk_scale, IEEE)
    slot = zs * n_sample + idx
    _atomic_add_rows(SK, slot * D, s_ok, dk * scale, D, D_PAD)
    _atomic_add_rows(SV, slot * DV, s_ok, dv, DV, DV_PAD)


@triton.jit
def sample_scatter_kernel(
    DK, DV_, SK, SV, k_base_ptr, v_base_ptr, sample_key_ptr,
    zp0, n_sample, k_stride, v_stride,
    D: tl.constexpr, DV: tl.constexpr, D_PAD: tl.constexpr, DV_PAD: tl.constexpr,
    SLOTS: tl.constexpr,
):  # fmt: skip
    """Add the scratch rows of sample slot i of problem zp0 + zs into its key's dK, dV
    rows: the first slot holding a key sums all slots holding it (SLOTS at a time) and
    does one read-modify-write; later slots of that key do nothing. No atomics, so
    the order of the sum, and every result bit, is fixed."""
    zs = tl.program_id(1).to(tl.int64)
    zp = zp0 + zs
    i = tl.program_id(0)
    idx_ty = k_base_ptr.dtype.element_ty
    keys = sample_key_ptr + zp * n_sample
    key = tl.load(keys + i).to(idx_ty)
    cols_k = tl.arange(0, D_PAD)
    cols_v = tl.arange(0, DV_PAD)
    dk = tl.zeros([D_PAD], tl.float32)
    dv = tl.zeros([DV_PAD], tl.float32)
    earlier = 0
    for start in range(0, n_sample, SLOTS):
        j = start + tl.arange(0, SLOTS)
        same = (j < n_sample) & (tl.load(keys + j, mask=j < n_sample, other=-1) == key)
        earlier += tl.sum((same & (j < i)).to(tl.int32), 0)
        rows = zs * n_sample + j
        sk = tl.load(SK + rows[:, None] * D + cols_k[None, :],
                     mask=same[:, None] & (cols_k < D)[None, :], other=0.0)  # fmt: skip
        sv = tl.load(SV + rows[:, None] * DV + cols_v[None, :],
                     mask=same[:, None] & (cols_v < DV)[None, :], other=0.0)  # fmt: skip
        dk += tl.sum(sk, 0)
        dv += tl.sum(sv, 0)
    if earlier == 0:
        k_ptrs = DK + tl.load(k_base_ptr + zp) + key * k_stride + cols_k
        v_ptrs = DV_ + tl.load(v_base_ptr + zp) + key * v_stride + cols_v
        dk += tl.load(k_ptrs, mask=cols_k < D, other=0.0).to(tl.float32)
        dv += tl.load(v_ptrs, mask=cols_v < DV, other=0.0).to(tl.float32)
        tl.store(k_ptrs, dk.to(DK.dtype.element_ty), mask=cols_k < D)
        tl.store(v_ptrs, dv.to(DV_.dtype.element_ty), mask=cols_v < DV)


@triton.jit
def row_delta_kernel(DO, Out, Delta, n_rows, DV: tl.constexpr, DV_PAD: tl.constexpr,
                     BLOCK: tl.constexpr):  # fmt: skip
    """D = rowsum(dO * O) in float32 over row-major [n_rows, DV] tensors."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    offs = tl.arange(0, DV_PAD)
    mask = (rows < n_rows)[:, None] & (offs < DV)[None, :]
    ptrs = rows[:, None] * DV + offs[None, :]
    do = tl.load(DO + ptrs, mask=mask, other=0.0).to(tl.float32)
    out = tl.load(Out + ptrs, mask=mask, other=0.0).to(tl.float32)
    tl.store(Delta + rows, tl.sum(do * out, 1), mask=rows < n_rows)


__all__ = [
    "block_dkdv_kernel",
    "block_sample_dq_kernel",
    "dense_dkdv_kernel",
    "dense_dq_kernel",
    "row_delta_kernel",
    "sample_dkdv_kernel",
    "sample_scatter_kernel",
]
