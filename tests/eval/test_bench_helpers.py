"""The benchmarks' CPU-checkable parts: FlexAttention's causal mask built from blocks and
the free-attention ceiling setting."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_model
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

import hf_hyper
from hf_hyper.eval.bench_attention import causal_block_mask
from hf_hyper.eval.bench_model import free_attention


@pytest.mark.parametrize("n", [128, 1024])
def test_causal_block_mask_equals_flex_own_construction(n):
    ours = causal_block_mask(n, torch.device("cpu"))
    ref = create_block_mask(lambda b, h, i, j: i >= j, None, None, n, n, device="cpu")
    for field in ("kv_num_blocks", "full_kv_num_blocks", "q_num_blocks", "full_q_num_blocks"):
        assert torch.equal(getattr(ours, field), getattr(ref, field)), field
    assert torch.equal(ours.to_dense(), ref.to_dense())


@pytest.mark.parametrize("n", [300, 512])
def test_flex_with_the_block_mask_is_causal_attention(n):
    gen = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(1, 2, n, 16, generator=gen, dtype=torch.float64) for _ in range(3))
    out = flex_attention(q, k, v, block_mask=causal_block_mask(n, torch.device("cpu")))
    exact = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(out, exact, rtol=1e-10, atol=1e-12)


def test_free_attention_makes_patched_layers_return_a_copy_of_v():
    """The ceiling setting: patched layers output V (per query head); the rest attend."""
    model = tiny_model("llama")
    seen = {}

    def keep(name):
        return lambda module, args, out=None: seen.__setitem__(
            name, (args[0] if out is None else out)
        )

    last = model.model.layers[-1].self_attn
    last.v_proj.register_forward_hook(keep("v"))
    last.o_proj.register_forward_pre_hook(keep("o_in"))
    ids = torch.randint(0, 128, (1, 40), generator=torch.Generator().manual_seed(0))
    # short enough to reach the patched path (longer than min_seq_len)
    config = hf_hyper.HyperAttentionConfig(
        backend="torch", min_seq_len=16, block_size=8, sample_size=8, seed=0
    )
    hf_hyper.patch(model, last_layers=1, config=config)
    with torch.no_grad(), free_attention():
        model(ids)
    heads, kv_heads, dim = 4, 2, 16
    v = seen["v"].view(1, 40, kv_heads, dim).repeat_interleave(heads // kv_heads, dim=2)
    torch.testing.assert_close(seen["o_in"], v.reshape(1, 40, heads * dim), rtol=0, atol=0)
    with torch.no_grad():  # outside the block the layer attends again
        model(ids)
    assert not torch.equal(seen["o_in"], v.reshape(1, 40, heads * dim))
