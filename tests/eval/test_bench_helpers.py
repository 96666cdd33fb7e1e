"""The benchmarks' CPU-checkable parts: FlexAttention's causal mask built from blocks and
the free-attention ceiling setting."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

import hf_hyper
from helpers.tiny_models import tiny_model
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


def test_memory_verdict_applies_the_stated_bounds():
    from hf_hyper.eval.bench_attention import memory_verdict

    n, heads, dim = 32768, 32, 128
    out_gib = n * heads * dim * 2 / 2**30
    extra_gib = n * heads * 16 / 2**30
    assert memory_verdict("fwd", n, heads, dim, 2, out_gib + 0.99 * extra_gib, None) == "pass"
    assert memory_verdict("fwd", n, heads, dim, 2, out_gib + 1.01 * extra_gib, None) == "FAIL"
    assert memory_verdict("fwd+bwd", n, heads, dim, 2, 3.0, 3.5) == "pass"
    assert memory_verdict("fwd+bwd", n, heads, dim, 2, 4.0, 3.5) == "FAIL"
    assert memory_verdict("fwd+bwd", 8192, heads, dim, 2, 4.0, 3.5) is None  # below 16k
    assert memory_verdict("fwd+bwd", n, heads, dim, 2, 4.0, None) is None  # no cuDNN run


def test_paper_comparison_reads_our_numbers_from_the_same_run():
    from hf_hyper.eval.bench_paper import compare_with_paper

    def layer(mode, backend, ms):
        return dict(n=131072, causal=True, mode=mode, backend=backend, ms=ms)

    layer_rows = [layer("fwd", "cudnn", 150.0), layer("fwd", "flash2", 200.0),
                  layer("fwd", "hyper", 20.0), layer("fwd+bwd", "cudnn", 500.0)]  # fmt: skip
    model_rows = [
        dict(length=32768, patched_layers="0", layer_count=0, speedup=1.0),
        dict(length=32768, patched_layers="14", layer_count=14, speedup=1.1),
        dict(length=32768, patched_layers="all", layer_count=28, speedup=1.3),
    ]
    layer, model = compare_with_paper(layer_rows, model_rows, "chatglm2-6b-shaped")
    # only the forward ran with HyperAttention: fwd+bwd is left out, not invented
    assert layer["paper"] == "5x" and layer["ours"] == "fwd 10.0x"
    assert "cuDNN: fwd 7.5x)" in layer["our_baseline"]
    assert compare_with_paper([], [], "x")[0]["ours"] == "not run"
    assert model["ours"] == "1.30x" and "all layers patched" in model["our_baseline"]


@pytest.mark.parametrize("job", [["attention"], ["model", "--shape", "llama2-7b"], ["paper"]])
def test_bench_jobs_without_a_gpu_say_so_in_one_line(job, capsys, monkeypatch):
    from hf_hyper.eval import cli

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.main(["bench", *job]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "GPU machine" in err


def test_estimated_unpatched_prefill_adds_exact_layers_to_free_attention(monkeypatch):
    from hf_hyper.eval import bench_model

    monkeypatch.setattr(bench_model, "exact_layer_ms", lambda model, length, args: 100.0)
    rows = [
        dict(length=2**20, patched_layers="0", layer_count=0),
        dict(length=2**20, patched_layers="28", layer_count=28, ms=1000.0, free_ms=800.0),
    ]
    bench_model._estimate_unpatched(None, 2**20, rows, None)
    base, patched_row = rows
    assert base["ms"] == 800.0 + 28 * 100.0 and base["note"].startswith("estimate")
    assert patched_row["speedup"] == 3.6 and patched_row["ceiling"] == 4.5
    assert patched_row["share_of_ceiling"] == 0.8


def test_a_run_cut_short_resumes_from_its_rows(tmp_path, monkeypatch):
    import argparse

    from hf_hyper.eval import bench_model
    from hf_hyper.eval.common import write_json
    from hf_hyper.eval.timing import Timing

    timed = []

    def fake_time(step, args):
        timed.append(step.args[1].shape[1])  # the prefill's length
        return Timing(ms=100.0 / (1 + len(timed)), ms_min=1.0, peak_gib=0.0, repeats=1)

    monkeypatch.setattr(bench_model, "_time", fake_time)
    model = tiny_model("llama")
    config = hf_hyper.HyperAttentionConfig(backend="torch", min_seq_len=16, seed=0)
    args = argparse.Namespace(lengths=[32, 48], free=False, warmup=0, repeats=1)
    settings = [("0", 0), ("2", 2)]
    payload = dict(model="tiny", dtype="fp32", num_layers=2, hyper_config=config.to_dict(),
                   environment={"device": "cpu"})  # fmt: skip
    path = tmp_path / "model.json"

    class CutShort(Exception):
        pass

    def keep_then_stop(rows):
        write_json(path, {**payload, "rows": rows, "complete": False})
        if len(rows) == 3:
            raise CutShort

    with pytest.raises(CutShort):
        bench_model.time_prefill(model, settings, config, args, on_row=keep_then_stop)
    earlier = bench_model.rows_to_resume(path, payload)
    assert sorted(earlier) == [(32, "0"), (32, "2"), (48, "0")]
    timed.clear()
    rows = bench_model.time_prefill(model, settings, config, args, earlier=earlier)
    assert timed == [48]  # only the setting the first run did not reach
    assert [r.get("from_earlier_run", False) for r in rows] == [True, True, True, False]
    assert rows[3]["speedup"] == rows[2]["ms"] / rows[3]["ms"]
    assert "earlier run" in rows[3]["note"]
    # timed without a warm-up, a patched row says its time includes the compilation
    assert "no warm-up" in rows[3]["note"] and "note" not in rows[2]
    # a finished run, or one of another config or device, is not resumed
    write_json(path, {**payload, "rows": rows, "complete": True})
    assert bench_model.rows_to_resume(path, payload) == {}
    write_json(path, {**payload, "rows": rows, "complete": False})
    assert bench_model.rows_to_resume(path, {**payload, "hyper_config": {}}) == {}
    assert bench_model.rows_to_resume(path, {**payload, "environment": {"device": "x"}}) == {}
