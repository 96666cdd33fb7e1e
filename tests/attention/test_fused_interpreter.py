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
