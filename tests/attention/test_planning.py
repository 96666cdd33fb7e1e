"""Planning (`hf_hyper.attention.planning`): the causal recursion covers every causal
query-key pair once, the level views agree with the level ranks, and a query's key
block depends on the keys and that query alone."""

from __future__ import annotations

import pytest
import torch

from hf_hyper.attention.planning import (
    causal_levels,
    level_problems,
    level_ranks,
    query_blocks,
)


@pytest.mark.parametrize("n, min_seq_len", [(1, 4), (16, 4), (37, 5), (100, 7), (64, 64)])
def test_diagonal_blocks_and_levels_cover_each_causal_pair_once(n, min_seq_len):
    padded, base, levels = causal_levels(n, min_seq_len)
    assert base <= min_seq_len or not levels
    assert padded >= n and padded == base * 2 ** len(levels) and padded - n < 2 ** len(levels)
    cover = torch.zeros(padded, padded, dtype=torch.int64)
    for start in range(0, padded, base):  # exact causal diagonal blocks
        cover[start : start + base, start : start + base] += torch.ones(base, base).tril().long()
    for level in levels:  # each split's second half of queries against its first half
        s = level.size
        for pair in range(level.pairs):
            first = 2 * pair * s
            cover[first + s : first + 2 * s, first : first + s] += 1
    assert torch.equal(cover, torch.ones(padded, padded, dtype=torch.int64).tril())


def test_level_problems_are_the_halves_the_level_ranks_describe():
    z, g, padded, d = 2, 3, 32, 4
    _, _, levels = causal_levels(padded, 4)
    q = torch.arange(z * g * padded * d, dtype=torch.float64).view(z, g, padded, d)
    k = torch.arange(z * padded * d, dtype=torch.float64).view(z, padded, d)
    q_rank = q[..., 0].long()  # a "rank" that names its row
    k_rank = k[..., 0].long()
    for level in levels:
        q_low, k_high = level_problems(q, k, level)
        qr, kr = level_ranks(q_rank, k_rank, level)
        assert torch.equal(q_low[..., 0].long(), qr) and torch.equal(k_high[..., 0].long(), kr)
        assert q_low.shape == (z * level.pairs, g, level.size, d)


def test_a_querys_block_depends_on_the_keys_and_that_query_alone():
    gen = torch.Generator().manual_seed(0)
    num_projs, n_key, n_query, key_block = 3, 96, 40, 16
    k_rank = torch.randint(0, 2**num_projs, (2, n_key), generator=gen).sort(-1).values
    q_rank = torch.randint(0, 2**num_projs, (2, 1, n_query), generator=gen)
    blocks = query_blocks(q_rank, k_rank, key_block, n_key // key_block, num_projs)
    assert blocks.min() >= 0 and blocks.max() < n_key // key_block
    # a query lands among the keys of its own bucket
    for z in range(2):
        for i in range(n_query):
            members = (k_rank[z] == q_rank[z, 0, i]).nonzero().flatten()
            if members.numel():
                spots = set((members // key_block).tolist())
                assert blocks[z, 0, i].item() in spots
    other = q_rank.clone()
    other[:, :, 1::2] = (other[:, :, 1::2] + 3) % 2**num_projs  # change every odd query
    moved = query_blocks(other, k_rank, key_block, n_key // key_block, num_projs)
    assert torch.equal(moved[:, :, 0::2], blocks[:, :, 0::2])


@pytest.mark.parametrize("interpreted", [False, pytest.param(True, marks=pytest.mark.interpreter)])
@pytest.mark.parametrize("rows, n, buckets, tile", [(2, 300, 7, 16), (3, 1000, 130, 32)])
def test_counting_sort_tiles_pack_as_the_torch_packing(interpreted, rows, n, buckets, tile,
                                                       monkeypatch):  # fmt: skip
    # the fused planners pack rows into tiles by counting sort; the torch path packs them
    # with pack_query_tiles: the same slots and tile keys, so both run the same tiles
    from hf_hyper.attention.fused.bucket_sort import bucket_tiles
    from hf_hyper.attention.planning import pack_query_tiles

    if not interpreted:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    gen = torch.Generator().manual_seed(n)
    keys = torch.randint(0, buckets, (rows, n), generator=gen)
    keys[:, : n // 3] = 2  # one key far above the others' counts
    slot_index, tile_bucket = bucket_tiles(keys, buckets, tile)
    want = pack_query_tiles(keys, buckets, tile)
    assert torch.equal(slot_index.long(), want.slot_query)
    used = want.slot_query.view(rows, -1, tile).min(-1).values < n
    assert torch.equal(tile_bucket[used], want.tile_block[used])
