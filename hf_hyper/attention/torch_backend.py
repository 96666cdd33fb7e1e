"""HyperAttention in plain torch ops (any device): the reference implementation of the
algorithm, and the path for inputs the fused kernels do not take.

Internal layout: queries `[z, g, n, d]`, keys and values `[z, n, d]` (see blockwise.py).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..config import HyperAttentionConfig
from .blockwise import attention_with_lse, causal_mask_fn, merge_by_lse
from .exact_tail import exact_attention, flash_runs
from .finders import Finder, QueryClusters, finder_of_call
from .padding import gather_rows, pad_end, pad_rows
from .planning import (
    BlockPlan,
    Randomness,
    causal_levels,
    level_problems,
    level_ranks,
    level_sinks,
    pack_query_tiles,
    plan_blocks,
)


def _block_attention(
    q: Tensor, k: Tensor, v: Tensor, plan: BlockPlan, scale: float, sinks: Tensor | None,
    band: int = 0,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Each query attends exactly its key block, less the problem's first sinks[z] keys
    and, for its first `band` queries, its last `band` keys (both attended exactly
    elsewhere): -> out [z, g, nq, dv], lse [z, g, nq]."""
    z, g, n_query, dim = q.shape
    n_key, dv = k.shape[1], v.shape[-1]
    n_blocks, key_block = plan.n_blocks, plan.key_block
    dev = q.device
    key_pad = n_blocks * key_block - n_key
    k_blocks = pad_rows(gather_rows(k, plan.k_order), key_pad)
    v_blocks = pad_rows(gather_rows(v, plan.k_order), key_pad)

    n_rows = g * n_query
    tile = max(1, min(4 * key_block, math.ceil(n_rows / n_blocks)))
    pack = pack_query_tiles(plan.q_block.reshape(z, n_rows), n_blocks, tile)
    n_tiles = pack.n_tiles

    # [z, g*nq + 1, d] -> [z*tiles, 1, tile, d];  key blocks gathered per tile
    q_rows = pad_rows(q.reshape(z, n_rows, dim), 1)
    q_tiles = gather_rows(q_rows, pack.slot_query).view(z * n_tiles, 1, tile, dim)
    block_index = (pack.tile_block + torch.arange(z, device=dev)[:, None] * n_blocks).view(-1)
    k_tiles = k_blocks.view(z * n_blocks, key_block, dim).index_select(0, block_index)
    v_tiles = v_blocks.view(z * n_blocks, key_block, dv).index_select(0, block_index)

    pad_mask = None
    if sinks is not None or band:
        # [z, nb * bk] key index at each padded sorted position (padding: n_key)
        order = pad_end(plan.k_order, key_pad, value=n_key)
        hidden = order >= n_key
        if sinks is not None:
            hidden = hidden | (order < sinks[:, None])
        hidden = hidden.view(z * n_blocks, key_block)
        if band:
            in_corner = (order >= n_key - band).view(z * n_blocks, key_block)
            # [z*tiles, tile]: the query's position (the padding slot is row n_rows)
            early = (pack.slot_query % n_query < band).view(z * n_tiles, tile)

        def pad_mask(z0: int, z1: int, r0: int, r1: int) -> Tensor:
            mask = hidden[block_index[z0:z1]][:, None, None, :]
            if band:
                corner = (
                    early[z0:z1, None, r0:r1, None] & in_corner[block_index[z0:z1]][:, None, None]
                )
                mask = mask | corner
            return mask

    elif key_pad:
        padded = torch.arange(n_blocks * key_block, device=dev).view(n_blocks, key_block)
        padded = padded >= n_key  # [nb, bk]
        flat_block = pack.tile_block.view(-1)

        def pad_mask(z0: int, z1: int, r0: int, r1: int) -> Tensor:
            return padded[flat_block[z0:z1]][:, None, None, :]

    out, lse = attention_with_lse(q_tiles, k_tiles, v_tiles, scale, pad_mask)
    # [z*tiles, 1, tile, dv] -> [z, tiles*tile, dv] -> rows in original order
    out = gather_rows(out.view(z, n_tiles * tile, -1), pack.query_slot)
    lse = torch.gather(lse.view(z, n_tiles * tile), 1, pack.query_slot)
    return out.view(z, g, n_query, -1), lse.view(z, g, n_query)


