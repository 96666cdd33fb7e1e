"""The one place a call's finder is chosen (`finders.choice.finder_of_call`): the config
names the finder, and its backend alone says whether the finder may launch kernels."""

from __future__ import annotations

import pytest
import torch

from hf_hyper import HyperAttentionConfig
from hf_hyper.attention.finders import (
    KmeansBlocks,
    LshBlocks,
    QueryClusters,
    finder_of_call,
)
from hf_hyper.attention.planning import BlockFinder, QueryFinder

PLANES = torch.zeros(8, 3)


@pytest.mark.parametrize(
    "fields, kind, protocol",
    [
        (dict(), LshBlocks, BlockFinder),
        (dict(kmeans_iters=2), KmeansBlocks, BlockFinder),
        (dict(kmeans_iters=2, cluster_probes=4), QueryClusters, QueryFinder),
    ],
)
@pytest.mark.parametrize("backend", ["auto", "triton", "torch"])
def test_the_config_names_the_finder_and_the_backend_its_kernels(fields, kind, protocol, backend):
    config = HyperAttentionConfig(**fields, backend=backend)
    finder = finder_of_call(config, PLANES, 8, 0.5)
    assert type(finder) is kind
    assert (
        config.finder == {LshBlocks: "lsh", KmeansBlocks: "kmeans", QueryClusters: "clusters"}[kind]
    )
    assert finder.kernels is (backend != "torch")
    # the executors tell the two kinds apart by their protocol
    assert isinstance(finder, QueryFinder) is (protocol is QueryFinder)


def test_block_finders_rank_a_call_once_only_where_a_rank_is_a_rows_own():
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 3, 40, 8, generator=gen), torch.randn(2, 40, 8, generator=gen)
    planes = torch.randn(8, 3, generator=gen)
    lsh = finder_of_call(HyperAttentionConfig(lsh_num_projs=3), planes, 8, 0.5)
    q_rank, k_rank = lsh.call_ranks(q, k)
    # a problem's slice of the call's ranks is that problem's own ranks
    q_part, k_part = lsh.ranks(q[:, :, 10:20], k[:, 5:25], None)
    assert torch.equal(q_part, q_rank[:, :, 10:20]) and torch.equal(k_part, k_rank[:, 5:25])
    kmeans = finder_of_call(HyperAttentionConfig(lsh_num_projs=3, kmeans_iters=2), planes, 8, 0.5)
    assert kmeans.call_ranks(q, k) is None  # each problem clusters its own keys
