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

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _load(ptrs, row_mask, col_mask, FULL: tl.constexpr):
    """Masked load; the column mask is left out when the head dim fills its block, so the
    mask stays constant along rows and Triton can vectorise the load."""
    if FULL:
        return tl.load(ptrs, mask=row_mask, other=0.0)
    return tl.load(ptrs, mask=row_mask & col_mask, other=0.0)


@triton.jit
def _scores(q, k, IEEE: tl.constexpr):
    if IEEE:  # noqa: SIM108 (constexpr branch)
        s = tl.dot(q, k, input_precision="ieee")
    else:
        s = tl.dot(q, k)
    return s


@triton.jit
def _online_step(s, v, m_i, l_i, acc, IEEE: tl.constexpr):
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
    s = tl.where(keep, _scores(q, k, IEEE) * qk_scale, float("-inf"))
    return _online_step(s, v, m_i, l_i, acc, IEEE)


@triton.jit
def _update_biased(q, k, v, bias, m_i, l_i, acc, qk_scale, IEEE: tl.constexpr):
    """`_update` with a per-key bias [BLOCK_N] in log2 units (-inf excludes a key)."""
    s = _scores(q, k, IEEE) * qk_scale + bias[None, :]
    return _online_step(s, v, m_i, l_i, acc, IEEE)


