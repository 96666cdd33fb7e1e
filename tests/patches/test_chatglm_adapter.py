"""ChatGLM2 adapter on a small model with ChatGLM2's layouts and mask conventions."""

from __future__ import annotations

import pytest
import torch

import hf_hyper
from helpers.tiny_chatglm import ChatGLMModel, tiny_chatglm
from hf_hyper import HyperAttentionConfig
from hf_hyper.patches.chatglm import BATCH_FIRST, SEQ_FIRST, chatglm_key_ranges, detect_layout

EXACT = HyperAttentionConfig(block_size=1 << 20, sample_size=0, min_seq_len=8, seed=0)
APPROX = HyperAttentionConfig(block_size=16, sample_size=16, min_seq_len=32, seed=0)
LAYOUTS = [False, True]  # batch_first


def ids(batch: int, n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 100, (batch, n), generator=torch.Generator().manual_seed(seed))


def logits(model, x, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(x, **kwargs)[0]


@pytest.mark.parametrize("batch_first", LAYOUTS)
def test_layout_detected_and_forced_exact_matches(batch_first):
    model = tiny_chatglm(batch_first)
    core = model.transformer.encoder.layers[0].self_attention.core_attention
    assert detect_layout(core) == (BATCH_FIRST if batch_first else SEQ_FIRST)
    x = ids(2, 90)
    base = logits(model, x)
    report = hf_hyper.patch(model, last_layers=2, config=EXACT)
    assert report.adapter == "chatglm-core-attention" and report.layers == (1, 2)
    assert report.num_layers == 3 and report.model_type == "chatglm"
    torch.testing.assert_close(logits(model, x), base, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("batch_first", LAYOUTS)
def test_long_input_approximates_and_unpatch_restores_bits(batch_first):
    model = tiny_chatglm(batch_first)
    x = ids(1, 300)
    base = logits(model, x)
    changes = []
    for block, samples in [(16, 16), (64, 256)]:
        config = HyperAttentionConfig(block_size=block, sample_size=samples, min_seq_len=32)
        hf_hyper.patch(model, last_layers=3, config=config)
        out = logits(model, x)
        assert torch.isfinite(out).all()
        changes.append(((out - base).abs().mean() / base.abs().mean()).item())
        hf_hyper.unpatch(model)
        assert torch.equal(logits(model, x), base)
    assert changes[0] > 1e-3 and changes[1] < changes[0] and changes[1] < 0.1, changes


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("batch_first", LAYOUTS)
def test_padded_batch_equals_each_sequence_alone(batch_first, side):
    model = tiny_chatglm(batch_first)
    hf_hyper.patch(model, last_layers=3, config=APPROX)
    lengths, n = [300, 200], 300
    batch = torch.zeros(2, n, dtype=torch.long)
    mask = torch.zeros(2, n, dtype=torch.long)
    singles = []
    for b, length in enumerate(lengths):
        seq = ids(1, length, seed=b)
        span = slice(n - length, n) if side == "left" else slice(0, length)
        batch[b, span], mask[b, span] = seq[0], 1
        singles.append((span, logits(model, seq)[0]))
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # as ChatGLM's tokenizer pads them
    padded = logits(model, batch, attention_mask=mask, position_ids=positions)
    for b, (span, single) in enumerate(singles):
        torch.testing.assert_close(padded[b, span], single, atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("batch_first", LAYOUTS)
def test_no_leakage_from_future_tokens(batch_first):
    model = tiny_chatglm(batch_first)
    hf_hyper.patch(model, last_layers=3, config=APPROX)
    x = ids(1, 256)
    y = x.clone()
    y[:, 200:] = ids(1, 56, seed=9)
    torch.testing.assert_close(logits(model, x)[:, :200], logits(model, y)[:, :200],
                               atol=0, rtol=0)  # fmt: skip


@pytest.mark.parametrize("batch_first", LAYOUTS)
def test_greedy_decoding_with_kv_cache(batch_first):
    model = tiny_chatglm(batch_first)
    short, long = ids(1, 20), ids(1, 200, seed=3)
    expected = model.greedy(short, 8)
    hf_hyper.patch(model, last_layers=3, config=APPROX)
    assert torch.equal(model.greedy(short, 8), expected)  # below min_seq_len: exact
    out = model.greedy(long, 8)  # patched prefill, exact decoding steps
    assert out.shape == (1, 8)
    # a chunked prefill (a long chunk after a cached prefix) runs patched and stays causal
    _, cache = model(long[:, :100])
    chunk, _ = model(long[:, 100:], past_key_values=cache)
    full = logits(model, long)
    assert ((chunk - full[:, 100:]).abs().mean() / full.abs().mean()) < 0.2


def test_mask_reading_and_refusals():
    n = 6
    for valid in ([1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]):
        mask = ChatGLMModel.get_masks(n, 0, torch.tensor([valid]))
        start = valid.index(1)
        stop = n if valid[-1] == 1 or valid[-2] == 1 else len(valid) - valid[::-1].index(1)
        assert chatglm_key_ranges(mask, n, n) == [(start, stop)], valid
    assert chatglm_key_ranges(None, n, n) is None
    odd = ChatGLMModel.get_masks(n, 0, None).clone()
    odd[0, 0, 5, 0] = True  # a hole: not causal + padding
    with pytest.raises(ValueError, match="not causal attention with left/right padding"):
        chatglm_key_ranges(odd, n, n)


def test_unknown_layout_is_an_error_not_a_guess():
    model = tiny_chatglm(batch_first=True)
    hf_hyper.patch(model, last_layers=1, config=APPROX)
    core = model.transformer.encoder.layers[2].self_attention.core_attention
    q = torch.randn(300, 1, 4, 16)  # seq-first tensors to a batch-first module
    with pytest.raises(RuntimeError, match="not supported"):
        core(q, q, q, None)
    hf_hyper.unpatch(model)
    assert "forward" not in vars(core)


def test_not_a_chatglm_tree():
    class Fake(torch.nn.Module):
        config = type("C", (), {"model_type": "chatglm"})()

    with pytest.raises(ValueError, match="not a ChatGLM2/3 model"):
        hf_hyper.patch(Fake(), last_layers=1)


@pytest.mark.gpu
def test_chatglm2_6b_head_sizes_at_32k_bf16():
    """ChatGLM2-6B's attention sizes (32 heads of 128, 2 KV groups, hidden 4096), two
    layers, random weights: patched prefill at 32k in bf16 is finite and near unpatched."""
    model = tiny_chatglm(num_layers=2, hidden_size=4096, kv_channels=128, num_attention_heads=32,
                         ffn_hidden_size=13696, padded_vocab_size=512)  # fmt: skip
    model = model.to("cuda", torch.bfloat16)
    x = ids(1, 32768).cuda() % 512
    base = logits(model, x)
    hf_hyper.patch(model, last_layers=2, config=HyperAttentionConfig(min_seq_len=4096))
    out = logits(model, x)
    assert torch.isfinite(out).all()
    change = ((out - base).abs().mean() / base.abs().mean()).item()
    assert change < 0.5, change


@pytest.mark.parametrize("batch_first", LAYOUTS)
def test_chunked_prefill_is_aligned_causally(batch_first):
    """Forced exact, a long chunk after a cached prefix gives the one-shot logits: the
    queries are the last rows of the keys (bottom-right causal alignment)."""
    model = tiny_chatglm(batch_first)
    x = ids(1, 200, seed=5)
    full = logits(model, x)
    hf_hyper.patch(model, last_layers=3, config=EXACT)
    with torch.no_grad():
        _, cache = model(x[:, :120])
        chunk, _ = model(x[:, 120:], past_key_values=cache)
    torch.testing.assert_close(chunk, full[:, 120:], atol=1e-4, rtol=1e-4)
