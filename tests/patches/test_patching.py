"""patch / unpatch on tiny models of every supported family (CPU, no downloads)."""

import dataclasses

import pytest
import torch

import hf_hyper
from helpers.tiny_models import FAMILIES, tiny_model
from hf_hyper import HyperAttentionConfig

EXACT = HyperAttentionConfig(block_size=1 << 20, sample_size=0, min_seq_len=8, seed=0)
APPROX = HyperAttentionConfig(block_size=16, sample_size=16, min_seq_len=32, seed=0)


def logits(model, ids, **kwargs):
    with torch.no_grad():
        return model(ids, **kwargs).logits


def ids(batch: int, n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, 128, (batch, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_forced_exact_patch_matches_unpatched(family):
    model = tiny_model(family)
    x = ids(2, 90)
    base = logits(model, x)
    hf_hyper.patch(model, last_layers=2, config=EXACT)
    torch.testing.assert_close(logits(model, x), base, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_exact_up_to_keeps_calls_up_to_it_on_the_models_own_attention(family):
    model = tiny_model(family)
    x = ids(1, 120)
    base = logits(model, x)
    hf_hyper.patch(model, last_layers=2, config=HyperAttentionConfig(
        block_size=16, sample_size=16, min_seq_len=32, exact_up_to=120, seed=0))  # fmt: skip
    assert torch.equal(logits(model, x), base)
    hf_hyper.unpatch(model)
    hf_hyper.patch(model, last_layers=2, config=HyperAttentionConfig(
        block_size=16, sample_size=16, min_seq_len=32, exact_up_to=119, seed=0))  # fmt: skip
    assert not torch.allclose(logits(model, x), base, atol=1e-3)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_long_input_approximates_and_unpatch_restores_bits(family):
    # Random weights give near-uniform attention, the hardest case for sampling; still the
    # logit change must shrink as the exact block and the sample grow (measured for llama:
    # 0.26, 0.11, 0.05 of mean |logit|).
    model = tiny_model(family)
    x = ids(1, 300)
    base = logits(model, x)
    changes = []
    for block, samples in [(16, 16), (32, 64), (64, 256)]:
        config = HyperAttentionConfig(block_size=block, sample_size=samples, min_seq_len=32, seed=0)
        report = hf_hyper.patch(model, last_layers=3, config=config)
        kinds = getattr(model.config, "layer_types", None) or ["full_attention"] * 4
        full = tuple(i for i in (1, 2, 3) if kinds[i] == "full_attention")  # Gemma 3: 1, 3
        assert report.layers == full and report.model_type == family
        changes.append(((logits(model, x) - base).abs().mean() / base.abs().mean()).item())
        hf_hyper.unpatch(model)
        assert torch.equal(logits(model, x), base)
    assert changes[0] > 1e-3  # the approximation is really in use
    assert changes[0] > changes[1] > changes[2] and changes[2] < 0.1, changes
    assert hf_hyper.patch_report(model) is None


# the sinks are on (default); with a window too; with an exact tail
@pytest.mark.parametrize("extra", [{}, {"local_window": 6}, {"exact_tail": 24}], ids=str)
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_padded_batch_equals_each_sequence_alone(family, side, extra):
    model = tiny_model(family)
    config = dataclasses.replace(APPROX, **extra)
    assert config.sinks > 0
    hf_hyper.patch(model, last_layers=4, config=config)
    lengths, n = [300, 200], 300
    batch = torch.zeros(2, n, dtype=torch.long)
    mask = torch.zeros(2, n, dtype=torch.long)
    singles = []
    for b, length in enumerate(lengths):
        seq = ids(1, length, seed=b)
        span = slice(n - length, n) if side == "left" else slice(0, length)
        batch[b, span], mask[b, span] = seq[0], 1
        singles.append((span, logits(model, seq)[0]))
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    padded = logits(model, batch, attention_mask=mask, position_ids=positions)
    for b, (span, single) in enumerate(singles):
        torch.testing.assert_close(padded[b, span], single, atol=2e-4, rtol=2e-4)


def test_generate_matches_unpatched_for_short_prompts_and_runs_for_long():
    model = tiny_model("llama")
    short = ids(1, 20)
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    expected = model.generate(short, **kwargs)
    hf_hyper.patch(model, last_layers=2, config=APPROX)
    assert torch.equal(model.generate(short, **kwargs), expected)
    long = ids(1, 200)
    out = model.generate(long, **kwargs)  # patched prefill, exact decoding steps
    assert out.shape == (1, 208)


def test_chunked_prefill_with_cache_matches_one_shot():
    # queries that are the last rows of a longer key set: causal alignment via the offset
    model = tiny_model("llama")
    config = HyperAttentionConfig(block_size=1 << 20, sample_size=0, min_seq_len=8, seed=0)
    hf_hyper.patch(model, last_layers=4, config=config)
    x = ids(1, 160)
    whole = logits(model, x)
    with torch.no_grad():
        first = model(x[:, :100], use_cache=True)
        second = model(x[:, 100:], past_key_values=first.past_key_values, use_cache=True).logits
    torch.testing.assert_close(second[0], whole[0, 100:], atol=1e-4, rtol=1e-4)


def test_eager_models_keep_their_own_attention_for_unpatched_layers():
    model = tiny_model("llama", attn_implementation="eager")
    x = ids(1, 120)
    base = logits(model, x)
    hf_hyper.patch(model, layers=[3], config=EXACT)
    assert model.config._attn_implementation == "hf_hyper+eager"
    torch.testing.assert_close(logits(model, x), base, atol=1e-4, rtol=1e-4)
    hf_hyper.unpatch(model)
    assert torch.equal(logits(model, x), base)


def test_layer_selection_and_double_patch_errors():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match=r"last_layers must be in 1..4"):
        hf_hyper.patch(model, last_layers=5)
    with pytest.raises(ValueError, match=r"last_layers must be in 1..4"):
        hf_hyper.patch(model, last_layers=-1)
    with pytest.raises(ValueError, match=r"layers \[7\] do not exist"):
        hf_hyper.patch(model, layers=[1, 7])
    with pytest.raises(ValueError, match="exactly one of"):
        hf_hyper.patch(model, last_layers=1, layers=[1])
    report = hf_hyper.patch(model, layers=[0, 2])
    assert "layers=[0, 2] of 4" in repr(report)
    with pytest.raises(RuntimeError, match="already patched"):
        hf_hyper.patch(model, last_layers=1)
    hf_hyper.unpatch(model)
    with pytest.raises(RuntimeError, match="not patched"):
        hf_hyper.unpatch(model)


def test_unknown_model_type_lists_supported_and_how_to_add():
    model = tiny_model("llama")
    model.config.model_type = "mamba"
    with pytest.raises(ValueError, match=r"no adapter for model_type='mamba'.*llama.*ADAPTERS"):
        hf_hyper.patch(model, last_layers=1)


def test_sliding_window_layers_are_refused_not_approximated():
    model = tiny_model("mistral", sliding_window=64)
    hf_hyper.patch(model, last_layers=1, config=APPROX)
    with pytest.raises(ValueError, match="sliding-window"):
        logits(model, ids(1, 100))


def test_from_pretrained_with_device_map_auto_patches_and_unpatches(tmp_path):
    # the real loading path (accelerate dispatch), on a checkpoint saved locally
    tiny_model("llama").save_pretrained(tmp_path)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path, device_map="auto", dtype=torch.float32)
    x = ids(1, 120).to(model.get_input_embeddings().weight.device)  # a GPU where there is one
    base = logits(model, x)
    hf_hyper.patch(model, last_layers=2, config=EXACT)
    torch.testing.assert_close(logits(model, x), base, atol=1e-4, rtol=1e-4)
    hf_hyper.unpatch(model)
    assert torch.equal(logits(model, x), base)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_device_map_over_two_gpus_matches_one_gpu(tmp_path):
    """Layers spread over two GPUs by accelerate: patched logits equal the one-GPU patched
    logits (same seed, same arithmetic), generate() runs, unpatch restores bits."""
    from transformers import AutoModelForCausalLM

    tiny_model("llama", num_hidden_layers=6).save_pretrained(tmp_path)
    one = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).to("cuda:0")
    split = AutoModelForCausalLM.from_pretrained(
        tmp_path, dtype=torch.float32, device_map="auto", max_memory={0: "200KB", 1: "10GB"}
    )
    devices = {p.device.index for p in split.parameters()}
    assert devices == {0, 1}, devices  # really spread over both
    x = ids(1, 600).to("cuda:0")
    base = logits(split, x)
    for model in (one, split):
        hf_hyper.patch(model, last_layers=4, config=APPROX)
    expected, got = logits(one, x), logits(split, x).to("cuda:0")
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert (got - base.to("cuda:0")).abs().max() > 1e-3  # HyperAttention really ran
    out = split.generate(x, max_new_tokens=5, do_sample=False)
    assert out.shape == (1, 605)
    hf_hyper.unpatch(split)
    assert torch.equal(logits(split, x), base)