@triton.jit
def _finish(
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
        o_old = _load(o_ptrs, row_ok[:, None], dv_ok[None, :], FULL_DV).to(tl.float32)
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
def slot_rows(
    slot_query_ptr, q_base_ptr, o_base_ptr, zp, slot0, n_slots, n_rows, rows_per_head,
    heads, q_stride, BLOCK_M: tl.constexpr,
):  # fmt: skip
    """Query element offsets, output rows and validity of packed slots slot0 + [0,
    BLOCK_M) of problem zp: row r is head r // rows_per_head at position
    r % rows_per_head; an empty slot holds n_rows."""
    slots = slot0 + tl.arange(0, BLOCK_M)
    row = tl.load(slot_query_ptr + zp * n_slots + slots).to(tl.int32)
    row_ok = row < n_rows
    row = tl.where(row_ok, row, 0)
    head = row // rows_per_head
    t = row - head * rows_per_head
    q_off = tl.load(q_base_ptr + zp * heads + head) + t * q_stride
    o_row = tl.load(o_base_ptr + zp * heads + head) + t
    return q_off, o_row, row_ok


@triton.jit
def key_tile(
    keys, own_blocks, start, blk, block_pad, n_blocks, in_block, sample_bias, offs_n,
    HAS_SAMPLE: tl.constexpr,
):  # fmt: skip
    """(key indices, log2 bias) of the key tile at `start` of a tile's walk over block
    `blk`'s padded run of the key list `keys`, then the sample's run after all blocks:
    -inf on padding and on sampled keys of the tile's own block (own_blocks: each sampled
    key's block, -1 on padding), log2(n/m) on the other sampled keys."""
    in_sample = start >= block_pad
    first = tl.where(in_sample, n_blocks * block_pad + start - block_pad, blk * block_pad + start)
    key = tl.load(keys + first + offs_n)
    bias = tl.where(start + offs_n < in_block, 0.0, float("-inf"))
    if HAS_SAMPLE:
        own = tl.load(own_blocks + tl.maximum(start - block_pad, 0) + offs_n)
        sampled = tl.where((own != blk) & (own >= 0), sample_bias, float("-inf"))
        bias = tl.where(in_sample, sampled, bias)
    return key, bias


@triton.jit
def block_sample_kernel(
    Q, K, V, Out, LSE,
    slot_query_ptr, tile_block_ptr, q_base_ptr, o_base_ptr, key_list_ptr, k_base_ptr,
    v_base_ptr, sample_block_ptr,
    n_slots, n_tiles, n_rows, rows_per_head, heads, n_key, key_block, n_blocks, block_pad,
    sample_pad, list_stride, q_stride, k_stride, v_stride, qk_scale, sample_bias,
    D: tl.constexpr, DV: tl.constexpr, D_PAD: tl.constexpr, DV_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_SAMPLE: tl.constexpr, MERGE: tl.constexpr, IEEE: tl.constexpr, ALIGN: tl.constexpr,
    STORE_LSE: tl.constexpr = True,
):  # fmt: skip
    """One tile of queries that share a key block of problem zp: exact over the block's
    sorted keys, then the problem's uniform sample (own-block keys excluded, logits +
    log2(n/m)). key_list [zp, list_stride]: the key index at each sorted position, each
    block's run padded to block_pad (a multiple of BLOCK_N), then the sampled keys'
    indices padded to sample_pad; sample_block [zp, sample_pad]: the sampled keys'
    blocks (-1: padding).

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
    q_off, o_row, row_ok = slot_rows(
        slot_query_ptr, q_base_ptr, o_base_ptr, zp, tile * BLOCK_M, n_slots, n_rows,
        rows_per_head, heads, q_stride, BLOCK_M,
    )  # fmt: skip
    q_off = tl.multiple_of(q_off, ALIGN)
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
    q = _load(Q + q_off[:, None] + offs_d[None, :], row_ok[:, None], d_ok[None, :], FULL_D)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, DV_PAD], tl.float32)
    # One loop over the block's sorted keys, then the sample's: every key tile is BLOCK_N
    # consecutive entries of key_list, so the index loads are contiguous, the K/V loads
    # unmasked, and exclusions (padding, the sample's own-block keys) are -inf biases.
    # Two loops with masked loads ran 1.25-1.3x slower: each ramped its own pipeline and
    # the sample's masks chained its loads.
    keys = key_list_ptr + zp * list_stride
    own_blocks = sample_block_ptr + zp * sample_pad
    in_block = tl.minimum(key_block, n_key - blk * key_block)
    for start in range(0, block_pad + sample_pad, BLOCK_N):
        key, bias = key_tile(
            keys, own_blocks, start, blk, block_pad, n_blocks, in_block, sample_bias, offs_n,
            HAS_SAMPLE,
        )  # fmt: skip
        key = key.to(idx_ty)
        k_off = tl.multiple_of(k_base + key * k_stride, ALIGN)
        v_off = tl.multiple_of(v_base + key * v_stride, ALIGN)
        k = _load(K + k_off[None, :] + offs_d[:, None], True, d_ok[:, None], FULL_D)
        v = _load(V + v_off[:, None] + offs_dv[None, :], True, dv_ok[None, :], FULL_DV)
        m_i, l_i, acc = _update_biased(q, k, v, bias, m_i, l_i, acc, qk_scale, IEEE)
    _finish(Out, LSE, o_row, row_ok, offs_dv, m_i, l_i, acc, DV, FULL_DV, MERGE, STORE_LSE)


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
    q = _load(q_ptrs, row_ok[:, None], d_ok[None, :], FULL_D)
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
        k = _load(k_ptrs, True, d_ok[:, None], FULL_D)
        v = _load(v_ptrs, True, dv_ok[None, :], FULL_DV)
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
        k = _load(k_ptrs, ok[None, :], d_ok[:, None], FULL_D)
        v = _load(v_ptrs, ok[:, None], dv_ok[None, :], FULL_DV)
        m_i, l_i, acc = _update(q, k, v, keep, m_i, l_i, acc, qk_scale, IEEE)
    o_row = o_base + rows64
    _finish(Out, LSE, o_row, row_ok, offs_dv, m_i, l_i, acc, DV, FULL_DV, MERGE, STORE_LSE)


@triton.jit
def lsh_rank_kernel(
    X, Planes, Rank,
    n_rows, heads, stride_b, stride_h, stride_n,
    D: tl.constexpr, D_PAD: tl.constexpr, R: tl.constexpr, BLOCK: tl.constexpr,
    IEEE: tl.constexpr,
):  # fmt: skip
    """Gray-code rank of the sign pattern of BLOCK rows of x[b, h] against R <= 15
    hyperplanes (Planes: [D_PAD, 16] in x's dtype, zero-padded). One read of each row,
    one small write: the hash costs a pass over q and k, not a skinny GEMM plus a
    dozen integer passes."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // heads).to(tl.int64)
    h = (bh % heads).to(tl.int64)
    rows = pid * BLOCK + tl.arange(0, BLOCK)
    row_ok = rows < n_rows
    offs_d = tl.arange(0, D_PAD)
    offs_r = tl.arange(0, 16)
    ptrs = X + b * stride_b + h * stride_h + rows.to(tl.int64)[:, None] * stride_n
    x = tl.load(ptrs + offs_d[None, :], mask=row_ok[:, None] & (offs_d < D)[None, :], other=0.0)
    planes = tl.load(Planes + offs_d[:, None] * 16 + offs_r[None, :])
    if IEEE:  # noqa: SIM108 (constexpr branch)
        proj = tl.dot(x, planes, input_precision="ieee")
    else:
        proj = tl.dot(x, planes)
    # hyperplane i is bit R-1-i of the Gray code (most significant first)
    weight = tl.where(offs_r < R, 1 << tl.maximum(R - 1 - offs_r, 0), 0)
    code = tl.sum(tl.where(proj > 0, weight[None, :], 0), 1)
    # Gray -> binary: every bit XORs all more significant bits
    code = code ^ (code >> 1)
    code = code ^ (code >> 2)
    code = code ^ (code >> 4)
    code = code ^ (code >> 8)
    tl.store(Rank + bh.to(tl.int64) * n_rows + rows, code.to(Rank.dtype.element_ty), mask=row_ok)


@triton.jit
def query_block_kernel(
    q_rank_ptr, starts_ptr, block_ptr,
    n_rows, rows_per_head, n_starts, key_block, n_blocks,
    BLOCK: tl.constexpr,
):  # fmt: skip
    """Key block of each query row of problem zp (the rule of `hyper._query_blocks`:
    the spot (t + 1/2) / n of the way through its bucket's run of sorted keys, where
    starts[r] counts the keys of rank < r)."""
    zp = tl.program_id(1).to(tl.int64)
    row = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = row < n_rows
    rank = tl.load(q_rank_ptr + zp * n_rows + row, mask=ok, other=0).to(tl.int32)
    first = tl.load(starts_ptr + zp * n_starts + rank, mask=ok, other=0).to(tl.int64)
    last = tl.load(starts_ptr + zp * n_starts + rank + 1, mask=ok, other=0).to(tl.int64)
    twice_t = 2 * (row % rows_per_head).to(tl.int64) + 1
    position = first + (last - first) * twice_t // (2 * rows_per_head)
    blk = tl.minimum(position // key_block, n_blocks - 1).to(tl.int32)
    tl.store(block_ptr + zp * n_rows + row, blk.to(block_ptr.dtype.element_ty), mask=ok)


@triton.jit
def chunk_histogram_kernel(
    keys_ptr, hist_ptr, n, row_stride, n_chunks,
    NB: tl.constexpr, CHUNK: tl.constexpr,
):  # fmt: skip
    """hist[zp, c, b]: how many of keys[zp, c*CHUNK : (c+1)*CHUNK] equal b (< NB)."""
    c = tl.program_id(0)
    zp = tl.program_id(1).to(tl.int64)
    i = c * CHUNK + tl.arange(0, CHUNK)
    ok = i < n
    key = tl.load(keys_ptr + zp * row_stride + i, mask=ok, other=0).to(tl.int32)
    counts = tl.histogram(key, NB, mask=ok)
    tl.store(hist_ptr + (zp * n_chunks + c) * NB + tl.arange(0, NB), counts)


@triton.jit
def bucket_scatter_kernel(
    keys_ptr, start_ptr, out_ptr, n, row_stride, n_chunks, out_stride,
    NB: tl.constexpr, CHUNK: tl.constexpr,
):  # fmt: skip
    """The stable counting sort's placement: out[zp, start[zp, c, b] + j] = i for the
    j-th element of key b (in index order) of chunk c, i its index in keys[zp].

    start[zp, c, b] arrives as (the bucket's first output spot + its elements in
    chunks up to and including c) and is turned in place into that minus the chunk's
    elements of keys up to b; an element's spot is then start[its key] + its position
    in the chunk sorted by (key, index)."""
    c = tl.program_id(0)
    zp = tl.program_id(1).to(tl.int64)
    local = tl.arange(0, CHUNK)
    i = c * CHUNK + local
    ok = i < n
    key = tl.load(keys_ptr + zp * row_stride + i, mask=ok, other=0).to(tl.int32)
    bins = tl.arange(0, NB)
    row_ptr = start_ptr + (zp * n_chunks + c) * NB
    counts = tl.histogram(key, NB, mask=ok)
    tl.store(row_ptr + bins, tl.load(row_ptr + bins) - tl.cumsum(counts, 0))
    tl.debug_barrier()  # the row just written is gathered by every thread below
    # sort (key, index) pairs packed in one int32; elements past n sort last
    packed = tl.sort(tl.where(ok, key, NB) * CHUNK + local)
    key_sorted = packed // CHUNK
    valid = key_sorted < NB
    start = tl.load(row_ptr + key_sorted, mask=valid, other=0)
    value = (c * CHUNK + packed % CHUNK).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + zp * out_stride + start + local, value, mask=valid)


__all__ = [
    "LOG2E",
    "block_sample_kernel",
    "bucket_scatter_kernel",
    "chunk_histogram_kernel",
    "dense_kernel",
    "key_tile",
    "lsh_rank_kernel",
    "query_block_kernel",
    "slot_rows",
]
