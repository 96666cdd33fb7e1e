"""Angular LSH (`hf_hyper.attention.finders.lsh`): the Gray order of the buckets, the narrowest
rank type, and the hash's angular behaviour."""

from __future__ import annotations

import math

import pytest
import torch

from hf_hyper.attention.finders.lsh import angular_lsh_rank, gray_code_rank, rank_dtype
from hf_hyper.attention.planning import BUCKET_TABLE_MAX_PROJS


def _bits(code: int, width: int) -> list[bool]:
    return [bool(code >> (width - 1 - i) & 1) for i in range(width)]  # most significant first


@pytest.mark.parametrize("width", [1, 2, 3, 5, 7])
def test_gray_rank_inverts_the_gray_code_so_neighbours_differ_in_one_hyperplane(width):
    ranks = torch.arange(2**width)
    codes = ranks ^ (ranks >> 1)  # the reflected binary Gray code of each rank
    bits = torch.tensor([_bits(int(c), width) for c in codes])
    assert torch.equal(gray_code_rank(bits), ranks)
    flips = (codes[1:] ^ codes[:-1]).tolist()
    assert all(f & (f - 1) == 0 and f for f in flips)  # exactly one bit changes


@pytest.mark.parametrize("num_projs", [1, 7, 8, 12, 15, 16, 31, 32, 48])
def test_rank_dtype_is_the_narrowest_that_holds_what_is_stored_in_it(num_projs):
    # every rank 0 .. 2**r - 1, and the bucket count 2**r where the bucket table keeps it
    largest = 2**num_projs if num_projs <= BUCKET_TABLE_MAX_PROJS else 2**num_projs - 1
    dtype = rank_dtype(num_projs)
    assert largest <= torch.iinfo(dtype).max
    narrower = [t for t in (torch.uint8, torch.int16, torch.int32, torch.int64)
                if torch.iinfo(t).bits < torch.iinfo(dtype).bits]  # fmt: skip
    assert all(largest > torch.iinfo(t).max for t in narrower)


def test_rank_depends_on_direction_only_and_a_negated_row_takes_the_opposite_bucket():
    gen = torch.Generator().manual_seed(0)
    planes = torch.randn(16, 6, generator=gen)
    x = torch.randn(3, 50, 16, generator=gen)
    rank = angular_lsh_rank(x, planes)
    assert rank.shape == (3, 50) and rank.dtype == rank_dtype(6)
    assert torch.equal(angular_lsh_rank(3.5 * x, planes), rank)
    # -x flips every sign: the rank of the complementary code
    bits = (x @ planes) > 0
    assert torch.equal(gray_code_rank(~bits).to(rank.dtype), angular_lsh_rank(-x, planes))


@pytest.mark.parametrize("angle", [0.2, 1.0, 2.5])
def test_two_rows_share_a_bucket_with_the_angular_probability(angle):
    # P(same bucket) = (1 - angle / pi) ** r over random hyperplanes (Charikar's hash)
    gen = torch.Generator().manual_seed(1)
    dim, r, draws = 8, 3, 4000
    a = torch.zeros(dim, dtype=torch.float64)
    a[0] = 1.0
    b = torch.zeros(dim, dtype=torch.float64)
    b[0], b[1] = math.cos(angle), math.sin(angle)
    planes = torch.randn(draws, dim, r, generator=gen, dtype=torch.float64)
    ranks = angular_lsh_rank(torch.stack([a, b]).expand(draws, 2, dim), planes)
    rate = (ranks[:, 0] == ranks[:, 1]).double().mean().item()
    want = (1 - angle / math.pi) ** r
    # 4 standard errors of a binomial rate: fails by chance about once in 16,000 runs
    assert abs(rate - want) <= 4 * math.sqrt(want * (1 - want) / draws) + 1e-9, (rate, want)
