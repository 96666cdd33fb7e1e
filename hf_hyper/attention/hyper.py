"""HyperAttention (Han et al. 2023): sorted-LSH block diagonal + uniform sampling.

Public tensors are `[batch, heads, seq, head_dim]`; key/value heads may be fewer than
query heads (GQA/MQA) and the key head_dim may differ from the value head_dim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ..config import HyperAttentionConfig
from .blockwise import (
    attention_with_lse,
    causal_mask_fn,
    merge_by_lse,
)
from .lsh import angular_lsh_rank

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class _Randomness:
    """Where hyperplanes and samples come from: a generator (reproducible) or global RNG."""

    def __init__(self, generator: torch.Generator | None, device: torch.device) -> None:
        self.generator = generator
        self.device = device
        self.draw_device = generator.device if generator is not None else device

    def hyperplanes(self, dim: int, count: int) -> Tensor:
        planes = torch.randn(dim, count, generator=self.generator, device=self.draw_device)
        return planes.to(self.device)

    def indices(self, high: int, shape: tuple[int, ...]) -> Tensor:
        idx = torch.randint(high, shape, generator=self.generator, device=self.draw_device)
        return idx.to(self.device)


def _gather_rows(x: Tensor, order: Tensor) -> Tensor:
    """x [..., n, d], order [..., n] (rows to take) -> [..., n, d], via one flat index."""
    *lead, n, d = x.shape
    flat = x.reshape(-1, d)
    groups = flat.shape[0] // n
    base = torch.arange(groups, device=x.device).view(*lead, 1) * n
    return flat.index_select(0, (order + base).reshape(-1)).view(*lead, -1, d)


def _pad_rows(x: Tensor, rows: int) -> Tensor:
    return x if rows == 0 else torch.nn.functional.pad(x, (0, 0, 0, rows))


# Up to this many hyperplanes, a table of where each bucket starts among the sorted
# keys (2**r + 1 entries per problem) replaces a binary search per query.
BUCKET_TABLE_MAX_PROJS = 12


def bucket_starts(k_rank_sorted: Tensor, num_projs: int) -> Tensor:
    """[z, 2**num_projs + 1] int64: starts[r] = keys of rank < r (k_rank_sorted [z, nk])."""
    z = k_rank_sorted.shape[0]
    buckets = torch.arange((1 << num_projs) + 1, device=k_rank_sorted.device)
    buckets = buckets.to(k_rank_sorted.dtype).expand(z, -1).contiguous()
    return torch.searchsorted(k_rank_sorted, buckets)


def _bucket_bounds(
    q_rank: Tensor, k_rank_sorted: Tensor, num_projs: int
) -> tuple[Tensor, Tensor]:
    """(first, last) sorted key positions of each query's bucket: q_rank [z, rows] ->
    int64 [z, rows] each (keys with rank < r, keys with rank <= r)."""
    if num_projs > BUCKET_TABLE_MAX_PROJS:
        return (
            torch.searchsorted(k_rank_sorted, q_rank),
            torch.searchsorted(k_rank_sorted, q_rank, right=True),
        )
    starts = bucket_starts(k_rank_sorted, num_projs)
    index = q_rank.long()
    return torch.gather(starts, 1, index), torch.gather(starts, 1, index + 1)


def _query_blocks(
    q_rank: Tensor, k_rank_sorted: Tensor, key_block: int, n_blocks: int, num_projs: int
) -> Tensor:
    """Key block each query attends: q_rank [z, g, nq], k_rank_sorted [z, nk] -> [z, g, nq].

    A query goes where it would fall among the sorted keys; inside the run of keys that
    share its bucket it takes the spot matching its relative sequence position (keys
    keep sequence order within a bucket). Unlike sorting the queries themselves, this
    depends on the keys and the query alone, so in causal attention no output row
    depends on a later query, and query and key counts may differ freely.
    """
    z, g, n_query = q_rank.shape
    flat = q_rank.reshape(z, g * n_query).contiguous()
    first, last = _bucket_bounds(flat, k_rank_sorted, num_projs)
    first, last = first.view(z, g, n_query), last.view(z, g, n_query)
    # spot (t + 1/2) / nq of the way through the bucket, in exact integer arithmetic
    twice_t = 2 * torch.arange(n_query, device=q_rank.device) + 1
    position = first + (last - first) * twice_t // (2 * n_query)
    return torch.clamp(position // key_block, max=n_blocks - 1)


@dataclass
class TilePacking:
    """Queries grouped by key block and packed into fixed tiles of one block each.

    slot_query [z, tiles*tile]: query filling each slot (rows = an empty slot);
    query_slot [z, rows]: slot of each query; tile_block [z, tiles]: block of each tile.
    A block's group may span several tiles, so the work is bounded by
    (queries + blocks * tile) * block keys however unevenly the queries spread.
    """

    slot_query: Tensor
    query_slot: Tensor
    tile_block: Tensor
    tile: int
    n_tiles: int


def block_id_dtype(n_blocks: int) -> torch.dtype:
    """Narrowest integer type for block numbers < n_blocks: a radix sort takes one pass
    per byte of its keys."""
    if n_blocks <= 256:
        return torch.uint8
    return torch.int16 if n_blocks <= 2**15 else torch.int32


def pack_query_tiles(block: Tensor, n_blocks: int, tile: int) -> TilePacking:
    """block [z, rows] (key block of each query) -> TilePacking."""
    z, n_rows = block.shape
    n_tiles = (n_rows + n_blocks * (tile - 1)) // tile  # bound on sum of ceil(count / tile)
    dev = block.device
    sorted_block, order = torch.sort(block.to(block_id_dtype(n_blocks)), dim=-1, stable=True)
    sorted_block = sorted_block.long()
    counts = torch.zeros(z, n_blocks, dtype=torch.int64, device=dev)
    counts.scatter_add_(1, block, torch.ones_like(block))
    tiles_per_block = (counts + tile - 1) // tile
    first_tile = torch.cumsum(tiles_per_block, dim=1) - tiles_per_block
    first_row = torch.cumsum(counts, dim=1) - counts
    rank_in_block = torch.arange(n_rows, device=dev) - torch.gather(first_row, 1, sorted_block)
    tile_id = torch.gather(first_tile, 1, sorted_block) + rank_in_block // tile
    slot = tile_id * tile + rank_in_block % tile  # [z, rows] in sorted order

    slot_query = torch.full((z, n_tiles * tile), n_rows, dtype=torch.int64, device=dev)
    slot_query.scatter_(1, slot, order)
    query_slot = torch.empty_like(slot).scatter_(1, order, slot)
    tile_block = torch.zeros(z, n_tiles, dtype=torch.int64, device=dev)
    tile_block.scatter_(1, tile_id, sorted_block)
    return TilePacking(slot_query, query_slot, tile_block, tile, n_tiles)


@dataclass
class BlockPlan:
    """Which keys each query attends in one non-causal HyperAttention problem.

    k_order [z, nk]: key index at each sorted position; q_block [z, g, nq]: key block
    (of `key_block` sorted positions) each query attends exactly; sample [z, m] or None:
    sorted positions of the uniformly sampled keys, shared by the z-problem's queries.
    """

    k_order: Tensor
    q_block: Tensor
    key_block: int
    n_blocks: int
    sample: Tensor | None


def plan_blocks(
    q_rank: Tensor, k_rank: Tensor, config: HyperAttentionConfig, rng: _Randomness
) -> BlockPlan:
    """Sort keys by LSH bucket (stable: a bucket keeps sequence order), cut them into
    equal blocks, send each query to the block where its bucket lies, draw the sample.

    q_rank [z, g, nq], k_rank [z, nk] (from `angular_lsh_rank`).
    """
    n_key = k_rank.shape[-1]
    k_rank_sorted, k_order = torch.sort(k_rank, dim=-1, stable=True)
    n_blocks = math.ceil(n_key / config.block_size)
    key_block = math.ceil(n_key / n_blocks)
    q_block = _query_blocks(q_rank, k_rank_sorted, key_block, n_blocks, config.lsh_num_projs)
    sample = None
    if config.sample_size > 0 and n_blocks > 1:
        sample = rng.indices(n_key, (k_rank.shape[0], config.sample_size))
    return BlockPlan(k_order, q_block, key_block, n_blocks, sample)


def _block_attention(
    q: Tensor, k: Tensor, v: Tensor, plan: BlockPlan, scale: float
) -> tuple[Tensor, Tensor]:
    """Each query attends exactly its key block: -> out [z, g, nq, dv], lse [z, g, nq]."""
    z, g, n_query, dim = q.shape
    n_key, dv = k.shape[1], v.shape[-1]
    n_blocks, key_block = plan.n_blocks, plan.key_block
    dev = q.device
    key_pad = n_blocks * key_block - n_key
    k_blocks = _pad_rows(_gather_rows(k, plan.k_order), key_pad)
    v_blocks = _pad_rows(_gather_rows(v, plan.k_order), key_pad)

    n_rows = g * n_query
    tile = max(1, min(4 * key_block, math.ceil(n_rows / n_blocks)))
    pack = pack_query_tiles(plan.q_block.reshape(z, n_rows), n_blocks, tile)
    n_tiles = pack.n_tiles

    # [z, g*nq + 1, d] -> [z*tiles, 1, tile, d];  key blocks gathered per tile
    q_rows = _pad_rows(q.reshape(z, n_rows, dim), 1)
    q_tiles = _gather_rows(q_rows, pack.slot_query).view(z * n_tiles, 1, tile, dim)
    block_index = (pack.tile_block + torch.arange(z, device=dev)[:, None] * n_blocks).view(-1)
    k_tiles = k_blocks.view(z * n_blocks, key_block, dim).index_select(0, block_index)
    v_tiles = v_blocks.view(z * n_blocks, key_block, dv).index_select(0, block_index)

    pad_mask = None
    if key_pad:
        padded = torch.arange(n_blocks * key_block, device=dev).view(n_blocks, key_block)
        padded = padded >= n_key  # [nb, bk]
        flat_block = pack.tile_block.view(-1)

        def pad_mask(z0: int, z1: int, r0: int, r1: int) -> Tensor:
            return padded[flat_block[z0:z1]][:, None, None, :]

    out, lse = attention_with_lse(q_tiles, k_tiles, v_tiles, scale, pad_mask)
    # [z*tiles, 1, tile, dv] -> [z, tiles*tile, dv] -> rows in original order
    out = _gather_rows(out.view(z, n_tiles * tile, -1), pack.query_slot)
    lse = torch.gather(lse.view(z, n_tiles * tile), 1, pack.query_slot)
    return out.view(z, g, n_query, -1), lse.view(z, g, n_query)


def _sampled_attention(
    q: Tensor, k: Tensor, v: Tensor, plan: BlockPlan, scale: float
) -> tuple[Tensor, Tensor]:
    """Attention to the sampled keys outside each query's own block, weighted n/m."""
    assert plan.sample is not None
    key_index = torch.gather(plan.k_order, 1, plan.sample)  # [z, m]
    k_sample, v_sample = _gather_rows(k, key_index), _gather_rows(v, key_index)
    sample_block = plan.sample // plan.key_block
    q_block = plan.q_block

    def own_block(z0: int, z1: int, r0: int, r1: int) -> Tensor:
        # keys already counted exactly in the query's block must not count twice
        return q_block[z0:z1, :, r0:r1, None] == sample_block[z0:z1, None, None, :]

    out, lse = attention_with_lse(q, k_sample, v_sample, scale, own_block)
    # Each sampled key stands for n_key / m keys of the rest (unbiased estimate).
    return out, lse + math.log(k.shape[1] / plan.sample.shape[1])


