"""HyPE: the fused (column) form against an explicit L x L bias, presets, gradients."""

import math

import pytest
import torch

from helpers.common import random_qkv
from hf_hyper import HyperAttentionConfig
from hf_hyper.attention import reference_attention
from hf_hyper.hype import HyPE, HyPEConfig, alibi_slopes, hype_attention, hype_bias


def explicit(q, k, v, mu, tau, causal, dtype=torch.float64):
    n_query, n_key = q.shape[2], k.shape[2]
    bias = hype_bias(torch.arange(n_key - n_query, n_key), torch.arange(n_key), mu, tau)
    bias = bias.to(q.device)
    return reference_attention(q, k, v, causal=causal, bias=bias, dtype=dtype)[0]


@pytest.mark.parametrize(
    "causal,n_query,n_key",
    [
        (True, 1, 1),
        (True, 50, 50),
        (True, 129, 129),
        (True, 40, 170),
        (False, 1, 1),
        (False, 129, 129),
    ],
)
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("chunk", [None, 16])
def test_fused_equals_explicit_bias(causal, n_query, n_key, kv_heads, chunk):
    q, k, v = random_qkv(2, 4, kv_heads, n_query, n_key, v_dim=12, seed=n_key)
    gen = torch.Generator().manual_seed(n_query)
    mu = torch.rand(4, generator=gen, dtype=torch.float64) * 0.05
    tau = torch.rand(4, generator=gen, dtype=torch.float64) * 3
    out = hype_attention(q, k, v, causal=causal, mu=mu, tau=tau, chunk_size=chunk)
    torch.testing.assert_close(out, explicit(q, k, v, mu, tau, causal), atol=1e-9, rtol=0)


def test_hyper_kernel_in_its_exact_limit_equals_explicit_bias():
    q, k, v = random_qkv(1, 4, 2, 200, 200, seed=3)
    mu, tau = HyPEConfig.alibi(4).per_head(4)
    exact_hyper = HyperAttentionConfig(block_size=1 << 20, sample_size=0, min_seq_len=8, seed=0)
    out = hype_attention(
        q, k, v, causal=True, mu=mu, tau=tau, kernel="hyper", hyper_config=exact_hyper
    )
    torch.testing.assert_close(out, explicit(q, k, v, mu, tau, True), atol=1e-9, rtol=0)


def test_exact_tail_rows_carry_the_bias_exactly():
    # an approximate hyper kernel whose last 30 rows attend exactly: those rows are the
    # explicit bias's, position columns and all
    q, k, v = random_qkv(1, 4, 2, 300, 300, seed=5)
    mu, tau = HyPEConfig.alibi(4).per_head(4)
    config = HyperAttentionConfig(
        block_size=16, sample_size=16, min_seq_len=64, seed=0, exact_tail=30
    )
    out = hype_attention(q, k, v, causal=True, mu=mu, tau=tau, kernel="hyper", hyper_config=config)
    want = explicit(q, k, v, mu, tau, True)
    torch.testing.assert_close(out[:, :, -30:], want[:, :, -30:], atol=1e-9, rtol=0)
    assert (out[:, :, :-30] - want[:, :, :-30]).abs().max().item() > 1e-4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_low_precision_keeps_the_bias(dtype, device):
    # ALiBi preset: slopes up to 0.5, so the bias spans hundreds of logits. bf16/fp16 must
    # be within 2x plain PyTorch with an explicit bias in that dtype (measured: below it,
    # thanks to the split columns); fp32 within 1e-4 (terms ~ slope * chunk, fp32-rounded).
    q, k, v = random_qkv(1, 8, 2, 1500, 1500, dim=64, dtype=dtype, device=device, seed=4)
    mu, tau = HyPEConfig.alibi(8).per_head(8)
    out = hype_attention(q, k, v, causal=True, mu=mu, tau=tau)
    truth = explicit(q, k, v, mu, tau, True)
    ours = (out.double() - truth).abs().max().item()
    if dtype == torch.float32:
        assert ours < 1e-4, ours
    else:
        plain = (explicit(q, k, v, mu, tau, True, dtype=dtype).double() - truth).abs().max().item()
        assert ours <= 2 * plain, (ours, plain)


