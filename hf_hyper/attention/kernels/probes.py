"""Triton kernels of the per-query clusters (CUDA, or Triton's CPU interpreter;
imported lazily): each query's best clusters by a running top-c, a query tile against
its cluster's run of the cluster-sorted keys, and the sample with each query's own
exclusions and weight.

The two attention kernels address their rows as the fused forward's launches do: each
(problem, query head)'s position 0 in q by an element offset and in the output by a
row, each problem's key 0 in k and v by an element offset, rows at the given strides;
so they read a causal level's rows where they lie and merge into the call's own output
(or into float32 accumulators). Every row is written by one program per launch, so the
in-place merge needs no atomics.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import masked_load
from .forward import finish_rows, online_step, tile_scores
from .kmeans import load_row_tile


@triton.jit
def row_addresses(
    q_base_ptr, o_base_ptr, zp, row, row_ok, n_query, heads, q_stride, ALIGN: tl.constexpr
):  # fmt: skip
    """Element offset in Q and output row of each row of problem zp: row = h * n_query + t
    is query head h's position t; q_base [zp * heads + h] (elements) and o_base (rows)
    are that head's position 0. Rows past the problem's (row_ok False) get head 0's.
    The offsets take the bases' integer type; ALIGN: what every row offset is a multiple
    of (elements per 16 bytes, or 1), so a gathered row is read in 16-byte loads."""
    safe = tl.where(row_ok, row, 0)
    head = zp * heads + safe // n_query
    t = safe % n_query
    q_at = tl.multiple_of(tl.load(q_base_ptr + head) + t * q_stride, ALIGN)
    o_row = tl.load(o_base_ptr + head) + t
    return q_at, o_row


@triton.jit
def key_addresses(k_at, v_at, key, k_stride, v_stride, ALIGN: tl.constexpr):
    """Element offsets of keys `key` of a problem whose key 0 is at k_at, v_at (in their
    integer type), each a multiple of ALIGN (see row_addresses)."""
    key = key.to(k_at.dtype)
    k_off = tl.multiple_of(k_at + key * k_stride, ALIGN)
    v_off = tl.multiple_of(v_at + key * v_stride, ALIGN)
    return k_off, v_off


@triton.jit
def key_value_tiles(
    K, V, k_at, v_at, key, ok, offs_d, offs_dv, d_ok, dv_ok, k_stride, v_stride,
    FULL_D: tl.constexpr, FULL_DV: tl.constexpr, ALIGN: tl.constexpr,
):  # fmt: skip
    """The keys `key` of a problem (key 0 at k_at, v_at) gathered as a [D_PAD, n] tile
    and their values as [n, DV_PAD], 0 where not ok."""
    k_off, v_off = key_addresses(k_at, v_at, key, k_stride, v_stride, ALIGN)
    k = masked_load(K + k_off[None, :] + offs_d[:, None], ok[None, :], d_ok[:, None], FULL_D)
    v = masked_load(V + v_off[:, None] + offs_dv[None, :], ok[:, None], dv_ok[None, :],
                    FULL_DV)  # fmt: skip
    return k, v


@triton.jit
def weighted_sample(
    q, K, V, k_at, v_at, sample_ptr, draw_cluster_ptr, chosen_ptr, rest_ptr, zp, q_rows,
    row_ok, cut, n_sink, n_sample, rank_stride, qk_scale, offs_d, offs_dv, d_ok, dv_ok,
    k_stride, v_stride, D_PAD: tl.constexpr, DV_PAD: tl.constexpr, FULL_D: tl.constexpr,
    FULL_DV: tl.constexpr, ALIGN: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, PROBES: tl.constexpr, PROBES_PAD: tl.constexpr,
    IEEE: tl.constexpr,
):  # fmt: skip
    """(m, l, acc) of rows q (q_rows: their index in rest [z, rows] and in each rank's
    row of chosen [PROBES, z, rows], rank_stride apart) over problem zp's n_sample drawn
    keys: each row drops the draws in its own exact keys (its clusters, the sinks, keys
    at or past its cut) and weighs the r draws it keeps rest / r each, through m (log2
    units). A row with no draw kept, or no key the sample stands for, holds no mass
    (m -inf, l 0, acc 0), so exact keys can follow in the same softmax."""
    offs_n = tl.arange(0, BLOCK_N)
    # each row's clusters, read once: loads of them inside the loop were pipelined with
    # the keys' and held so many registers that the kernel spilled
    offs_p = tl.arange(0, PROBES_PAD)
    p_ok = row_ok[:, None] & (offs_p < PROBES)[None, :]
    mine_all = tl.load(chosen_ptr + offs_p[None, :].to(tl.int64) * rank_stride + q_rows[:, None],
                       mask=p_ok, other=-2).to(tl.int32)  # fmt: skip
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, DV_PAD], tl.float32)
    kept = tl.zeros([BLOCK_M], tl.float32)
    for start in range(0, n_sample, BLOCK_N):
        ok = start + offs_n < n_sample
        key = tl.load(sample_ptr + zp * n_sample + start + offs_n, mask=ok, other=0).to(tl.int32)
        drawn = tl.load(draw_cluster_ptr + zp * n_sample + start + offs_n, mask=ok, other=-1)
        drawn = drawn.to(tl.int32)
        k, v = key_value_tiles(
            K, V, k_at, v_at, key, ok, offs_d, offs_dv, d_ok, dv_ok, k_stride, v_stride,
            FULL_D, FULL_DV, ALIGN,
        )  # fmt: skip
        keep = (ok & (key >= n_sink))[None, :] & (key[None, :] < cut[:, None])
        for p in tl.static_range(PROBES):
            mine = tl.sum(tl.where(offs_p[None, :] == p, mine_all, 0), 1)
            keep = keep & (mine[:, None] != drawn[None, :])
        kept += tl.sum(keep.to(tl.float32), 1)
        s = tl.where(keep, tile_scores(q, k, IEEE) * qk_scale, float("-inf"))
        m_i, l_i, acc = online_step(s, v, m_i, l_i, acc, IEEE)
    rest = tl.load(rest_ptr + q_rows, mask=row_ok, other=0.0)
    # each kept draw stands for rest / kept keys: log2 of that shifts the row's scores
    has_mass = (kept > 0) & (rest > 0)
    weight = tl.where(has_mass, rest / tl.where(kept > 0, kept, 1.0), 1.0)
    m_i = tl.where(has_mass, m_i + tl.math.log2(weight), float("-inf"))
    l_i = tl.where(has_mass, l_i, 0.0)
    acc = tl.where(has_mass[:, None], acc, 0.0)
    return m_i, l_i, acc


@triton.jit
def segment_kernel(
    Q, K, V, Out, LSE,
    q_base_ptr, o_base_ptr, k_base_ptr, v_base_ptr,
    slot_query_ptr, tile_cluster_ptr, starts_ptr, k_order_ptr, sink_keys_ptr,
    sample_ptr, draw_cluster_ptr, chosen_ptr, rest_ptr,
    n_slots, n_tiles, n_starts, n_rows, n_query, n_key, n_sample, rank_stride, band,
    qk_scale, heads, q_stride, k_stride, v_stride,
    D: tl.constexpr, DV: tl.constexpr, D_PAD: tl.constexpr, DV_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    MERGE: tl.constexpr, IEEE: tl.constexpr, HAS_BAND: tl.constexpr, ALIGN: tl.constexpr,
    SAMPLE: tl.constexpr = False, PROBES: tl.constexpr = 1, PROBES_PAD: tl.constexpr = 2,
):  # fmt: skip
    """One tile of BLOCK_M query rows of problem zp that share a cluster (tile_cluster
    [z, n_tiles]): exact over the cluster's run [starts[c], starts[c + 1]) of k_order (key
    indices sorted by cluster; starts [z, n_starts]), less the problem's first
    sink_keys[zp] keys and, for rows at positions t < band (t = row % n_query), its last
    `band` keys (both attended exactly elsewhere).

    SAMPLE: the tile's rows also take their share of the problem's sample, as
    `probe_sample_kernel` weighs it (sample_ptr .. rest_ptr as there), in the same
    softmax; every row is in one tile of the best-cluster launch, so that launch carries
    the sample and no pass of its own reads the rows again."""
    pid = tl.program_id(0)
    zp = (pid // n_tiles).to(tl.int64)
    tile = pid % n_tiles
    slots = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    row = tl.load(slot_query_ptr + zp * n_slots + slots).to(tl.int32)
    if tl.min(row, 0) >= n_rows:
        return  # an unused tile: every slot is empty
    cluster = tl.load(tile_cluster_ptr + zp * n_tiles + tile)
    seg_start = tl.load(starts_ptr + zp * n_starts + cluster)
    seg_len = tl.load(starts_ptr + zp * n_starts + cluster + 1) - seg_start
    # a cluster without keys (the one a key budget empties) adds nothing to a merge; the
    # constexpr test stands alone so non-merging launches compile without the branch
    if MERGE:  # noqa: SIM102
        if not SAMPLE:  # noqa: SIM102
            if seg_len == 0:
                return
    row_ok = row < n_rows
    offs_d = tl.arange(0, D_PAD)
    offs_dv = tl.arange(0, DV_PAD)
    offs_n = tl.arange(0, BLOCK_N)
    d_ok = offs_d < D
    dv_ok = offs_dv < DV
    FULL_D: tl.constexpr = D == D_PAD
    FULL_DV: tl.constexpr = DV == DV_PAD
    q_at, o_row = row_addresses(q_base_ptr, o_base_ptr, zp, row, row_ok, n_query, heads,
                                q_stride, ALIGN)  # fmt: skip
    q = masked_load(Q + q_at[:, None] + offs_d[None, :], row_ok[:, None], d_ok[None, :], FULL_D)
    cut = tl.zeros([BLOCK_M], tl.int32) + n_key
    if HAS_BAND:
        cut = tl.where(row % n_query < band, n_key - band, n_key)
    n_sink = tl.load(sink_keys_ptr + zp)
    k_at = tl.load(k_base_ptr + zp)
    v_at = tl.load(v_base_ptr + zp)
    order = k_order_ptr + zp * n_key + seg_start
    if SAMPLE:
        q_rows = zp * n_rows + tl.where(row_ok, row, 0).to(tl.int64)
        m_i, l_i, acc = weighted_sample(
            q, K, V, k_at, v_at, sample_ptr, draw_cluster_ptr, chosen_ptr, rest_ptr, zp,
            q_rows, row_ok, cut, n_sink, n_sample, rank_stride, qk_scale, offs_d, offs_dv,
            d_ok, dv_ok, k_stride, v_stride, D_PAD, DV_PAD, FULL_D, FULL_DV, ALIGN, BLOCK_M,
            BLOCK_N, PROBES, PROBES_PAD, IEEE,
        )  # fmt: skip
    else:
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, DV_PAD], tl.float32)
    for start in range(0, seg_len, BLOCK_N):
        ok = start + offs_n < seg_len
        key = tl.load(order + start + offs_n, mask=ok, other=0).to(tl.int32)
        ok = ok & (key >= n_sink)
        k, v = key_value_tiles(
            K, V, k_at, v_at, key, ok, offs_d, offs_dv, d_ok, dv_ok, k_stride, v_stride,
            FULL_D, FULL_DV, ALIGN,
        )  # fmt: skip
        keep = ok[None, :] & (key[None, :] < cut[:, None])
        s = tl.where(keep, tile_scores(q, k, IEEE) * qk_scale, float("-inf"))
        m_i, l_i, acc = online_step(s, v, m_i, l_i, acc, IEEE)
    finish_rows(Out, LSE, o_row, row_ok, offs_dv, m_i, l_i, acc, DV, FULL_DV, MERGE, True)


@triton.jit
def probe_sample_kernel(
    Q, K, V, Out, LSE,
    q_base_ptr, o_base_ptr, k_base_ptr, v_base_ptr,
    sample_ptr, draw_cluster_ptr, chosen_ptr, rest_ptr, sink_keys_ptr,
    n_rows, n_query, n_key, n_sample, rank_stride, band, qk_scale, heads, q_stride, k_stride,
    v_stride,
    D: tl.constexpr, DV: tl.constexpr, D_PAD: tl.constexpr, DV_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PROBES: tl.constexpr,
    PROBES_PAD: tl.constexpr, IEEE: tl.constexpr, HAS_BAND: tl.constexpr, ALIGN: tl.constexpr,
):  # fmt: skip
    """BLOCK_M query rows of problem zp against the problem's n_sample drawn keys: each
    row drops the draws in its own exact keys (its PROBES clusters chosen [PROBES, z,
    rows], the sinks, its band corner) and weighs the r draws it keeps rest / r each
    (rest [z, rows]: the keys it does not attend exactly); merged into (out, lse)."""
    pid = tl.program_id(0)
    n_row_tiles = tl.cdiv(n_rows, BLOCK_M)
    zp = (pid // n_row_tiles).to(tl.int64)
    row = (pid % n_row_tiles) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = row < n_rows
    offs_d = tl.arange(0, D_PAD)
    offs_dv = tl.arange(0, DV_PAD)
    d_ok = offs_d < D
    dv_ok = offs_dv < DV
    FULL_D: tl.constexpr = D == D_PAD
    FULL_DV: tl.constexpr = DV == DV_PAD
    q_rows = zp * n_rows + tl.where(row_ok, row, 0).to(tl.int64)
    q_at, o_row = row_addresses(q_base_ptr, o_base_ptr, zp, row, row_ok, n_query, heads,
                                q_stride, ALIGN)  # fmt: skip
    q = masked_load(Q + q_at[:, None] + offs_d[None, :], row_ok[:, None], d_ok[None, :], FULL_D)
    cut = tl.zeros([BLOCK_M], tl.int32) + n_key
    if HAS_BAND:
        cut = tl.where(row % n_query < band, n_key - band, n_key)
    n_sink = tl.load(sink_keys_ptr + zp)
    k_at = tl.load(k_base_ptr + zp)
    v_at = tl.load(v_base_ptr + zp)
    m_i, l_i, acc = weighted_sample(
        q, K, V, k_at, v_at, sample_ptr, draw_cluster_ptr, chosen_ptr, rest_ptr, zp,
        q_rows, row_ok, cut, n_sink, n_sample, rank_stride, qk_scale, offs_d, offs_dv,
        d_ok, dv_ok, k_stride, v_stride, D_PAD, DV_PAD, FULL_D, FULL_DV, ALIGN, BLOCK_M, BLOCK_N,
        PROBES, PROBES_PAD, IEEE,
    )  # fmt: skip
    finish_rows(Out, LSE, o_row, row_ok, offs_dv, m_i, l_i, acc, DV, FULL_DV, True, True)


@triton.jit
def top_clusters_kernel(
    X, C, Bias, Out, Counts, Limit, Exact, n_rows, n_centroids, pairs, groups,
    x_stride_z, x_stride_p, x_stride_g, x_stride_row, factor, rank_stride,
    D: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
    TOP: tl.constexpr, TOP_PAD: tl.constexpr, IEEE: tl.constexpr, BUDGET: tl.constexpr,
    EXACT: tl.constexpr, EARLY_EXIT: tl.constexpr = False,
):  # fmt: skip
    """Out[r, i, :] = the TOP centroids of largest factor * x_i . C[zp, c] + Bias[zp, c],
    best first (distinct; equal scores in index order), for the rows i of row problem
    r = (z * pairs + p) * groups + g at X + z x_stride_z + p x_stride_p + g x_stride_g +
    i x_stride_row; C [zp, c, D] float32 met in X's dtype, Bias [zp, c] float32 (finite),
    Out int32 [TOP, rows problems, n_rows] (rank-major: rank_stride = rows problems x
    n_rows), so each rank's choices are one contiguous row for the tiles' sort. A
    running top-TOP per row: no score matrix is kept.

    With BUDGET, each row keeps its best centroid and each later one while the sizes
    (Counts [zp, c] float32) of those kept, that one's included, stay within Limit[zp];
    a slot passed over names n_centroids. EXACT: Exact [rows problems, n_rows] float32
    gets the kept clusters' summed sizes. EARLY_EXIT: a block's walk stops once no row
    takes its next best."""
    row_problem, zp, rows, row_ok, offs_d, d_ok, x = load_row_tile(
        X, n_rows, pairs, groups, x_stride_z, x_stride_p, x_stride_g, x_stride_row,
        D, D_PAD, BLOCK_M,
    )  # fmt: skip
    slot = tl.arange(0, TOP_PAD)
    # the kept scores and their centroids; slots past TOP hold +inf, so the running
    # minimum (the slot a better candidate replaces) is always a real one
    kept = tl.where(slot[None, :] < TOP, float("-inf"), float("inf")) + tl.zeros(
        [BLOCK_M, TOP_PAD], tl.float32
    )
    kept_index = tl.zeros([BLOCK_M, TOP_PAD], tl.int32) - 1
    for c0 in range(0, n_centroids, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        c_ok = cols < n_centroids
        c_ptrs = C + (zp * n_centroids + cols[None, :]) * D + offs_d[:, None]
        c = tl.load(c_ptrs, mask=c_ok[None, :] & d_ok[:, None], other=0.0)
        bias = tl.load(Bias + zp * n_centroids + cols, mask=c_ok, other=float("-inf"))
        s = factor * tile_scores(x, c.to(X.dtype.element_ty), IEEE) + bias[None, :]
        s = tl.where(c_ok[None, :], s, float("-inf"))
        # the block's TOP best, one at a time, each replacing the row's worst kept one
        # where it is strictly better (an equal score keeps the earlier centroid)
        if EARLY_EXIT:
            # a row's next best is no better than its last, and its worst kept only
            # rises: once no row of the tile takes its block's next best, none takes a
            # later one, so the walk stops there (the same choice)
            best, best_col = tl.max(s, 1, return_indices=True,
                                    return_indices_tie_break_left=True)  # fmt: skip
            worst = tl.min(kept, 1)
            taken = tl.full([], 0, tl.int32)
            while (taken < TOP) & (tl.max((best > worst).to(tl.int32), 0) > 0):
                worst_slot = tl.argmin(kept, 1)
                take = (best > worst)[:, None] & (slot[None, :] == worst_slot[:, None])
                kept = tl.where(take, best[:, None], kept)
                kept_index = tl.where(take, (best_col + c0)[:, None], kept_index)
                s = tl.where(tl.arange(0, BLOCK_C)[None, :] == best_col[:, None], float("-inf"),
                             s)  # fmt: skip
                best, best_col = tl.max(s, 1, return_indices=True,
                                        return_indices_tie_break_left=True)  # fmt: skip
                worst = tl.min(kept, 1)
                taken += 1
        else:
            for _ in tl.static_range(TOP):
                # one reduction for the best score and its first column
                best, best_col = tl.max(s, 1, return_indices=True,
                                        return_indices_tie_break_left=True)  # fmt: skip
                s = tl.where(tl.arange(0, BLOCK_C)[None, :] == best_col[:, None], float("-inf"),
                             s)  # fmt: skip
                worst = tl.min(kept, 1)
                worst_slot = tl.argmin(kept, 1)
                take = (best > worst)[:, None] & (slot[None, :] == worst_slot[:, None])
                kept = tl.where(take, best[:, None], kept)
                kept_index = tl.where(take, (best_col + c0)[:, None], kept_index)
    # best first: the largest kept score, the lower centroid index among equal ones
    out_ptrs = Out + row_problem * n_rows + rows.to(tl.int64)
    live = (slot < TOP)[None, :] & (kept_index >= 0)
    used = tl.zeros([BLOCK_M], tl.float32)
    if BUDGET:
        limit = tl.load(Limit + zp)
    for t in tl.static_range(TOP):
        top = tl.max(tl.where(live, kept, float("-inf")), 1)
        at_top = live & (kept == top[:, None])
        first = tl.min(tl.where(at_top, kept_index, 2**30), 1)
        live = live & (kept_index != first[:, None])
        if EXACT or BUDGET:
            size = tl.load(Counts + zp * n_centroids + first, mask=row_ok, other=0.0)
            if BUDGET and t > 0:
                fits = used + size <= limit
                first = tl.where(fits, first, n_centroids)
                size = tl.where(fits, size, 0.0)
            used += size
        tl.store(out_ptrs + t * rank_stride.to(tl.int64), first.to(tl.int32), mask=row_ok)
    if EXACT:
        tl.store(Exact + row_problem * n_rows + rows, used, mask=row_ok)
