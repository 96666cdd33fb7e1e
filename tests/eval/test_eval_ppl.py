"""Perplexity job: windows, chunked NLL, the CLI end to end, resume, two processes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import hf_hyper
from helpers.common import cpu_processes_only, run_two_cpu_processes
from helpers.tiny_models import save_tiny_checkpoint, tiny_model
from hf_hyper import HyperAttentionConfig
from hf_hyper.eval import cli
from hf_hyper.eval.common import JobError
from hf_hyper.eval.nll import window_nll
from hf_hyper.eval.texts import TextSource, load_documents
from hf_hyper.eval.windows import make_windows

SMALL_HYPER = ["--block-size", "8", "--sample-size", "8", "--min-seq-len", "16"]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A 4-layer Llama and a 256-token BPE tokenizer trained on the bundled text."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-llama"))


def _ppl(checkpoint: Path, out: Path, *extra: str) -> dict:
    args = ["ppl", "--model", str(checkpoint), "--cpu", "--dtype", "fp32",
            "--output-dir", str(out), *SMALL_HYPER, *extra]  # fmt: skip
    assert cli.main(args) == 0
    return json.loads((out / "ppl.json").read_text())


@pytest.mark.parametrize("family", ["llama", "gemma", "qwen3"])
def test_chunked_nll_equals_model_loss(family):
    model = tiny_model(family)
    ids = torch.randint(0, 128, (50,), generator=torch.Generator().manual_seed(1))
    nll, count = window_nll(model, ids, chunk=7)
    with torch.no_grad():
        loss = model(ids[None], labels=ids[None]).loss.item()
    assert count == 49
    assert nll / count == pytest.approx(loss, rel=1e-5)
    # scoring only a tail matches the per-token losses of that tail
    with torch.no_grad():
        logits = model(ids[None]).logits[0].float()
    per_token = torch.nn.functional.cross_entropy(logits[:-1], ids[1:], reduction="none")
    tail, _ = window_nll(model, ids, score_from=30, chunk=6)
    assert tail == pytest.approx(per_token[29:].sum().item(), rel=1e-5)


def test_windows_non_overlapping_and_sliding():
    stream = [("s", list(range(100)))]
    chunks = make_windows(stream, 30)
    assert [w.start for w in chunks] == [0, 30, 60] and all(len(w.ids) == 30 for w in chunks)
    assert sum(w.scored_tokens for w in chunks) == 3 * 29
    slides = make_windows(stream, 30, stride=20)
    scored = [w.start + i for w in slides for i in range(w.score_from, len(w.ids))]
    assert scored == list(range(1, 100))  # every token after the first, exactly once
    assert all(len(w.ids) == 30 for w in slides)
    with pytest.raises(JobError, match="no window of 200 tokens"):
        make_windows(stream, 200)
    with pytest.raises(JobError, match="--stride"):
        make_windows(stream, 30, stride=40)


def test_ppl_job_end_to_end_and_resume(tiny_checkpoint, tmp_path):
    out = tmp_path / "run"
    extra = ["--lengths", "64", "128", "--patch-layers", "0", "2", "all", "only:1",
             "--max-windows", "3"]  # fmt: skip
    data = _ppl(tiny_checkpoint, out, *extra)
    rows = {(r["patched_layers"], r["length"]): r for r in data["rows"]}
    assert set(rows) == {(p, n) for p in ("0", "2", "all", "only:1") for n in (64, 128)}
    assert rows[("only:1", 128)]["layer_count"] == 1
    assert rows[("only:1", 128)]["ppl"] not in (rows[("0", 128)]["ppl"], rows[("2", 128)]["ppl"])
    assert all(math.isfinite(r["ppl"]) and r["windows"] == 3 for r in rows.values())
    assert rows[("0", 64)]["tokens"] == 3 * 63
    assert rows[("all", 128)]["ppl"] != rows[("0", 128)]["ppl"]  # patched layers took effect
    assert rows[("all", 64)]["attention"] == "HyperAttention"
    assert rows[("0", 64)]["attention"] == "exact (unpatched)"
    change = rows[("all", 128)]["ppl"] / rows[("0", 128)]["ppl"] - 1
    assert rows[("all", 128)]["vs_unpatched"] == pytest.approx(change, rel=1e-12)
    assert rows[("0", 64)]["vs_unpatched"] == 0
    assert f"{change:+.2%}" in (out / "ppl.md").read_text()
    assert (out / "ppl.md").is_file() and (out / "ppl.png").is_file()
    assert data["documents"] and data["windows"]["64"][0].startswith("joined:64:")
    # the plot job reads the job from the JSON; a kind that disagrees is refused
    (out / "ppl.png").unlink()
    assert cli.main(["plot", str(out / "ppl.json")]) == 0 and (out / "ppl.png").is_file()
    assert cli.main(["plot", "ppl", str(out / "ppl.json")]) == 0
    assert cli.main(["plot", "diagnose", str(out / "ppl.json")]) == 2

    # unpatched perplexity from the model directly
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint).eval()
    from transformers import AutoTokenizer

    from hf_hyper.eval.texts import token_streams  # same tokenisation as the job

    tok = AutoTokenizer.from_pretrained(tiny_checkpoint)
    stream = token_streams(tok, load_documents(TextSource()), per_document=False)
    nll = sum(window_nll(model, torch.tensor(w.ids))[0] for w in make_windows(stream, 64)[:3])
    assert rows[("0", 64)]["ppl"] == pytest.approx(math.exp(nll / (3 * 63)), rel=1e-6)

    # resume: a second run computes nothing; dropping one cached window recomputes one
    cache = next(out.glob("cache-*/rank0.jsonl"))
    lines = cache.read_text().splitlines()
    assert len(lines) == 24  # 4 settings x 2 lengths x 3 windows
    again = _ppl(tiny_checkpoint, out, *extra)
    assert again["rows"] == data["rows"] and again["windows_from_cache"] == 24
    assert again["throughput"]["tokens"] == 0  # nothing pushed through the model
    assert len(cache.read_text().splitlines()) == 24
    cache.write_text("\n".join(lines[:-1]) + '\n{"key": "cut sh')  # killed mid-line
    assert _ppl(tiny_checkpoint, out, *extra)["rows"] == data["rows"]
    assert len(cache.read_text().splitlines()) == 25


def test_a_run_cut_short_leaves_a_report_of_its_finished_settings(
    tiny_checkpoint, tmp_path, monkeypatch
):
    from hf_hyper.eval import ppl

    real_score = ppl.score_window
    calls = []

    def score_then_stop(*args, **kwargs):
        calls.append(1)
        if len(calls) > 2:  # the second setting's first window: the run is killed
            raise KeyboardInterrupt
        return real_score(*args, **kwargs)

    out = tmp_path / "cut"
    extra = ["--lengths", "64", "--patch-layers", "0", "all", "--max-windows", "2"]
    monkeypatch.setattr(ppl, "score_window", score_then_stop)
    args = ["ppl", "--model", str(tiny_checkpoint), "--cpu", "--dtype", "fp32",
            "--output-dir", str(out), *SMALL_HYPER, *extra]  # fmt: skip
    assert cli.main(args) == 130  # interrupted
    interim = json.loads((out / "ppl.json").read_text())
    assert interim["settings_left"] == ["all"] and interim["throughput"] is None
    assert [row["patched_layers"] for row in interim["rows"]] == ["0"]
    assert "settings still to run: all" in (out / "ppl.md").read_text()
    assert not (out / "ppl.png").exists()  # the figure comes with the whole run

    monkeypatch.setattr(ppl, "score_window", real_score)
    whole = _ppl(tiny_checkpoint, out, *extra)
    assert whole["settings_left"] == [] and whole["windows_from_cache"] == 2
    assert [row["patched_layers"] for row in whole["rows"]] == ["0", "all"]
    assert whole["rows"][0] == interim["rows"][0]
    assert (out / "ppl.png").is_file()


@cpu_processes_only
@pytest.mark.slow
def test_two_processes_give_the_same_numbers(tiny_checkpoint, tmp_path):
    extra = ["--lengths", "64", "--patch-layers", "0", "all", "--max-windows", "4"]
    one = _ppl(tiny_checkpoint, tmp_path / "one", *extra)
    run_two_cpu_processes(
        "hf_hyper.eval.ppl", "--model", str(tiny_checkpoint), "--cpu", "--dtype", "fp32",
        "--output-dir", str(tmp_path / "two"), *SMALL_HYPER, *extra,
    )  # fmt: skip
    two = json.loads((tmp_path / "two" / "ppl.json").read_text())
    assert two["processes"] == 2 and one["processes"] == 1
    for a, b in zip(one["rows"], two["rows"], strict=True):
        assert a["tokens"] == b["tokens"] and a["ppl"] == pytest.approx(b["ppl"], rel=1e-9)
    caches = sorted(p.name for p in (tmp_path / "two").glob("cache-*/rank*.jsonl"))
    assert caches == ["rank0.jsonl", "rank1.jsonl"]


def _error(capsys, *args: str) -> str:
    assert cli.main(list(args)) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    last = err.splitlines()[-1]  # progress bars of dataset loading may come before
    assert last.startswith("hf-hyper: error:")
    return last


def test_bad_input_is_one_line_naming_the_fix(tiny_checkpoint, tmp_path, capsys):
    base = ["ppl", "--model", str(tiny_checkpoint), "--cpu", "--output-dir", str(tmp_path)]
    assert "text file not found" in _error(capsys, *base, "--files", str(tmp_path / "no.txt"))
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text('{"body": "some text here"}\n')
    assert "fields are ['body']" in _error(capsys, *base, "--files", str(jsonl))
    assert "max_position_embeddings=512" in _error(capsys, *base, "--lengths", "1024")
    too_many = _error(capsys, *base, "--lengths", "64", "--patch-layers", "9")
    assert "beyond the model's 4 layers" in too_many
    assert "no window of 256 tokens" in _error(
        capsys, *base, "--files", str(jsonl), "--text-field", "body", "--lengths", "256"
    )
    assert "no model at" in _error(capsys, "ppl", "--model", str(tmp_path / "none"))
    assert "set kmeans_iters > 0" in _error(capsys, *base, "--cluster-probes", "4")
    no_probes = _error(capsys, *base, "--cluster-key-budget", "1.5")
    assert "cluster_key_budget bounds the keys of the cluster probes: set cluster_probes" in (
        no_probes
    )


def test_bad_text_files_name_the_file_and_the_fix(tiny_checkpoint, tmp_path, capsys):
    base = ["ppl", "--model", str(tiny_checkpoint), "--cpu", "--output-dir", str(tmp_path)]
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 au lait".encode("latin1"))
    assert "latin.txt is not UTF-8 text (byte 3" in _error(capsys, *base, "--files", str(latin))
    assert "is a folder, not a text file" in _error(capsys, *base, "--files", str(tmp_path))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine"}\n{"text": "cut off\n')
    assert "broken.jsonl:2: not valid JSON" in _error(capsys, *base, "--files", str(broken))


def test_max_windows_zero_is_refused(tiny_checkpoint, tmp_path, capsys):
    args = ["ppl", "--model", str(tiny_checkpoint), "--cpu", "--max-windows", "0"]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args)
    assert exit_info.value.code == 2
    assert "--max-windows: must be at least 1; got 0" in capsys.readouterr().err


def test_unsupported_model_type_is_refused(tmp_path, capsys, tiny_checkpoint):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    path = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=256)).save_pretrained(
        path
    )
    AutoTokenizer.from_pretrained(tiny_checkpoint).save_pretrained(path)
    err = _error(capsys, "ppl", "--model", str(path), "--cpu", "--lengths", "32",
                 "--patch-layers", "1", "--output-dir", str(tmp_path / "o"))  # fmt: skip
    assert "no adapter for model_type='gpt2'" in err
    # refused before the unpatched setting ran: no window was scored
    assert not list((tmp_path / "o").glob("cache-*/*.jsonl"))


def test_missing_gguf_file_names_the_folder_and_what_is_there(tmp_path, capsys):
    (tmp_path / "model.Q4.gguf").write_bytes(b"")
    err = _error(capsys, "ppl", "--model", str(tmp_path), "--gguf-file", "other.gguf", "--cpu")
    assert "no GGUF file 'other.gguf'" in err and "model.Q4.gguf" in err
    err = _error(capsys, "ppl", "--model", "org/name", "--gguf-file", "x.gguf", "--cpu")
    assert "--gguf-file needs --model to be the folder that holds it" in err


def test_default_lengths_show_exact_and_approximate_where_positions_reach(capsys):
    from types import SimpleNamespace

    from hf_hyper import HyperAttentionConfig
    from hf_hyper.eval.models import DEFAULT_LENGTHS, default_lengths

    def model(limit):
        return SimpleNamespace(config=SimpleNamespace(max_position_embeddings=limit))

    # the first default is exact under the default min_seq_len, the second is not
    config = HyperAttentionConfig()
    assert DEFAULT_LENGTHS[0] <= config.min_seq_len < DEFAULT_LENGTHS[1]
    assert default_lengths(model(32768)) == list(DEFAULT_LENGTHS)
    assert capsys.readouterr().out == ""
    assert default_lengths(model(4096)) == [4096]
    assert default_lengths(model(512)) == [512]
    assert "512 positions" in capsys.readouterr().out


def test_windows_start_with_the_tokenizer_prefix_which_is_never_scored():
    stream = [("s", list(range(100, 200)))]
    chunks = make_windows(stream, 30, prefix=(7,))
    assert all(w.ids[0] == 7 and len(w.ids) == 30 and w.score_from == 1 for w in chunks)
    assert [w.ids[1] for w in chunks] == [100, 129, 158]  # 29 text tokens each
    slides = make_windows(stream, 30, stride=20, prefix=(7,))
    scored = [w.ids[i] for w in slides for i in range(w.score_from, len(w.ids))]
    assert scored == list(range(100, 200))  # every text token once, the first too
    assert all(w.ids[0] == 7 and len(w.ids) == 30 for w in slides)


def test_window_prefix_is_what_the_tokenizer_adds_before_text():
    from hf_hyper.eval.texts import window_prefix

    class Tokenizer:
        def __init__(self, lead):
            self.lead = lead

        def __call__(self, text, add_special_tokens=True):
            ids = [ord(c) for c in text]
            return {"input_ids": (self.lead + ids) if add_special_tokens else ids}

    assert window_prefix(Tokenizer([2])) == (2,)
    assert window_prefix(Tokenizer([])) == ()


def test_a_plan_runs_as_its_own_setting_with_its_layers_configs(tiny_checkpoint, tmp_path):
    fast = HyperAttentionConfig(block_size=8, sample_size=8, min_seq_len=16, seed=0)  # SMALL_HYPER
    plan_file = tmp_path / "plan.json"
    hf_hyper.Plan({2: fast, 3: fast}, model_type="llama", num_layers=4).save(plan_file)
    extra = ["--lengths", "128", "--max-windows", "2"]
    data = _ppl(tiny_checkpoint, tmp_path / "run", *extra, "--patch-layers", "0", "2",
                "--plan", str(plan_file))  # fmt: skip
    rows = {r["patched_layers"]: r for r in data["rows"]}
    assert set(rows) == {"0", "2", "plan"}
    # the plan patches the last two layers with the job's own small config: the same
    # numbers as --patch-layers 2
    assert rows["plan"]["ppl"] == rows["2"]["ppl"] != rows["0"]["ppl"]


def test_a_bad_plan_is_one_line_naming_the_file(tiny_checkpoint, tmp_path, capsys):
    base = ["ppl", "--model", str(tiny_checkpoint), "--cpu", "--output-dir", str(tmp_path)]
    assert "needs --plan FILE" in _error(capsys, *base, "--patch-layers", "plan")
    assert "no plan file" in _error(capsys, *base, "--plan", str(tmp_path / "none.json"))
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    assert f"plan file {broken} is not readable JSON" in _error(
        capsys, *base, "--plan", str(broken)
    )
    other = hf_hyper.Plan({1: HyperAttentionConfig()}, model_type="qwen2").save(tmp_path / "q.json")
    message = _error(capsys, *base, "--lengths", "64", "--plan", str(other))
    assert f"--plan {other} is for model type 'qwen2'; this model is 'llama'" in message
    deep = hf_hyper.Plan({9: HyperAttentionConfig()}).save(tmp_path / "deep.json")
    assert "which this model lacks" in _error(capsys, *base, "--lengths", "64", "--plan", str(deep))


def test_an_output_dir_that_cannot_be_written_is_one_line(tiny_checkpoint, tmp_path, capsys):
    base = ["ppl", "--model", str(tiny_checkpoint), "--cpu"]
    a_file = tmp_path / "file"
    a_file.write_text("")
    assert "is a file, not a folder" in _error(capsys, *base, "--output-dir", str(a_file))
    inside_a_file = a_file / "out"
    assert "cannot write to --output-dir" in _error(
        capsys, *base, "--output-dir", str(inside_a_file)
    )


def test_ctrl_c_is_one_line_that_says_how_to_resume(capsys):
    from hf_hyper.eval.common import exit_status

    def interrupted(args):
        raise KeyboardInterrupt

    assert exit_status("hf-hyper ppl", interrupted, None) == 130
    err = capsys.readouterr().err.strip()
    assert (
        err == "hf-hyper ppl: interrupted; rerun the same command to resume (finished work is kept)"
    )


def test_more_bad_input_is_one_line(tiny_checkpoint, tmp_path, capsys):
    base = ["ppl", "--model", str(tiny_checkpoint), "--cpu", "--output-dir", str(tmp_path)]
    text = tmp_path / "t.txt"
    text.write_text("some text\n")
    both = _error(capsys, *base, "--dataset", "pg19", "--files", str(text))
    assert "--dataset and --files name two texts" in both
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*base, "--exact-up-to", "foo"])
    assert exit_info.value.code == 2
    assert "expected a query length or 'auto'; got 'foo'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*base, "--cluster-key-budget", "lots"])
    assert exit_info.value.code == 2
    assert "--cluster-key-budget: expected a number; got 'lots'" in capsys.readouterr().err


def test_plot_refuses_a_missing_folder_and_a_json_without_its_fields(tmp_path, capsys):
    job = tmp_path / "ppl.json"
    job.write_text(json.dumps({"job": "ppl"}))
    missing = _error(capsys, "plot", str(job), "--png", str(tmp_path / "no" / "x.png"))
    assert "no folder" in missing
    assert "lacks what a ppl plot needs" in _error(capsys, "plot", str(job))


def test_broken_files_and_a_mismatched_tokenizer_are_one_line(tiny_checkpoint, tmp_path, capsys):
    base = ["ppl", "--model", str(tiny_checkpoint), "--cpu", "--output-dir", str(tmp_path / "o")]
    parquet = tmp_path / "cut.parquet"
    parquet.write_bytes(b"PAR1" + b"\0" * 40)
    assert f"cannot read {parquet} as parquet" in _error(capsys, *base, "--files", str(parquet))
    big = save_tiny_checkpoint(tmp_path / "big", vocab_size=600, all_bytes=True)
    message = _error(capsys, *base, "--tokenizer", str(big))
    assert "but the model embeds 256" in message and "--tokenizer" in message
    gguf = tmp_path / "ckpt"
    gguf.mkdir()
    (gguf / "cut.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x01" * 10)
    message = _error(capsys, "ppl", "--model", str(gguf), "--gguf-file", "cut.gguf", "--cpu")
    assert "cannot load model/tokenizer" in message and "cut.gguf" in message
