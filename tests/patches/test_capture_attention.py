"""capture_attention: the observer sees the very q, k, v a layer attends with, the model's
outputs do not change, and the model is restored afterwards."""

from __future__ import annotations

import pytest
import torch

import hf_hyper
from helpers.tiny_chatglm import tiny_chatglm
from helpers.tiny_models import tiny_model
from hf_hyper.attention import reference_attention


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __call__(self, layer, q, k, v, *, causal, scale) -> None:
        self.calls.append((layer, q.clone(), k.clone(), v.clone(), causal, scale))


def _outputs_of(modules) -> tuple[list, list]:
    """Hooks that record what each module returns (attention output before projection)."""
    seen: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda m, a, out: seen.append(out)) for m in modules]
    return seen, handles


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_llama_family_observer_sees_the_attended_inputs(family, implementation):
    model = tiny_model(family, attn_implementation=implementation)
    ids = torch.randint(0, 128, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = model(ids).logits
    seen: list[torch.Tensor] = []
    layers = model.model.layers
    handles = [
        layer.self_attn.o_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
        for layer in layers
    ]
    recorder = Recorder()
    with hf_hyper.capture_attention(model, recorder, layers=[1, 3]) as chosen, torch.no_grad():
        assert chosen == [1, 3]
        logits = model(ids).logits
    for h in handles:
        h.remove()
    torch.testing.assert_close(logits, base, rtol=0, atol=0)
    assert [c[0] for c in recorder.calls] == [1, 3]
    for layer, q, k, v, causal, scale in recorder.calls:
        assert causal and q.shape == (1, 4, 40, q.shape[-1]) and k.shape[1] == 2
        assert scale == pytest.approx(q.shape[-1] ** -0.5)
        out, _ = reference_attention(q, k, v, causal=causal, scale=scale)
        attended = seen[layer].view(1, 40, 4, -1).transpose(1, 2)
        torch.testing.assert_close(out.float(), attended, rtol=1e-4, atol=1e-5)
    assert model.config._attn_implementation == implementation  # restored
    assert not hasattr(model, "_hf_hyper_capture")


def test_capture_refuses_patched_models_and_padding_and_nesting():
    model = tiny_model("llama")
    hf_hyper.patch(model, last_layers=1)
    with pytest.raises(RuntimeError, match="unpatched model"), \
            hf_hyper.capture_attention(model, Recorder()):  # fmt: skip
        pass
    hf_hyper.unpatch(model)
    with hf_hyper.capture_attention(model, Recorder()):
        with pytest.raises(RuntimeError, match="inside capture_attention"):
            hf_hyper.patch(model, last_layers=1)
        with pytest.raises(RuntimeError, match="nested"), \
                hf_hyper.capture_attention(model, Recorder()):  # fmt: skip
            pass
        ids = torch.ones(2, 12, dtype=torch.long)
        mask = torch.ones(2, 12, dtype=torch.long)
        mask[0, :3] = 0
        with pytest.raises(ValueError, match="unpadded"), torch.no_grad():
            model(ids, attention_mask=mask)
    with pytest.raises(ValueError, match="do not exist"), \
            hf_hyper.capture_attention(model, Recorder(), layers=[7]):  # fmt: skip
        pass


@pytest.mark.parametrize("batch_first", [False, True])
def test_chatglm_observer_sees_the_attended_inputs(batch_first):
    model = tiny_chatglm(batch_first)
    ids = torch.randint(0, 100, (1, 50), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base = model(ids)[0]
    cores = [layer.self_attention.core_attention for layer in model.transformer.encoder.layers]
    recorder = Recorder()
    with hf_hyper.capture_attention(model, recorder), torch.no_grad():
        seen, handles = _outputs_of(cores)
        logits = model(ids)[0]
    for h in handles:
        h.remove()
    torch.testing.assert_close(logits, base, rtol=0, atol=0)
    assert [c[0] for c in recorder.calls] == [0, 1, 2]
    for layer, q, k, v, causal, scale in recorder.calls:
        out, _ = reference_attention(q, k, v, causal=causal, scale=scale)  # [b, h, n, d]
        got = seen[layer] if batch_first else seen[layer].transpose(0, 1)  # [b, n, h*d]
        b, h, n, d = out.shape
        torch.testing.assert_close(out.transpose(1, 2).reshape(b, n, h * d).float(), got,
                                   rtol=1e-4, atol=1e-5)  # fmt: skip
    assert all("forward" not in vars(c) for c in cores)  # restored
