"""Each query's own k-means clusters, attended exactly: a per-query large-entry finder.

HyperAttention's blocks are shared: the queries of a tile attend one block of the
sorted keys. On pretrained models a query's large entries lie in clusters of its own, so
here each problem's keys are clustered (`kmeans_clusters`, the sinks left out), every
query ranks the clusters by their estimated softmax mass for it, |c| exp(scale q.mu_c),
and attends its `probes` best clusters exactly. A uniform sample estimates the rest:
drawn from all keys, the draws that fall in the query's exact keys are dropped, and the
remaining ones stand for the keys the query does not attend exactly.

The number of clusters grows with the keys so that `probes` clusters hold about a block
(`block_size`) of keys on average, whatever the length; never fewer than
2**lsh_num_projs. The clustering depends on the problem's keys alone, so in the causal
recursion (each lower-left block clusters its own keys, which precede its queries) no
output depends on a later token.

On CUDA calls without autograd the plan runs in Triton kernels: k-means
(`kernels.kmeans`), each query's clusters within the key budget (`top_clusters`), and
the counting sorts of the keys by cluster and of each rank's query tiles
(`fused.bucket_sort`); so does the attention over the clusters and the sample
(`kernels.probes`, launched from here). Elsewhere every step runs in torch ops, with the
same draws and the same plan. The backward runs in torch ops.

Internal layout: queries `[z, g, nq, d]`, keys and values `[z, nk, d]` (blockwise.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..blockwise import attention_with_lse, merge_by_lse
from ..fused.bucket_sort import bucket_tiles, stable_bucket_argsort
from ..fused.support import fused_unsupported_reason, row_alignment
from ..fused.tuning import padded_width
from ..numerics import LOG2E, MASKED_LOGIT
from ..padding import gather_rows, pad_rows
from ..planning import Randomness, RowTarget, TilePacking, pack_query_tiles
from .kmeans import kernels_can_cluster, kmeans_clusters, problem_rows, score_chunks

# Most query rows per tile of one cluster: a cluster's keys are gathered once per tile.
MAX_TILE_ROWS = 256


def probe_cluster_count(n_key: int, probes: int, block_size: int, num_projs: int) -> int:
    """Clusters of a problem with n_key keys: `probes` of them hold about block_size keys
    on average, and there are at least 2**num_projs (at most one per key)."""
    return min(n_key, max(2**num_projs, math.ceil(probes * n_key / block_size)))


@dataclass
class ProbePlan:
    """Which clusters each query attends exactly in one batch of problems.

    k_order [z, nk] int32: key index at each position sorted by cluster (stable, so a
    cluster keeps sequence order); starts [z, clusters + 1] int32: where each cluster
    begins there; assign [z, nk]: each key's cluster; counts [z, clusters]: keys per
    cluster, sinks left out; chosen [z, g, nq, probes] (int64, or the choice kernel's
    rank-major int32 view): each query's clusters, best first (distinct, but for the
    slots a key budget emptied: those name the last cluster, which a budget appends
    empty, so they add no exact key and hide no draw); exact [z, g, nq] float32 or None:
    the keys in each query's chosen clusters, where the choice counted them.
    """

    k_order: Tensor
    starts: Tensor
    assign: Tensor
    counts: Tensor
    chosen: Tensor
    exact: Tensor | None = None


def plan_probes(
    q: Tensor, k: Tensor, probes: int, clusters: int, iterations: int, scale: float,
    sinks: Tensor | None, kmeans_kernels: bool = True, key_budget: float = 0.0,
) -> ProbePlan:  # fmt: skip
    """Cluster each problem's keys k [z, nk, d] and choose the `probes` clusters of
    largest estimated mass for each query q [z, g, nq, d] (the columns that are hashed).
    kmeans_kernels=False keeps the clustering in torch ops (backend "torch").
    key_budget > 0: each query keeps its clusters within that many times probes x the
    mean cluster size (`within_key_budget`)."""
    with torch.no_grad():
        z, g, n_query, dim = q.shape
        centroids, assign, counts = kmeans_clusters(
            k, clusters, iterations, sinks, kernels=kmeans_kernels
        )
        if kmeans_kernels and kernels_can_cluster(q):
            chosen, exact = top_clusters_within_budget(
                q, centroids, scale, counts, probes, key_budget * probes
            )
            if key_budget:
                counts = torch.cat([counts, counts.new_zeros(z, 1)], 1)
            exact = exact.view(z, g, n_query)
        else:
            q_rows = q.reshape(z, g * n_query, dim)
            chosen = _best_clusters(q_rows, centroids, log_sizes(counts), scale, probes)
            if key_budget:
                chosen, counts = within_key_budget(chosen, counts, key_budget * probes)
            exact = None
        return plan_of_choice(assign, counts, chosen.view(z, g, n_query, probes), exact)


def within_key_budget(chosen: Tensor, counts: Tensor, budget: float) -> tuple[Tensor, Tensor]:
    """Each query's clusters chosen [z, rows, probes] (best first) cut to a key budget:
    it keeps its best cluster, then each later one while its kept keys, that one's
    included, stay within budget x the problem's mean cluster size (counts [z, c]: keys
    per cluster). A cluster too large for what is left is passed over, and a smaller
    later one may still fit. The slots passed over name cluster c, appended empty ->
    (chosen, counts [z, c + 1])."""
    z, n_clusters = counts.shape
    limit = budget_limit(counts, budget)[:, None]
    sizes = torch.gather(counts, 1, chosen.reshape(z, -1).long()).view(chosen.shape)
    kept = torch.ones_like(chosen, dtype=torch.bool)
    used = sizes[..., 0].clone()
    for rank in range(1, chosen.shape[-1]):
        fits = used + sizes[..., rank] <= limit
        kept[..., rank] = fits
        used = used + torch.where(fits, sizes[..., rank], 0.0)
    empty = counts.new_zeros(z, 1)
    return torch.where(kept, chosen, n_clusters), torch.cat([counts, empty], 1)


def budget_limit(counts: Tensor, budget: float) -> Tensor:
    """Keys a query may attend within a key budget of `budget` x the mean cluster size
    (counts [z, c]) -> [z] float32."""
    return budget * counts.sum(1) / counts.shape[1]


def plan_of_choice(
    assign: Tensor, counts: Tensor, chosen: Tensor, exact: Tensor | None = None
) -> ProbePlan:
    """The plan for queries that attend the clusters `chosen` [z, g, nq, probes] (distinct
    per query, but for a key budget's empty cluster) of keys clustered as assign [z, nk]
    int64, with counts [z, c]; exact: as in ProbePlan."""
    # the counting sort's order and run starts (sinks included), int32 as it makes them
    k_order, starts = stable_bucket_argsort(assign, counts.shape[1])
    return ProbePlan(k_order, starts, assign, counts, chosen, exact)


def log_sizes(counts: Tensor) -> Tensor:
    """log |c|, -inf for an empty cluster (or one of sinks only): with scale q.mu_c it
    estimates the log of the cluster's softmax mass, and an empty cluster can only be
    chosen after every non-empty one."""
    return torch.where(counts > 0, counts.clamp_min(1).log(), -math.inf)


def _best_clusters(
    q_rows: Tensor, centroids: Tensor, log_size: Tensor, scale: float, count: int
) -> Tensor:
    """The `count` clusters of largest scale q.mu_c + log_size[c] for each row of q_rows
    [z, rows, d] (centroids [z, c, d]), best first -> [z, rows, count] int64."""
    z, n_rows, _ = q_rows.shape
    chosen = torch.empty(z, n_rows, count, dtype=torch.int64, device=q_rows.device)
    for first, mass in score_chunks(q_rows, centroids, scale, log_size):
        chosen[:, first : first + mass.shape[1]] = mass.topk(count, dim=-1).indices
    return chosen


def cluster_attention(
    q: Tensor, k: Tensor, v: Tensor, plan: ProbePlan, scale: float, sinks: Tensor | None,
    band: int = 0,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Exact attention of each query over the keys of its chosen clusters, less the
    problem's first sinks[z] keys and, for its first `band` queries, its last `band`
    keys (both attended exactly elsewhere): -> out [z, g, nq, dv], lse [z, g, nq]."""
    out, lse = _rank_attention(q, k, v, plan, 0, scale, sinks, band)
    for rank in range(1, plan.chosen.shape[-1]):
        out, lse = merge_by_lse(out, lse, *_rank_attention(q, k, v, plan, rank, scale, sinks, band))
    return out, lse


def _rank_attention(
    q: Tensor, k: Tensor, v: Tensor, plan: ProbePlan, rank: int, scale: float,
    sinks: Tensor | None, band: int,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """`cluster_attention` over each query's rank-th cluster alone (the clusters of one
    query are distinct, so the ranks' parts are disjoint and merge by their LSE)."""
    z, g, n_query, dim = q.shape
    n_key, dv = k.shape[1], v.shape[-1]
    n_rows, clusters = g * n_query, plan.counts.shape[1]
    dev = q.device
    tile = max(1, min(MAX_TILE_ROWS, math.ceil(n_rows / clusters)))
    pack, seg_start, seg_len = _rank_tiles(plan, rank, tile)
    n_tiles = pack.n_tiles
    width = max(1, int(seg_len.max()))
    # [z, tiles, width]: key index at each slot of the tile's cluster (n_key: none)
    offset = torch.arange(width, device=dev)
    pos = (seg_start[..., None] + offset).clamp_max(n_key - 1).view(z, -1)
    key_index = torch.gather(plan.k_order, 1, pos).view(z, n_tiles, width)
    key_index = key_index.masked_fill(offset >= seg_len[..., None], n_key)
    hidden = key_index >= n_key
    if sinks is not None:
        hidden = hidden | (key_index < sinks[:, None, None])
    hidden = hidden.view(z * n_tiles, width)
    flat_keys = key_index.clamp_max(n_key - 1).view(z, -1).long()
    k_tiles = gather_rows(k, flat_keys).view(z * n_tiles, width, dim)
    v_tiles = gather_rows(v, flat_keys).view(z * n_tiles, width, dv)
    # [z, g*nq + 1, d] (one empty row for the tiles' empty slots) -> [z*tiles, 1, tile, d]
    q_rows = pad_rows(q.reshape(z, n_rows, dim), 1)
    q_tiles = gather_rows(q_rows, pack.slot_query).view(z * n_tiles, 1, tile, dim)
    # the first `band` queries of a problem leave its last `band` keys to the band
    in_corner = (key_index >= n_key - band).view(z * n_tiles, width)
    early = ((pack.slot_query % n_query < band) & (pack.slot_query < n_rows)).view(
        z * n_tiles, tile
    )

    def mask(z0: int, z1: int, r0: int, r1: int) -> Tensor:
        part = hidden[z0:z1, None, None, :]
        if band:
            corner = early[z0:z1, None, r0:r1, None] & in_corner[z0:z1, None, None, :]
            part = part | corner
        return part

    out, lse = attention_with_lse(q_tiles, k_tiles, v_tiles, scale, mask)
    # [z*tiles, 1, tile, dv] -> [z, tiles*tile, dv] -> rows in original order
    out = gather_rows(out.view(z, n_tiles * tile, dv), pack.query_slot)
    lse = torch.gather(lse.view(z, n_tiles * tile), 1, pack.query_slot)
    return out.view(z, g, n_query, dv), lse.view(z, g, n_query)


def _rank_tiles(plan: ProbePlan, rank: int, tile: int) -> tuple[TilePacking, Tensor, Tensor]:
    """The queries grouped by their rank-th cluster in tiles of `tile` rows, one cluster
    each, and each tile's run of the cluster-sorted keys: (packing, starts, lengths
    [z, tiles])."""
    z = plan.chosen.shape[0]
    clusters = plan.counts.shape[1]
    pack = pack_query_tiles(plan.chosen[..., rank].reshape(z, -1).long(), clusters, tile)
    seg_start = torch.gather(plan.starts, 1, pack.tile_block)
    seg_len = torch.gather(plan.starts, 1, pack.tile_block + 1) - seg_start
    return pack, seg_start, seg_len


def _sink_counts(sinks: Tensor | None, z: int, device) -> Tensor:
    """Sinks of each problem [z] int64 (zeros where there are none)."""
    if sinks is None:
        return torch.zeros(z, dtype=torch.int64, device=device)
    return sinks.to(device=device, dtype=torch.int64)


def _draw(
    plan: ProbePlan, n_key: int, sample_size: int, rng: Randomness | Tensor
) -> tuple[Tensor, Tensor]:
    """One problem-wide uniform sample, with replacement: (keys, their clusters), [z, m];
    rng: where it comes from, or the keys [z, m] drawn already."""
    key_index = (
        rng if isinstance(rng, Tensor) else rng.indices(n_key, (plan.assign.shape[0], sample_size))
    )
    return key_index, torch.gather(plan.assign, 1, key_index)


def _rest_keys(plan: ProbePlan, n_key: int, n_sink: Tensor, band: int) -> Tensor:
    """R of each query [z, g, nq] float32: the keys outside its clusters, the sinks and
    (its first `band` queries) the band corner, which the sample stands for."""
    z, g, n_query, _ = plan.chosen.shape
    exact = plan.exact
    if exact is None:  # the chosen clusters' sizes, which leave the sinks out
        index = plan.chosen.reshape(z, g, -1).long()
        sizes = torch.gather(plan.counts[:, None].expand(-1, g, -1), 2, index)
        exact = sizes.view(plan.chosen.shape).sum(-1)
    rest = (n_key - n_sink).float()[:, None, None] - exact
    if band:
        early = min(band, n_query)
        corner = torch.arange(n_key - band, n_key, device=rest.device)
        corner_cluster = plan.assign[:, n_key - band :]  # [z, band]
        corner_chosen = (
            corner_cluster[:, None, None, :, None] == plan.chosen[:, :, :early, None, :]
        ).any(-1)  # [z, g, early, band]
        outside = ~corner_chosen & (corner >= n_sink[:, None])[:, None, None]
        rest[:, :, :early] -= outside.sum(-1)
    return rest


def sampled_rest_attention(
    q: Tensor, k: Tensor, v: Tensor, plan: ProbePlan, scale: float, sample_size: int,
    rng: Randomness, sinks: Tensor | None, band: int = 0,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Attention to the keys each query does not attend exactly, estimated from one
    uniform sample of sample_size keys per problem (with replacement): a query drops the
    draws that fall in its exact keys, and the r draws it keeps stand for its R other
    keys, each weighing R / r (uniform draws on the keys it does not attend exactly)."""
    z, g, n_query, _ = q.shape
    n_key = k.shape[1]
    dev = q.device
    key_index, draw_cluster = _draw(plan, n_key, sample_size, rng)
    k_sample, v_sample = gather_rows(k, key_index), gather_rows(v, key_index)
    n_sink = _sink_counts(sinks, z, dev)
    is_sink = key_index < n_sink[:, None]
    in_corner = key_index >= n_key - band

    def exact_here(z0: int, z1: int, r0: int, r1: int) -> Tensor:
        # [z, g, rows, m]: the draws that the query attends exactly elsewhere (one
        # probe at a time, so no [.., m, probes] temporary)
        hidden = is_sink[z0:z1, None, None, :].expand(-1, q.shape[1], r1 - r0, -1)
        for probe in plan.chosen[z0:z1, :, r0:r1].unbind(-1):
            hidden = hidden | (draw_cluster[z0:z1, None, None, :] == probe[..., None])
        if band and r0 < band:
            early = torch.arange(r0, r1, device=dev) < band
            hidden = hidden | (early[:, None] & in_corner[z0:z1, None, None, :])
        return hidden

    out, lse = attention_with_lse(q, k_sample, v_sample, scale, exact_here)
    kept = torch.empty(z, g, n_query, device=dev)
    rows = max(1, 2**24 // (z * g * sample_size))
    for first in range(0, n_query, rows):
        last = min(n_query, first + rows)
        kept[:, :, first:last] = (~exact_here(0, z, first, last)).sum(-1)
    rest = _rest_keys(plan, n_key, n_sink, band)
    # a query that keeps no draw (or has no other keys) gets no sampled mass
    log_weight = (rest.to(lse.dtype).clamp_min(1) / kept.clamp_min(1)).log()
    log_weight = torch.where((kept > 0) & (rest > 0), log_weight, MASKED_LOGIT)
    return out, lse + log_weight


def probed_attention(
    q: Tensor, k: Tensor, v: Tensor, probe_q: Tensor, probe_k: Tensor, scale: float,
    probes: int, clusters: int, iterations: int, sample_size: int, rng: Randomness,
    sinks: Tensor | None = None, band: int = 0, kernels: bool = False,
    kmeans_kernels: bool = True, key_budget: float = 0.0,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """One batch of non-causal problems: each query's `probes` clusters exact, plus the
    sample for its other keys, less the sinks and the band corner (attended exactly
    elsewhere). probe_q, probe_k: the columns that choose the clusters (q, k or their
    leading hash_dims). kernels: run the exact and sampled parts in the Triton kernels
    (no autograd) instead of torch ops; the same draws and the same sums, in another
    order. kmeans_kernels, key_budget: as in `plan_probes`. -> out [z, g, nq, dv],
    lse [z, g, nq]."""
    plan = plan_probes(
        probe_q, probe_k, probes, clusters, iterations, scale, sinks, kmeans_kernels, key_budget
    )
    if kernels:
        folded = _probed_by_kernels(q, k, v, plan, scale, sample_size, rng, sinks, band)
        assert folded is not None
        return folded
    out, lse = cluster_attention(q, k, v, plan, scale, sinks, band)
    if sample_size:
        sampled = sampled_rest_attention(q, k, v, plan, scale, sample_size, rng, sinks, band)
        out, lse = merge_by_lse(out, lse, *sampled)
    return out, lse


def _probed_by_kernels(
    q: Tensor, k: Tensor, v: Tensor, plan: ProbePlan, scale: float, sample_size: int,
    rng: Randomness | Tensor, sinks: Tensor | None, band: int, into: RowTarget | None = None,
) -> tuple[Tensor, Tensor] | None:  # fmt: skip
    """`probed_attention`'s parts in the kernels: folded into one (out, lse) in float32
    accumulators, or, given `into`, merged straight into those rows (None returned).
    rng: where the sample comes from, or its keys [z, sample_size] drawn already."""
    z, g, n_query, _ = q.shape
    n_key = k.shape[1]
    n_rows, clusters = g * n_query, plan.counts.shape[1]
    rows = _accumulator_rows(q, k, v) if into is None else into
    n_sink = _sink_counts(sinks, z, q.device)
    tile = segment_tile_rows(n_rows, clusters)
    probes = plan.chosen.shape[-1]
    # each (rank, problem)'s clusters in a row of their own, rank-major, so one counting
    # sort packs every rank's tiles (a launch per pass, not per rank) and each rank's
    # tiles are a contiguous slice
    by_rank = rank_major(plan.chosen.view(z, n_rows, probes))
    slot_query, tile_cluster = bucket_tiles(by_rank.view(probes * z, n_rows), clusters, tile)
    slot_query = slot_query.view(probes, z, -1)
    tile_cluster = tile_cluster.view(probes, z, -1)
    share = None
    if sample_size:
        key_index, draw_cluster = _draw(plan, n_key, sample_size, rng)
        rest = _rest_keys(plan, n_key, n_sink, band).reshape(z, n_rows)
        share = SampleShare(key_index, draw_cluster, by_rank, rest)
    for rank in range(probes):
        segment_attention(
            rows, slot_query[rank], tile_cluster[rank], plan.starts, plan.k_order, n_sink,
            n_query, g, n_key, band, scale, merge=into is not None or rank > 0, block_m=tile,
            sample=share if rank == 0 and SAMPLE_IN_BEST_RANK else None,
        )  # fmt: skip
    if share is not None and not SAMPLE_IN_BEST_RANK:
        sample_attention(rows, share, n_sink, n_query, g, n_key, band, scale)
    if into is not None:
        return None
    dv = v.shape[-1]
    out = rows.out[:, :n_rows].view(z, g, n_query, dv)
    return out, rows.lse[:, :n_rows].view(z, g, n_query)


def _accumulator_rows(q: Tensor, k: Tensor, v: Tensor) -> RowTarget:
    """Contiguous copies of one batch of problems (q [z, g, nq, d], k [z, nk, d], v) and
    float32 accumulators for their rows, out [z, g * nq + 1, dv] and lse (the last row
    of each problem takes the tiles' empty slots), addressed for the kernels."""
    z, g, n_query, dim = q.shape
    n_key, dv = k.shape[1], v.shape[-1]
    n_rows = g * n_query
    out, lse = empty_accumulators(z, n_rows, dv, q.device)
    ints = dict(dtype=torch.int64, device=q.device)
    head = torch.arange(z * g, **ints)
    problem = torch.arange(z, **ints)
    q, k, v = q.reshape(z, n_rows, dim).contiguous(), k.contiguous(), v.contiguous()
    return RowTarget(
        q, k, v, out, lse,
        q_base=head * n_query * dim, o_base=(head // g) * (n_rows + 1) + (head % g) * n_query,
        k_base=problem * n_key * dim, v_base=problem * n_key * dv, q_stride=dim,
        k_stride=dim, v_stride=dv, align=row_alignment(q, k, v),
    )  # fmt: skip


def kernels_can_run(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """Whether the probes' Triton kernels can serve these inputs: CUDA tensors they
    take, and no gradient asked for (they have no backward)."""
    if fused_unsupported_reason(q, k, v) is not None:
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)))


# Bytes of plan per query row of a batch of problems: its clusters (int32, rank-major),
# the keys' clustering and the packing of every rank's tiles (int32 slots, up to twice the
# rows a rank, where clusters fill their last tiles partly). Counted by their arrays about
# 70 (about 100 while the clusters and key order were int64); the budget below keeps the
# measured 128 until a peak is measured with the int32 plan. A finder that merges into
# a call's rows plans as many problems at a time as keep this within PLAN_BYTES_PER_CALL_ROW
# per row of the call: the 16 bytes per token and query head that the forward's memory
# bound allows beyond the output. A level's plan then comes in 4 chunks; each chunk
# costs its launches and small kernels again (`research/probe_profile.py
# --sweep-plan-bytes` measures the trade).
PLAN_BYTES_PER_ROW = 128
PLAN_BYTES_PER_CALL_ROW = 16


def problems_per_chunk(rows_per_problem: int, call_rows: int) -> int:
    """Problems planned at a time (at least one): see PLAN_BYTES_PER_ROW."""
    budget = PLAN_BYTES_PER_CALL_ROW * call_rows
    return max(1, budget // (PLAN_BYTES_PER_ROW * max(1, rows_per_problem)))


# The probes' kernel launchers: plain tensors in, (out, lse) accumulated in place.
# Keys per step of both kernels: a cluster's run is short (about block_size / probes
# keys on average), and the sample is a few hundred draws.
SEGMENT_BLOCK_N = 32
# most query rows per tile of the segment kernel: tall tiles read each cluster's keys
# for more rows (`research/probe_profile.py --sweep-block-n` measures the choice)
SEGMENT_MAX_ROWS = 128
SEGMENT_WARPS = 4
SEGMENT_SAMPLE_WARPS = 4  # warps of the launch that carries the sample too
# True: the best-cluster launch also carries the sample (every row is in one of its
# tiles), so the sample needs no pass of its own over the rows; it costs that launch
# registers (spills at 128 rows and 4 warps, none at 8 warps: benchmarks/kernel_code.py).
# False, the sample kernel's own pass, stays the default until a same-run A/B on a GPU
# (`research/probe_profile.py --sweep SAMPLE_IN_BEST_RANK=False,True`) says which is faster.
SAMPLE_IN_BEST_RANK = False
SAMPLE_TILE = (64, 64)  # (BLOCK_M, BLOCK_N) of the sample kernel
SAMPLE_WARPS = 4
# (BLOCK_M rows, BLOCK_C centroids, num_warps) of the choice kernel, as the k-means
# best-centroid kernel's: every program reads all centroids, so tall row tiles
TOP_TILE = (128, 64, 8)
TOP_TILE_IEEE = (64, 32, 4)
# each block of centroids walked only while some row of the tile still takes one (the
# same choice); off until a same-run A/B (`--sweep TOP_EARLY_EXIT=False,True`) measures it
TOP_EARLY_EXIT = False


def top_clusters(
    q: Tensor, centroids: Tensor, scale: float, log_size: Tensor, count: int
) -> Tensor:
    """`_best_clusters` in one kernel, with a running top-count per row instead of a
    score matrix: q [z, g, nq, d] (any row strides), centroids [z, c, d] float32,
    log_size [z, c] (-inf: empty) -> [z, g * nq, count] int32, best first, a view of
    rank-major memory (`rank_major`: each rank's choices in one row). 16-bit q
    meets the centroids rounded to its dtype, as in the k-means kernels. Empty clusters
    score MASKED_LOGIT, finite, so they are chosen only after every other one."""
    return _top_clusters(q, centroids, scale, log_size, count)[0]


def top_clusters_within_budget(
    q: Tensor, centroids: Tensor, scale: float, counts: Tensor, count: int, budget: float
) -> tuple[Tensor, Tensor]:
    """`top_clusters` by estimated mass (the bias `log_sizes(counts)`, counts [z, c]
    float32), each row's clusters then cut to a key budget as `within_key_budget` does
    (budget: x the mean cluster size; 0: no cut), in the same kernel -> (chosen [z,
    g * nq, count] int32 as `top_clusters` lays it out, a slot passed over naming
    cluster c; the keys of each row's
    kept clusters [z, g * nq] float32)."""
    counts = counts.float().contiguous()
    limit = budget_limit(counts, budget) if budget else None
    chosen, exact = _top_clusters(q, centroids, scale, log_sizes(counts), count, counts, limit)
    assert exact is not None
    return chosen, exact


def _top_clusters(
    q: Tensor, centroids: Tensor, scale: float, log_size: Tensor, count: int,
    counts: Tensor | None = None, limit: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:  # fmt: skip
    """The choice kernel's launch: with counts, also each row's kept keys (and, with
    limit [z] float32, the budget's cut)."""
    from ..kernels.probes import top_clusters_kernel

    rows = problem_rows(q)
    z, pairs, groups, n_rows, dim = rows.shape
    if centroids.shape[0] != z * pairs or centroids.shape[1] < count:
        raise ValueError(
            f"top_clusters: {count} of {centroids.shape[1]} centroids for "
            f"{centroids.shape[0]} problems, rows for {z * pairs}"
        )
    out = torch.empty(count, z * pairs * groups, n_rows, dtype=torch.int32, device=q.device)
    exact = None if counts is None else out.new_empty(out.shape[1:], dtype=torch.float32)
    ieee = q.dtype == torch.float32
    block_m, block_c, warps = TOP_TILE_IEEE if ieee else TOP_TILE
    bias = log_size.float().clamp_min(MASKED_LOGIT).contiguous()
    s_z, s_p, s_g, s_row = rows.stride()[:4]
    top_clusters_kernel[(z * pairs * groups, -(-n_rows // block_m))](
        # the kernel reads the counts, limit and exact only where it is told to: the bias
        # stands in for those not given
        rows, centroids.float().contiguous(), bias, out, _or(counts, bias), _or(limit, bias),
        _or(exact, bias), n_rows,
        centroids.shape[1], pairs, groups, s_z, s_p, s_g, s_row, scale, out[0].numel(), D=dim,
        D_PAD=padded_width(dim), BLOCK_M=block_m, BLOCK_C=block_c, TOP=count,
        TOP_PAD=cluster_slots(count), IEEE=ieee, BUDGET=limit is not None,
        EXACT=counts is not None, EARLY_EXIT=TOP_EARLY_EXIT, num_warps=warps,
    )  # fmt: skip
    chosen = out.view(count, z * pairs, groups * n_rows).permute(1, 2, 0)
    return chosen, None if exact is None else exact.view(z * pairs, groups * n_rows)


def rank_major(chosen: Tensor) -> Tensor:
    """chosen [z, rows, probes] as int32 [probes, z, rows] in contiguous memory: the choice
    kernel's own memory where it is that, else a copy."""
    by_rank = chosen.permute(2, 0, 1)
    if by_rank.dtype == torch.int32 and by_rank.is_contiguous():
        return by_rank
    return by_rank.to(torch.int32, memory_format=torch.contiguous_format)


def _or(given: Tensor | None, stand_in: Tensor) -> Tensor:
    return stand_in if given is None else given


def cluster_slots(count: int) -> int:
    """A row's `count` clusters padded to a power of two (at least 2), as a kernel's tile
    holds them."""
    return max(2, 1 << (count - 1).bit_length())


def segment_tile_rows(n_rows: int, clusters: int) -> int:
    """Query rows per tile of the segment kernel: about the rows a cluster gets, a power
    of two from 16 (the smallest a tensor-core dot takes) to SEGMENT_MAX_ROWS."""
    per_cluster = max(1, -(-n_rows // clusters))
    return min(SEGMENT_MAX_ROWS, max(16, 1 << (per_cluster - 1).bit_length()))


def empty_accumulators(z: int, n_rows: int, dv: int, device) -> tuple[Tensor, Tensor]:
    """float32 (out [z, rows + 1, dv], lse [z, rows + 1]): the last row of each problem
    takes the tiles' empty slots."""
    out = torch.zeros(z, n_rows + 1, dv, dtype=torch.float32, device=device)
    return out, torch.full((z, n_rows + 1), float("-inf"), device=device)


@dataclass(frozen=True)
class SampleShare:
    """What the kernels need of the sample: keys, clusters [z, m] (the drawn keys and
    their clusters), chosen [probes, z, rows] int32 (each row's clusters, `rank_major`),
    rest [z, rows]
    float32 (the keys each row does not attend exactly, which its kept draws stand for)."""

    keys: Tensor
    clusters: Tensor
    chosen: Tensor
    rest: Tensor

    def tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """In the kernels' argument order (no copies, as dataclasses.astuple makes)."""
        return self.keys, self.clusters, self.chosen, self.rest


def segment_attention(
    rows: RowTarget, slot_query: Tensor, tile_cluster: Tensor, starts: Tensor,
    k_order: Tensor, sinks: Tensor, n_query: int, heads: int, n_key: int, band: int,
    scale: float, merge: bool, block_m: int, sample: SampleShare | None = None,
) -> None:  # fmt: skip
    """Fold each packed tile's attention over its cluster's run of k_order into the
    rows (merge: with what they hold). slot_query [z, tiles * block_m] (heads * n_query:
    an empty slot); tile_cluster [z, tiles]: each tile's cluster; starts [z, clusters +
    1]: where each cluster's run begins in k_order [z, nk]; sinks [z]. sample: each
    row's share of it too, in the same softmax (the tiles must hold every row once)."""
    from ..kernels.probes import segment_kernel

    z, n_tiles = tile_cluster.shape
    dim, dv = rows.q.shape[-1], rows.v.shape[-1]
    # without a sample the kernel reads none of its pointers: the starts stand in
    drawn = (starts,) * 4 if sample is None else sample.tensors()
    probes = 1 if sample is None else sample.chosen.shape[0]
    segment_kernel[(z * n_tiles,)](
        rows.q, rows.k, rows.v, rows.out, rows.lse,
        rows.q_base, rows.o_base, rows.k_base, rows.v_base,
        slot_query, tile_cluster, starts, k_order, sinks, *drawn,
        slot_query.shape[1], n_tiles, starts.shape[1], heads * n_query, n_query, n_key,
        drawn[0].shape[1], drawn[2][0].numel(), band, scale * LOG2E, heads, rows.q_stride,
        rows.k_stride, rows.v_stride,
        D=dim, DV=dv, D_PAD=padded_width(dim), DV_PAD=padded_width(dv),
        BLOCK_M=block_m, BLOCK_N=SEGMENT_BLOCK_N, MERGE=merge,
        IEEE=rows.q.dtype == torch.float32, HAS_BAND=band > 0, ALIGN=rows.align,
        SAMPLE=sample is not None, PROBES=probes, PROBES_PAD=cluster_slots(probes),
        num_warps=SEGMENT_WARPS if sample is None else SEGMENT_SAMPLE_WARPS, num_stages=2,
    )  # fmt: skip


def sample_attention(
    rows: RowTarget, sample: SampleShare, sinks: Tensor, n_query: int, heads: int,
    n_key: int, band: int, scale: float,
) -> None:  # fmt: skip
    """Merge each row's share of the sample into the rows, in a pass of its own."""
    from ..kernels.probes import probe_sample_kernel

    z, n_sample = sample.keys.shape
    n_rows = heads * n_query
    dim, dv = rows.q.shape[-1], rows.v.shape[-1]
    block_m, block_n = SAMPLE_TILE
    probes = sample.chosen.shape[0]
    probe_sample_kernel[(z * -(-n_rows // block_m),)](
        rows.q, rows.k, rows.v, rows.out, rows.lse,
        rows.q_base, rows.o_base, rows.k_base, rows.v_base, *sample.tensors(), sinks,
        n_rows, n_query, n_key, n_sample, sample.chosen[0].numel(), band, scale * LOG2E,
        heads, rows.q_stride, rows.k_stride, rows.v_stride,
        D=dim, DV=dv, D_PAD=padded_width(dim), DV_PAD=padded_width(dv),
        BLOCK_M=block_m, BLOCK_N=block_n, PROBES=probes, PROBES_PAD=cluster_slots(probes),
        IEEE=rows.q.dtype == torch.float32, HAS_BAND=band > 0, ALIGN=rows.align,
        num_warps=SAMPLE_WARPS, num_stages=2,
    )  # fmt: skip


@dataclass(frozen=True)
class QueryClusters:
    """The per-query clusters finder of one call: the leading columns that choose the
    clusters and the config's sizes. kernels: the probes' kernels serve its inference
    calls on CUDA (and the k-means kernels its clustering); False keeps all in torch
    ops. require_kernels: a call they cannot serve is an error (backend "triton").
    key_budget: the config's cluster_key_budget (`within_key_budget`; 0: none)."""

    hash_dims: int
    probes: int
    iterations: int
    num_projs: int
    block_size: int
    sample_size: int
    scale: float
    kernels: bool = True
    require_kernels: bool = False
    key_budget: float = 0.0

    def attend(
        self, q: Tensor, k: Tensor, v: Tensor, rng: Randomness, sinks: Tensor | None,
        band: int = 0,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        """`probed_attention` of one batch of problems, q [z, g, nq, d], k [z, nk, d]."""
        kernels = self._kernels_serve(q, k, v)
        clusters = self._clusters(k.shape[1])
        hd = self.hash_dims
        return probed_attention(
            q, k, v, q[..., :hd], k[..., :hd], self.scale, min(self.probes, clusters),
            clusters, self.iterations, self.sample_size, rng, sinks, band,
            kernels, kmeans_kernels=self.kernels, key_budget=self.key_budget,
        )  # fmt: skip

    def attend_into(
        self, q: Tensor, k: Tensor, v: Tensor, rows: RowTarget, rng: Randomness,
        sinks: Tensor | None, band: int = 0,
    ) -> bool:  # fmt: skip
        """`attend`, its kernels merging straight into `rows` (planning.QueryFinder);
        False, with nothing drawn, where the kernels cannot serve these inputs."""
        if not self._kernels_serve(q, k, v):
            return False
        z, g, n_query, _ = q.shape
        n_key = k.shape[1]
        clusters = self._clusters(n_key)
        hd = self.hash_dims
        # the whole batch's draws first, so the chunks below do not change them
        draws = rng.indices(n_key, (z, self.sample_size)) if self.sample_size else rng
        step = problems_per_chunk(g * n_query, rows.lse.numel())
        for first in range(0, z, step):
            part = slice(first, first + step)
            part_sinks = None if sinks is None else sinks[part]
            plan = plan_probes(
                q[part, ..., :hd], k[part, :, :hd], min(self.probes, clusters), clusters,
                self.iterations, self.scale, part_sinks, self.kernels, self.key_budget,
            )  # fmt: skip
            part_draws = draws[part] if isinstance(draws, Tensor) else draws
            _probed_by_kernels(
                q[part], k[part], v[part], plan, self.scale, self.sample_size, part_draws,
                part_sinks, band, into=rows.of_problems(part, g),
            )  # fmt: skip
        return True

    def _clusters(self, n_key: int) -> int:
        return probe_cluster_count(n_key, self.probes, self.block_size, self.num_projs)

    def _kernels_serve(self, q: Tensor, k: Tensor, v: Tensor) -> bool:
        """Whether the probes' kernels serve this call (an error where they must and
        cannot: backend "triton")."""
        kernels = self.kernels and kernels_can_run(q, k, v)
        if self.require_kernels and not kernels:
            raise ValueError(
                "HyperAttentionConfig(backend='triton'): the cluster probes' kernels serve "
                "inference calls only (no backward); use backend 'auto' for gradients"
            )
        return kernels
