"""Per-query clusters (`finders.query_clusters`, config `cluster_probes`): each query's
own k-means clusters exact, the sample for the rest. Checked against a dense float64
statement of the estimator, for exactness where every cluster is probed, for causality,
and against the shared blocks."""

from __future__ import annotations

import math

import pytest
import torch

from helpers.common import assert_past_ignores_future, grouped_qkv, relative_error_to_v
from helpers.fused_cases import counting_sorts_in_torch_ops
from hf_hyper import HyperAttentionConfig, hyper_attention
from hf_hyper.attention.finders.query_clusters import (
    plan_probes,
    probe_cluster_count,
    probed_attention,
)
from hf_hyper.attention.planning import Randomness
from hf_hyper.attention.reference import reference_attention

SMALL = dict(block_size=32, sample_size=32, min_seq_len=64, seed=0, backend="torch")


def dense_probed(
    q, k, v, probes, clusters, iterations, scale, sample, n_sink, band, key_budget=0.0
):  # fmt: skip
    """The estimator written out as one weighted softmax per query (float64, [g, nq]):
    weight 1 on the sinks, on the query's clusters and (early queries) on the band
    corner; each draw outside those counts R / r, R the query's other keys and r the
    draws it keeps."""
    sinks = torch.tensor([n_sink]) if n_sink else None
    plan = plan_probes(
        q[None], k[None], probes, clusters, iterations, scale, sinks, key_budget=key_budget
    )
    g, n_query, _ = q.shape
    n_key = k.shape[0]
    chosen = plan.chosen[0]  # [g, nq, probes]
    in_cluster = (plan.assign[0][None, None, :, None] == chosen[:, :, None, :]).any(-1)
    key = torch.arange(n_key)
    exact = in_cluster | (key < n_sink)
    early = (torch.arange(n_query) < band)[None, :, None]
    exact = exact | (early & (key >= n_key - band))
    weights = exact.double()
    kept = (~exact[..., sample]).sum(-1)  # [g, nq]
    rest = n_key - exact.sum(-1)
    per_draw = torch.where(kept > 0, rest.double() / kept.clamp_min(1), 0.0)
    for draw in sample.tolist():
        weights[..., draw] += (~exact[..., draw]) * per_draw
    scores = scale * q @ k.T
    probs = weights * torch.exp(scores - scores.amax(-1, keepdim=True))
    return (probs @ v) / probs.sum(-1, keepdim=True)


@pytest.mark.parametrize("n_sink, band, key_budget", [(0, 0, 0.0), (3, 0, 0.0), (2, 16, 0.0),
                                                     (3, 0, 1.0), (2, 16, 1.5)])  # fmt: skip
def test_matches_the_dense_statement_of_the_estimator(n_sink, band, key_budget):
    gen = torch.Generator().manual_seed(3)
    g, n_query, n_key, dim = 3, 90, 200, 8
    q = torch.randn(g, n_query, dim, generator=gen, dtype=torch.float64)
    k = torch.randn(n_key, dim, generator=gen, dtype=torch.float64)
    v = torch.randn(n_key, 5, generator=gen, dtype=torch.float64)
    scale, probes, clusters, m = 0.9, 3, 16, 40
    sinks = torch.tensor([n_sink]) if n_sink else None
    rng = Randomness(torch.Generator().manual_seed(7), q.device)
    out, lse = probed_attention(
        q[None], k[None], v[None], q[None], k[None], scale, probes, clusters, 3, m, rng,
        sinks, band, key_budget=key_budget,
    )  # fmt: skip
    out, lse = out[0], lse[0]
    # the sinks and the band corner are attended exactly by the caller: merge them here
    key = torch.arange(n_key)
    early = (torch.arange(n_query) < band)[:, None]
    elsewhere = (key < n_sink) | (early & (key >= n_key - band))  # [nq, nk]
    if elsewhere.any():
        scores = (scale * q @ k.T).masked_fill(~elsewhere, -torch.inf)
        lse_else = torch.logsumexp(scores, -1)
        out_else = torch.nan_to_num(torch.softmax(scores, -1)) @ v
        total = torch.logaddexp(lse, lse_else)
        out = out * torch.exp(lse - total)[..., None] + torch.nan_to_num(
            out_else * torch.exp(lse_else - total)[..., None]
        )
    sample = torch.randint(n_key, (1, m), generator=torch.Generator().manual_seed(7))[0]
    dense = dense_probed(q, k, v, probes, clusters, 3, scale, sample, n_sink, band, key_budget)
    torch.testing.assert_close(out, dense, rtol=1e-10, atol=1e-10)


