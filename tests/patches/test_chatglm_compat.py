"""ChatGLM2 remote-code compatibility on transformers 5, on a model that mirrors the
remote code's construction and generation behaviours (tests/helpers/tiny_chatglm_remote.py)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import GenerationMixin

import hf_hyper
from helpers.tiny_chatglm_remote import RemoteStyleChatGLM, RemoteStyleConfig
from hf_hyper import HyperAttentionConfig
from hf_hyper.patches import chatglm_compat

APPROX = HyperAttentionConfig(block_size=16, sample_size=16, min_seq_len=32, seed=0)


class Generating(RemoteStyleChatGLM, GenerationMixin):
    """What transformers' auto classes build from remote code: GenerationMixin added."""


def build(seed: int = 0) -> Generating:
    config = RemoteStyleConfig()
    assert chatglm_compat.prepare_config(config) == ["max_length", "use_cache"]
    torch.manual_seed(seed)
    model = Generating(config).eval()
    chatglm_compat.finish_construction(model)
    return model


def ids(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, 100, (1, n), generator=torch.Generator().manual_seed(seed))


def recompute(model, x: torch.Tensor, steps: int) -> torch.Tensor:
    with torch.no_grad():
        for _ in range(steps):
            x = torch.cat([x, model(x, use_cache=False).logits[:, -1:].argmax(-1)], dim=1)
    return x


def test_construction_needs_the_config_fix():
    with pytest.raises(AttributeError, match="max_length"):
        Generating(RemoteStyleConfig())
    model = build()
    assert "max_length" not in vars(model.config)  # generate() would refuse it
    assert model.config.use_cache is True


def test_generate_runs_the_remote_tuple_cache_loop_after_the_fixes():
    model = build()
    x = ids(20)
    with pytest.raises(Exception):  # noqa: B017 - DynamicCache / removed helper, per version
        model.generate(x, max_new_tokens=3, do_sample=False)
    fixes = chatglm_compat.fix_generation(model)
    assert "tuple KV caches (no DynamicCache)" in fixes
    assert chatglm_compat.fix_generation(model) == []  # once
    out = model.generate(x, max_new_tokens=5, do_sample=False)
    assert torch.equal(out, recompute(model, x, 5))
    mask = torch.ones_like(x)
    assert torch.equal(model.generate(x, attention_mask=mask, max_new_tokens=5), out)
    chatglm_compat.remove_generation_fixes(model)
    assert not any(k in vars(model) for k in chatglm_compat._INSTANCE_FIXES)


def test_patch_applies_and_unpatch_removes_the_generation_fixes():
    model = build()
    x, long = ids(20), ids(200, seed=1)
    base = model(long).logits
    report = hf_hyper.patch(model, last_layers=3, config=APPROX)
    assert report.state["compat"] and report.state["layout"] == ["seq-first"]
    assert torch.equal(model.generate(x, max_new_tokens=5, do_sample=False),
                       recompute(model, x, 5))  # fmt: skip
    assert model.generate(long, max_new_tokens=3, do_sample=False).shape == (1, 203)
    hf_hyper.unpatch(model)
    assert not any(k in vars(model) for k in chatglm_compat._INSTANCE_FIXES)
    assert torch.equal(model(long).logits, base)


def test_load_chatglm(tmp_path, monkeypatch):
    from transformers import AutoConfig

    model = build()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "tiny_chatglm_remote.RemoteStyleChatGLM"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    AutoConfig.register("chatglm", RemoteStyleConfig, exist_ok=True)
    # the dynamic-module import of remote code is transformers' job; hand it our class
    monkeypatch.setattr(
        "transformers.dynamic_module_utils.get_class_from_dynamic_module",
        lambda ref, path, **kw: RemoteStyleChatGLM,
    )
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        hf_hyper.load_chatglm(tmp_path)
    loaded = hf_hyper.load_chatglm(tmp_path, trust_remote_code=True).eval()
    x = ids(30)
    assert torch.equal(loaded(x).logits, model(x).logits)  # weights loaded, post_init harmless
    assert torch.equal(loaded.generate(x, max_new_tokens=4, do_sample=False),
                       recompute(model, x, 4))  # fmt: skip
