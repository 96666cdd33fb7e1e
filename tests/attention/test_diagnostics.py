"""attention_diagnostics: the exact region it reconstructs, and its numbers against a
dense float64 computation of the same definitions."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from helpers.common import planted_qkv, random_qkv
from hf_hyper import HyperAttentionConfig, attention_diagnostics, hyper_attention
from hf_hyper.attention import reference_attention
from hf_hyper.attention.diagnostics import call_region, exact_region
from hf_hyper.attention.finders.lsh import angular_lsh_rank
from hf_hyper.attention.planning import Randomness, causal_levels

SMALL = dict(block_size=8, min_seq_len=24, lsh_num_projs=4, backend="torch")


def dense_region(q, k, causal: bool, config: HyperAttentionConfig, seed: int) -> torch.Tensor:
    """M^H as bool [b, hq, nq, nk], from the hyperplanes a call seeded `seed` draws."""
    b, hq, n_query, dim = q.shape
    hk, n_key = k.shape[1], k.shape[2]
    qz, kz = q.reshape(b * hk, hq // hk, n_query, dim), k.reshape(b * hk, n_key, dim)
    if config.kmeans_iters:  # the clusters' blocks, as call_region derives them
        region = call_region(qz, kz, causal, config, torch.Generator().manual_seed(seed))
    else:
        planes = Randomness(torch.Generator().manual_seed(seed), q.device).hyperplanes(
            dim, config.lsh_num_projs
        )
        region = exact_region(angular_lsh_rank(qz, planes), angular_lsh_rank(kz, planes),
                              causal, config)  # fmt: skip
    return torch.stack([region.rows(z, 0, n_query) for z in range(b * hk)]).view(
        b, hq, n_query, n_key
    )


def scores_of(q, k, scale):
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    return (q @ k.transpose(-1, -2)) * scale


@pytest.mark.parametrize("causal, window", [(True, 0), (True, 5), (False, 0), (False, 5)])
@pytest.mark.parametrize("n", [200, 96])
def test_region_is_what_hyper_attention_computes_exactly(causal, window, n):
    """With sampling off, HyperAttention equals exact softmax restricted to the region."""
    q, k, v = random_qkv(2, 4, 2, n, n, seed=n)
    config = HyperAttentionConfig(sample_size=0, seed=5, local_window=window, **SMALL)
    mask = dense_region(q, k, causal, config, seed=5)
    scores = scores_of(q, k, 16**-0.5).masked_fill(~mask, -math.inf)
    masked = torch.softmax(scores, -1) @ v.repeat_interleave(2, dim=1)
    out = hyper_attention(q, k, v, causal=causal, config=config)
    torch.testing.assert_close(out, masked, atol=1e-12, rtol=0)
    if causal:  # causal pairs only, and every row sees itself exactly (diagonal block)
        assert not mask.triu(1).any() and mask.diagonal(dim1=-2, dim2=-1).all()
    # not everything: the region is the point of the algorithm
    assert mask.float().mean() < (0.6 if causal else 0.3)
    if causal and window:  # the first row after the middle cut sees the keys before it
        cut = causal_levels(n, config.min_seq_len)[2][0].size
        assert mask[:, :, cut, cut - window : cut + 1].all()


@pytest.mark.parametrize("causal", [True, False])
def test_region_of_kmeans_buckets_is_what_hyper_attention_computes_exactly(causal):
    """The same with k-means buckets, whose causal levels cluster their own keys."""
    n = 200
    q, k, v = random_qkv(2, 4, 2, n, n, seed=n)
    config = HyperAttentionConfig(sample_size=0, seed=5, kmeans_iters=3, **SMALL)
    qz, kz = q.reshape(4, 2, n, 16), k.reshape(4, n, 16)
    region = call_region(qz, kz, causal, config, torch.Generator().manual_seed(5))
    mask = torch.stack([region.rows(z, 0, n) for z in range(4)]).view(2, 4, n, n)
    scores = scores_of(q, k, 16**-0.5).masked_fill(~mask, -math.inf)
    masked = torch.softmax(scores, -1) @ v.repeat_interleave(2, dim=1)
    out = hyper_attention(q, k, v, causal=causal, config=config)
    torch.testing.assert_close(out, masked, atol=1e-12, rtol=0)
    assert mask.float().mean() < (0.6 if causal else 0.3)
    lsh = dense_region(q, k, causal, dataclasses.replace(config, kmeans_iters=0), seed=5)
    assert not torch.equal(mask, lsh)  # the clusters, not the LSH buckets


def _dense_parameters(scores, mask, rects):
    """alpha, log10 kappa (max/min and p99/p1) per head, worst rectangle, and the LSH
    blocks' mass over chance pooled over the rectangles, dense float64."""
    b, h = scores.shape[:2]
    alpha = torch.full((b, h), -math.inf, dtype=torch.float64)
    kappa, kappa99 = alpha.clone(), alpha.clone()
    captured = torch.zeros(b, h, dtype=torch.float64)
    by_chance = captured.clone()
    for r0, r1, k0, k1 in rects:
        s = scores[:, :, r0:r1, k0:k1]
        p = torch.softmax(s, -1)
        block = mask[:, :, r0:r1, k0:k1]
        captured += (p * block).sum((2, 3))
        by_chance += block.sum((2, 3)).double() / (k1 - k0)
        alpha = torch.maximum(alpha, (k1 - k0) * p.pow(2).sum(2).amax(-1))
        residual = torch.logsumexp(s.masked_fill(mask[:, :, r0:r1, k0:k1], -math.inf), -1)
        # rows with nothing left to estimate (all keys exact) have no residual
        residual = torch.where(torch.isfinite(residual), residual, torch.nan)
        top, low = residual.nan_to_num(-math.inf).amax(-1), residual.nan_to_num(math.inf).amin(-1)
        kappa = torch.maximum(kappa, (top - low) / math.log(10))
        spread = torch.nanquantile(residual, 0.99, dim=-1) - torch.nanquantile(
            residual, 0.01, dim=-1
        )
        kappa99 = torch.maximum(kappa99, spread / math.log(10))
    return alpha, kappa, kappa99, captured / by_chance