def test_a_key_budget_bounds_each_querys_exact_keys():
    # skewed clusters (half the keys near one direction), so that the choice by
    # estimated mass takes large clusters and the budget has something to bound
    gen = torch.Generator().manual_seed(5)
    n_key, dim, probes, clusters = 600, 8, 4, 24
    k = torch.randn(n_key, dim, generator=gen, dtype=torch.float64)
    k[: n_key // 2] = 0.2 * k[: n_key // 2] + 3.0
    q = torch.randn(2, 120, dim, generator=gen, dtype=torch.float64) + 1.0
    sinks = torch.tensor([2])
    free = plan_probes(q[None], k[None], probes, clusters, 3, 0.5, sinks)
    for budget in (0.5, 1.0, 1.5):
        plan = plan_probes(q[None], k[None], probes, clusters, 3, 0.5, sinks, key_budget=budget)
        counts = plan.counts[0]
        assert counts.shape[0] == clusters + 1 and counts[-1] == 0  # the empty cluster
        limit = budget * probes * counts.sum() / clusters
        # the same ranking; a slot is kept as chosen or emptied, never replaced
        same = plan.chosen == free.chosen
        assert (same | (plan.chosen == clusters)).all()
        assert same[..., 0].all()  # the best cluster is always kept
        sizes = counts[plan.chosen[0]].sum(-1)
        best = counts[plan.chosen[0, ..., 0]]
        assert (sizes <= torch.maximum(best, limit) + 1e-9).all()
        # greedy: every emptied slot's cluster would have broken the budget
        used = torch.zeros_like(best)
        for rank in range(probes):
            size = free.counts[0][free.chosen[0, ..., rank]]
            kept = plan.chosen[0, ..., rank] != clusters
            assert (kept | (used + size > limit)).all()
            used = used + torch.where(kept, size, 0.0)
    emptied = (plan_probes(q[None], k[None], probes, clusters, 3, 0.5, sinks,
                           key_budget=0.5).chosen == clusters).float().mean()  # fmt: skip
    assert emptied > 0.2, "the skewed keys should make the budget bind"
    huge = plan_probes(q[None], k[None], probes, clusters, 3, 0.5, sinks, key_budget=1e9)
    assert torch.equal(huge.chosen, free.chosen)


def test_gradients_match_the_dense_statement():
    gen = torch.Generator().manual_seed(4)
    g, n, dim = 2, 120, 8
    q = torch.randn(g, n, dim, generator=gen, dtype=torch.float64, requires_grad=True)
    k = torch.randn(n, dim, generator=gen, dtype=torch.float64, requires_grad=True)
    v = torch.randn(n, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(g, n, 4, generator=gen, dtype=torch.float64)
    rng = Randomness(torch.Generator().manual_seed(1), q.device)
    out, _ = probed_attention(
        q[None], k[None], v[None], q[None].detach(), k[None].detach(), 0.7, 2, 12, 3, 30, rng
    )
    grads = torch.autograd.grad((out[0] * weight).sum(), (q, k, v))
    sample = torch.randint(n, (1, 30), generator=torch.Generator().manual_seed(1))[0]
    dense = dense_probed(q, k, v, 2, 12, 3, 0.7, sample, 0, 0)
    dense_grads = torch.autograd.grad((dense * weight).sum(), (q, k, v))
    for got, want in zip(grads, dense_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("extra", [{}, dict(sink_tokens=3, local_window=8)])
def test_probing_every_cluster_is_exact(causal, extra):
    gen = torch.Generator().manual_seed(0)
    f64 = dict(generator=gen, dtype=torch.float64)
    q, k, v = (torch.randn(1, h, 300, 16, **f64) for h in (4, 2, 2))
    # 16 clusters (a block larger than any problem) and 16 probes: every key is exact,
    # and the sample, which then stands for no key, adds nothing
    config = HyperAttentionConfig(
        **dict(SMALL, block_size=10**6), lsh_num_projs=4, kmeans_iters=3, cluster_probes=16,
        **extra,
    )  # fmt: skip
    exact, _ = reference_attention(q, k, v, causal=causal)
    out = hyper_attention(q, k, v, causal=causal, config=config)
    torch.testing.assert_close(out, exact, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n_prefix, key_budget", [(0, 0.0), (150, 0.0), (150, 1.0)])
@pytest.mark.slow
def test_causal_outputs_ignore_future_tokens(n_prefix, key_budget):
    config = HyperAttentionConfig(**SMALL, kmeans_iters=3, cluster_probes=4, sink_tokens=2,
                                  local_window=8, cluster_key_budget=key_budget)  # fmt: skip
    assert_past_ignores_future(
        lambda q, k, v: hyper_attention(q, k, v, causal=True, config=config), n_prefix
    )


@pytest.mark.parametrize("causal", [False, True])
def test_own_clusters_beat_shared_blocks_where_matches_are_by_inner_product(causal):
    q, k, v = grouped_qkv()
    exact, _ = reference_attention(q, k, v, causal=causal)
    errors = {}
    for probes in (0, 4):
        config = HyperAttentionConfig(
            block_size=64, sample_size=64, min_seq_len=256, lsh_num_projs=5, seed=0,
            backend="torch", kmeans_iters=4, cluster_probes=probes,
        )  # fmt: skip
        out = hyper_attention(q, k, v, causal=causal, config=config)
        errors[probes] = relative_error_to_v(out, exact, v)
    assert errors[4] < 0.8 * errors[0], errors


def test_cluster_count_keeps_about_a_block_of_keys_per_query():
    assert probe_cluster_count(4096, 8, 256, 7) == 128
    assert probe_cluster_count(16384, 8, 256, 7) == 512
    assert probe_cluster_count(1000, 4, 256, 7) == 128  # never fewer than 2**r
    assert probe_cluster_count(50, 4, 256, 7) == 50  # never more than the keys
    assert math.ceil(8 * 65536 / 256) == probe_cluster_count(65536, 8, 256, 7)


def test_config_names_the_field_and_the_fix():
    with pytest.raises(ValueError, match="cluster_key_budget.*cluster_probes"):
        HyperAttentionConfig(cluster_key_budget=1.5)
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="cluster_key_budget"):
            HyperAttentionConfig(kmeans_iters=2, cluster_probes=4, cluster_key_budget=bad)
    with pytest.raises(TypeError, match="cluster_key_budget"):
        HyperAttentionConfig(kmeans_iters=2, cluster_probes=4, cluster_key_budget="1.5")
    budgeted = HyperAttentionConfig(kmeans_iters=2, cluster_probes=4, cluster_key_budget=2)
    assert budgeted.cluster_key_budget == 2.0 and isinstance(budgeted.cluster_key_budget, float)
    with pytest.raises(ValueError, match="cluster_probes"):
        HyperAttentionConfig(cluster_probes=-1)
    with pytest.raises(TypeError, match="cluster_probes"):
        HyperAttentionConfig(cluster_probes=2.0)
    with pytest.raises(ValueError, match="kmeans_iters"):
        HyperAttentionConfig(cluster_probes=4)


def test_the_triton_backend_refuses_cpu_inputs_in_one_line():
    q = torch.randn(1, 2, 80, 16)
    config = HyperAttentionConfig(**dict(SMALL, backend="triton"), kmeans_iters=2,
                                  cluster_probes=2)  # fmt: skip
    with pytest.raises(ValueError, match="CUDA"):
        hyper_attention(q, q, q, causal=True, config=config)


KERNEL_CASES = [
    # z, g, nq, nk, d, dv, probes, clusters, sample, sinks, band, key budget
    (2, 3, 90, 200, 16, 16, 3, 16, 40, None, 0, 0.0),
    (2, 2, 100, 150, 32, 24, 4, 12, 64, (3, 0), 16, 0.0),
    (1, 1, 40, 300, 64, 64, 2, 40, 0, None, 0, 0.0),
    (2, 2, 100, 150, 32, 24, 4, 12, 64, (3, 0), 16, 0.8),
]


@pytest.mark.interpreter
@pytest.mark.parametrize("sample_in_best_rank", [True, False])
@pytest.mark.parametrize("case", KERNEL_CASES, ids=str)
def test_kernels_match_the_torch_ops(case, sample_in_best_rank, monkeypatch):
    from hf_hyper.attention.finders import query_clusters

    monkeypatch.setattr(query_clusters, "SAMPLE_IN_BEST_RANK", sample_in_best_rank)
    z, g, n_query, n_key, dim, dv, probes, clusters, m, sinks, band, key_budget = case
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(z, g, n_query, dim, generator=gen)
    k, v = torch.randn(z, n_key, dim, generator=gen), torch.randn(z, n_key, dv, generator=gen)
    sinks = None if sinks is None else torch.tensor(sinks)
    results = []
    for kernels in (False, True):
        rng = Randomness(torch.Generator().manual_seed(7), q.device)
        results.append(probed_attention(
            q, k, v, q, k, 0.5, probes, clusters, 3, m, rng, sinks, band, kernels,
            key_budget=key_budget))  # fmt: skip
    # float32 both ways: only the order of the sums differs
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-5, atol=1e-5)


@pytest.mark.interpreter
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("choice_kernel", [False, True])
@pytest.mark.slow
def test_kernels_serve_the_whole_recursion(causal, choice_kernel, monkeypatch):
    from hf_hyper.attention.finders import query_clusters

    q, k, v = grouped_qkv(n=600, dim=16, groups=8)
    q, k, v = q.float(), k.float(), v.float()
    settings = dict(block_size=64, sample_size=32, min_seq_len=128, lsh_num_projs=4, seed=0,
                    kmeans_iters=3, cluster_probes=4, sink_tokens=2, local_window=8)  # fmt: skip
    if choice_kernel:  # the kernel cuts to the budget and counts the exact keys itself
        settings["cluster_key_budget"] = 1.5
    plain = HyperAttentionConfig(**settings, backend="torch")
    expected = hyper_attention(q, k, v, causal=causal, config=plain)
    monkeypatch.setattr(query_clusters, "kernels_can_run", lambda *tensors: True)
    if choice_kernel:  # each query's clusters chosen by the kernel too, as on CUDA
        monkeypatch.setattr(query_clusters, "kernels_can_cluster", lambda x: True)
    if not (causal and choice_kernel):  # one case keeps the counting sorts' kernels
        counting_sorts_in_torch_ops(monkeypatch)
    got = hyper_attention(q, k, v, causal=causal, config=HyperAttentionConfig(**settings))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("key_budget", [0.0, 1.0])
def test_kernels_on_a_gpu_are_within_twice_the_torch_ops_rounding(dtype, causal, key_budget):
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, h, 3000, 64, device="cuda", generator=gen).to(dtype)
               for h in (8, 2, 2))  # fmt: skip
    settings = dict(block_size=64, sample_size=64, min_seq_len=256, seed=0, kmeans_iters=3,
                    cluster_probes=4, local_window=16, cluster_key_budget=key_budget)  # fmt: skip
    # float64 inputs cluster in torch ops, which near a tie may choose other clusters than
    # the k-means kernels do; the plain call (autograd: the probes' attention in torch
    # ops) and the fused call share the kernels' clusters, so both errors hold the same
    # plan difference and differ only in the attention's rounding
    truth = hyper_attention(q.double(), k.double(), v.double(), causal=causal,
                            config=HyperAttentionConfig(**settings, backend="torch"))  # fmt: skip
    config = HyperAttentionConfig(**settings)
    with_grad = [t.detach().requires_grad_() for t in (q, k, v)]
    plain = hyper_attention(*with_grad, causal=causal, config=config).detach()
    fused = hyper_attention(q, k, v, causal=causal, config=config)
    plain_err = relative_error_to_v(plain.double(), truth, v.double())
    fused_err = relative_error_to_v(fused.double(), truth, v.double())
    assert fused_err <= 2 * plain_err + 1e-6, (fused_err, plain_err)
    with pytest.raises(ValueError, match="backward"):
        q.requires_grad_(True)
        hyper_attention(q, k, v, causal=causal,
                        config=HyperAttentionConfig(**settings, backend="triton"))  # fmt: skip


