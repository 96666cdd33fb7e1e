"""The local window (config.local_window): across each cut of the causal recursion, the
first w queries attend the w keys before the cut exactly, and those pairs are never
counted again by the LSH blocks or the sample."""

import pytest
import torch

from helpers.common import assert_past_ignores_future, random_qkv, relative_error_to_v
from hf_hyper import HyperAttentionConfig, hyper_attention, hyper_attention_with_lse
from hf_hyper.attention import reference_attention

# (n_query, n_key): a causal square; a cached prefix long enough to be approximated (the
# band crosses the prefix's end); a short one (the prefix is exact)
CALLS = [(300, 300), (100, 300), (296, 300), (257, 257)]


def _local_heavy_qkv(n_query: int, n_key: int, seed: int = 0, strength: float = 3.0):
    """Random q, k, v where each query points at the key just before it, as the
    previous-token heads of pretrained models do."""
    q, k, v = random_qkv(1, 4, 2, n_query, n_key, dim=16, seed=seed)
    before = torch.arange(n_key - n_query, n_key).sub(1).clamp(min=0)
    previous = k[:, :, before].repeat_interleave(2, dim=1)
    q = 0.3 * q + strength * previous
    return q, k, v


@pytest.mark.parametrize("n_query, n_key", CALLS)
@pytest.mark.parametrize("window, sinks", [(1, 0), (5, 0), (5, 3)])
def test_one_block_without_sampling_is_still_exact(n_query, n_key, window, sinks):
    # a single key block covers every key: the corner must be left out of it exactly
    # where it is added back, so the result is exact attention
    config = HyperAttentionConfig(
        block_size=4096, sample_size=0, min_seq_len=16, sink_tokens=sinks, local_window=window,
        seed=0,
    )  # fmt: skip
    q, k, v = random_qkv(1, 4, 2, n_query, n_key, dim=16, seed=n_query)
    out = hyper_attention(q, k, v, causal=True, config=config)
    exact = reference_attention(q, k, v, causal=True)[0]
    torch.testing.assert_close(out, exact, atol=1e-12, rtol=0)


def test_window_serves_the_keys_just_before_a_cut():
    q, k, v = _local_heavy_qkv(512, 512, strength=10.0)  # the previous key takes ~all
    exact = reference_attention(q, k, v, causal=True)[0]
    rows = {}
    for window in (0, 8):
        config = HyperAttentionConfig(
            block_size=8, sample_size=8, min_seq_len=32, sink_tokens=0, local_window=window,
            seed=4,
        )  # fmt: skip
        out = hyper_attention(q, k, v, causal=True, config=config)
        # the first row after each cut (multiples of 32) lost its previous key without one
        after_cut = torch.arange(32, 512, 32)
        rows[window] = relative_error_to_v(
            out[:, :, after_cut], exact[:, :, after_cut], v[:, :, after_cut]
        )
    # what is left with the window is the sample's noise on the far keys
    assert rows[8] < 0.25 * rows[0]


def test_sampled_corner_keys_are_not_counted_twice():
    # with a huge sample the estimate of the keys outside block, sinks and corner
    # converges; a corner key counted by both the exact part and the sample would add
    # its mass again and move the rows after each cut
    q, k, v = _local_heavy_qkv(300, 300)
    config = HyperAttentionConfig(
        block_size=8, sample_size=30000, min_seq_len=16, sink_tokens=1, local_window=6, seed=2
    )
    out = hyper_attention(q, k, v, causal=True, config=config)
    exact = reference_attention(q, k, v, causal=True)[0]
    assert relative_error_to_v(out, exact, v) < 0.02


@pytest.mark.parametrize("n_prefix", [0, 200])
def test_causal_outputs_with_a_window_never_see_the_future(n_prefix):
    config = HyperAttentionConfig(
        block_size=16, sample_size=16, min_seq_len=64, sink_tokens=4, local_window=20, seed=1
    )
    assert_past_ignores_future(
        lambda q, k, v: hyper_attention(q, k, v, causal=True, config=config), n_prefix
    )


@pytest.mark.parametrize("n_prefix", [0, 20])
def test_gradients_through_the_window_match_finite_differences(n_prefix):
    q, k, v = random_qkv(1, 2, 1, 24, 24 + n_prefix, dim=4, seed=10)
    config = HyperAttentionConfig(
        lsh_num_projs=2, block_size=4, sample_size=4, min_seq_len=8, sink_tokens=1,
        local_window=3, seed=2,
    )  # fmt: skip
    inputs = tuple(t.clone().requires_grad_() for t in (q, k, v))

    def fn(q, k, v):
        return hyper_attention_with_lse(q, k, v, causal=True, config=config)

    assert torch.autograd.gradcheck(fn, inputs, atol=1e-6)


def test_non_causal_calls_ignore_the_window():
    q, k, v = random_qkv(1, 4, 2, 300, 300, dim=16, seed=3)
    base = dict(block_size=8, sample_size=8, min_seq_len=16, sink_tokens=2, seed=0)
    with_window = HyperAttentionConfig(local_window=6, **base)
    without = HyperAttentionConfig(local_window=0, **base)
    out = hyper_attention(q, k, v, causal=False, config=with_window)
    assert torch.equal(out, hyper_attention(q, k, v, causal=False, config=without))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(local_window=-1), "local_window must be >= 0"),
        (dict(local_window=2.0), "local_window must be an int"),
        (dict(local_window=True), "local_window must be an int"),
        (dict(local_window=6, sink_tokens=3, min_seq_len=16), r"sink_tokens \+ local_window"),
    ],
)
def test_config_rejects_bad_local_window(kwargs, message):
    with pytest.raises((TypeError, ValueError), match=message):
        HyperAttentionConfig(**kwargs)


def test_default_sinks_and_window_resolve_to_what_fits_and_show_it(monkeypatch):
    import hf_hyper.config

    monkeypatch.setattr(hf_hyper.config, "DEFAULT_LOCAL_WINDOW", 256)  # a default that must shrink
    for min_seq_len, sinks, window in [(2, 1, 0), (8, 4, 0), (64, 4, 28), (4096, 4, 256)]:
        config = HyperAttentionConfig(min_seq_len=min_seq_len)
        assert (config.sink_tokens, config.local_window) == (sinks, window)
        assert (config.sinks, config.window) == (sinks, window)
        assert f"sink_tokens={sinks}, local_window={window}" in repr(config)
        assert config.to_dict()["sink_tokens"] == sinks


def test_hash_dims_with_sinks_and_window_hash_only_the_named_columns():
    # columns the hash ignores and that add nothing to q.k leave every exact part and
    # every bucket, so the output, unchanged
    q, k, v = random_qkv(1, 2, 2, 600, 600, dim=16, seed=6)
    config = HyperAttentionConfig(
        block_size=32, sample_size=32, min_seq_len=64, sink_tokens=3, local_window=12, seed=0
    )
    full = hyper_attention(q, k, v, causal=True, config=config)
    q_aug = torch.cat([q, torch.randn(1, 2, 600, 4, dtype=q.dtype)], dim=-1)
    k_aug = torch.cat([k, torch.zeros(1, 2, 600, 4, dtype=k.dtype)], dim=-1)
    ignored = hyper_attention(q_aug, k_aug, v, causal=True, config=config, hash_dims=16,
                              scale=16**-0.5)  # fmt: skip
    torch.testing.assert_close(ignored, full, atol=1e-12, rtol=0)