def _sorted_block(
    q: Tensor, k: Tensor, v: Tensor, q_rank: Tensor, k_rank: Tensor, scale: float,
    config: HyperAttentionConfig, rng: _Randomness,
) -> tuple[Tensor, Tensor]:
    plan = plan_blocks(q_rank, k_rank, config, rng)
    out, lse = _block_attention(q, k, v, plan, scale)
    if plan.sample is not None:
        out, lse = merge_by_lse(out, lse, *_sampled_attention(q, k, v, plan, scale))
    return out, lse


def sorted_block_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    scale: float,
    config: HyperAttentionConfig,
    rng: _Randomness,
) -> tuple[Tensor, Tensor]:
    """Non-causal HyperAttention on the internal layout.

    q [z, g, nq, d], k [z, nk, d], v [z, nk, dv] -> out [z, g, nq, dv], lse [z, g, nq].
    """
    planes = rng.hyperplanes(q.shape[-1], config.lsh_num_projs)
    q_rank, k_rank = angular_lsh_rank(q, planes), angular_lsh_rank(k, planes)
    return _sorted_block(q, k, v, q_rank, k_rank, scale, config, rng)


def _exact(q: Tensor, k: Tensor, v: Tensor, scale: float, causal: bool) -> tuple[Tensor, Tensor]:
    mask = causal_mask_fn(q.shape[2], k.shape[1], q.device) if causal else None
    return attention_with_lse(q, k, v, scale, mask)


