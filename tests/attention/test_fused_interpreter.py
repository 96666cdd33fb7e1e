"""The fused kernels in Triton's CPU interpreter (set up by conftest.py when there is no
GPU): the same index maths, masks, online softmax, in-place merges and backward rules as
on a GPU, each case against the torch path with the same draws."""

from __future__ import annotations

import pytest
import torch

from helpers.fused_cases import (
    BUCKET_SORT_CASES,
    LSH_CASES,
    SMALL_CASES,
    bucket_sort_mismatches,
    compare,
    compare_grads,
    counting_sorts_in_torch_ops,
    lsh_mismatches,
    plan_mismatches,
)
from hf_hyper.attention.fused import bucket_sort, tuning

pytestmark = pytest.mark.interpreter
# float32 in the interpreter is float32 on the CPU: only summation order differs
TOLERANCE = 1e-5


@pytest.fixture(autouse=True)
def small_sort_chunks(monkeypatch):
    # The interpreter sorts every slot of a chunk, full or not: chunks of 32 keep the
    # cases fast and give their short rows several chunks each.
    monkeypatch.setattr(bucket_sort, "MIN_CHUNK", 32)


@pytest.mark.slow
@pytest.mark.parametrize("case", range(len(BUCKET_SORT_CASES)))
def test_counting_sort_matches_stable_sort(monkeypatch, case):
    monkeypatch.setattr(bucket_sort, "MIN_CHUNK", 256)  # the GPU's chunks
    assert bucket_sort_mismatches("cpu", only=case) == []


def test_planner_matches_torch_planner():
    assert plan_mismatches("cpu") == []


@pytest.mark.parametrize("case", LSH_CASES, ids=str)
def test_hash_matches_torch_formula(case):
    assert lsh_mismatches(*case, torch.float32, "cpu") == 0


@pytest.mark.parametrize("case", SMALL_CASES, ids=str)
def test_forward_matches_torch_path(case):
    out_err, lse_err = compare(case, torch.float32, "cpu")
    assert out_err < TOLERANCE and lse_err < TOLERANCE, (out_err, lse_err)


@pytest.mark.parametrize("case", SMALL_CASES, ids=str)
def test_backward_matches_torch_path(case):
    assert compare_grads(case, torch.float32, "cpu") < TOLERANCE


@pytest.mark.parametrize("case", SMALL_CASES, ids=str)
def test_gradient_through_the_lse_matches_torch_path(case):
    # a loss of out and lse: the row term D - dlse, and Triton for the diagonal blocks
    assert compare_grads(case, torch.float32, "cpu", through_lse=True) < TOLERANCE


@pytest.mark.parametrize("case", SMALL_CASES[:4], ids=str)
def test_one_problem_per_launch(case, monkeypatch):
    # the plan's chunks and the sampled keys' scratch at their smallest
    monkeypatch.setattr(tuning, "SAMPLE_SCRATCH_BYTES", 1)
    monkeypatch.setattr(tuning, "PLAN_CHUNK_ROWS", 1)
    out_err, lse_err = compare(case, torch.float32, "cpu")
    grad_err = compare_grads(case, torch.float32, "cpu", through_lse=True)
    assert max(out_err, lse_err, grad_err) < TOLERANCE, (out_err, lse_err, grad_err)


