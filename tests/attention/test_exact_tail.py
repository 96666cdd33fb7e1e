"""The exact tail (config.exact_tail): the last queries of a causal call attend every key
exactly; the rows before them are those of the call without a tail, bit for bit."""

import dataclasses

import pytest
import torch

from helpers.common import assert_past_ignores_future, random_qkv
from hf_hyper import HyperAttentionConfig, hyper_attention, hyper_attention_with_lse
from hf_hyper.attention import reference_attention
from hf_hyper.attention.exact_tail import exact_tail_attention

SMALL = HyperAttentionConfig(block_size=16, sample_size=16, min_seq_len=64, seed=3)
# (batch, q heads, kv heads, n_query, n_key): a square call; GQA with a cached prefix
CALLS = [(2, 4, 4, 300, 300), (1, 6, 2, 257, 400)]


@pytest.mark.parametrize("batch, hq, hk, n_query, n_key", CALLS)
@pytest.mark.parametrize("tail", [1, 37])
def test_tail_rows_are_exact_and_the_rest_is_the_call_without_a_tail(
    batch, hq, hk, n_query, n_key, tail
):
    q, k, v = random_qkv(batch, hq, hk, n_query, n_key, dim=16, v_dim=8, seed=2)
    config = dataclasses.replace(SMALL, exact_tail=tail, sink_tokens=2, local_window=8)
    out, lse = hyper_attention_with_lse(q, k, v, causal=True, config=config)
    want_out, want_lse = reference_attention(q, k, v, causal=True)
    rows = slice(n_query - tail, n_query)
    assert (out[:, :, rows] - want_out[:, :, rows]).abs().max().item() < 1e-12
    assert (lse[:, :, rows] - want_lse[:, :, rows]).abs().max().item() < 1e-12

    head = n_query - tail
    alone = dataclasses.replace(config, exact_tail=0)
    want_head = hyper_attention_with_lse(q, k, v, causal=True, config=alone)
    assert torch.equal(out[:, :, :head], want_head[0][:, :, :head])
    assert torch.equal(lse[:, :, :head], want_head[1][:, :, :head])
    # the head really is approximate, so the comparison above is not of two exact calls
    assert (out[:, :, :head] - want_out[:, :, :head]).abs().max().item() > 1e-4


def test_tail_brings_the_last_rows_to_exact_where_the_approximation_misses():
    q, k, v = random_qkv(1, 4, 2, 600, 600, dim=16, seed=4)
    exact = reference_attention(q, k, v, causal=True)[0][:, :, -32:]
    errors = {}
    for tail in (0, 32):
        out = hyper_attention(
            q, k, v, causal=True, config=dataclasses.replace(SMALL, exact_tail=tail)
        )
        errors[tail] = (out[:, :, -32:] - exact).abs().max().item()
    assert errors[0] > 1e-3 and errors[32] < 1e-12, errors


def test_a_call_short_enough_to_run_exact_is_unchanged_by_a_tail():
    q, k, v = random_qkv(1, 4, 2, 64, 64, dim=16, seed=6)
    with_tail = hyper_attention_with_lse(
        q, k, v, causal=True, config=dataclasses.replace(SMALL, exact_tail=16)
    )
    without = hyper_attention_with_lse(q, k, v, causal=True, config=SMALL)
    assert all(torch.equal(a, b) for a, b in zip(with_tail, without, strict=True))


@pytest.mark.parametrize("tail", [50, 300, 1000])
def test_a_tail_as_long_as_the_call_makes_it_exact(tail):
    q, k, v = random_qkv(1, 2, 2, 300, 340, dim=16, seed=7)
    config = dataclasses.replace(SMALL, exact_tail=tail)
    out, lse = hyper_attention_with_lse(q, k, v, causal=True, config=config)
    want_out, want_lse = reference_attention(q, k, v, causal=True)
    rows = slice(max(0, 300 - tail), 300)
    assert (out[:, :, rows] - want_out[:, :, rows]).abs().max().item() < 1e-12
    if tail >= 300:
        assert (lse - want_lse).abs().max().item() < 1e-12


def test_non_causal_calls_ignore_the_tail():
    q, k, v = random_qkv(1, 2, 2, 300, 300, dim=16, seed=8)
    with_tail = hyper_attention(
        q, k, v, causal=False, config=dataclasses.replace(SMALL, exact_tail=40)
    )
    without = hyper_attention(q, k, v, causal=False, config=SMALL)
    assert torch.equal(with_tail, without)


@pytest.mark.parametrize("cut", [400, 680])  # a change before the tail, and inside it
@pytest.mark.parametrize("n_prefix", [0, 50])
def test_causal_outputs_with_a_tail_never_see_the_future(cut, n_prefix):
    config = dataclasses.replace(SMALL, exact_tail=40, block_size=32, sample_size=32)
    assert_past_ignores_future(
        lambda q, k, v: hyper_attention(q, k, v, causal=True, config=config), n_prefix, cut=cut
    )


