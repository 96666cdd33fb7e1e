"""The bundled reference model: loads with from_pretrained from its folder, and the jobs'
default gives a meaningful perplexity offline (a random model of its vocabulary: ~16384)."""

from __future__ import annotations

import json

import pytest
import torch

from hf_hyper.eval import cli
from hf_hyper.eval.models import REFERENCE_MODEL_DIR


def test_loads_from_its_folder_and_fits_the_size_budget():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    files = list(REFERENCE_MODEL_DIR.iterdir())
    assert sum(f.stat().st_size for f in files) < 25 * 2**20
    model = AutoModelForCausalLM.from_pretrained(REFERENCE_MODEL_DIR)
    tokenizer = AutoTokenizer.from_pretrained(REFERENCE_MODEL_DIR)
    assert model.config.model_type == "llama" and len(tokenizer) == model.config.vocab_size
    ids = tokenizer("def main():\n    return 0\n", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()


def test_ppl_job_default_model_offline(tmp_path):
    out = tmp_path / "ppl"
    args = ["ppl", "--cpu", "--dtype", "fp32", "--lengths", "1024", "--max-windows", "2",
            "--patch-layers", "0", "all", "--min-seq-len", "256",
            "--output-dir", str(out)]  # fmt: skip
    assert cli.main(args) == 0
    data = json.loads((out / "ppl.json").read_text())
    assert data["model"] == "hf_hyper-reference"
    ppl = {r["patched_layers"]: r["ppl"] for r in data["rows"]}
    assert ppl["0"] < 300  # trained: far below the ~16384 of a uniform guess
    assert ppl["all"] == pytest.approx(ppl["0"], rel=0.05) and ppl["all"] != ppl["0"]
