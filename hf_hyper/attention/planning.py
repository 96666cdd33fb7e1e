"""Where each query looks: hyperplanes and samples, bucket order, query blocks, query
tiles and the causal recursion's levels, and what the executors ask of a finder
(`BlockFinder`, `QueryFinder`, the rows a query finder's kernels merge into). Shared by
the torch path, the fused path, the finders and the diagnostics; no attention is
computed here.

Internal layout: queries `[z, g, n]` and keys `[z, n]` (ranks), `z` folding batch, key
heads and sub-problems, `g` the query heads that share a key head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from ..config import HyperAttentionConfig


class Randomness:
    """Where hyperplanes and samples come from: a generator (reproducible) or global RNG.

    seed: the seed the generator was just made from, when it was (and nobody else holds
    it): while `unused`, the draws to come are then a function of the seed and the
    requests alone, which lets a graph replay keep draws it made before."""

    def __init__(
        self, generator: torch.Generator | None, device: torch.device, seed: int | None = None
    ) -> None:
        self.generator = generator
        self.device = device
        self.draw_device = generator.device if generator is not None else device
        self.seed = seed if generator is not None else None
        self.unused = True

    def hyperplanes(self, dim: int, count: int) -> Tensor:
        self.unused = False
        planes = torch.randn(dim, count, generator=self.generator, device=self.draw_device)
        return planes.to(self.device)

    def indices(self, high: int, shape: tuple[int, ...]) -> Tensor:
        self.unused = False
        idx = torch.randint(high, shape, generator=self.generator, device=self.draw_device)
        return idx.to(self.device)


class BlockFinder(Protocol):
    """What the executors ask of a block finder (`finders.LshBlocks`, `KmeansBlocks`):
    bucket ranks, from which `plan_blocks` (or the fused tiles) make the blocks."""

    def call_ranks(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor] | None:
        """Ranks of every query and key of the call at once, where a row's rank depends
        on that row alone; None where each problem ranks its own rows (`ranks`)."""
        ...

    def ranks(self, q: Tensor, k: Tensor, skip_keys: Tensor | None) -> tuple[Tensor, Tensor]:
        """Ranks of one batch of problems: queries [zp, g, nq, d] (or a causal level's
        [z, p, g, nq, d] view) and keys [zp, nk, d]; the leading skip_keys[zp] keys take
        no part in choosing the buckets (they are attended exactly elsewhere)."""
        ...


@dataclass(frozen=True)
class RowTarget:
    """Rows addressed where they lie, for kernels that read a batch of problems' queries
    and keys in place and merge their result into an output: q, k, v and out (rows of
    dv elements, row-major) with lse (one float32 per row) as whole tensors; q_base,
    o_base [zp * g]: element offset in q and output row of (problem, query head)'s
    position 0; k_base, v_base [zp]: element offset of the problem's key 0; the row
    strides in elements; align: what every row's element offset is a multiple of (the
    elements in 16 bytes where the tensors allow, else 1), for the kernels' wide loads."""

    q: Tensor
    k: Tensor
    v: Tensor
    out: Tensor
    lse: Tensor
    q_base: Tensor
    o_base: Tensor
    k_base: Tensor
    v_base: Tensor
    q_stride: int
    k_stride: int
    v_stride: int
    align: int

    def of_problems(self, part: slice, heads: int) -> RowTarget:
        """The same rows for the problems `part` alone (each with `heads` query heads)."""
        head_part = slice(part.start * heads, part.stop * heads)
        return replace(
            self, q_base=self.q_base[head_part], o_base=self.o_base[head_part],
            k_base=self.k_base[part], v_base=self.v_base[part],
        )  # fmt: skip