def test_a_plan_patches_its_layers_each_with_its_own_config_and_unpatch_restores_bits():
    model = tiny_model("llama")
    x = ids(1, 300)
    base = logits(model, x)
    wide = HyperAttentionConfig(block_size=64, sample_size=256, min_seq_len=32, seed=0)
    plan = hf_hyper.Plan({1: APPROX, 3: wide}, model_type="llama", num_layers=4)
    report = hf_hyper.patch(model, plan=plan)
    assert report.layers == (1, 3) and report.config is None
    assert report.configs == {1: APPROX, 3: wide}
    planned = logits(model, x)
    hf_hyper.unpatch(model)
    assert torch.equal(logits(model, x), base)
    # the same two layers under one config give other logits: the configs are per layer
    hf_hyper.patch(model, layers=[1, 3], config=APPROX)
    assert not torch.allclose(logits(model, x), planned, atol=1e-4)
    hf_hyper.unpatch(model)
    assert not torch.equal(planned, base)


def test_a_plan_file_patches_and_a_plan_for_another_model_is_refused(tmp_path):
    model = tiny_model("llama")
    path = hf_hyper.Plan({2: APPROX}, model_type="llama").save(tmp_path / "plan.json")
    assert hf_hyper.patch(model, plan=str(path)).layers == (2,)
    hf_hyper.unpatch(model)
    other = hf_hyper.Plan({2: APPROX}, model_type="qwen2").save(tmp_path / "qwen.json")
    with pytest.raises(hf_hyper.PlanError, match="model type 'qwen2'; this model is 'llama'"):
        hf_hyper.patch(model, plan=other)
    with pytest.raises(hf_hyper.PlanError, match="lacks"):
        hf_hyper.patch(model, plan=hf_hyper.Plan({7: APPROX}))
    with pytest.raises(ValueError, match="either plan"):
        hf_hyper.patch(model, plan=path, last_layers=2)
    assert hf_hyper.patch_report(model) is None
