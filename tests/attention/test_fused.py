"""The fused (Triton) forward against the torch path, the float64 reference, leakage."""

from __future__ import annotations

import pytest
import torch

from helpers.common import random_qkv
from helpers.fused_cases import (
    GPU,
    GPU_CASES,
    KMEANS_GPU_CASES,
    LSH_CASES,
    Case,
    bucket_sort_mismatches,
    compare,
    compare_grads,
    forward_errors,
    gradients,
    low_precision_grad_errors,
    lse_weight,
    lsh_mismatches,
    make_inputs,
    output_weight,
    plan_mismatches,
    planes_exact_in,
)
from hf_hyper import HyperAttentionConfig
from hf_hyper.attention import hyper_attention, hyper_attention_with_lse, reference_attention
from hf_hyper.attention.fused import tuning


@pytest.mark.gpu
@pytest.mark.parametrize("case", LSH_CASES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_fused_hash_matches_torch_formula(case, dtype):
    assert lsh_mismatches(*case, dtype, "cuda") == 0


def test_counting_sort_fallback_matches_stable_sort(monkeypatch):
    # on the CPU without the interpreter every case takes the torch path wide keys take
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert bucket_sort_mismatches("cpu") == []


@pytest.mark.gpu
def test_counting_sort_matches_stable_sort():
    assert bucket_sort_mismatches("cuda") == []


@pytest.mark.gpu
def test_triton_planner_matches_torch_planner():
    assert plan_mismatches("cuda") == []


@pytest.mark.gpu
@pytest.mark.parametrize("seq_first", [False, True], ids=["bhnd", "bnhd"])
@pytest.mark.parametrize("n_query, n_key", [(2048, 2048), (1900, 2300)])
def test_cudnn_diagonal_blocks_match_triton_dense(seq_first, n_query, n_key):
    # the exact diagonal blocks go to cuDNN where it runs; with it off, Triton runs them
    case = Case(1, 4, 4, n_query, n_key, 64, 64, True, GPU, seq_first=seq_first)
    q, k, v = make_inputs(case, torch.bfloat16, "cuda")
    config = HyperAttentionConfig(seed=1, backend="triton", **GPU)
    with_cudnn = hyper_attention_with_lse(q, k, v, causal=True, config=config)
    torch.backends.cuda.enable_cudnn_sdp(False)
    try:
        without = hyper_attention_with_lse(q, k, v, causal=True, config=config)
    finally:
        torch.backends.cuda.enable_cudnn_sdp(True)
    assert (with_cudnn[0].float() - without[0].float()).abs().max().item() < 2e-2
    assert (with_cudnn[1] - without[1]).abs().max().item() < 1e-2


@pytest.mark.gpu
def test_fused_forward_is_deterministic():
    q, k, v = random_qkv(1, 4, 2, 3000, 3000, dim=64, dtype=torch.bfloat16, device="cuda", seed=8)
    config = HyperAttentionConfig(block_size=64, sample_size=64, min_seq_len=200, seed=2)
    first = hyper_attention(q, k, v, causal=True, config=config)
    for _ in range(4):
        assert torch.equal(first, hyper_attention(q, k, v, causal=True, config=config))


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES + KMEANS_GPU_CASES, ids=str)
def test_fused_matches_torch_path_fp32(case):
    out_err, lse_err = compare(case, torch.float32, "cuda")
    assert out_err < 1e-4 and lse_err < 1e-4, (out_err, lse_err)


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES, ids=str)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_fused_forward_rounding_within_twice_plain_torch(case, dtype):
    # FlashAttention's rule against the float64 torch path with the same draws: the
    # fused kernels' rounding error at most about twice the torch path's in that dtype
    errors = forward_errors(case, dtype, "cuda")
    (out_f, lse_f), (out_t, lse_t) = errors["fused"], errors["torch"]
    assert out_f <= 2 * out_t + 1e-5 and lse_f <= 2 * lse_t + 1e-5, errors


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True])
def test_fused_exact_limit_matches_float64_reference(causal):
    q, k, v = random_qkv(2, 4, 2, 300, 300, dim=64, dtype=torch.float32, device="cuda", seed=3)
    config = HyperAttentionConfig(min_seq_len=512, backend="triton")
    out = hyper_attention(q, k, v, causal=causal, config=config)
    exact = reference_attention(q, k, v, causal=causal)[0]
    assert (out.double() - exact).abs().max().item() < 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("causal, n_key", [(True, 1000), (False, 1000), (False, 1500)])
