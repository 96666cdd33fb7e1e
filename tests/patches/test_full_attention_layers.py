"""Models that interleave sliding-window and full attention (Gemma 3): only the chosen
full-attention layers are patched, the report names the skipped ones."""

from __future__ import annotations

import pytest
import torch

import hf_hyper
from helpers.tiny_models import tiny_model
from hf_hyper import HyperAttentionConfig


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_only_full_attention_layers_are_patched_and_unpatch_restores_bits():
    model = tiny_model("gemma3_text")
    ids = torch.randint(1, 128, (1, 120), generator=torch.Generator().manual_seed(0))
    base = _logits(model, ids)
    exact = HyperAttentionConfig(block_size=1 << 16, sample_size=0, min_seq_len=16)
    report = hf_hyper.patch(model, last_layers=4, config=exact)
    assert report.layers == (1, 3)
    assert report.skipped == {0: "sliding-window attention", 2: "sliding-window attention"}
    assert "skipped=[0, 2]" in repr(report)
    # one block covering every key and no sample: the patched layers are exact
    torch.testing.assert_close(_logits(model, ids), base, atol=1e-4, rtol=1e-4)
    hf_hyper.unpatch(model)
    approx = HyperAttentionConfig(block_size=8, sample_size=8, min_seq_len=16, seed=0)
    hf_hyper.patch(model, last_layers=4, config=approx)
    assert not torch.allclose(_logits(model, ids), base, atol=1e-4)
    hf_hyper.unpatch(model)
    assert torch.equal(_logits(model, ids), base)


def test_choosing_only_sliding_window_layers_names_the_full_ones():
    model = tiny_model("gemma3_text")
    with pytest.raises(ValueError, match=r"full-attention layer.*\[1, 3\]"):
        hf_hyper.patch(model, layers=[0, 2])


def test_capture_observes_only_the_full_attention_layers():
    model = tiny_model("gemma3_text")
    ids = torch.randint(1, 128, (1, 60), generator=torch.Generator().manual_seed(1))
    seen = []

    def observer(layer, q, k, v, *, causal, scale):
        seen.append(layer)

    with hf_hyper.capture_attention(model, observer) as observed, torch.no_grad():
        assert observed == [1, 3]
        model(ids)
    assert seen == [1, 3]
    with (
        pytest.raises(ValueError, match=r"full-attention layer.*\[1, 3\]"),
        hf_hyper.capture_attention(model, observer, layers=[0, 2]),
    ):
        pass