def _sampled_attention(
    q: Tensor, k: Tensor, v: Tensor, plan: BlockPlan, scale: float, sinks: Tensor | None,
    band: int = 0,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Attention to the sampled keys outside each query's own block, the sinks and the
    band corner, weighted n/m."""
    assert plan.sample is not None
    n_key = k.shape[1]
    key_index = torch.gather(plan.k_order, 1, plan.sample)  # [z, m]
    k_sample, v_sample = gather_rows(k, key_index), gather_rows(v, key_index)
    sample_block = plan.sample // plan.key_block
    q_block = plan.q_block
    is_sink = None if sinks is None else key_index < sinks[:, None]  # [z, m]
    in_corner = key_index >= n_key - band  # [z, m]

    def own_block(z0: int, z1: int, r0: int, r1: int) -> Tensor:
        # keys already counted exactly (the query's block, the sinks, the band) must not
        # count twice; masking them keeps the n/m weight an unbiased estimate of the rest
        hidden = q_block[z0:z1, :, r0:r1, None] == sample_block[z0:z1, None, None, :]
        if is_sink is not None:
            hidden = hidden | is_sink[z0:z1, None, None, :]
        if band and r0 < band:
            early = torch.arange(r0, r1, device=q.device) < band
            hidden = hidden | (early[:, None] & in_corner[z0:z1, None, None, :])
        return hidden

    out, lse = attention_with_lse(q, k_sample, v_sample, scale, own_block)
    # Each sampled key stands for n_key / m keys of the rest (unbiased estimate).
    return out, lse + math.log(n_key / plan.sample.shape[1])


def _sorted_block(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_rank: Tensor,
    k_rank: Tensor,
    scale: float,
    config: HyperAttentionConfig,
    rng: Randomness,
    sinks: Tensor | None = None,
    band: int = 0,
) -> tuple[Tensor, Tensor]:
    """Block + sample of one batch of problems; sinks [z] (or None): leading keys of each
    problem left out of both, as they are attended exactly elsewhere; band: the first
    `band` queries' last `band` keys likewise (the queries follow the keys)."""
    plan = plan_blocks(q_rank, k_rank, config, rng)
    out, lse = _block_attention(q, k, v, plan, scale, sinks, band)
    if plan.sample is not None:
        sampled = _sampled_attention(q, k, v, plan, scale, sinks, band)
        out, lse = merge_by_lse(out, lse, *sampled)
    return _with_band(q, k, v, out, lse, scale, band, config.allows_kernels)


def _approximate(
    q: Tensor, k: Tensor, v: Tensor, q_rank: Tensor | None, k_rank: Tensor | None,
    scale: float, config: HyperAttentionConfig, rng: Randomness, sinks: Tensor | None,
    band: int, finder: Finder | None,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """One batch of problems by the call's large-entry finder: blocks of the call's
    ranks where given, else of the finder's ranks of these problems, or each query's
    own clusters; then the band."""
    if isinstance(finder, QueryClusters):
        out, lse = finder.attend(q, k, v, rng, sinks, band)
        return _with_band(q, k, v, out, lse, scale, band, config.allows_kernels)
    if q_rank is None or k_rank is None:
        assert finder is not None
        q_rank, k_rank = finder.ranks(q, k, sinks)
    assert q_rank is not None and k_rank is not None
    return _sorted_block(q, k, v, q_rank, k_rank, scale, config, rng, sinks, band)


def _with_band(
    q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, scale: float, band: int,
    kernels: bool,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """(out, lse) with the first `band` queries merged with exact attention to the last
    `band` keys: the queries directly follow the keys, so this is the local window that
    a cut between them would leave to the approximation."""
    if band == 0:
        return out, lse
    n_key = k.shape[1]
    near_out, near_lse = grouped_exact_attention(
        q[:, :, :band], k[:, n_key - band :], v[:, n_key - band :], scale, False, kernels
    )
    head_out, head_lse = merge_by_lse(out[:, :, :band], lse[:, :, :band], near_out, near_lse)
    out = torch.cat((head_out, out[:, :, band:]), dim=2)
    return out, torch.cat((head_lse, lse[:, :, band:]), dim=2)


def _with_sinks(
    q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, scale: float, n_sink: int,
    kernels: bool,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """(out, lse) of every query merged with exact attention to keys [0, n_sink)."""
    if n_sink == 0:
        return out, lse
    sink_out, sink_lse = grouped_exact_attention(
        q, k[:, :n_sink], v[:, :n_sink], scale, False, kernels
    )
    return merge_by_lse(out, lse, sink_out, sink_lse)


def grouped_exact_attention(
    q: Tensor, k: Tensor, v: Tensor, scale: float, causal: bool, kernels: bool = False
) -> tuple[Tensor, Tensor]:
    """Exact attention on the internal layout (causal: queries are the last rows).
    kernels: in PyTorch's flash kernel where it runs (CUDA, 16-bit, no gradient), as
    the fused path's exact parts are; else, and always under backend "torch", torch ops."""
    if kernels and flash_runs(q, k, v):
        return exact_attention(q, k[:, None], v[:, None], scale, causal)
    mask = causal_mask_fn(q.shape[2], k.shape[1], q.device) if causal else None
    return attention_with_lse(q, k, v, scale, mask)


def _noncausal(
    q, k, v, q_rank, k_rank, scale, config, rng, n_sink, band=0, finder=None
) -> tuple[Tensor, Tensor]:
    """Non-causal HyperAttention with keys [0, n_sink) attended exactly by every query
    (and the band corner, where the queries directly follow the keys)."""
    kernels = config.allows_kernels
    if min(q.shape[2], k.shape[1]) <= config.min_seq_len:
        return grouped_exact_attention(q, k, v, scale, False, kernels)
    sinks = torch.full((q.shape[0],), n_sink, device=q.device) if n_sink else None
    out, lse = _approximate(q, k, v, q_rank, k_rank, scale, config, rng, sinks, band, finder)
    return _with_sinks(q, k, v, out, lse, scale, n_sink, kernels)


def _causal_square(
    q, k, v, q_rank, k_rank, scale, config, rng, n_sink, finder=None
) -> tuple[Tensor, Tensor]:
    """Causal attention with nq == nk by halving: the lower-left block of every split is
    non-causal HyperAttention, diagonal blocks of at most min_seq_len are exact.

    Keys [0, n_sink) are attended exactly by every query: the first diagonal block holds
    them for its own rows (n_sink <= min_seq_len / 2 < base), the lower-left blocks that
    contain them (each level's first pair) leave them out, and the rows after the first
    block attend them in one exact part. With a local window w, the first w queries of
    every lower-left block attend its last w keys exactly (the keys a cut separates
    them from).

    All splits of one recursion level are independent and of equal size, so each level
    runs as one batched call (sub-problems folded into z) instead of one call per block.
    """
    z, g, n, dim = q.shape
    kernels = config.allows_kernels
    if n <= config.min_seq_len:
        return grouped_exact_attention(q, k, v, scale, True, kernels)
    padded_n, base, levels = causal_levels(n, config.min_seq_len)
    # Zero rows appended at the end are only ever seen by (discarded) padded queries:
    # in every lower-left block whose keys include padding, all queries are padding.
    # A zero row hashes to rank 0.
    q, k, v = (pad_rows(t, padded_n - n).contiguous() for t in (q, k, v))
    if q_rank is not None and k_rank is not None:
        q_rank = torch.nn.functional.pad(q_rank, (0, padded_n - n))
        k_rank = torch.nn.functional.pad(k_rank, (0, padded_n - n))
    dv = v.shape[-1]

    # Diagonal blocks: [z, g, N, d] -> [z*blocks, g, base, d]
    blocks = padded_n // base
    q_diag = q.view(z, g, blocks, base, dim).transpose(1, 2).reshape(z * blocks, g, base, dim)
    out, lse = grouped_exact_attention(
        q_diag, k.view(z * blocks, base, dim), v.view(z * blocks, base, dv), scale, True, kernels
    )
    out = out.view(z, blocks, g, base, dv).transpose(1, 2).reshape(z, g, padded_n, dv)
    lse = lse.view(z, blocks, g, base).transpose(1, 2).reshape(z, g, padded_n)

    for level in levels:
        size, pairs = level.size, level.pairs
        # queries of the second half of each pair against keys of its first half
        q_low, k_left = level_problems(q, k, level)
        v_left = v.view(z * pairs, 2, size, dv)[:, 0]
        sinks = level_sinks(z, level, n_sink, q.device) if n_sink else None
        # without the call's ranks, each lower-left block is ranked (or clustered) from
        # its own keys, all before its queries
        q_rank_l = k_rank_l = None
        if q_rank is not None and k_rank is not None:
            q_rank_l, k_rank_l = level_ranks(q_rank, k_rank, level)
        out_l, lse_l = _approximate(
            q_low, k_left, v_left, q_rank_l, k_rank_l, scale, config, rng, sinks,
            config.window, finder,
        )  # fmt: skip
        out_l = out_l.view(z, pairs, g, size, dv).transpose(1, 2)
        lse_l = lse_l.view(z, pairs, g, size).transpose(1, 2)

        out_pairs = out.view(z, g, pairs, 2, size, dv)
        lse_pairs = lse.view(z, g, pairs, 2, size)
        merged_out, merged_lse = merge_by_lse(
            out_pairs[:, :, :, 1], lse_pairs[:, :, :, 1], out_l, lse_l
        )
        out = torch.stack((out_pairs[:, :, :, 0], merged_out), dim=3).view(z, g, padded_n, dv)
        lse = torch.stack((lse_pairs[:, :, :, 0], merged_lse), dim=3).view(z, g, padded_n)
    if n_sink:
        rest_out, rest_lse = _with_sinks(
            q[:, :, base:], k, v, out[:, :, base:], lse[:, :, base:], scale, n_sink, kernels
        )
        out = torch.cat((out[:, :, :base], rest_out), dim=2)
        lse = torch.cat((lse[:, :, :base], rest_lse), dim=2)
    return out[:, :, :n], lse[:, :, :n]


def torch_hyper_attention(
    q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float,
    config: HyperAttentionConfig, rng: Randomness, hash_dims: int,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """HyperAttention on validated public-layout inputs: q [b, hq, nq, d], k [b, hk, nk, d],
    v [b, hk, nk, dv] -> out [b, hq, nq, dv] in q's dtype, lse [b, hq, nq] (float32+).
    Draws, in order: hyperplanes once, then one sample per level, then the prefix's.
    The first config.sinks keys are attended exactly by every query that sees them
    (attention sinks), and left out of the LSH blocks and the samples."""
    b, hq, n_query, dim = q.shape
    hk, n_key, dv = k.shape[1], k.shape[2], v.shape[-1]
    # [b, hq, n, d] -> [b*hk, g, n, d]: query heads grouped under their key head
    qz = q.reshape(b * hk, hq // hk, n_query, dim)
    kz, vz = k.reshape(b * hk, n_key, dim), v.reshape(b * hk, n_key, dv)
    # One set of hyperplanes per call, shared by every recursion level (hash once).
    q_rank = k_rank = finder = None
    if n_query > config.min_seq_len:
        planes = rng.hyperplanes(hash_dims, config.lsh_num_projs)
        finder = finder_of_call(config, planes, hash_dims, scale)
        if not isinstance(finder, QueryClusters):
            q_rank, k_rank = finder.call_ranks(qz, kz) or (None, None)

    n_sink = config.sinks
    if not causal:
        out, lse = _noncausal(qz, kz, vz, q_rank, k_rank, scale, config, rng, n_sink, finder=finder)
    else:
        offset = n_key - n_query
        k_rank_square = None if k_rank is None else k_rank[:, offset:]
        out, lse = _causal_square(
            qz, kz[:, offset:], vz[:, offset:], q_rank, k_rank_square, scale, config, rng,
            max(0, n_sink - offset), finder,
        )  # fmt: skip
        if offset:  # the cached prefix is visible to every query
            k_rank_prefix = None if k_rank is None else k_rank[:, :offset]
            out_p, lse_p = _noncausal(
                qz, kz[:, :offset], vz[:, :offset], q_rank, k_rank_prefix, scale, config, rng,
                min(n_sink, offset), config.window, finder,
            )  # fmt: skip
            out, lse = merge_by_lse(out, lse, out_p, lse_p)
    return out.reshape(b, hq, n_query, dv).to(q.dtype), lse.reshape(b, hq, n_query)
