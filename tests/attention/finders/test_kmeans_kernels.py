"""The k-means kernels (`finders.kmeans`) against the torch ops they replace: each row's
best centroid and each cluster's weighted sum, in Triton's interpreter (float32) and on
a GPU (16-bit rows meet rounded centroids, so there the choice is checked by its score)."""

from __future__ import annotations

import pytest
import torch

from hf_hyper.attention.finders import kmeans
from hf_hyper.attention.finders.kmeans import kmeans_clusters, kmeans_ranks


def _scores(x, centroids, factor, bias):
    return factor * x.double() @ centroids.double().transpose(-1, -2) + bias.double()[:, None]


def _inputs(device="cpu", z=2, n=150, c=70, dim=24, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(z, n, dim + 8, generator=gen)[..., :dim]  # a column slice, as hash_dims
    centroids = torch.randn(z, c, dim, generator=gen)
    bias = torch.randn(z, c, generator=gen)
    bias[:, 3] = -torch.inf  # an empty cluster
    return x.to(device), centroids.to(device), bias.to(device)


@pytest.mark.interpreter
@pytest.mark.parametrize("c", [70, 5])
def test_best_centroid_matches_the_argmax(c):
    from hf_hyper.attention.finders.kmeans import best_centroid

    x, centroids, bias = _inputs(c=c)
    got = best_centroid(x, centroids, 1.7, bias)
    scores = _scores(x, centroids, 1.7, bias)
    top2 = scores.topk(2, dim=-1).values
    clear = (top2[..., 0] - top2[..., 1]) > 1e-4  # rows whose best is not a near-tie
    assert clear.float().mean() > 0.95
    assert torch.equal(got[clear], scores.argmax(-1)[clear])


@pytest.mark.interpreter
@pytest.mark.parametrize("n", [1, 37, 300])
def test_lloyd_step_moves_each_centroid_to_its_rows_mean_in_place(n):
    from hf_hyper.attention.finders.kmeans import best_centroid, lloyd_step_

    gen = torch.Generator().manual_seed(1)
    centroids = 5 * torch.randn(2, 10, 33, generator=gen)
    centroids[:, 0] = 1e3  # far from every row: keeps its centroid
    member = torch.randint(1, 10, (2, n), generator=gen)
    rows = torch.gather(centroids, 1, member[..., None].expand(-1, -1, 33))
    x = (rows + 0.5 * torch.randn(2, n, 33, generator=gen)).contiguous()
    wide = torch.zeros(2, n, 40)
    wide[..., :33] = x
    x = wide[..., :33]  # a column slice, as hash_dims
    first_row = torch.tensor([min(3, n), 0])  # problem 0's first rows take no part
    assign = best_centroid(x, centroids)
    want_assign = (2 * x @ centroids.transpose(-1, -2) - centroids.pow(2).sum(-1)[:, None]).argmax(
        -1
    )
    assert torch.equal(assign, want_assign)
    weight = (torch.arange(n) >= first_row[:, None]).float()
    member = torch.nn.functional.one_hot(want_assign, 10).float() * weight[..., None]
    sums, counts = member.transpose(-1, -2) @ x, member.sum(1)
    want = torch.where(counts[..., None] > 0, sums / counts.clamp_min(1)[..., None], centroids)
    got = centroids.clone()
    assert lloyd_step_(x, got, first_row) is got
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.interpreter
def test_best_centroid_reads_a_causal_levels_queries_in_place():
    from hf_hyper.attention.finders.kmeans import best_centroid
    from hf_hyper.attention.planning import CausalLevel, level_problems, level_queries

    gen = torch.Generator().manual_seed(3)
    q = torch.randn(2, 3, 64, 16, generator=gen)  # [z, g, N, d]: 3 query heads per key head
    level = CausalLevel(size=16, pairs=2)
    centroids = torch.randn(4, 5, 16, generator=gen)  # one set per (z, pair) problem
    bias = torch.randn(4, 5, generator=gen)
    view = level_queries(q, level)
    assert view.untyped_storage().data_ptr() == q.untyped_storage().data_ptr()  # no copy
    got = best_centroid(view, centroids, 0.5, bias)
    merged = level_problems(q, q[:, 0].contiguous(), level)[0]  # [z*pairs, g, size, d], copied
    assert torch.equal(got.reshape(4, 3, 16), best_centroid(merged, centroids, 0.5, bias))
    scores = 0.5 * merged.reshape(4, 48, 16) @ centroids.transpose(-1, -2) + bias[:, None]
    assert torch.equal(got.reshape(4, 48), scores.argmax(-1))


def _separated_keys(n=400, dim=16, groups=12, seed=2, skip=(3, 0)):
    """Keys around well-separated centres, 0.1 from their own centre and tens from any
    other. With as many clusters as groups, the evenly spaced first centroids each start
    in a group of their own, so k-means finds the groups and every key is far from a tie:
    an answer that rounding in any order cannot change."""
    gen = torch.Generator().manual_seed(seed)
    centre = 10 * torch.randn(2, groups, dim, generator=gen)
    member = torch.randint(groups, (2, n), generator=gen)
    for z, first in enumerate(skip):  # the keys `fit_centroids` starts from
        starts = first + torch.arange(groups) * (n - first) // groups
        member[z, starts] = torch.arange(groups)
    k = torch.gather(centre, 1, member[..., None].expand(-1, -1, dim))
    return k + 0.1 * torch.randn(2, n, dim, generator=gen)


def _split_group_keys(n=400, dim=16, groups=12, seed=2):
    """Keys around 12 centres whose evenly spaced first centroids meet some group twice:
    k-means splits that group, and some of its keys sit within rounding of a tie between
    the two halves. A change of one unit in the last place of the inputs flips such keys,
    in the fit as well as in the final assignment."""
    gen = torch.Generator().manual_seed(seed)
    centre = 10 * torch.randn(2, groups, dim, generator=gen)
    member = torch.randint(groups, (2, n), generator=gen)
    k = torch.gather(centre, 1, member[..., None].expand(-1, -1, dim))
    return k + 0.1 * torch.randn(2, n, dim, generator=gen)


@pytest.mark.interpreter
@pytest.mark.parametrize("n", [400, 2000])  # 2000: the fit takes every 5th key, a strided view
def test_kmeans_through_the_kernels_matches_the_torch_ops(monkeypatch, n):
    k = _separated_keys(n=n)
    skip = torch.tensor([3, 0])
    want_centroids, want_assign, want_counts = kmeans_clusters(k, 12, 3, skip)
    monkeypatch.setattr(kmeans, "kernels_can_cluster", lambda x: True)
    centroids, assign, counts = kmeans_clusters(k, 12, 3, skip)
    assert torch.equal(assign, want_assign)
    torch.testing.assert_close(counts, want_counts)
    torch.testing.assert_close(centroids, want_centroids, rtol=1e-5, atol=1e-5)


def _distances(k, centroids):
    """Squared distances [z, n, c] in float64."""
    return (k.double()[:, :, None] - centroids.double()[:, None]).pow(2).sum(-1)


def _score_error_bound(k, centroids):
    """Largest rounding error [z, n] of one float32 nearest-centroid score 2 k.c - |c|^2:
    a dot product over d terms is within gamma_d |k| |c| of the truth (gamma_d =
    d u / (1 - d u), u the unit roundoff), and combining the terms adds a few units of
    roundoff of the score's size."""
    u = torch.finfo(torch.float32).eps / 2
    d = k.shape[-1]
    gamma = d * u / (1 - d * u)
    k_norm = k.double().norm(dim=-1)
    c_norm = centroids.double().norm(dim=-1).amax(-1)[:, None]
    return (gamma + 3 * u) * (2 * k_norm * c_norm + c_norm**2)


def _objective(k, centroids, assign, skip):
    """The k-means objective: the summed squared distance of each counted key to the
    centroid it was given, in float64."""
    chosen = torch.gather(_distances(k, centroids), -1, assign[..., None])[..., 0]
    counted = torch.arange(k.shape[1]) >= skip[:, None]
    return (chosen * counted).sum().item()


@pytest.mark.interpreter
def test_kmeans_near_ties_agree_within_rounding(monkeypatch):
    """Where a key sits within rounding of a tie, the kernels and the torch ops may choose
    either side, and a choice flipped during the fit moves two centroids: each path must
    give every key a nearest centroid of its own within the rounding bound, agree on every
    key clear of that bound, and reach the same objective within what the flips allow."""
    k = _split_group_keys()
    skip = torch.tensor([3, 0])
    counted = torch.arange(k.shape[1]) >= skip[:, None]
    torch_path = kmeans_clusters(k, 12, 3, skip)
    monkeypatch.setattr(kmeans, "kernels_can_cluster", lambda x: True)
    kernel_path = kmeans_clusters(k, 12, 3, skip)
    bound = _score_error_bound(k, torch_path[0])
    for centroids, assign, counts in (torch_path, kernel_path):
        distances = _distances(k, centroids)
        chosen = torch.gather(distances, -1, assign[..., None])[..., 0]
        # two scores each within `bound` of the truth: a gap below 2 bound can flip
        assert (chosen - distances.amin(-1) <= 2 * bound).all()
        pairs = zip(assign, counted, strict=True)
        want_counts = [torch.bincount(a[m], minlength=12) for a, m in pairs]
        assert torch.equal(counts, torch.stack(want_counts).float())

    # a key flipped during the fit moves its old and new centroids by about
    # |key - centroid| / cluster size; a centroid moved by `shift` moves a key's distance
    # to it by at most 2 |key - centroid| shift + shift^2. A key is clear where its best
    # centroid stays best by more than the rounding bound, whichever way each one moved.
    shift = (kernel_path[0] - torch_path[0]).double().norm(dim=-1)[:, None]  # [z, 1, c]
    distances = _distances(k, torch_path[0])
    moved = 2 * distances.sqrt() * shift + shift**2
    best = distances.argmin(-1, keepdim=True)
    best_far = torch.gather(distances + moved, -1, best)[..., 0]
    others_near = (distances - moved).scatter(-1, best, torch.inf).amin(-1)
    clear = others_near - best_far > 2 * bound
    assert clear.float().mean() > 0.9  # the comparison covers most keys
    assert torch.equal(kernel_path[1][clear], torch_path[1][clear])

    # moving key i between clusters a and b at a near-tie, then recentring both, changes
    # the objective by at most its gap d_b - d_a plus d_a / (n_a - 1) + d_b / (n_b + 1);
    # each key that is not clear may flip in the fit and again in the final assignment
    top2 = distances.topk(2, dim=-1, largest=False).values[~clear]
    smallest = torch_path[2][torch_path[2] > 0].min().item()
    per_flip = top2[:, 1] - top2[:, 0] + top2.sum(-1) / max(smallest - 1, 1)
    allowed = 2 * per_flip.sum().item()
    want_objective = _objective(k, *torch_path[:2], skip)
    got_objective = _objective(k, *kernel_path[:2], skip)
    assert abs(got_objective - want_objective) <= allowed


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_best_centroid_on_a_gpu_picks_a_best_score_within_rounding(dtype):
    from hf_hyper.attention.finders.kmeans import best_centroid

    x, centroids, bias = _inputs("cuda", n=5000, c=300, dim=64)
    x = x.to(dtype)
    got = best_centroid(x, centroids, 2.0, bias)
    scores = _scores(x, centroids, 2.0, bias)
    chosen = torch.gather(scores, -1, got[..., None])[..., 0]
    # 16-bit rows meet centroids rounded to their dtype: a score moves by at most about
    # factor * |x| |c| * eps; float32 dots differ from float64 in rounding only
    eps = torch.finfo(dtype).eps
    bound = 2.0 * x.double().norm(dim=-1) * centroids.double().norm(dim=-1).amax(-1)[:, None]
    assert (scores.amax(-1) - chosen <= 2 * eps * bound + 1e-6).all()
    assert (got >= 0).all() and (got < 300).all() and (got != 3).all()


@pytest.mark.interpreter
@pytest.mark.parametrize("iterations", [0, 3])
def test_kmeans_ranks_through_the_kernels_match_the_torch_ops(monkeypatch, iterations):
    k = _split_group_keys(n=600)
    gen = torch.Generator().manual_seed(5)
    # queries near the keys' centres, grouped two per key head, as GQA reaches them
    q = k[:, None, ::3].repeat(1, 2, 1, 1) + 0.1 * torch.randn(2, 2, 200, 16, generator=gen)
    planes = torch.randn(16, 4, generator=gen)
    skip = torch.tensor([2, 2])
    want = kmeans_ranks(q, k, 4, iterations, 0.25, planes, skip)
    monkeypatch.setattr(kmeans, "kernels_can_cluster", lambda x: True)
    got = kmeans_ranks(q, k, 4, iterations, 0.25, planes, skip)
    if iterations == 0:  # the same centroids: the same choices
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    else:
        # 16 clusters split some of the 12 groups, so a key may sit within the sums'
        # rounding of a tie between two centroids, and the paths sum in other orders
        assert (got[1] != want[1]).float().mean() < 0.01
        assert (got[0] != want[0]).float().mean() < 0.01