def _noncausal(q, k, v, q_rank, k_rank, scale, config, rng) -> tuple[Tensor, Tensor]:
    if min(q.shape[2], k.shape[1]) <= config.min_seq_len:
        return _exact(q, k, v, scale, causal=False)
    return _sorted_block(q, k, v, q_rank, k_rank, scale, config, rng)


@dataclass
class CausalLevel:
    """One recursion level: `pairs` splits of `size` rows per z; queries of each split's
    second half attend the keys of its first half (z-problems ordered (z, pair))."""

    size: int
    pairs: int


def causal_levels(n: int, min_seq_len: int) -> tuple[int, int, list[CausalLevel]]:
    """(padded length, diagonal block length, levels) of the causal recursion for n rows."""
    levels = 0
    while math.ceil(n / 2**levels) > min_seq_len:
        levels += 1
    base = math.ceil(n / 2**levels)
    padded_n = base * 2**levels
    return padded_n, base, [CausalLevel(padded_n >> i, 2 ** (i - 1)) for i in range(1, levels + 1)]


def level_ranks(q_rank: Tensor, k_rank: Tensor, level: CausalLevel) -> tuple[Tensor, Tensor]:
    """Ranks of one level's problems: q_rank [z, g, N], k_rank [z, N] ->
    [z*pairs, g, size] (second halves) and [z*pairs, size] (first halves)."""
    z, g, _ = q_rank.shape
    size, pairs = level.size, level.pairs
    q_low = q_rank.view(z, g, pairs, 2, size)[:, :, :, 1].transpose(1, 2)
    return q_low.reshape(z * pairs, g, size), k_rank.view(z * pairs, 2, size)[:, 0]


