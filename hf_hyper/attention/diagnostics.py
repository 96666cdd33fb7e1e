"""How well HyperAttention fits one attention problem, measured against exact attention.

For every query head this reports the output error on the scale of the paper's
guarantee, ||O - O*||_F / ||V||_F, and the two parameters the paper's bound depends on
(Han et al. 2023, Theorem 1), measured on the actual LSH blocks of the call:

- alpha = n * max_j ||D^-1 A e_j||^2: the largest squared column norm of the
  row-normalised attention matrix. 1 when attention is spread evenly; n when one key
  (an "attention sink") takes all the mass. The uniform sample needs more keys as it grows.
- kappa = max_i r_i / min_i r_i, with r_i the unnormalised attention mass of row i left
  over after removing the entries the algorithm computes exactly (M^H). Reported as
  log10; `log10_kappa_99` uses the 99th and 1st percentile rows instead of the extremes.

Both are defined for one non-causal problem. Causal HyperAttention applies its estimator
to the lower-left rectangle of every split of its recursion, each a non-causal problem
with its own D; the reported value is the worst rectangle.
`heavy_mass` is the share of each row's (full) softmax mass that falls in M^H, averaged
over rows: what the exact part of the algorithm captures.
`block_lift` asks whether the LSH found the large entries: in the rectangles the
estimator serves, the mass of each row's LSH block over the mass a random key set of the
same size would hold (1: no better than chance). Where it is near 1, the blocks add
nothing and the sample carries all of the attention outside the exact parts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ..config import HyperAttentionConfig
from .api import check_inputs, hyper_attention
from .blockwise import SCORE_BUDGET, causal_mask_fn
from .finders import QueryClusters, finder_of_call
from .masks import future_key_mask
from .numerics import accumulation_dtype
from .padding import pad_rows
from .planning import (
    CausalLevel,
    Randomness,
    causal_levels,
    level_problems,
    level_ranks,
    level_sinks,
    plan_blocks,
)


@dataclass
class _Level:
    """One family of sub-problems: queries with q_block >= 0 attend exactly the keys of
    the same pair (causal) whose k_block equals theirs."""

    size: int | None  # half-split length (causal); None: one non-causal problem
    q_block: Tensor  # [z, g, nq], -1 where the row is not a query of this level
    k_block: Tensor  # [z, nk], -2 where the key is not a key of this level


@dataclass
class ExactRegion:
    """The (query, key) pairs HyperAttention computes exactly (M^H), for one call."""

    causal: bool
    n_query: int
    n_key: int
    base: int | None  # causal: length of the exact diagonal blocks
    levels: list[_Level]
    everything: bool  # the problem is short enough to be exact throughout
    device: torch.device
    n_sink: int = 0  # keys [0, n_sink) are exact for every query that may see them
    window: int = 0  # causal: the first `window` queries after each cut see the keys before

    def rows(self, z: int, r0: int, r1: int, k0: int = 0, k1: int | None = None) -> Tensor:
        """bool [g, r1 - r0, k1 - k0]: True where the pair is computed exactly (and allowed)."""
        k1 = self.n_key if k1 is None else k1
        dev = self.device
        rows = torch.arange(r0, r1, device=dev)[:, None]
        cols = torch.arange(k0, k1, device=dev)[None, :]
        future = future_key_mask(self.n_query, self.n_key, dev, r0, r1, k0, k1)
        allowed = ~future if self.causal else torch.ones_like(future)
        if self.everything:
            return allowed[None]
        exact = (rows // self.base == cols // self.base) & allowed if self.causal else None
        out = None
        for level in self.levels:
            hit = level.q_block[z, :, r0:r1, None] == level.k_block[z, None, None, k0:k1]
            if level.size is not None:
                size = level.size
                same_pair = rows // (2 * size) == cols // (2 * size)
                hit = hit & same_pair
                if self.window:  # the corner after the cut at the middle of each pair
                    after = (rows % (2 * size) >= size) & (rows % (2 * size) < size + self.window)
                    before = (cols % (2 * size) < size) & (cols % (2 * size) >= size - self.window)
                    hit = hit | (same_pair & after & before)[None]
            out = hit if out is None else out | hit
        if exact is not None:
            out = exact[None] if out is None else out | exact
        if self.n_sink:
            out = out | ((cols < self.n_sink) & allowed)[None]
        return out


def _key_blocks(k_order: Tensor, key_block: int, n_sink: int = 0) -> Tensor:
    """Block of each key (inverse of the sort): k_order [z, nk] -> [z, nk]; the first
    n_sink keys get -2 (left out of the blocks: the sinks are exact on their own)."""
    positions = torch.arange(k_order.shape[-1], device=k_order.device).expand_as(k_order)
    blocks = torch.empty_like(k_order).scatter_(1, k_order, positions // key_block)
    blocks[:, :n_sink] = -2
    return blocks


LevelRanks = Callable[[CausalLevel, Tensor | None], tuple[Tensor, Tensor]]


def exact_region(
    q_rank: Tensor, k_rank: Tensor, causal: bool, config: HyperAttentionConfig
) -> ExactRegion:
    """M^H from the LSH ranks of one call: q_rank [z, g, nq], k_rank [z, nk]."""
    n_query, n_key = q_rank.shape[-1], k_rank.shape[-1]
    if not causal:
        return _noncausal_region(q_rank, k_rank, config)
    padded_n, _, _ = causal_levels(n_query, config.min_seq_len)
    q_rank = torch.nn.functional.pad(q_rank, (0, padded_n - n_query))  # as the recursion pads
    k_rank = torch.nn.functional.pad(k_rank, (0, padded_n - n_query))
    return _causal_region(
        q_rank.shape[:2], n_query, n_key, config, q_rank.device,
        lambda level, sinks: level_ranks(q_rank, k_rank, level),
    )  # fmt: skip


def _noncausal_region(q_rank: Tensor, k_rank: Tensor, config: HyperAttentionConfig):
    plan = plan_blocks(q_rank, k_rank, replace(config, sample_size=0), rng=None)
    n_sink = config.sinks
    level = _Level(None, plan.q_block, _key_blocks(plan.k_order, plan.key_block, n_sink))
    n_query, n_key = q_rank.shape[-1], k_rank.shape[-1]
    return ExactRegion(False, n_query, n_key, None, [level], False, q_rank.device, n_sink)


def _causal_region(
    heads: tuple[int, int], n_query: int, n_key: int, config: HyperAttentionConfig,
    device: torch.device, ranks_for_level: LevelRanks,
) -> ExactRegion:  # fmt: skip
    """M^H of a causal call with z x g query heads whose level ranks come from
    ranks_for_level(level, sink counts of its problems or None)."""
    z, g = heads
    plan_config = replace(config, sample_size=0)  # the sample is not part of M^H
    n_sink = config.sinks
    _, base, levels = causal_levels(n_query, config.min_seq_len)
    out = []
    for level in levels:
        size, pairs = level.size, level.pairs
        sinks = level_sinks(z, level, n_sink, device) if n_sink else None
        plan = plan_blocks(*ranks_for_level(level, sinks), plan_config, rng=None)
        q_block = torch.full((z, g, pairs, 2, size), -1, dtype=torch.int64, device=device)
        q_block[:, :, :, 1] = plan.q_block.view(z, pairs, g, size).transpose(1, 2)
        k_block = torch.full((z, pairs, 2, size), -2, dtype=torch.int64, device=device)
        k_block[:, :, 0] = _key_blocks(plan.k_order, plan.key_block).view(z, pairs, size)
        k_block[:, 0, 0, :n_sink] = -2  # each level's first pair holds the sinks
        out.append(
            _Level(size, q_block.view(z, g, -1)[..., :n_query], k_block.view(z, -1)[:, :n_key])
        )
    return ExactRegion(True, n_query, n_key, base, out, False, device, n_sink, config.window)


def check_diagnosable(config: HyperAttentionConfig) -> None:
    """Raise ValueError, naming the fix, for a config the diagnostics cannot model."""
    if config.finder == "clusters":
        raise ValueError(
            "attention diagnostics do not model cluster_probes (each query's exact keys "
            "are its own); measure with cluster_probes=0, or judge probes by perplexity"
        )


def call_region(
    qz: Tensor, kz: Tensor, causal: bool, config: HyperAttentionConfig,
    generator: torch.Generator, scale: float | None = None,
) -> ExactRegion:  # fmt: skip
    """M^H of one call on the internal layout (qz [z, g, nq, d], kz [z, nk, d]) whose
    hyperplanes are the next draw of `generator`, as `hyper_attention` draws them; a call
    short enough to run exact is exact everywhere. With k-means buckets the blocks are
    those its problems cluster (scale: the call's, default 1/sqrt(d))."""
    n_query, n_key = qz.shape[2], kz.shape[1]
    check_diagnosable(config)
    short = config.runs_exact(n_query, causal) or (not causal and n_key <= config.min_seq_len)
    if short:
        return ExactRegion(causal, n_query, n_key, None, [], True, qz.device)
    dim = qz.shape[-1]
    planes = Randomness(generator, qz.device).hyperplanes(dim, config.lsh_num_projs)
    scale = dim**-0.5 if scale is None else scale
    finder = finder_of_call(config, planes, dim, scale)
    assert not isinstance(finder, QueryClusters)  # check_diagnosable refused it
    ranks = finder.call_ranks(qz, kz)
    if ranks is not None:
        return exact_region(*ranks, causal, config)
    z = qz.shape[0]
    if not causal:
        sinks = torch.full((z,), config.sinks, device=qz.device) if config.sinks else None
        return _noncausal_region(*finder.ranks(qz, kz, sinks), config)
    padded_n, _, _ = causal_levels(n_query, config.min_seq_len)
    q_pad, k_pad = pad_rows(qz, padded_n - n_query), pad_rows(kz, padded_n - n_query)
    return _causal_region(
        qz.shape[:2], n_query, n_key, config, qz.device,
        lambda level, sinks: finder.ranks(*level_problems(q_pad, k_pad, level), sinks),
    )  # fmt: skip


@dataclass
class AttentionDiagnostics:
    """Per query head, [batch, heads] float64 tensors (NaN where nothing is approximated)."""

    error: Tensor  # ||O - O*||_F / ||V||_F
    alpha: Tensor
    log10_kappa: Tensor
    log10_kappa_99: Tensor
    heavy_mass: Tensor
    output_sq_error: Tensor  # ||O - O*||_F^2 and ||V||_F^2, to pool heads or layers
    value_sq_norm: Tensor
    # mean softmax mass of a query on the first config.sinks keys (zero if none)
    sink_mass: Tensor
    # block mass (LSH or k-means buckets) over that of a random key set of its size (NaN:
    # nothing approximated)
    block_lift: Tensor


def _rectangles(region: ExactRegion) -> list[tuple[int, int, int, int]]:
    """(row0, row1, key0, key1) of every sub-problem the sampling estimator serves, less
    the sink columns and the band corners (served exactly on their own): a lower-left
    block's first `window` rows see its keys up to the corner, its other rows all."""
    if region.everything:
        return []
    if not region.causal:
        return [(0, region.n_query, region.n_sink, region.n_key)]
    rects = []
    for level in region.levels:
        s = level.size
        for start in range(0, region.n_query, 2 * s):
            if start + s < region.n_query:  # second half has real rows
                first_key = max(start, region.n_sink)
                row0, row1 = start + s, min(start + 2 * s, region.n_query)
                if region.window:
                    band_end = min(row0 + region.window, row1)
                    rects.append((row0, band_end, first_key, row0 - region.window))
                    row0 = band_end
                if row0 < row1:
                    rects.append((row0, row1, first_key, start + s))
    return rects


def _row_step(g: int, width: int) -> int:
    return max(1, SCORE_BUDGET // max(1, g * width))


@torch.no_grad()
def attention_diagnostics(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool,
    scale: float | None = None,
    config: HyperAttentionConfig | None = None,
    generator: torch.Generator | None = None,
) -> AttentionDiagnostics:
    """Compare `hyper_attention` with exact attention on these inputs ([b, h, n, d]).

    alpha and kappa are those of the keys the sample serves: the sink columns
    (config.sinks) and, in causal calls, the band corners (config.window) are left out
    of them, as the algorithm attends those exactly;
    sink_mass says how much of each head's attention they hold.

    The blocks are those of the very call measured: the hyperplanes are drawn from
    `generator` (or config.seed; else a seed from the global RNG), as hyper_attention
    draws them, and with k-means buckets each problem's keys are clustered as it does.
    Scores run in float32 or better, `SCORE_BUDGET` elements at a time.
    """
    config = config or HyperAttentionConfig()
    check_diagnosable(config)
    check_inputs(q, k, v, causal)
    if causal and q.shape[2] != k.shape[2]:
        raise ValueError(
            "attention_diagnostics measures causal attention without a cache: "
            f"n_query must equal n_key; got {q.shape[2]} and {k.shape[2]}"
        )
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if generator is None:
        seed = config.seed
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()).item())
        generator = torch.Generator(device=q.device).manual_seed(seed)
    state = generator.get_state()
    approx = hyper_attention(q, k, v, causal=causal, scale=scale, config=config,
                             generator=generator)  # fmt: skip

    b, hq, n_query, dim = q.shape
    hk, n_key, dv = k.shape[1], k.shape[2], v.shape[-1]
    g = hq // hk
    acc = accumulation_dtype(q.dtype)
    qz = q.reshape(b * hk, g, n_query, dim).to(acc)
    kz, vz = k.reshape(b * hk, n_key, dim).to(acc), v.reshape(b * hk, n_key, dv).to(acc)
    approx = approx.reshape(b * hk, g, n_query, dv).to(acc)
    generator.set_state(state)  # the same hyperplanes the call above drew
    region = call_region(qz, kz, causal, config, generator, scale)
    n_sink = min(config.sinks, n_key)
    rects = _rectangles(region)

    f64 = torch.float64
    stats = {name: torch.zeros(b * hk, g, dtype=f64) for name in
             ("sq_err", "alpha", "kappa", "kappa99", "heavy", "sink", "lift")}  # fmt: skip
    value_sq = torch.zeros(b * hk, dtype=f64)
    hidden = causal_mask_fn(n_query, n_key, q.device)
    for z in range(b * hk):
        value_sq[z] = vz[z].double().pow(2).sum().cpu()
        full_lse = torch.empty(g, n_query, dtype=acc, device=q.device)
        heavy = torch.zeros(g, dtype=f64, device=q.device)
        sink = torch.zeros(g, dtype=f64, device=q.device)
        step = _row_step(g, n_key)
        for r0 in range(0, n_query, step):  # exact output, row normalisers, exact-part mass
            r1 = min(n_query, r0 + step)
            scores = torch.einsum("gnd,md->gnm", qz[z, :, r0:r1], kz[z]) * scale
            if causal:
                scores = scores.masked_fill(hidden(0, 1, r0, r1), float("-inf"))
            lse = torch.logsumexp(scores, dim=-1)
            probs = torch.exp(scores - lse[..., None])
            exact = torch.einsum("gnm,md->gnd", probs, vz[z])
            stats["sq_err"][z] += (approx[z, :, r0:r1] - exact).double().pow(2).sum((1, 2)).cpu()
            heavy += (probs * region.rows(z, r0, r1)).sum((1, 2)).double()
            sink += probs[..., :n_sink].sum((1, 2)).double()
            full_lse[:, r0:r1] = lse
        stats["heavy"][z] = (heavy / n_query).cpu()
        stats["sink"][z] = (sink / n_query).cpu()

        alpha = torch.full((g,), float("nan"), dtype=f64)
        kappa, kappa99 = alpha.clone(), alpha.clone()
        captured = torch.zeros(g, dtype=f64, device=q.device)
        by_chance = torch.zeros(g, dtype=f64, device=q.device)
        for r0, r1, k0, k1 in rects:
            width = k1 - k0
            colsq = torch.zeros(g, width, dtype=acc, device=q.device)
            residual = []
            step = _row_step(g, width)
            for c0 in range(r0, r1, step):
                c1 = min(r1, c0 + step)
                scores = torch.einsum("gnd,md->gnm", qz[z, :, c0:c1], kz[z, k0:k1]) * scale
                probs = torch.softmax(scores, dim=-1)  # D of this rectangle alone
                colsq += probs.pow(2).sum(1)
                exact = region.rows(z, c0, c1, k0, k1)
                captured += (probs * exact).sum((1, 2)).double()
                by_chance += exact.sum((1, 2)).double() / width
                residual.append(torch.logsumexp(scores.masked_fill(exact, float("-inf")), -1))
            alpha = torch.fmax(alpha, (width * colsq.amax(-1)).double().cpu())
            res = torch.cat(residual, dim=1).double()  # [g, rows], log of r_i
            res = torch.where(torch.isfinite(res), res, torch.nan)
            log10 = 1 / torch.log(torch.tensor(10.0, dtype=f64))
            spread = res.nan_to_num(-torch.inf).amax(1) - res.nan_to_num(torch.inf).amin(1)
            kappa = torch.fmax(kappa, (spread * log10).cpu())
            hi, lo = torch.nanquantile(res, 0.99, dim=1), torch.nanquantile(res, 0.01, dim=1)
            kappa99 = torch.fmax(kappa99, ((hi - lo) * log10).cpu())
        stats["alpha"][z], stats["kappa"][z], stats["kappa99"][z] = alpha, kappa, kappa99
        stats["lift"][z] = (captured / by_chance).cpu()  # 0/0 = NaN: no rectangle

    def per_head(t: Tensor) -> Tensor:
        return t.reshape(b, hq)

    value_heads = value_sq.repeat_interleave(g).reshape(b, hq)
    sq_err = per_head(stats["sq_err"])
    return AttentionDiagnostics(
        error=(sq_err / value_heads).sqrt(),
        alpha=per_head(stats["alpha"]),
        log10_kappa=per_head(stats["kappa"]),
        log10_kappa_99=per_head(stats["kappa99"]),
        heavy_mass=per_head(stats["heavy"]),
        output_sq_error=sq_err,
        value_sq_norm=value_heads,
        sink_mass=per_head(stats["sink"]),
        block_lift=per_head(stats["lift"]),
    )


__all__ = [
    "AttentionDiagnostics",
    "ExactRegion",
    "attention_diagnostics",
    "call_region",
    "exact_region",
]