def test_short_exact_inputs_match_sdpa_forward_and_backward(causal, n_key):
    # short inputs are exact attention; in 16-bit MHA that runs through cuDNN, whose
    # results (and gradients) must match SDPA's own
    q, k, v = random_qkv(2, 4, 4, 1000, n_key, dim=64, dtype=torch.bfloat16, device="cuda")
    grad = torch.randn_like(q)
    results = []
    for run in ("hyper", "sdpa"):
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        if run == "hyper":
            config = HyperAttentionConfig(min_seq_len=2048, backend="triton")
            out = hyper_attention(*leaves, causal=causal, config=config)
        else:
            out = torch.nn.functional.scaled_dot_product_attention(*leaves, is_causal=causal)
        out.backward(grad)
        results.append([out.float(), *(t.grad.float() for t in leaves)])
    for got, want in zip(*results, strict=True):
        assert ((got - want).norm() / want.norm()).item() < 1e-2


@pytest.mark.gpu
def test_fused_causal_outputs_never_see_the_future():
    n, cut = 3000, 1700
    q, k, v = random_qkv(1, 4, 2, n, n, dim=64, dtype=torch.bfloat16, device="cuda", seed=8)
    config = HyperAttentionConfig(
        block_size=64, sample_size=64, min_seq_len=200, seed=2, backend="triton"
    )
    before = hyper_attention(q, k, v, causal=True, config=config)
    q2, k2, v2 = (t.clone() for t in (q, k, v))
    for t in (q2, k2, v2):
        t[:, :, cut:] = torch.randn_like(t[:, :, cut:]) * 3
    after = hyper_attention(q2, k2, v2, causal=True, config=config)
    assert torch.equal(before[:, :, :cut], after[:, :, :cut])
    assert not torch.equal(before[:, :, cut:], after[:, :, cut:])


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES + KMEANS_GPU_CASES, ids=str)
def test_fused_backward_matches_torch_path_fp32(case):
    assert compare_grads(case, torch.float32, "cuda") < 1e-4


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES, ids=str)
def test_fused_gradient_through_the_lse_matches_torch_path_fp32(case):
    # a loss of out and lse (an LSE merge downstream): cuDNN's diagonal backward cannot
    # take dlse, so those blocks go through Triton
    assert compare_grads(case, torch.float32, "cuda", through_lse=True) < 1e-4


@pytest.mark.gpu
@pytest.mark.parametrize("case", [GPU_CASES[1], GPU_CASES[2]], ids=str)
def test_fused_gradient_through_the_lse_in_bf16_matches_torch_path(case):
    # 16-bit MHA runs the diagonal blocks through cuDNN when only `out` has a gradient
    inputs = make_inputs(case, torch.bfloat16, "cuda")
    weights = output_weight(case, "cuda"), lse_weight(case, "cuda")
    with planes_exact_in(torch.bfloat16):
        truth = gradients(case, [t.float() for t in inputs], False, *weights)
        plain = gradients(case, inputs, False, *weights)
        fused = gradients(case, inputs, True, *weights)
    for f, p, t in zip(fused, plain, truth, strict=True):
        assert (f - t).norm() <= 2 * (p - t).norm() + 1e-3 * t.norm()


@pytest.mark.gpu
@pytest.mark.parametrize("case", [*GPU_CASES[:3], GPU_CASES[-1]], ids=str)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_fused_backward_low_precision_error_matches_torch_path(case, dtype):
    # FlashAttention's rule: at most about twice plain PyTorch's error in that precision
    errors = low_precision_grad_errors(case, dtype, "cuda")
    assert errors["fused"] <= 2 * errors["torch"] + 1e-3, errors