def _causal_square(q, k, v, q_rank, k_rank, scale, config, rng) -> tuple[Tensor, Tensor]:
    """Causal attention with nq == nk by halving: the lower-left block of every split is
    non-causal HyperAttention, diagonal blocks of at most min_seq_len are exact.

    All splits of one recursion level are independent and of equal size, so each level
    runs as one batched call (sub-problems folded into z) instead of one call per block.
    """
    z, g, n, dim = q.shape
    if n <= config.min_seq_len:
        return _exact(q, k, v, scale, causal=True)
    padded_n, base, levels = causal_levels(n, config.min_seq_len)
    # Zero rows appended at the end are only ever seen by (discarded) padded queries:
    # in every lower-left block whose keys include padding, all queries are padding.
    # A zero row hashes to rank 0.
    q, k, v = (_pad_rows(t, padded_n - n).contiguous() for t in (q, k, v))
    q_rank = torch.nn.functional.pad(q_rank, (0, padded_n - n))
    k_rank = torch.nn.functional.pad(k_rank, (0, padded_n - n))
    dv = v.shape[-1]

    # Diagonal blocks: [z, g, N, d] -> [z*blocks, g, base, d]
    blocks = padded_n // base
    q_diag = q.view(z, g, blocks, base, dim).transpose(1, 2).reshape(z * blocks, g, base, dim)
    out, lse = _exact(
        q_diag, k.view(z * blocks, base, dim), v.view(z * blocks, base, dv), scale, causal=True
    )
    out = out.view(z, blocks, g, base, dv).transpose(1, 2).reshape(z, g, padded_n, dv)
    lse = lse.view(z, blocks, g, base).transpose(1, 2).reshape(z, g, padded_n)

    for level in levels:
        size, pairs = level.size, level.pairs
        # queries of the second half of each pair against keys of its first half
        q_low = q.view(z, g, pairs, 2, size, dim)[:, :, :, 1].transpose(1, 2)
        q_low = q_low.reshape(z * pairs, g, size, dim)
        k_left = k.view(z * pairs, 2, size, dim)[:, 0]
        v_left = v.view(z * pairs, 2, size, dv)[:, 0]
        q_rank_l, k_rank_l = level_ranks(q_rank, k_rank, level)
        out_l, lse_l = _sorted_block(
            q_low, k_left, v_left, q_rank_l, k_rank_l, scale, config, rng
        )
        out_l = out_l.view(z, pairs, g, size, dv).transpose(1, 2)
        lse_l = lse_l.view(z, pairs, g, size).transpose(1, 2)

        out_pairs = out.view(z, g, pairs, 2, size, dv)
        lse_pairs = lse.view(z, g, pairs, 2, size)
        merged_out, merged_lse = merge_by_lse(
            out_pairs[:, :, :, 1], lse_pairs[:, :, :, 1], out_l, lse_l
        )
        out = torch.stack((out_pairs[:, :, :, 0], merged_out), dim=3).view(z, g, padded_n, dv)
        lse = torch.stack((lse_pairs[:, :, :, 0], merged_lse), dim=3).view(z, g, padded_n)
    return out[:, :, :n], lse[:, :, :n]


