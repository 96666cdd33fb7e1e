"""Attention sinks (config.sink_tokens): the first keys are attended exactly by every
query that may see them, and never counted again by the LSH blocks or the sample."""

import pytest
import torch

from helpers.common import assert_past_ignores_future, random_qkv, relative_error_to_v
from hf_hyper import HyperAttentionConfig, hyper_attention, hyper_attention_with_lse
from hf_hyper.attention import reference_attention

# (causal, n_query, n_key): non-causal; causal square; a cached prefix long enough to be
# approximated (the sinks sit in it); a short one (the sinks straddle prefix and square)
CALLS = [(False, 300, 300), (False, 200, 260), (True, 300, 300), (True, 100, 300),
         (True, 296, 300)]  # fmt: skip


def _sink_heavy_qkv(n_query: int, n_key: int, seed: int = 0):
    """Random q, k, v where key 0 takes about 40% of the softmax mass of the average row,
    as the first token does in many layers of pretrained models."""
    q, k, v = random_qkv(1, 4, 2, n_query, n_key, dim=16, seed=seed)
    q = q + 1.0  # a shared direction, along which key 0 stands out for every query
    k[:, :, 0] = 2.0
    return q, k, v


@pytest.mark.parametrize("causal, n_query, n_key", CALLS)
@pytest.mark.parametrize("sinks", [1, 4])
def test_one_block_without_sampling_is_still_exact(causal, n_query, n_key, sinks):
    # a single key block covers every key: the sinks must be left out of it exactly
    # as often as they are added back, so the result is exact attention
    q, k, v = random_qkv(2, 4, 2, n_query, n_key, dim=16, v_dim=8, seed=1)
    config = HyperAttentionConfig(
        block_size=4096, sample_size=0, min_seq_len=16, sink_tokens=sinks, seed=0
    )
    out, lse = hyper_attention_with_lse(q, k, v, causal=causal, config=config)
    want_out, want_lse = reference_attention(q, k, v, causal=causal)
    assert (out - want_out).abs().max().item() < 1e-12
    assert (lse - want_lse).abs().max().item() < 1e-12


@pytest.mark.parametrize("causal", [False, True])
def test_a_heavy_first_key_is_attended_exactly(causal):
    q, k, v = _sink_heavy_qkv(2048, 2048)
    exact = reference_attention(q, k, v, causal=causal)[0]
    errors = {}
    for sinks in (0, 1):
        config = HyperAttentionConfig(
            block_size=64, sample_size=64, min_seq_len=256, sink_tokens=sinks, seed=3
        )
        out = hyper_attention(q, k, v, causal=causal, config=config)
        errors[sinks] = relative_error_to_v(out, exact, v)
    assert errors[1] < 0.5 * errors[0], errors


def test_sampled_sinks_are_not_counted_twice():
    # With far more samples than keys the sample's estimate of the mass outside the
    # block converges; a sink counted by both the exact part and the sample would add
    # its (large) mass twice and miss the exact output by far more than this.
    q, k, v = _sink_heavy_qkv(300, 300)
    config = HyperAttentionConfig(
        block_size=8, sample_size=30000, min_seq_len=16, sink_tokens=1, seed=2
    )
    out = hyper_attention(q, k, v, causal=False, config=config)
    exact = reference_attention(q, k, v, causal=False)[0]
    assert relative_error_to_v(out, exact, v) < 0.02


@pytest.mark.parametrize("n_prefix", [0, 200])
def test_causal_outputs_with_sinks_never_see_the_future(n_prefix):
    config = HyperAttentionConfig(
        block_size=16, sample_size=16, min_seq_len=64, sink_tokens=4, seed=1
    )
    assert_past_ignores_future(
        lambda q, k, v: hyper_attention(q, k, v, causal=True, config=config), n_prefix
    )


@pytest.mark.parametrize("causal", [False, True])
def test_gradients_through_the_sinks_match_finite_differences(causal):
    q, k, v = random_qkv(1, 2, 1, 24, 24, dim=4, seed=10)
    config = HyperAttentionConfig(
        lsh_num_projs=2, block_size=4, sample_size=4, min_seq_len=6, sink_tokens=2, seed=2
    )
    inputs = tuple(t.clone().requires_grad_() for t in (q, k, v))

    def fn(q, k, v):
        return hyper_attention_with_lse(q, k, v, causal=causal, config=config)

    assert torch.autograd.gradcheck(fn, inputs, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(sink_tokens=-1), "sink_tokens must be in"),
        (dict(sink_tokens=2.0), "sink_tokens must be an int"),
        (dict(sink_tokens=True), "sink_tokens must be an int"),
        (dict(sink_tokens=9, min_seq_len=16), r"sink_tokens must be in \[0, 8\]"),
    ],
)
def test_config_rejects_bad_sink_tokens(kwargs, message):
    with pytest.raises((TypeError, ValueError), match=message):
        HyperAttentionConfig(**kwargs)