def test_gradients_through_the_tail_match_the_reference():
    q, k, v = random_qkv(1, 2, 1, 200, 200, dim=8, seed=9)
    config = dataclasses.replace(SMALL, exact_tail=200)  # every row in the tail: exact
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    ref = [t.clone().requires_grad_(True) for t in (q, k, v)]
    weight = torch.randn(1, 2, 200, 8, dtype=torch.float64)
    (hyper_attention(*leaves, causal=True, config=config) * weight).sum().backward()
    (reference_attention(*ref, causal=True)[0] * weight).sum().backward()
    for got, want in zip(leaves, ref, strict=True):
        assert (got.grad - want.grad).abs().max().item() < 1e-10
    # a partial tail: gradients reach the keys before it from the tail's rows
    config = dataclasses.replace(SMALL, exact_tail=20, block_size=32, sample_size=0)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out = hyper_attention(*leaves, causal=True, config=config)
    out[:, :, -1].sum().backward()
    assert leaves[1].grad[:, :, :180].abs().sum() > 0


def test_exact_tail_attention_in_torch_ops_matches_the_reference():
    q, k, v = random_qkv(2, 6, 3, 300, 300, dim=16, v_dim=8, seed=10)
    out, lse = exact_tail_attention(q[:, :, -20:], k, v, 0.25)
    want_out, want_lse = reference_attention(q, k, v, causal=True, scale=0.25)
    assert (out - want_out[:, :, -20:]).abs().max().item() < 1e-12
    assert (lse - want_lse[:, :, -20:]).abs().max().item() < 1e-12


@pytest.mark.parametrize(
    "value, error", [(-1, ValueError), (1.5, ValueError), ("8", ValueError), (True, TypeError)]
)
def test_config_rejects_a_bad_exact_tail(value, error):
    with pytest.raises(error, match="exact_tail"):
        HyperAttentionConfig(exact_tail=value)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("batch, hq, hk, n_query, n_key, dim", [
    (1, 8, 8, 64, 20000, 128), (2, 9, 3, 100, 9000, 64), (1, 4, 1, 1, 3001, 64),
    (1, 4, 2, 64, 64, 64),
])  # fmt: skip
def test_flash_tail_on_a_gpu_is_as_close_as_plain_torch(batch, hq, hk, n_query, n_key, dim, dtype):
    # FlashAttention's rule: the flash tail's error against float64 at most about twice
    # that of plain PyTorch's attention in the same precision
    from hf_hyper.attention.exact_tail import flash_runs

    gen = torch.Generator().manual_seed(11)
    q = torch.randn(batch, hq, n_query, dim, generator=gen).cuda().to(dtype)
    k = torch.randn(batch, hk, n_key, dim, generator=gen).cuda().to(dtype)
    v = torch.randn(batch, hk, n_key, dim, generator=gen).cuda().to(dtype)
    assert flash_runs(q, k, v)
    out, lse = exact_tail_attention(q, k, v, dim**-0.5)
    want, want_lse = reference_attention(q.double(), k.double(), v.double(), causal=True)
    plain = torch.nn.functional.scaled_dot_product_attention(
        q,
        k,
        v,
        attn_mask=torch.ones(n_query, n_key, dtype=torch.bool, device="cuda").tril(n_key - n_query),
        enable_gqa=hq != hk,
    )
    plain_err = (plain.double() - want).abs().max().item()
    err = (out.to(dtype).double() - want).abs().max().item()
    assert err <= 2 * plain_err + 1e-5, (err, plain_err)
    assert (lse.double() - want_lse).abs().max().item() < 1e-2


@pytest.mark.gpu
def test_tail_on_the_fused_path_keeps_the_fused_head_bit_for_bit():
    gen = torch.Generator().manual_seed(12)
    q, k, v = (torch.randn(1, 8, 6000, 64, generator=gen).cuda().bfloat16() for _ in range(3))
    config = HyperAttentionConfig(
        block_size=64, sample_size=64, min_seq_len=1024, seed=5, exact_tail=64
    )
    first = hyper_attention(q, k, v, causal=True, config=config)
    again = hyper_attention(q, k, v, causal=True, config=config)  # a CUDA graph replay
    head = hyper_attention(q, k, v, causal=True, config=dataclasses.replace(config, exact_tail=0))
    assert torch.equal(first, again)
    assert torch.equal(first[:, :, :-64], head[:, :, :-64])
    want = reference_attention(q.double(), k.double(), v.double(), causal=True)[0][:, :, -64:]
    assert (first[:, :, -64:].double() - want).abs().max().item() < 2e-2