@pytest.mark.interpreter
@pytest.mark.parametrize("count, clusters", [(1, 70), (3, 70), (4, 5), (5, 130)])
def test_the_choice_kernel_keeps_the_best_clusters_in_order(count, clusters):
    from hf_hyper.attention.finders.query_clusters import top_clusters

    gen = torch.Generator().manual_seed(count)
    q = torch.randn(2, 3, 100, 24 + 8, generator=gen)[..., :24]  # strided rows: hash_dims
    centroids = torch.randn(2, clusters, 24, generator=gen)
    log_size = torch.randn(2, clusters, generator=gen)
    log_size[:, 2] = -math.inf  # an empty cluster: chosen after every other one
    got = top_clusters(q, centroids, 0.7, log_size, count)
    scores = 0.7 * q.double().reshape(2, 300, 24) @ centroids.double().transpose(1, 2)
    scores = scores + log_size.double()[:, None]
    want = scores.topk(count, dim=-1)
    # exact where the count-th and the next best are not a near-tie
    margin = scores.topk(min(count + 1, clusters), dim=-1).values
    clear = (margin[..., :-1] - margin[..., 1:]).min(-1).values > 1e-4
    assert clear.float().mean() > 0.9
    assert torch.equal(got[clear], want.indices[clear])
    assert not (got == 2).any()  # every row has `count` non-empty clusters to choose