def test_alibi_preset_tracks_alibi_within_its_fit_range():
    heads, fit_bias, max_error = 8, 30.0, 0.05
    config = HyPEConfig.alibi(heads, fit_bias=fit_bias, max_error=max_error)
    mu, tau = config.per_head(heads)
    slopes = torch.tensor(alibi_slopes(heads), dtype=torch.float64)
    distance = torch.arange(0, 20000, dtype=torch.float64)
    hype = -2 * tau[:, None] * torch.sinh(mu[:, None] * distance)
    alibi = -slopes[:, None] * distance
    inside = alibi.abs() <= fit_bias
    assert (hype - alibi).abs()[inside].max() <= max_error * 1.01
    # beyond the range the sinh bias falls faster than ALiBi (never less penalising)
    assert (hype <= alibi + 1e-9).all()


def test_alibi_slopes_follow_alibi():
    assert alibi_slopes(8) == [2**-i for i in range(1, 9)]
    twelve = alibi_slopes(12)
    assert twelve[:8] == alibi_slopes(8) and twelve[8:] == alibi_slopes(16)[0::2][:4]


def test_gradients_wrt_mu_and_tau():
    q, k, v = random_qkv(1, 2, 1, 12, 12, dim=4, seed=5)
    mu = torch.tensor([0.05, 0.1], dtype=torch.float64, requires_grad=True)
    tau = torch.tensor([0.7, 1.3], dtype=torch.float64, requires_grad=True)

    def fn(mu, tau):
        return hype_attention(q, k, v, causal=True, mu=mu, tau=tau, chunk_size=5)

    assert torch.autograd.gradcheck(fn, (mu, tau))


def test_learnable_module_trains_mu_and_tau():
    module = HyPE(HyPEConfig(mu=0.01, tau=2.0, learnable=True), num_heads=4)
    assert {n for n, _ in module.named_parameters()} == {"log_mu", "log_tau"}
    q, k, v = random_qkv(1, 4, 2, 30, 30, dtype=torch.float32, seed=6)
    module(q, k, v).square().sum().backward()
    assert module.log_mu.grad is not None and module.log_mu.grad.abs().sum() > 0
    assert module.log_tau.grad is not None and module.log_tau.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="mu > 0 and tau > 0"):
        HyPE(HyPEConfig(mu=-0.01, tau=2.0, learnable=True), num_heads=4)
    frozen = HyPE(HyPEConfig.alibi(4), num_heads=4)
    assert not list(frozen.parameters()) and set(frozen.state_dict()) == {"fixed_mu", "fixed_tau"}


def test_bad_config_and_overflowing_non_causal_use_are_refused():
    with pytest.raises(ValueError, match="mu"):
        HyPEConfig(mu=math.inf)
    with pytest.raises(ValueError, match="3 mu values but 2 tau"):
        HyPEConfig(mu=(1.0, 2.0, 3.0), tau=(1.0, 2.0))
    with pytest.raises(ValueError, match="4 values for 8 heads"):
        HyPEConfig(mu=(0.1,) * 4).per_head(8)
    q, k, v = random_qkv(1, 2, 2, 500, 500)
    mu, tau = torch.full((2,), 0.5, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    with pytest.raises(ValueError, match="non-causal HyPE"):
        hype_attention(q, k, v, causal=False, mu=mu, tau=tau)


def test_hype_runs_hyperattention_without_sinks():
    # HyPE's bias columns cancel only when one kernel sums them: no separate sink part
    q, k, v = (torch.randn(1, 2, 64, 16) for _ in range(3))
    mu, tau = torch.full((2,), 0.05), torch.full((2,), 1.0)
    config = HyperAttentionConfig(block_size=8, sample_size=8, min_seq_len=16, seed=0)
    out = hype_attention(q, k, v, causal=True, mu=mu, tau=tau, kernel="hyper", hyper_config=config)
    without = HyperAttentionConfig(
        block_size=8, sample_size=8, min_seq_len=16, seed=0, sink_tokens=0
    )
    same = hype_attention(
        q, k, v, causal=True, mu=mu, tau=tau, kernel="hyper", hyper_config=without
    )
    assert torch.equal(out, same)
    explicit = HyperAttentionConfig(block_size=8, sample_size=8, min_seq_len=16, sink_tokens=2)
    with pytest.raises(ValueError, match="without attention sinks.*sink_tokens=0"):
        hype_attention(q, k, v, causal=True, mu=mu, tau=tau, kernel="hyper", hyper_config=explicit)
    window = HyperAttentionConfig(
        block_size=8, sample_size=8, min_seq_len=16, sink_tokens=0, local_window=2
    )
    with pytest.raises(ValueError, match="local window.*local_window=0"):
        hype_attention(q, k, v, causal=True, mu=mu, tau=tau, kernel="hyper", hyper_config=window)