@pytest.mark.parametrize(
    "probes, probe_kernels",
    [(3, None), (3, "kernels"), (3, "key budget"), (0, None)],
)
@pytest.mark.parametrize("causal, extra_keys", [(False, 0), (True, 0), (True, 300)])
def test_finders_of_each_problem_run_in_the_fused_executor(
    causal, extra_keys, probes, probe_kernels, monkeypatch
):
    """Finders that look at each problem's own keys, per-query clusters (probes) and
    k-means blocks, through the fused executor (its recursion, diagonal, sinks, band
    corner and merges, a cached prefix too) equal the torch path, with the same draws.
    probe_kernels: the probes' kernels merge straight into the executor's rows, as on
    CUDA, with or without a key budget (None: the probes run in torch ops and the
    executor merges their result)."""
    from functools import partial

    from hf_hyper.attention.finders import query_clusters

    counting_sorts_in_torch_ops(monkeypatch)
    if probe_kernels:
        monkeypatch.setattr(query_clusters, "kernels_can_run", lambda *tensors: True)

    from hf_hyper import HyperAttentionConfig
    from hf_hyper.attention import hyper_attention_with_lse
    from hf_hyper.attention.finders import finder_of_call
    from hf_hyper.attention.fused.forward import fused_forward
    from hf_hyper.attention.planning import Randomness

    gen = torch.Generator().manual_seed(5)
    n_query, dim = 600, 16
    q = torch.randn(1, 4, n_query, dim, generator=gen)
    k, v = (torch.randn(1, 2, n_query + extra_keys, dim, generator=gen) for _ in range(2))
    settings = dict(block_size=64, sample_size=32, min_seq_len=128, lsh_num_projs=4,
                    seed=0, kmeans_iters=2, cluster_probes=probes, sink_tokens=2,
                    local_window=8,
                    cluster_key_budget=1.0 if probe_kernels == "key budget" else 0.0)  # fmt: skip
    reference = HyperAttentionConfig(**settings, backend="torch")
    want_out, want_lse = hyper_attention_with_lse(q, k, v, causal=causal, config=reference)
    config = HyperAttentionConfig(**settings)
    scale = dim**-0.5
    out, lse = fused_forward(
        q, k, v, causal=causal, scale=scale, config=config,
        rng=Randomness(torch.Generator().manual_seed(0), q.device, 0),
        finder_of_planes=partial(finder_of_call, config, hash_dims=dim, scale=scale),
    )  # fmt: skip
    torch.testing.assert_close(out, want_out, rtol=TOLERANCE, atol=TOLERANCE)
    torch.testing.assert_close(lse, want_lse, rtol=TOLERANCE, atol=TOLERANCE)


@pytest.mark.slow
def test_probes_planned_one_problem_at_a_time_give_the_same_rows(monkeypatch):
    """The probes' plan made for a few problems at a time (one here: the smallest plan
    budget) merges the same values into the same rows as one plan for the whole batch:
    the sample is drawn for the batch first, and each row's merges run in one order."""
    from functools import partial

    from hf_hyper import HyperAttentionConfig
    from hf_hyper.attention.finders import finder_of_call, query_clusters
    from hf_hyper.attention.fused.forward import fused_forward
    from hf_hyper.attention.planning import Randomness

    monkeypatch.setattr(query_clusters, "kernels_can_run", lambda *tensors: True)
    counting_sorts_in_torch_ops(monkeypatch)
    gen = torch.Generator().manual_seed(6)
    n_query, dim = 320, 16
    q = torch.randn(1, 4, n_query, dim, generator=gen)
    k, v = (torch.randn(1, 2, n_query + 100, dim, generator=gen) for _ in range(2))
    config = HyperAttentionConfig(block_size=64, sample_size=32, min_seq_len=128,
                                  lsh_num_projs=4, seed=0, kmeans_iters=2, cluster_probes=3,
                                  sink_tokens=2, local_window=8)  # fmt: skip
    scale = dim**-0.5
    sizes = []
    real_plan = query_clusters.plan_probes
    monkeypatch.setattr(
        query_clusters, "plan_probes",
        lambda q, *args: sizes.append(q.shape[0]) or real_plan(q, *args),
    )  # fmt: skip

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        return fused_forward(
            q, k, v, causal=True, scale=scale, config=config,
            rng=Randomness(torch.Generator().manual_seed(0), q.device, 0),
            finder_of_planes=partial(finder_of_call, config, hash_dims=dim, scale=scale),
        )  # fmt: skip

    monkeypatch.setattr(query_clusters, "PLAN_BYTES_PER_CALL_ROW", 10**6)
    whole = run()
    assert max(sizes) > 1  # the batches hold several problems
    monkeypatch.setattr(query_clusters, "PLAN_BYTES_PER_CALL_ROW", 0)
    sizes.clear()
    one_at_a_time = run()
    assert sizes and max(sizes) == 1
    assert torch.equal(whole[0], one_at_a_time[0]) and torch.equal(whole[1], one_at_a_time[1])


@pytest.mark.parametrize(
    "rows_per_problem, call_rows, want", [(1000, 10**6, 125), (10**6, 10**6, 1), (0, 0, 1)]
)
def test_problems_per_chunk_keeps_the_plan_within_its_share_of_the_call(
    rows_per_problem, call_rows, want
):
    from hf_hyper.attention.finders.query_clusters import (
        PLAN_BYTES_PER_CALL_ROW,
        PLAN_BYTES_PER_ROW,
        problems_per_chunk,
    )

    step = problems_per_chunk(rows_per_problem, call_rows)
    assert step == want
    if step > 1:
        assert step * rows_per_problem * PLAN_BYTES_PER_ROW <= PLAN_BYTES_PER_CALL_ROW * call_rows