@runtime_checkable
class QueryFinder(Protocol):
    """What the executors ask of a finder that chooses each query's own keys
    (`finders.QueryClusters`): it attends one batch of problems itself, leaving out the
    keys attended exactly elsewhere, and the executor merges what it returns."""

    def attend(
        self, q: Tensor, k: Tensor, v: Tensor, rng: Randomness, sinks: Tensor | None,
        band: int = 0,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        """q [zp, g, nq, d], k [zp, nk, d], v [zp, nk, dv] -> (out [zp, g, nq, dv],
        lse [zp, g, nq]) over all keys but each problem's first sinks[zp] keys and, for
        its first `band` queries, its last `band` keys."""
        ...

    def attend_into(
        self, q: Tensor, k: Tensor, v: Tensor, rows: RowTarget, rng: Randomness,
        sinks: Tensor | None, band: int = 0,
    ) -> bool:  # fmt: skip
        """`attend`, merged by kernels straight into the rows `rows` addresses (the
        same problems as q, k, v, which choose the keys). False, with nothing done and
        nothing drawn, where the kernels cannot serve the call: then use `attend`."""
        ...


# Up to this many hyperplanes, a table of where each bucket starts among the sorted
# keys (2**r + 1 entries per problem) replaces a binary search per query.
BUCKET_TABLE_MAX_PROJS = 12


def bucket_starts(k_rank_sorted: Tensor, num_projs: int) -> Tensor:
    """[z, 2**num_projs + 1] int64: starts[r] = keys of rank < r (k_rank_sorted [z, nk])."""
    z = k_rank_sorted.shape[0]
    buckets = torch.arange((1 << num_projs) + 1, device=k_rank_sorted.device)
    buckets = buckets.to(k_rank_sorted.dtype).expand(z, -1).contiguous()
    return torch.searchsorted(k_rank_sorted, buckets)


def bucket_bounds(q_rank: Tensor, k_rank_sorted: Tensor, num_projs: int) -> tuple[Tensor, Tensor]:
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


def query_blocks(
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
    first, last = bucket_bounds(flat, k_rank_sorted, num_projs)
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
    q_rank: Tensor, k_rank: Tensor, config: HyperAttentionConfig, rng: Randomness
) -> BlockPlan:
    """Sort keys by LSH bucket (stable: a bucket keeps sequence order), cut them into
    equal blocks, send each query to the block where its bucket lies, draw the sample.

    q_rank [z, g, nq], k_rank [z, nk] (from `angular_lsh_rank`).
    """
    n_key = k_rank.shape[-1]
    k_rank_sorted, k_order = torch.sort(k_rank, dim=-1, stable=True)
    n_blocks = math.ceil(n_key / config.block_size)
    key_block = math.ceil(n_key / n_blocks)
    q_block = query_blocks(q_rank, k_rank_sorted, key_block, n_blocks, config.lsh_num_projs)
    sample = None
    if config.sample_size > 0 and n_blocks > 1:
        sample = rng.indices(n_key, (k_rank.shape[0], config.sample_size))
    return BlockPlan(k_order, q_block, key_block, n_blocks, sample)


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


def level_queries(q: Tensor, level: CausalLevel) -> Tensor:
    """One level's queries from the padded square, q [z, g, N, d] -> the second halves
    as a view [z, pairs, g, size, d] (problem (z, pair) has the query heads g)."""
    z, g, _, dim = q.shape
    return q.view(z, g, level.pairs, 2, level.size, dim)[:, :, :, 1].transpose(1, 2)


def level_problems(q: Tensor, k: Tensor, level: CausalLevel) -> tuple[Tensor, Tensor]:
    """One level's problems from the padded square: q [z, g, N, d], k [z, N, d] ->
    second-half queries [z*pairs, g, size, d] (a copy where g > 1) and first-half keys
    [z*pairs, size, d] (a view), ordered (z, pair)."""
    z, g, _, dim = q.shape
    q_low = level_queries(q, level).reshape(z * level.pairs, g, level.size, dim)
    return q_low, level_keys(k, level)


def level_keys(k: Tensor, level: CausalLevel) -> Tensor:
    """One level's keys from the padded square, k [z, N, d] -> the first halves
    [z*pairs, size, d], ordered (z, pair): a view, or a copy where k's problems do not
    follow each other in memory (the square of a call with a cached prefix)."""
    z, _, dim = k.shape
    halves = k.view(z, level.pairs, 2, level.size, dim)[:, :, 0]
    return halves.reshape(z * level.pairs, level.size, dim)


def level_sinks(z: int, level: CausalLevel, n_sink: int, device) -> Tensor:
    """Sink keys of each of one level's problems [z*pairs] (int64): problems are ordered
    (z, pair), and only each z's first pair holds the sinks."""
    sinks = torch.zeros(z, level.pairs, dtype=torch.int64, device=device)
    sinks[:, 0] = n_sink
    return sinks.view(-1)


def level_ranks(q_rank: Tensor, k_rank: Tensor, level: CausalLevel) -> tuple[Tensor, Tensor]:
    """Ranks of one level's problems: q_rank [z, g, N], k_rank [z, N] ->
    [z*pairs, g, size] (second halves) and [z*pairs, size] (first halves)."""
    z, g, _ = q_rank.shape
    size, pairs = level.size, level.pairs
    q_low = q_rank.view(z, g, pairs, 2, size)[:, :, :, 1].transpose(1, 2)
    return q_low.reshape(z * pairs, g, size), k_rank.view(z * pairs, 2, size)[:, 0]