@pytest.mark.interpreter
@pytest.mark.parametrize("budget", [0.0, 1.5])
def test_the_choice_kernel_stops_a_block_early_with_the_same_choice(budget, monkeypatch):
    from hf_hyper.attention.finders import query_clusters

    gen = torch.Generator().manual_seed(11)
    q = torch.randn(2, 1, 300, 16, generator=gen)
    centroids = torch.randn(2, 150, 16, generator=gen)
    centroids[:, 100:] = centroids[:, :50]  # tied scores across blocks
    counts = torch.randint(1, 30, (2, 150), generator=gen).float()
    got = []
    for early in (False, True):
        monkeypatch.setattr(query_clusters, "TOP_EARLY_EXIT", early)
        got.append(query_clusters.top_clusters_within_budget(q, centroids, 0.7, counts, 4, budget))
    assert torch.equal(got[0][0], got[1][0]) and torch.equal(got[0][1], got[1][1])


@pytest.mark.interpreter
@pytest.mark.parametrize("budget", [0.0, 1.0, 2.5])
def test_the_choice_kernel_cuts_to_the_key_budget_as_the_torch_ops(budget):
    # on CUDA the choice kernel applies the key budget and counts each row's exact keys
    # itself; the torch ops cut its plain choice and gather the sizes
    from hf_hyper.attention.finders.query_clusters import (
        log_sizes,
        top_clusters,
        top_clusters_within_budget,
        within_key_budget,
    )

    gen = torch.Generator().manual_seed(5)
    q = torch.randn(2, 3, 100, 24, generator=gen)
    centroids = torch.randn(2, 40, 24, generator=gen)
    counts = torch.randint(0, 30, (2, 40), generator=gen).float()
    counts[:, 2] = 0  # an empty cluster
    chosen, exact = top_clusters_within_budget(q, centroids, 0.7, counts, 4, budget)
    plain = top_clusters(q, centroids, 0.7, log_sizes(counts), 4)
    want, padded = within_key_budget(plain, counts, budget) if budget else (plain, counts)
    if budget:
        assert (want == 40).any()  # the budget passed some clusters over
    assert torch.equal(chosen, want)
    sizes = torch.gather(padded, 1, want.reshape(2, -1).long()).view(want.shape).sum(-1)
    assert torch.equal(exact, sizes)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_the_choice_kernel_on_a_gpu_keeps_clusters_as_good_as_the_best(dtype):
    from hf_hyper.attention.finders.query_clusters import top_clusters

    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(2, 4, 3000, 64, device="cuda", generator=gen).to(dtype)
    centroids = torch.randn(2, 300, 64, device="cuda", generator=gen)
    log_size = torch.randn(2, 300, device="cuda", generator=gen)
    got = top_clusters(q, centroids, 0.125, log_size, 4)
    # the kernel meets the centroids rounded to q's dtype: score them so in float64
    rounded = centroids.to(dtype).double()
    scores = 0.125 * q.double().reshape(2, -1, 64) @ rounded.transpose(1, 2)
    scores = scores + log_size.double()[:, None]
    want = scores.topk(4, dim=-1).values
    chosen = torch.gather(scores, 2, got.long())
    assert (got.sort(-1).values.diff(dim=-1) > 0).all()  # distinct
    # the same scores, best first, up to float32 accumulation
    torch.testing.assert_close(chosen, want, rtol=0, atol=1e-4)


