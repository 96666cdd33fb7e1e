"""Fused HyperAttention forward on CUDA: the same algorithm and random draws as the
plain-torch path, with the work in a few kernels. This module is the recursion (the
causal halving, the cached prefix, the order of launches and draws); the launches
themselves are `launches.Problem`'s.

The hash is one Triton pass over q and k; sorting and tile packing are counting sorts
and Triton passes over narrow integers; each recursion level is one Triton launch that
forms its addresses from the plan and merges into the output in place. The exact
diagonal blocks of causal attention go to cuDNN's fused attention where it runs, else to
the Triton dense kernel. Nothing of size O(n * d) is copied except when the causal
recursion needs padding (lengths not divisible by 2**levels) or cuDNN's output needs a
layout change.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ...config import HyperAttentionConfig
from ..padding import pad_end, pad_rows
from ..planning import (
    BlockFinder,
    QueryFinder,
    Randomness,
    causal_levels,
    level_keys,
    level_problems,
    level_queries,
    level_ranks,
    level_sinks,
)
from .launches import Problem
from .overlap import DiagonalOverlap
from .records import ForwardRecord


def causal_diagonal(problem: Problem, config: HyperAttentionConfig) -> None:
    """The exact diagonal blocks of the causal recursion (q, k, v of the same padded
    length N). Launched before the hash: the GPU runs this long kernel while the
    host hashes and plans the first level, instead of waiting for it."""
    _, base, _ = causal_levels(problem.n_query, config.min_seq_len)
    blocks = problem.n_query // base
    if not problem.cudnn_diagonal(blocks):
        problem.dense_diagonal(blocks)


def causal_off_diagonal(
    problem: Problem, q_rank: Tensor | None, k_rank: Tensor | None, config, rng,
    n_sink: int = 0, band: int = 0, finder: BlockFinder | QueryFinder | None = None,
) -> None:  # fmt: skip
    """The off-diagonal blocks of the causal recursion, merged into the diagonal's
    output: one batched block-sample launch per level. Each level's first pair,
    whose keys hold the first n_sink keys, attends them exactly: every row after the
    first diagonal block is a query of exactly one such pair, and the rows of that
    block see them in the diagonal. With a band, every pair's first `band` queries
    attend its last `band` keys exactly, in one dense launch per level. Without the
    call's ranks, each level's problems are ranked by the finder; a query finder
    attends them itself, and its result is merged into their rows (the sinks then in
    one dense launch for every row after the first diagonal block)."""
    _, base, levels = causal_levels(problem.n_query, config.min_seq_len)
    z, g = problem.z, problem.g
    q_base, k_base, v_base, o_base = problem.plan_bases
    for level in levels:
        size, pairs = level.size, level.pairs
        pair = torch.arange(pairs, device=problem.plan_device)
        # problem (z, pair): queries from (2 pair + 1) size, keys from 2 pair size
        q_first = ((2 * pair + 1) * size)[None, :, None]
        k_first = (2 * pair * size)[None, :]
        host = [
            (q_base[:, None, :] + q_first * problem.q.stride(2)).reshape(z * pairs, g),
            (o_base[:, None, :] + q_first).reshape(z * pairs, g),
            (k_base[:, None] + k_first * problem.k.stride(2)).reshape(-1),
            (v_base[:, None] + k_first * problem.v.stride(2)).reshape(-1),
        ]  # fmt: skip
        if n_sink:
            host.append(level_sinks(z, level, n_sink, problem.plan_device))
        # one pinned copy: a pageable one would wait for the stream at every level
        moved = problem.to_device(*host)
        bases, sink_keys = moved[:4], (moved[4] if n_sink else None)
        if isinstance(finder, QueryFinder):
            q_all, k_all, v_all = problem.grouped()
            q_low, k_low = level_problems(q_all, k_all, level)
            v_low = level_keys(v_all, level)
            q_l, o_l, k_l, v_l = bases
            rows = problem.row_target(q_l, o_l, k_l, v_l)
            if not finder.attend_into(q_low, k_low, v_low, rows, rng, sink_keys, band):
                out, lse = finder.attend(q_low, k_low, v_low, rng, sink_keys, band)
                # [z*pairs, g, size, ...] -> [z, g, pairs, size, ...]: the second halves
                problem.merge_rows(
                    out.unflatten(0, (z, pairs)).transpose(1, 2),
                    lse.unflatten(0, (z, pairs)).transpose(1, 2),
                )
        else:
            if q_rank is not None and k_rank is not None:
                q_rank_l, k_rank_l = level_ranks(q_rank, k_rank, level)
            else:
                assert finder is not None
                # the level's queries as a view: the finder reads them in place
                q_all, k_all, _ = problem.grouped()
                q_low, k_low = level_queries(q_all, level), level_keys(k_all, level)
                q_rank_l, k_rank_l = finder.ranks(q_low, k_low, sink_keys)
            problem.block_sample(
                *bases, q_rank_l, k_rank_l, config, rng, merge=True, sink_keys=sink_keys,
                band=band,
            )  # fmt: skip
        if band:
            q_l, o_l, k_l, v_l = bases
            kv_index = torch.arange(z * pairs, device=q_l.device).repeat_interleave(g)
            problem.corner(
                q_l.reshape(-1), o_l.reshape(-1), kv_index, k_l + size * problem.k.stride(2),
                v_l + size * problem.v.stride(2), band,
            )  # fmt: skip
    if n_sink and isinstance(finder, QueryFinder):
        problem.exact_rows(base, n_sink)
    elif n_sink:
        problem.record_sinks(base, n_sink)


def fused_forward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool,
    scale: float,
    config: HyperAttentionConfig,
    rng: Randomness,
    finder_of_planes: Callable[[Tensor], BlockFinder | QueryFinder],
    hash_dims: int | None = None,
    record: ForwardRecord | None = None,
    need_lse: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """HyperAttention forward with Triton kernels; inputs already validated.

    finder_of_planes: the call's finder, given its hyperplanes (drawn here, so that a
    CUDA graph records the draw). A block finder's ranks plan the block-sample
    launches; a query finder attends each batch of problems itself, and its results
    are merged into the rows (no backward: the API sends gradients to the torch path).

    Same draws in the same order as the torch path (hyperplanes once, then one sample
    per level, then the prefix's), so both give the same result up to rounding.
    record: if given, filled with the launches, for `fused_backward`. need_lse=False:
    the caller drops the log-sum-exp, so calls that merge nothing (non-causal, no sinks)
    keep none and return None for it. The sinks (config.sinks) are attended as in
    the torch path: left out of the blocks and samples of the problems that hold them,
    and attended exactly in the same launches.
    """
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    b, hq, n_query, dim = q.shape
    hk, n_key = k.shape[1], k.shape[2]
    g = hq // hk
    calls = None if record is None else record.whole
    n_sink = config.sinks
    problem = Problem(q, k, v, scale, calls, need_lse=need_lse or causal)

    def buckets() -> tuple[Tensor | None, Tensor | None, BlockFinder | QueryFinder]:
        """The call's finder and its ranks of all queries [b*hk, g, nq] and keys
        [b*hk, nk], or no ranks where each problem ranks its own rows (or a query
        finder attends them)."""
        hd = dim if hash_dims is None else hash_dims
        finder = finder_of_planes(rng.hyperplanes(hd, config.lsh_num_projs))
        if isinstance(finder, QueryFinder):
            return None, None, finder
        ranks = finder.call_ranks(q, k)
        if ranks is None:
            return None, None, finder
        return ranks[0].reshape(b * hk, g, n_query), ranks[1].reshape(b * hk, n_key), finder

    def skipped(sinks: int) -> Tensor | None:
        """The leading keys each key head's problem leaves to an exact part [b*hk]."""
        if not sinks:
            return None
        return torch.full((b * hk,), sinks, dtype=torch.int64, device=q.device)

    def problem_ranks(finder: BlockFinder, k_end: int, sinks: int) -> tuple[Tensor, Tensor]:
        """The finder's ranks of all queries against keys [0, k_end), the first `sinks`
        of them taking no part."""
        return finder.ranks(*problem.grouped(0, k_end)[:2], skipped(sinks))

    def query_finder_part(
        finder: QueryFinder, k_end: int, sinks: int, band: int, merge: bool
    ) -> None:
        """A query finder's attention of all queries to keys [0, k_end), merged into
        every row (or written there), then the first `sinks` keys and the band's corner
        exactly."""
        skip = skipped(sinks)
        q_all, k_all, v_all = problem.grouped(0, k_end)
        if not merge:  # rows with nothing in them yet, for the kernels to merge into
            problem.clear_rows()
        rows = problem.row_target(problem.q_base, problem.o_base, problem.k_base, problem.v_base)
        if not finder.attend_into(q_all, k_all, v_all, rows, rng, skip, band):
            out, lse = finder.attend(q_all, k_all, v_all, rng, skip, band)
            if merge:
                problem.merge_rows(out, lse)
            else:
                problem.write_rows(out, lse)
        if sinks:
            problem.exact(0, sinks, causal=False, merge=True)
        if band:
            problem.corner(
                problem.q_base.reshape(-1), problem.o_base.reshape(-1),
                problem.head_kv_index, problem.k_base + k_end * problem.k.stride(2),
                problem.v_base + k_end * problem.v.stride(2), band,
            )  # fmt: skip

    if not causal:
        if min(n_query, n_key) <= config.min_seq_len:
            if not problem.cudnn_diagonal(1, causal=False):
                problem.exact(0, n_key, causal=False, merge=False)
        else:
            q_rank, k_rank, finder = buckets()
            if isinstance(finder, QueryFinder):
                query_finder_part(finder, n_key, n_sink, 0, merge=False)
                return problem.out, problem.lse
            if q_rank is None or k_rank is None:
                q_rank, k_rank = problem_ranks(finder, n_key, n_sink)
            problem.hyper(q_rank, k_rank, 0, config, rng, merge=False, n_sink=n_sink)
            if n_sink:
                problem.record_sinks(0, n_sink)
        return problem.out, problem.lse

    if n_query <= config.min_seq_len:  # short: exact, cached prefix included
        if not problem.cudnn_diagonal(1, causal=True):
            problem.exact(0, n_key, causal=True, merge=False)
        return problem.out, problem.lse

    offset = n_key - n_query
    padded_n, _, _ = causal_levels(n_query, config.min_seq_len)
    pad = padded_n - n_query
    q_sq, k_sq, v_sq = q, k[:, :, offset:], v[:, :, offset:]
    if pad:
        # Zero rows at the end, seen only by discarded padded queries; they rank 0.
        q_sq, k_sq, v_sq = (pad_rows(t, pad) for t in (q_sq, k_sq, v_sq))
    square = Problem(q_sq, k_sq, v_sq, scale, None if record is None else record.square)
    if record is not None:
        record.offset, record.pad = offset, pad
    # Everything after the diagonal runs beside it on a second stream (overlap.py);
    # the bases are made first, as the levels read them.
    square.plan_bases  # noqa: B018 (a cached property, built before the streams fork)
    overlap = DiagonalOverlap(q.device, enabled=record is None)
    square.overlap = overlap
    causal_diagonal(square, config)  # no draws: the random stream's order is unchanged
    with overlap.beside():
        q_rank, k_rank, finder = buckets()
        q_rank_sq = k_rank_sq = None
        if q_rank is not None and k_rank is not None:
            q_rank_sq = pad_end(q_rank, pad)
            k_rank_sq = pad_end(k_rank[:, offset:], pad).contiguous()
        causal_off_diagonal(
            square, q_rank_sq, k_rank_sq, config, rng, n_sink=max(0, n_sink - offset),
            band=config.window, finder=finder,
        )  # fmt: skip
        if pad:
            problem.allocate()
            problem.out.copy_(square.out[:, :, :n_query])
            problem.lse.copy_(square.lse[:, :, :n_query])
        else:  # the same rows in the same layout
            problem.out, problem.lse = square.out, square.lse
        del square
        if offset:  # the cached prefix is visible to every query
            if min(n_query, offset) <= config.min_seq_len:
                problem.exact(0, offset, causal=False, merge=True)
            else:
                prefix_sinks = min(n_sink, offset)
                if isinstance(finder, QueryFinder):
                    query_finder_part(finder, offset, prefix_sinks, config.window, merge=True)
                else:
                    if q_rank is not None and k_rank is not None:
                        q_rank_p, k_rank_p = q_rank, k_rank[:, :offset].contiguous()
                    else:
                        q_rank_p, k_rank_p = problem_ranks(finder, offset, prefix_sinks)
                    problem.hyper(
                        q_rank_p, k_rank_p, 0, config, rng, merge=True,
                        n_sink=prefix_sinks, band=config.window,
                    )  # fmt: skip
                    if prefix_sinks:
                        problem.record_sinks(0, prefix_sinks)
    overlap.close(problem.out, problem.lse)
    return problem.out, problem.lse
