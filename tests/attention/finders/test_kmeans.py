"""k-means buckets (`kmeans_iters`): what they find, that they keep causality, and that
they plug into the same algorithm as LSH buckets."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from helpers.common import assert_past_ignores_future, grouped_qkv, relative_error_to_v
from hf_hyper import HyperAttentionConfig, hyper_attention
from hf_hyper.attention.finders import kmeans
from hf_hyper.attention.finders.kmeans import kmeans_ranks
from hf_hyper.attention.reference import reference_attention

SMALL = dict(block_size=32, sample_size=32, min_seq_len=64, seed=0, backend="torch")


def planted_keys(centers: int, per_center: int, dim: int = 16, seed: int = 0):
    """Keys in tight groups around `centers` far-apart points, shuffled in sequence."""
    gen = torch.Generator().manual_seed(seed)
    middle = 10 * torch.randn(centers, dim, generator=gen, dtype=torch.float64)
    label = torch.arange(centers).repeat_interleave(per_center)
    label = label[torch.randperm(label.numel(), generator=gen)]
    noise = torch.randn(label.numel(), dim, generator=gen, dtype=torch.float64)
    keys = middle[label] + 0.01 * noise
    return middle, label, keys


def test_clusters_never_mix_planted_groups_and_each_query_takes_its_own_group():
    # 8 clusters for 4 groups: Lloyd's iterations from evenly spaced keys may split a
    # group but must not put two groups in one cluster
    middle, label, keys = planted_keys(centers=4, per_center=40)
    planes = torch.randn(16, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    queries = middle[None, None]  # one query at each group's centre: [1, 1, 4, d]
    q_rank, k_rank = kmeans_ranks(queries, keys[None], 3, 10, 1.0, planes)
    k_rank, q_rank = k_rank[0].long(), q_rank[0, 0].long()
    for rank in k_rank.unique():
        assert label[k_rank == rank].unique().numel() == 1
    # the query at a group's centre scores a cluster of that group highest
    for group in range(4):
        chosen = label[k_rank == q_rank[group]]
        assert chosen.numel() and (chosen == group).all()


def test_skipped_keys_take_no_part_in_the_clustering():
    # a huge key first (an attention sink) would take a cluster that every query chooses
    middle, label, keys = planted_keys(centers=4, per_center=30)
    planes = torch.randn(16, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sink = 100 * middle.sum(0, keepdim=True)  # the largest inner product with every query
    with_sink = torch.cat([sink, keys])[None]
    q_rank, k_rank = kmeans_ranks(middle[None, None], with_sink, 3, 10, 1.0, planes,
                                  skip_keys=torch.tensor([1]))  # fmt: skip
    k_rank, q_rank = k_rank[0, 1:].long(), q_rank[0, 0].long()
    for rank in k_rank.unique():
        assert label[k_rank == rank].unique().numel() == 1
    for group in range(4):
        chosen = label[k_rank == q_rank[group]]
        assert chosen.numel() and (chosen == group).all()


def test_row_and_problem_chunks_give_the_same_ranks(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(3, 2, 500, 16, generator=gen), torch.randn(3, 500, 16, generator=gen)
    planes = torch.randn(16, 5, generator=gen)
    args = (q, k, 5, 3, 0.25, planes, torch.tensor([2, 0, 0]))
    whole = kmeans_ranks(*args)
    monkeypatch.setattr(kmeans, "CHUNK_ELEMENTS", 1000)  # 10 rows a chunk
    # first centroids two problems at a time (32 clusters of 16 values each)
    monkeypatch.setattr(kmeans, "INIT_CHUNK_ELEMENTS", 2 * 32 * 16)
    chunked = kmeans_ranks(*args)
    assert all(torch.equal(a, b) for a, b in zip(whole, chunked, strict=True))


def test_config_rejects_a_negative_iteration_count():
    with pytest.raises(ValueError, match="kmeans_iters"):
        HyperAttentionConfig(kmeans_iters=-1)
    with pytest.raises(TypeError, match="kmeans_iters"):
        HyperAttentionConfig(kmeans_iters=2.0)


@pytest.mark.parametrize("n_prefix", [0, 150])
def test_causal_outputs_ignore_future_tokens(n_prefix):
    # each lower-left block clusters only its own keys, all before its queries
    config = HyperAttentionConfig(**SMALL, kmeans_iters=3, sink_tokens=2)
    assert_past_ignores_future(
        lambda q, k, v: hyper_attention(q, k, v, causal=True, config=config), n_prefix
    )


@pytest.mark.parametrize("causal", [False, True])
def test_clustered_blocks_beat_lsh_blocks_where_matches_are_by_inner_product(causal):
    q, k, v = grouped_qkv()
    exact, _ = reference_attention(q, k, v, causal=causal)
    errors = {}
    for iters in (0, 4):
        config = HyperAttentionConfig(
            block_size=64, sample_size=64, min_seq_len=256, lsh_num_projs=5, seed=0,
            backend="torch", kmeans_iters=iters,
        )  # fmt: skip
        out = hyper_attention(q, k, v, causal=causal, config=config)
        errors[iters] = relative_error_to_v(out, exact, v)
    # measured: 0.62x non-causal, 0.45x causal
    assert errors[4] < 0.8 * errors[0], errors


def test_fitting_on_every_sth_key_clusters_about_as_well_as_a_full_fit(monkeypatch):
    gen = torch.Generator().manual_seed(2)
    centre = 10 * torch.randn(2, 12, 16, generator=gen)
    member = torch.randint(12, (2, 2000), generator=gen)
    k = torch.gather(centre, 1, member[..., None].expand(-1, -1, 16))
    k = k + 0.1 * torch.randn(2, 2000, 16, generator=gen)
    skip = torch.tensor([4, 0])

    def spread(centroids, assign):
        return (k - torch.gather(centroids, 1, assign[..., None].expand(-1, -1, 16))).pow(2).sum()

    fitted = kmeans.kmeans_clusters(k, 12, 3, skip)  # 2000 // (32 * 12): every 5th key
    monkeypatch.setattr(kmeans, "FIT_KEYS_PER_CLUSTER", 10**9)
    full = kmeans.kmeans_clusters(k, 12, 3, skip)
    assert not torch.equal(fitted[0], full[0])  # the fit did see fewer keys
    assert spread(*fitted[:2]) < 1.05 * spread(*full[:2])
    # every key is assigned and counted, the skipped ones excepted
    assert fitted[2].sum(-1).tolist() == [1996, 2000]


class KernelLaunched(AssertionError):
    pass


def _kernels_everywhere_but_forbidden(monkeypatch) -> None:
    """Make every row look like one the k-means kernels serve (as CUDA rows are), and make
    a launch fail: a call that reaches a kernel then raises KernelLaunched."""

    def launched(*args, **kwargs):
        raise KernelLaunched

    monkeypatch.setattr(kmeans, "kernels_can_cluster", lambda x: True)
    monkeypatch.setattr(kmeans, "best_centroid", launched)
    monkeypatch.setattr(kmeans, "lloyd_step_", launched)


@pytest.mark.parametrize("probes", [0, 2])
def test_backend_torch_clusters_in_torch_ops_only(monkeypatch, probes):
    _kernels_everywhere_but_forbidden(monkeypatch)
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 512, 16, generator=gen) for _ in range(3))
    config = HyperAttentionConfig(
        block_size=32, sample_size=32, min_seq_len=128, kmeans_iters=2, cluster_probes=probes,
        lsh_num_projs=3, seed=0, backend="torch",
    )  # fmt: skip
    out = hyper_attention(q, k, v, causal=True, config=config)
    assert torch.isfinite(out).all()
    # the same call may use the kernels where the backend allows them: the spy is live
    with pytest.raises(KernelLaunched):
        hyper_attention(q, k, v, causal=True, config=replace(config, backend="auto"))