@pytest.mark.gpu
def test_clusters_in_the_fused_executor_replay_as_cuda_graphs_bit_for_bit():
    from hf_hyper.attention import clear_cuda_graphs, cuda_graph_stats

    gen = torch.Generator(device="cuda").manual_seed(1)
    q, k, v = (torch.randn(1, h, 3000, 64, device="cuda", generator=gen).to(torch.bfloat16)
               for h in (8, 2, 2))  # fmt: skip
    settings = dict(block_size=64, sample_size=64, min_seq_len=256, seed=0, kmeans_iters=2,
                    cluster_probes=4, local_window=16)  # fmt: skip
    eager = hyper_attention(
        q, k, v, causal=True, config=HyperAttentionConfig(**settings, cuda_graph_max_len=0)
    )
    clear_cuda_graphs()
    graphed = HyperAttentionConfig(**settings, cuda_graph_max_len=4096)
    for _ in range(3):  # eager first, then captured, then replayed
        assert torch.equal(hyper_attention(q, k, v, causal=True, config=graphed), eager)
    stats = cuda_graph_stats()
    assert stats.replayed >= 2, stats


@pytest.mark.interpreter
@pytest.mark.slow
def test_tall_tiles_of_many_rows_per_cluster_match_the_torch_ops(monkeypatch):
    # few clusters for many rows: the segment kernel's tiles reach SEGMENT_MAX_ROWS rows
    from hf_hyper.attention.finders import query_clusters

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 2048, 16, generator=gen) for _ in range(3))
    settings = dict(block_size=512, sample_size=32, min_seq_len=512, lsh_num_projs=3, seed=0,
                    kmeans_iters=2, cluster_probes=2, sink_tokens=2)  # fmt: skip
    plain = HyperAttentionConfig(**settings, backend="torch")
    expected = hyper_attention(q, k, v, causal=True, config=plain)
    tiles = []
    launch = query_clusters.segment_attention

    def spy(*args, **kwargs):
        tiles.append(kwargs["block_m"])
        return launch(*args, **kwargs)

    monkeypatch.setattr(query_clusters, "kernels_can_run", lambda *tensors: True)
    monkeypatch.setattr(query_clusters, "segment_attention", spy)
    counting_sorts_in_torch_ops(monkeypatch)
    got = hyper_attention(q, k, v, causal=True, config=HyperAttentionConfig(**settings))
    assert max(tiles) == query_clusters.SEGMENT_MAX_ROWS
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