@pytest.mark.parametrize(
    "causal, sinks, window, kmeans",
    [(True, 0, 0, 0), (True, 4, 0, 0), (True, 4, 6, 0), (False, 0, 0, 0), (False, 4, 6, 0),
     (True, 4, 6, 3), (False, 4, 0, 3)],
)  # fmt: skip
def test_numbers_match_dense_float64_definitions(causal, sinks, window, kmeans):
    n = 200
    q, k, v = random_qkv(1, 4, 2, n, n, seed=11)
    q = q * 2.5  # sharper rows than iid unit scores
    config = HyperAttentionConfig(
        sample_size=16, seed=7, sink_tokens=sinks, local_window=window, kmeans_iters=kmeans,
        **SMALL,
    )  # fmt: skip
    diag = attention_diagnostics(q, k, v, causal=causal, config=config)

    scale = 16**-0.5
    scores = scores_of(q, k, scale)
    if causal:
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), -math.inf)
    mask = dense_region(q, k, causal, config, seed=7)
    exact, _ = reference_attention(q, k, v, causal=causal, scale=scale)
    approx = hyper_attention(q, k, v, causal=causal, config=config)  # same seed, same draws
    v_rep = v.repeat_interleave(2, dim=1)
    error = (approx - exact).pow(2).sum((2, 3)).sqrt() / v_rep.pow(2).sum((2, 3)).sqrt()
    torch.testing.assert_close(diag.error, error, rtol=1e-9, atol=0)

    heavy = (torch.softmax(scores, -1) * mask).sum(-1).mean(-1)
    torch.testing.assert_close(diag.heavy_mass, heavy, rtol=1e-9, atol=0)
    sink_mass = torch.softmax(scores, -1)[..., :sinks].sum(-1).mean(-1)
    torch.testing.assert_close(diag.sink_mass, sink_mass, rtol=1e-9, atol=1e-15)

    if causal:  # 200 rows halve 4 times to leaves of 13 <= 24 (padded to 208 = 13 * 16)
        rects = []
        for s in (104, 52, 26, 13):
            for s0 in range(0, n, 2 * s):
                if s0 + s < n:  # the window's rows see the keys up to its corner
                    cut, end = s0 + s, min(s0 + 2 * s, n)
                    band_end = min(cut + window, end)
                    if window:
                        rects.append((cut, band_end, s0, cut - window))
                    if band_end < end:
                        rects.append((band_end, end, s0, cut))
    else:
        rects = [(0, n, 0, n)]
    # the sink columns are exact on their own: alpha and kappa leave them out
    rects = [(r0, r1, max(k0, sinks), k1) for r0, r1, k0, k1 in rects]
    alpha, kappa, kappa99, lift = _dense_parameters(scores, mask, rects)
    torch.testing.assert_close(diag.alpha, alpha, rtol=1e-9, atol=0)
    torch.testing.assert_close(diag.log10_kappa, kappa, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(diag.log10_kappa_99, kappa99, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(diag.block_lift, lift, rtol=1e-9, atol=0)
    assert (diag.alpha >= 1).all() and (diag.heavy_mass < 1).all()


def test_planted_structure_is_easy_and_shows_in_the_numbers():
    """Rows with one dominant key: most mass in the region and a small error."""
    q, k, v = planted_qkv(512, dim=32, heads=2, logit=8.0)
    config = HyperAttentionConfig(block_size=32, sample_size=32, min_seq_len=64, seed=0,
                                  lsh_num_projs=6, backend="torch")  # fmt: skip
    planted = attention_diagnostics(q, k, v, causal=False, config=config)
    q_iid, k_iid, v_iid = random_qkv(1, 2, 2, 512, 512, dim=32, seed=3)
    iid = attention_diagnostics(q_iid * 2, k_iid, v_iid, causal=False, config=config)
    assert (planted.heavy_mass > 0.5).all() and (iid.heavy_mass < 0.3).all()
    assert (planted.error < iid.error).all()
    # the blocks find the planted keys far above chance, and iid keys much less well
    assert (planted.block_lift > 5).all() and (planted.block_lift > 3 * iid.block_lift).all()


def test_short_problem_is_exact_and_has_no_parameters():
    q, k, v = random_qkv(1, 2, 2, 20, 20, seed=1)
    diag = attention_diagnostics(q, k, v, causal=True, config=HyperAttentionConfig(**SMALL))
    assert (diag.error < 1e-12).all() and torch.isnan(diag.alpha).all()
    assert torch.isnan(diag.block_lift).all()
    torch.testing.assert_close(diag.heavy_mass, torch.ones(1, 2, dtype=torch.float64))


def test_bad_input_is_named():
    q, k, v = random_qkv(1, 2, 2, 30, 40, seed=1)
    with pytest.raises(ValueError, match="n_query must equal n_key"):
        attention_diagnostics(q, k, v, causal=True)
    with pytest.raises(ValueError, match="expects q as"):
        attention_diagnostics(q[0], k, v, causal=False)
    probes = HyperAttentionConfig(kmeans_iters=2, cluster_probes=2)
    with pytest.raises(ValueError, match="cluster_probes"):
        attention_diagnostics(q, k, v, causal=False, config=probes)


@pytest.mark.gpu
def test_fused_backend_has_the_same_region():
    """On CUDA the Triton path must compute exactly the region rebuilt from its draws."""
    q, k, v = (t.cuda().float() for t in random_qkv(1, 4, 2, 600, 600, dim=64, seed=2))
    config = HyperAttentionConfig(block_size=32, sample_size=0, min_seq_len=64, seed=3,
                                  backend="triton")  # fmt: skip
    diag = attention_diagnostics(q, k, v, causal=True, config=config)
    torch_config = HyperAttentionConfig(**{**config.to_dict(), "backend": "torch"})
    torch_diag = attention_diagnostics(q, k, v, causal=True, config=torch_config)
    torch.testing.assert_close(diag.error, torch_diag.error, rtol=1e-2, atol=1e-5)
    torch.testing.assert_close(diag.heavy_mass, torch_diag.heavy_mass)