def _use_fused(q: Tensor, k: Tensor, v: Tensor, config: HyperAttentionConfig) -> bool:
    if config.backend == "torch":
        return False
    from .fused import fused_unsupported_reason

    reason = fused_unsupported_reason(q, k, v)
    if reason is not None and config.backend == "triton":
        raise ValueError(f"HyperAttentionConfig(backend='triton'): {reason}")
    return reason is None


def _tail(rank: Tensor | None, offset: int) -> Tensor | None:
    return None if rank is None else rank[:, offset:]


def _head(rank: Tensor | None, offset: int) -> Tensor | None:
    return None if rank is None else rank[:, :offset]


def _check_inputs(q: Tensor, k: Tensor, v: Tensor, causal: bool) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(
                f"hyper_attention expects {name} as [batch, heads, seq, head_dim]; "
                f"got {t.dim()} dims with shape {tuple(t.shape)}"
            )
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"hyper_attention supports fp16/bf16/fp32/fp64; {name} is {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share a dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device; got {q.device}, {k.device}, {v.device}")
    if k.shape[:3] != v.shape[:3]:
        raise ValueError(
            f"k and v must agree in batch, heads and seq; got {tuple(k.shape)} and {tuple(v.shape)}"
        )
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(
            f"q and k must agree in batch and head_dim; got {tuple(q.shape)} and {tuple(k.shape)}"
        )
    if q.shape[1] % k.shape[1]:
        raise ValueError(
            f"query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]})"
        )
    if causal and q.shape[2] > k.shape[2]:
        raise ValueError(
            f"causal attention needs n_query <= n_key (queries are the last rows of the keys); "
            f"got n_query={q.shape[2]}, n_key={k.shape[2]}"
        )
    if k.shape[2] == 0 or q.shape[2] == 0:
        raise ValueError("hyper_attention needs at least one query and one key")


def hyper_attention_with_lse(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool,
    scale: float | None = None,
    config: HyperAttentionConfig | None = None,
    generator: torch.Generator | None = None,
    hash_dims: int | None = None,
) -> tuple[Tensor, Tensor]:
    """HyperAttention returning (out [b, hq, nq, dv] in q's dtype, lse [b, hq, nq] float32+).

    q [b, hq, nq, d], k [b, hk, nk, d], v [b, hk, nk, dv] with hq a multiple of hk.
    causal: queries are the last nq positions of the nk keys (prefill with a cache offset
    when nq < nk). generator (or config.seed) makes hyperplanes and samples reproducible.
    hash_dims: the LSH sees only the first hash_dims features of q and k (e.g. not the
    columns a position bias appended); None = all.
    """
    out, lse = _hyper_attention(q, k, v, causal, scale, config, generator, hash_dims, True)
    assert lse is not None
    return out, lse