@pytest.mark.gpu
@pytest.mark.parametrize("seq_first", [False, True], ids=["bhnd", "bnhd"])
@pytest.mark.parametrize("split_bytes", [None, 0])  # 0: cuDNN runs by groups of heads
def test_cudnn_diagonal_backward_matches_triton(seq_first, split_bytes, monkeypatch):
    if split_bytes is not None:
        monkeypatch.setattr(tuning, "SPLIT_BYTES", split_bytes)
    case = Case(1, 4, 4, 2048, 2048, 64, 64, True, GPU, seq_first=seq_first)
    inputs, weight = make_inputs(case, torch.bfloat16, "cuda"), output_weight(case, "cuda")
    with_cudnn = gradients(case, inputs, True, weight)
    torch.backends.cuda.enable_cudnn_sdp(False)
    try:
        without = gradients(case, inputs, True, weight)
    finally:
        torch.backends.cuda.enable_cudnn_sdp(True)
    for a, b in zip(with_cudnn, without, strict=True):
        assert ((a - b).norm() / b.norm()).item() < 1e-2


@pytest.mark.gpu
def test_fused_backward_sends_no_gradient_from_the_past_to_the_future():
    n, cut = 3000, 1700
    q, k, v = random_qkv(1, 4, 2, n, n, dim=64, dtype=torch.bfloat16, device="cuda", seed=8)
    for t in (q, k, v):
        t.requires_grad_(True)
    config = HyperAttentionConfig(
        block_size=64, sample_size=64, min_seq_len=200, seed=2, backend="triton"
    )
    out = hyper_attention(q, k, v, causal=True, config=config)
    out[:, :, :cut].float().square().sum().backward()
    for t in (q, k, v):
        assert torch.count_nonzero(t.grad[:, :, cut:]) == 0
        assert torch.count_nonzero(t.grad[:, :, :cut]) > 0


@pytest.mark.gpu
def test_auto_backend_trains_through_the_fused_kernels():
    q, k, v = random_qkv(1, 2, 2, 600, 600, dim=32, dtype=torch.float32, device="cuda")
    config = dict(block_size=32, sample_size=32, min_seq_len=128, seed=4)
    grads = {}
    for backend in ("auto", "triton"):
        leaf = q.clone().requires_grad_(True)
        out = hyper_attention(
            leaf, k, v, causal=True, config=HyperAttentionConfig(**config, backend=backend)
        )
        out.sum().backward()
        grads[backend] = leaf.grad
    assert torch.equal(grads["auto"], grads["triton"]) and torch.isfinite(grads["auto"]).all()


def test_triton_backend_on_cpu_names_the_problem():
    q, k, v = random_qkv(1, 2, 2, 64, 64, dtype=torch.float32)
    with pytest.raises(ValueError, match="backend='triton'.*CUDA"):
        hyper_attention(q, k, v, causal=False, config=HyperAttentionConfig(backend="triton"))


def test_config_rejects_unknown_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        HyperAttentionConfig(backend="cuda")


OVERLAP_CASES = [c for c in GPU_CASES + KMEANS_GPU_CASES if c.causal]


@pytest.mark.gpu
@pytest.mark.parametrize("case", OVERLAP_CASES, ids=str)
def test_levels_beside_the_diagonal_equal_one_stream_bit_for_bit(case, monkeypatch):
    """The causal forward's work beside its diagonal (fused/overlap.py) reads nothing
    before it is written: the result is the one-stream result, bit for bit. Calls on
    other inputs and seeds run in between, so a read of stale memory would not match."""
    from hf_hyper.attention.fused import forward, overlap

    config = HyperAttentionConfig(**{**case.config, "cuda_graph_max_len": 0})
    q, k, v = make_inputs(case, torch.bfloat16, "cuda", seed=3)
    other = make_inputs(case, torch.bfloat16, "cuda", seed=4)

    def run(inputs, seed: int):
        torch.cuda.manual_seed(seed)
        with torch.no_grad():
            return hyper_attention_with_lse(*inputs, causal=True, config=config)

    def one_stream(device, enabled=True):
        return overlap.DiagonalOverlap(device, enabled=False)

    with monkeypatch.context() as patch:
        patch.setattr(forward, "DiagonalOverlap", one_stream)
        want_out, want_lse = run((q, k, v), 1)
    for _ in range(3):
        run(other, 2)
        out, lse = run((q, k, v), 1)
        assert torch.equal(out, want_out) and torch.equal(lse, want_lse)
