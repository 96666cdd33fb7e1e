"""`hf-hyper diagnose` end to end on a tiny checkpoint: per-layer numbers, the layer
recommendation against directly measured perplexity, resume and bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import hf_hyper
from helpers.tiny_models import save_tiny_checkpoint
from hf_hyper import HyperAttentionConfig
from hf_hyper.eval import cli
from hf_hyper.eval.diagnose import LSH_AT_CHANCE
from hf_hyper.eval.nll import window_nll
from hf_hyper.eval.texts import TextSource, load_documents, token_streams
from hf_hyper.eval.windows import make_windows

SMALL_HYPER = ["--block-size", "8", "--sample-size", "8", "--min-seq-len", "16", "--seed", "0"]
CONFIG = HyperAttentionConfig(block_size=8, sample_size=8, min_seq_len=16, seed=0)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-llama"))


def _diagnose(checkpoint: Path, out: Path, *extra: str) -> dict:
    args = ["diagnose", "--model", str(checkpoint), "--cpu", "--dtype", "fp32",
            "--length", "128", "--output-dir", str(out), *SMALL_HYPER, *extra]  # fmt: skip
    assert cli.main(args) == 0
    return json.loads((out / "diagnose.json").read_text())


def _direct_ppl(checkpoint: Path, layers: list[int], windows: int) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    tok = AutoTokenizer.from_pretrained(checkpoint)
    wins = make_windows(token_streams(tok, load_documents(TextSource()), False), 128)[:windows]
    if layers:
        hf_hyper.patch(model, layers=layers, config=CONFIG)
    total = [window_nll(model, torch.tensor(w.ids), w.score_from) for w in wins]
    return math.exp(sum(t[0] for t in total) / sum(t[1] for t in total))


def test_layers_heads_and_recommendation(checkpoint, tmp_path):
    out = tmp_path / "run"
    data = _diagnose(checkpoint, out, "--ppl-budget", "0.01", "--ppl-windows", "2")
    assert [r["layer"] for r in data["rows"]] == [0, 1, 2, 3]
    assert sorted(r["rank"] for r in data["rows"]) == [1, 2, 3, 4]
    assert len(data["heads"]) == 4 * 4
    for head in data["heads"]:
        assert 0 < head["error"] < 1 and 0 < head["heavy_mass"] < 1
        assert head["alpha"] >= 1 and head["log10_kappa"] >= head["log10_kappa_99"] >= 0
    ranked = [r["layer"] for r in sorted(data["rows"], key=lambda r: r["rank"])]
    assert [r["error"] for r in sorted(data["rows"], key=lambda r: r["rank"])] == sorted(
        r["error"] for r in data["rows"]
    )

    rec = data["recommendation"]
    assert rec["layers"] == sorted(ranked[: rec["count"]])
    assert rec["ppl"] <= rec["limit_ppl"] == pytest.approx(rec["base_ppl"] * 1.01)
    # every reported perplexity is what patching those layers really gives
    assert rec["base_ppl"] == pytest.approx(_direct_ppl(checkpoint, [], 2), rel=1e-9)
    assert rec["ppl"] == pytest.approx(_direct_ppl(checkpoint, rec["layers"], 2), rel=1e-9)
    if rec["count"] < 4:  # the next layer in the ranking would break the budget
        one_more = sorted(ranked[: rec["count"] + 1])
        tried = {tuple(t["layers"]): t["ppl"] for t in rec["trials"]}
        assert tried.get(tuple(one_more), math.inf) > rec["limit_ppl"] or rec["count"] == 0
    assert (out / "diagnose.md").read_text().startswith("| layer |")
    assert "Perplexity budget" in (out / "diagnose.md").read_text()
    # the layers named as LSH-blind are exactly those under the threshold
    blind = [r["layer"] for r in data["rows"] if r["block_lift_median"] < LSH_AT_CHANCE]
    text = (out / "diagnose.md").read_text()
    assert (f"in layers {blind}:" in text) == bool(blind)
    assert all(r["block_lift_median"] > 0 for r in data["rows"])
    assert (out / "diagnose.png").stat().st_size > 1000

    # resume: the trials are read back, not recomputed
    trials = next(out.glob("trials-*/rank0.jsonl"))
    before = trials.read_text()
    again = _diagnose(checkpoint, out, "--ppl-budget", "0.01", "--ppl-windows", "2")
    assert trials.read_text() == before and again["recommendation"] == rec


def test_generous_budget_takes_every_layer_and_plain_run_has_no_search(checkpoint, tmp_path):
    data = _diagnose(checkpoint, tmp_path / "a", "--ppl-budget", "10", "--ppl-windows", "1")
    assert data["recommendation"]["layers"] == [0, 1, 2, 3]
    plain = _diagnose(checkpoint, tmp_path / "b", "--layers", "2", "3")
    assert [r["layer"] for r in plain["rows"]] == [2, 3] and "recommendation" not in plain


def test_probes_are_refused_before_the_model_loads(checkpoint, tmp_path, capsys, monkeypatch):
    from hf_hyper.eval import diagnose

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the refusal")

    monkeypatch.setattr(diagnose, "load_model", no_loading)
    argv = ["diagnose", "--model", str(checkpoint), "--cpu", "--output-dir", str(tmp_path)]
    assert cli.main([*argv, "--kmeans-iters", "2", "--cluster-probes", "2"]) == 2
    assert "do not model cluster_probes" in capsys.readouterr().err


def test_bad_input_is_one_line_and_exit_2(checkpoint, tmp_path, capsys):
    base = ["diagnose", "--model", str(checkpoint), "--cpu", "--output-dir", str(tmp_path)]
    assert cli.main([*base, "--length", "64"]) == 2  # every call exact at the defaults
    assert "no approximation to measure" in capsys.readouterr().err
    base += SMALL_HYPER
    assert cli.main([*base, "--ppl-budget", "-1"]) == 2
    assert "--ppl-budget must be >= 0" in capsys.readouterr().err
    assert cli.main([*base, "--ppl-windows", "0"]) == 2
    assert "--ppl-windows must be at least 1" in capsys.readouterr().err
    assert cli.main([*base, "--layers", "9", "--length", "64"]) == 2
    assert "do not exist" in capsys.readouterr().err
    assert cli.main([*base, "--length", "100000"]) == 2
    assert "max_position_embeddings" in capsys.readouterr().err
    probes = ["--length", "64", "--kmeans-iters", "2", "--cluster-probes", "2"]
    assert cli.main([*base, *probes]) == 2
    assert "do not model cluster_probes" in capsys.readouterr().err