def _hyper_attention(
    q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float | None,
    config: HyperAttentionConfig | None, generator: torch.Generator | None,
    hash_dims: int | None, need_lse: bool,
) -> tuple[Tensor, Tensor | None]:  # fmt: skip
    """`hyper_attention_with_lse`; need_lse=False lets the fused forward skip the
    log-sum-exp where nothing merges into it (it may then return None for it)."""
    config = config or HyperAttentionConfig()
    _check_inputs(q, k, v, causal)
    if config.min_seq_len < q.shape[2] <= config.exact_query_len(causal):
        # short enough to run exact by exact_up_to: below min_seq_len, so every path
        # (fused, torch) takes its exact branch
        config = replace(config, min_seq_len=q.shape[2])
    hash_dims = q.shape[-1] if hash_dims is None else int(hash_dims)
    if not 0 < hash_dims <= q.shape[-1]:
        raise ValueError(f"hash_dims must be in 1..{q.shape[-1]}; got {hash_dims}")
    if generator is None and config.seed is not None:
        # on the inputs' device: drawing on the CPU and copying over would stall the GPU
        generator = torch.Generator(device=q.device).manual_seed(config.seed)
    rng = _Randomness(generator, q.device)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)

    if _use_fused(q, k, v, config):
        from .fused import fused_hyper_attention_with_lse
        from .fused_backward import fused_hyper_attention_trainable

        if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
            return fused_hyper_attention_trainable(  # the fused backward attached
                q, k, v, causal=causal, scale=scale, config=config, rng=rng,
                hash_dims=hash_dims,
            )  # fmt: skip
        return fused_hyper_attention_with_lse(
            q, k, v, causal=causal, scale=scale, config=config, rng=rng,
            hash_dims=hash_dims, need_lse=need_lse,
        )  # fmt: skip

    b, hq, n_query, dim = q.shape
    hk, n_key, dv = k.shape[1], k.shape[2], v.shape[-1]
    # [b, hq, n, d] -> [b*hk, g, n, d]: query heads grouped under their key head
    qz = q.reshape(b * hk, hq // hk, n_query, dim)
    kz, vz = k.reshape(b * hk, n_key, dim), v.reshape(b * hk, n_key, dv)
    # One set of hyperplanes per call, shared by every recursion level (hash once).
    q_rank = k_rank = None
    if n_query > config.min_seq_len:
        planes = rng.hyperplanes(hash_dims, config.lsh_num_projs)
        q_rank = angular_lsh_rank(qz[..., :hash_dims], planes)
        k_rank = angular_lsh_rank(kz[..., :hash_dims], planes)

    if not causal:
        out, lse = _noncausal(qz, kz, vz, q_rank, k_rank, scale, config, rng)
    else:
        offset = n_key - n_query
        out, lse = _causal_square(
            qz, kz[:, offset:], vz[:, offset:], q_rank, _tail(k_rank, offset),
            scale, config, rng,
        )
        if offset:  # the cached prefix is visible to every query
            out_p, lse_p = _noncausal(
                qz, kz[:, :offset], vz[:, :offset], q_rank, _head(k_rank, offset),
                scale, config, rng,
            )
            out, lse = merge_by_lse(out, lse, out_p, lse_p)
    return out.reshape(b, hq, n_query, dv).to(q.dtype), lse.reshape(b, hq, n_query)


def _exact_by_sdpa(q: Tensor, k: Tensor, causal: bool, config: HyperAttentionConfig) -> bool:
    """Whether the call is exact by its length and SDPA's mask means the same: its
    causal mask is aligned top-left, so only n_query == n_key (no cached prefix)."""
    if config.backend != "auto" or q.dim() != 4 or k.dim() != 4:
        return False  # a named backend runs (or refuses) every call itself
    n_query = q.shape[2]
    return n_query <= config.exact_query_len(causal) and (not causal or n_query == k.shape[2])


def hyper_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool,
    scale: float | None = None,
    config: HyperAttentionConfig | None = None,
    generator: torch.Generator | None = None,
    hash_dims: int | None = None,
) -> Tensor:
    """HyperAttention output [b, hq, nq, dv]; see `hyper_attention_with_lse`.

    With backend "auto", calls short enough to be exact (`config.exact_query_len`) go
    straight to PyTorch's fused attention (no log-sum-exp is asked for here, so none is
    computed): the same exact result without this module's per-call work, which cost
    up to ~20% of the time at 8k tokens.
    """
    config = config or HyperAttentionConfig()
    if _exact_by_sdpa(q, k, causal, config):
        _check_inputs(q, k, v, causal)
        return torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=causal, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
        )
    out, _ = _hyper_attention(q, k, v, causal, scale, config, generator, hash_dims, False)
    return out


def exact_attention_with_lse(
    q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float | None = None
) -> tuple[Tensor, Tensor]:
    """Exact attention with LSE in the same layout and conventions as HyperAttention."""
    _check_inputs(q, k, v, causal)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    b, hq, n_query, dim = q.shape
    hk, n_key, dv = k.shape[1], k.shape[2], v.shape[-1]
    out, lse = _exact(
        q.reshape(b * hk, hq // hk, n_query, dim),
        k.reshape(b * hk, n_key, dim),
        v.reshape(b * hk, n_key, dv),
        scale,
        causal,
    )
    return out.reshape(b, hq, n_query, dv).to(q.dtype), lse.reshape(b, hq, n_query)


__all__ = [
    "exact_attention_with_lse",
    "hyper_attention",
    "hyper_attention_with_lse",
    "sorted_block_attention",
]
