"""HyPE inside a transformers model: against an explicit-bias reference, with and without
RoPE, decoding, gradients, save / load, and the refusals."""

from __future__ import annotations

import pytest
import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

import hf_hyper
from helpers.tiny_models import tiny_model
from hf_hyper import HyPEConfig

CONFIG = HyPEConfig(mu=(0.02, 0.05, 0.1, 0.2), tau=(2.0, 1.0, 0.5, 0.25), chunk_size=16)


def _reference(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kw):
    """Eager float64 attention with the explicit L x L bias -2 tau sinh(mu (i - j))."""
    hype = module.hf_hyper_hype
    q, k, v = (t.double() for t in (query, key, value))
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    n_q, n_k = q.shape[2], k.shape[2]
    i = torch.arange(n_k - n_q, n_k, dtype=torch.float64)[:, None]
    j = torch.arange(n_k, dtype=torch.float64)[None, :]
    mu, tau = hype.mu.double()[:, None, None], hype.tau.double()[:, None, None]
    bias = -2 * tau * torch.sinh(mu * (i - j))
    scores = (q @ k.transpose(-1, -2)) * scaling + bias
    scores = scores.masked_fill(j > i, float("-inf"))
    out = scores.softmax(-1) @ v
    return out.to(query.dtype).transpose(1, 2).contiguous(), None


AttentionInterface.register("test_hype_reference", _reference)
AttentionMaskInterface.register("test_hype_reference", ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


def ids(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, 128, (1, n), generator=torch.Generator().manual_seed(seed))


def logits(model, x, **kwargs):
    with torch.no_grad():
        return model(x, **kwargs).logits


@pytest.mark.parametrize("replace_rope", [False, True])
def test_model_matches_explicit_bias_reference_and_removes_cleanly(replace_rope):
    model = tiny_model("llama")
    x = ids(70)
    base = logits(model, x)
    hf_hyper.apply_hype(model, CONFIG, replace_rope=replace_rope)
    got = logits(model, x)
    model.set_attn_implementation("test_hype_reference")
    expected = logits(model, x)
    model.set_attn_implementation("hf_hyper_hype+sdpa")
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert (got - base).abs().max() > 1e-3  # the bias (and the missing RoPE) changed things
    hf_hyper.remove_hype(model)
    assert torch.equal(logits(model, x), base)


def test_decoding_steps_see_the_right_positions():
    model = tiny_model("llama")
    hf_hyper.apply_hype(model, CONFIG, replace_rope=True)
    x = ids(40, seed=1)
    full = logits(model, x)
    with torch.no_grad():
        out = model(x[:, :-3], use_cache=True)
        cache, steps = out.past_key_values, []
        for t in range(37, 40):
            step = model(x[:, t : t + 1], past_key_values=cache, use_cache=True)
            cache = step.past_key_values
            steps.append(step.logits[:, -1])
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 37:], atol=1e-4, rtol=1e-4)
    assert model.generate(x, max_new_tokens=4, do_sample=False).shape == (1, 44)


def test_learnable_parameters_train_and_survive_save_and_load(tmp_path):
    config = HyPEConfig.alibi(4, learnable=True)
    model = tiny_model("llama")
    hf_hyper.apply_hype(model, config, replace_rope=True)
    x = ids(50, seed=2)
    loss = model(x, labels=x).loss
    loss.backward()
    hype = model.model.layers[0].self_attn.hf_hyper_hype
    assert hype.log_mu.grad is not None and hype.log_tau.grad.abs().sum() > 0
    with torch.no_grad():  # as if training had moved them
        for layer in model.model.layers:
            layer.self_attn.hf_hyper_hype.log_mu.add_(0.4)
            layer.self_attn.hf_hyper_hype.log_tau.add_(0.1)
    model.save_pretrained(tmp_path)
    loaded = hf_hyper.load_hype_model(tmp_path).eval()
    model.eval()
    assert loaded.config.hf_hyper_hype["replace_rope"] is True
    assert torch.equal(loaded.model.layers[2].self_attn.hf_hyper_hype.mu,
                       model.model.layers[2].self_attn.hf_hyper_hype.mu)  # fmt: skip
    torch.testing.assert_close(logits(loaded, x), logits(model, x), atol=1e-5, rtol=1e-5)


def test_refusals(tmp_path):
    model = tiny_model("llama")
    hf_hyper.apply_hype(model, CONFIG)
    with pytest.raises(RuntimeError, match="already has HyPE"):
        hf_hyper.apply_hype(model, CONFIG)
    with pytest.raises(ValueError, match="without the HyPE bias"), \
            hf_hyper.capture_attention(model, print):  # fmt: skip
        pass
    mask = torch.ones(2, 30, dtype=torch.long)
    mask[1, :5] = 0
    with pytest.raises(ValueError, match="unpadded batches"):
        logits(model, torch.cat([ids(30), ids(30, 1)]), attention_mask=mask)
    with pytest.raises(TypeError, match="HyPEConfig"):
        hf_hyper.apply_hype(tiny_model("llama"), {"mu": 1.0})
    with pytest.raises(ValueError, match="not saved with HyPE"):
        plain = tiny_model("llama")
        plain.save_pretrained(tmp_path)
        hf_hyper.load_hype_model(tmp_path)


def test_patch_runs_hyper_attention_with_the_hype_bias():
    """Patched layers of a HyPE model run HyPE inside HyperAttention: exact when the
    blocks cover everything, an approximation otherwise, and unpatch restores the bits."""
    model = tiny_model("llama")
    # one kernel call for all queries (chunks of 16 would each be short enough to be exact)
    hf_hyper.apply_hype(model, HyPEConfig(mu=CONFIG.mu, tau=CONFIG.tau), replace_rope=True)
    x = ids(120)
    base = logits(model, x)
    exact = hf_hyper.HyperAttentionConfig(block_size=1 << 16, sample_size=0, min_seq_len=16)
    report = hf_hyper.patch(model, last_layers=4, config=exact)
    assert report.state["attn_implementation"] == "hf_hyper_hype+sdpa"
    torch.testing.assert_close(logits(model, x), base, atol=1e-4, rtol=1e-4)
    with pytest.raises(RuntimeError, match="unpatch it first"):
        hf_hyper.remove_hype(model)
    hf_hyper.unpatch(model)
    approx = hf_hyper.HyperAttentionConfig(block_size=8, sample_size=8, min_seq_len=16, seed=0)
    hf_hyper.patch(model, last_layers=2, config=approx)
    changed = logits(model, x)
    assert 1e-4 < ((changed - base).abs().mean() / base.abs().mean()).item() < 0.5
    hf_hyper.unpatch(model)
    assert torch.equal(logits(model, x), base)
    assert model.config._attn_implementation == "hf_hyper_hype+sdpa"


@pytest.mark.gpu
def test_hype_only_model_at_32k_in_bf16():
    model = tiny_model("llama", hidden_size=512, num_attention_heads=4, num_key_value_heads=2,
                       intermediate_size=1024, max_position_embeddings=32768)  # fmt: skip
    model = model.to("cuda", torch.bfloat16)
    hf_hyper.apply_hype(model, HyPEConfig.alibi(4), replace_rope=True)
    x = torch.randint(1, 128, (1, 32768), device="cuda")
    assert torch.isfinite(logits(model, x)).all()
