"""`hf-hyper retrieval` on a tiny checkpoint: the cases (needle at its depth, prompt at
its length, deterministic), scoring, an oracle that must score every case, exact-config
patching that must change nothing, resume, and bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from helpers.common import cpu_processes_only, run_two_cpu_processes
from helpers.tiny_models import save_tiny_checkpoint
from hf_hyper import HyperAttentionConfig
from hf_hyper.eval import cli
from hf_hyper.eval.common import JobError
from hf_hyper.eval.retrieval import run as retrieval_run
from hf_hyper.eval.retrieval.tasks import build_case, check_tasks, score
from hf_hyper.eval.texts import TextSource, load_documents, token_streams

SMALL_HYPER = ["--block-size", "8", "--sample-size", "8", "--min-seq-len", "64"]
GRID = ["--lengths", "900", "1200", "--depths", "3", "--seeds", "2"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(
        tmp_path_factory.mktemp("tiny-llama"), all_bytes=True, max_position_embeddings=2048
    )


@pytest.fixture(scope="module")
def tokenizer_and_stream(checkpoint):
    tok = AutoTokenizer.from_pretrained(checkpoint)
    return tok, token_streams(tok, load_documents(TextSource()), False)[0][1]


def _retrieval(checkpoint: Path, out: Path, *extra: str) -> dict:
    args = ["retrieval", "--model", str(checkpoint), "--cpu", "--dtype", "fp32",
            "--output-dir", str(out), *SMALL_HYPER, *extra]  # fmt: skip
    assert cli.main(args) == 0
    return json.loads((out / "retrieval.json").read_text())


@pytest.mark.parametrize("task", ["passkey", "kv-number", "kv-word", "multikey", "multivalue"])
@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_cases_put_the_needle_at_its_depth_in_a_prompt_of_its_length(
    tokenizer_and_stream, task, depth
):
    tok, stream = tokenizer_and_stream
    case = build_case(task, 1500, depth, 1, stream, tok, chat=False)
    assert 1440 <= len(case.input_ids) <= 1500
    again = build_case(task, 1500, depth, 1, stream, tok, chat=False)
    assert again == case and again.prompt_hash == case.prompt_hash  # deterministic
    other = build_case(task, 1500, depth, 2, stream, tok, chat=False)
    assert other.answers != case.answers  # another seed, another value
    text = tok.decode(list(case.input_ids))
    assert all(re.search(rf"\b{a}\b", text) for a in case.answers)
    assert len(case.answers) == (4 if task == "multivalue" else 1)
    if task == "multikey":  # the target and three distractors
        assert text.count("special magic numbers for") + text.count("magic number for") >= 4
    # the answer needle sits at about its depth of the haystack (between the intro and
    # the question; moved to a sentence end, so not to the character)
    if task not in ("multivalue", "multikey"):
        start, stop = text.index("\n\n") + 2, text.rindex("\n\n")
        at = text.index(case.answers[0])
        assert abs((at - start) / (stop - start) - depth) < 0.25
    for start, stop in case.needle_spans:
        assert any(a in tok.decode(list(case.input_ids[start:stop])) for a in case.answers)


def test_scoring_is_a_whole_word_match_of_every_value():
    assert score(("1234567",), "The number is 1234567.")
    assert not score(("1234567",), "The number is 12345678.")
    assert not score(("123",), "x1234")
    assert score(("amber",), "It is amber")
    assert not score(("amber",), "It is ambers")
    assert score(("11", "22"), "11 and 22") and not score(("11", "22"), "11 only")


def test_an_oracle_that_reads_the_prompt_scores_every_case(checkpoint, tmp_path, monkeypatch):
    tok = AutoTokenizer.from_pretrained(checkpoint)

    def oracle(model, tokenizer, input_ids, device, *, max_new_tokens, stop_at_newline):
        # the question names the key; the prompt holds its value(s) in the needle(s)
        text = tokenizer.decode(input_ids)
        key = re.findall(r"for (\S+) mentioned", text)
        if key:
            values = re.findall(rf"for {re.escape(key[-1])} is: (\w+)\.", text)
        else:
            values = re.findall(r"The pass key is (\d+)\. Remember", text)
        return " " + ", ".join(values), 3

    monkeypatch.setattr(retrieval_run, "generate", oracle)
    data = _retrieval(checkpoint, tmp_path / "oracle", *GRID, "--tasks", "passkey",
                      "kv-word", "multikey", "multivalue", "--patch-layers", "0")  # fmt: skip
    assert len(data["cases"]) == 4 * 2 * 3 * 2
    assert all(case["correct"] for case in data["cases"]), [
        c for c in data["cases"] if not c["correct"]
    ]
    assert {row["accuracy"] for row in data["rows"]} == {1.0}
    del tok


@pytest.mark.slow
def test_job_end_to_end_exact_patching_changes_nothing_and_resume(checkpoint, tmp_path):
    out = tmp_path / "run"
    # one key block holding every key and no sample: patched layers compute exactly
    exact = ["--block-size", "100000", "--sample-size", "0", "--min-seq-len", "64"]
    args = ["retrieval", "--model", str(checkpoint), "--cpu", "--dtype", "fp32",
            "--output-dir", str(out), *GRID, "--tasks", "kv-number", "--patch-layers", "0",
            "all", *exact, "--diagnose"]  # fmt: skip
    assert cli.main(args) == 0
    data = json.loads((out / "retrieval.json").read_text())
    by_setting = {}
    for case in data["cases"]:
        by_setting.setdefault(case["setting"], []).append(case["prediction"])
    assert by_setting["0"] == by_setting["all"]
    assert {r["attention"] for r in data["rows"] if r["setting"] == "all"} == {"HyperAttention"}
    assert len(data["cells"]) == 2 * 2 * 3 and len(data["coverage"]) == 2 * 3 * 2
    # a single block covers every key: every head sees the needle exactly
    assert {s for c in data["coverage"].values() for s in c.values()} == {1.0}
    assert (out / "retrieval.md").read_text().startswith("| patched layers |")
    assert (out / "retrieval.png").stat().st_size > 1000
    cache = next(out.glob("cache-*/rank0.jsonl"))
    before = cache.read_text()
    assert cli.main(args) == 0
    again = json.loads((out / "retrieval.json").read_text())
    assert cache.read_text() == before  # nothing recomputed
    assert again["cases_from_cache"] == 2 * len(data["coverage"]) + len(data["coverage"])
    assert again["cases"] == data["cases"]


def test_a_run_cut_short_leaves_a_report_of_its_finished_settings(
    checkpoint, tmp_path, monkeypatch
):
    calls = []

    def answer_then_stop(model, tokenizer, input_ids, device, *, max_new_tokens, stop_at_newline):
        calls.append(1)
        if len(calls) > 3:  # the second setting's first case: the run is killed
            raise KeyboardInterrupt
        return " 0", 1

    out = tmp_path / "cut"
    extra = ["--lengths", "900", "--depths", "3", "--seeds", "1", "--tasks", "kv-number",
             "--patch-layers", "0", "all"]  # fmt: skip
    monkeypatch.setattr(retrieval_run, "generate", answer_then_stop)
    args = ["retrieval", "--model", str(checkpoint), "--cpu", "--dtype", "fp32",
            "--output-dir", str(out), *SMALL_HYPER, *extra]  # fmt: skip
    assert cli.main(args) == 130  # interrupted
    interim = json.loads((out / "retrieval.json").read_text())
    assert interim["settings_left"] == ["all"]
    assert {row["setting"] for row in interim["rows"]} == {"0"}
    assert len(interim["cases"]) == 3
    assert "settings still to run: all" in (out / "retrieval.md").read_text()
    assert not (out / "retrieval.png").exists()  # the figure comes with the whole run

    monkeypatch.setattr(retrieval_run, "generate", lambda *a, **k: (" 0", 1))
    whole = _retrieval(checkpoint, out, *extra)
    assert whole["settings_left"] == [] and whole["cases_from_cache"] == 3
    assert {row["setting"] for row in whole["rows"]} == {"0", "all"}
    assert whole["cases"][:3] == interim["cases"]
    assert (out / "retrieval.png").is_file()


@cpu_processes_only
@pytest.mark.slow
def test_two_processes_give_the_same_cases(checkpoint, tmp_path):
    extra = ["--lengths", "900", "--depths", "3", "--seeds", "1", "--tasks", "kv-number",
             "--patch-layers", "0", "all"]  # fmt: skip
    one = _retrieval(checkpoint, tmp_path / "one", *extra)
    run_two_cpu_processes(
        "hf_hyper.eval.retrieval", "--model", str(checkpoint), "--cpu", "--dtype", "fp32",
        "--output-dir", str(tmp_path / "two"), *SMALL_HYPER, *extra,
    )  # fmt: skip
    two = json.loads((tmp_path / "two" / "retrieval.json").read_text())
    assert two["processes"] == 2 and one["processes"] == 1
    assert two["cases"] == one["cases"]
    caches = sorted(p.name for p in (tmp_path / "two").glob("cache-*/rank*.jsonl"))
    assert caches == ["rank0.jsonl", "rank1.jsonl"]


def _error(capsys, *args: str) -> str:
    assert cli.main(list(args)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_bad_input_is_one_line_naming_the_fix(checkpoint, tmp_path, capsys):
    base = ["retrieval", "--model", str(checkpoint), "--cpu", "--output-dir", str(tmp_path)]
    assert "unknown --tasks ['needle']" in _error(capsys, *base, "--tasks", "needle")
    assert "drop --per-document" in _error(capsys, *base, "--per-document")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    short = tmp_path / "short.txt"
    short.write_text("A few words of haystack. " * 4)
    assert "empty" in _error(capsys, *base, "--files", str(empty), "--lengths", "400")
    message = _error(capsys, *base, "--files", str(short), "--lengths", "400")
    assert "--allow-repeat" in message
    assert "use a longer length" in _error(capsys, *base, "--lengths", "20")
    assert "max_position_embeddings" in _error(capsys, *base, "--lengths", "4096")
    out = tmp_path / "repeat"
    data = _retrieval(checkpoint, out, "--files", str(short), "--lengths", "400", "--depths",
                      "1", "--seeds", "1", "--patch-layers", "0", "--allow-repeat")  # fmt: skip
    assert data["cases"][0]["prompt_tokens"] <= 400
    with pytest.raises(JobError, match="unknown --tasks"):
        check_tasks(["passkey", "nope"])


def test_wilson_interval_matches_known_values_and_brackets_every_rate():
    low, high = retrieval_run.wilson_interval(0, 10)
    assert low == 0.0 and abs(high - 0.2775) < 1e-4
    low, high = retrieval_run.wilson_interval(5, 10)
    assert abs(low - 0.2366) < 1e-4 and abs(high - 0.7634) < 1e-4
    for cases in (1, 7, 100):
        for hits in range(cases + 1):
            low, high = retrieval_run.wilson_interval(hits, cases)
            assert 0 <= low <= hits / cases <= high <= 1
    # more cases, a narrower interval at the same rate
    assert retrieval_run.wilson_interval(50, 100)[1] < retrieval_run.wilson_interval(5, 10)[1]


def test_rates_carry_their_interval_in_rows_cells_and_the_depth_table():
    records = [
        dict(setting="0", task="passkey", length=64, depth=d, correct=ok)
        for d, ok in [(0.0, True), (0.0, False), (1.0, True), (1.0, True)]
    ]
    hyper = HyperAttentionConfig()
    rows, cells = retrieval_run.summarize(records, [("0", 0)], hyper)
    assert rows[0]["hits"] == 3 and rows[0]["cases"] == 4
    assert rows[0]["ci_low"] < 0.75 < rows[0]["ci_high"]
    assert rows[0]["interval"] == f"[{rows[0]['ci_low']:.2f}, {rows[0]['ci_high']:.2f}]"
    assert sorted((c["depth"], c["hits"]) for c in cells) == [(0.0, 1), (1.0, 2)]
    table = retrieval_run.depth_table(cells)
    assert "| 0 | passkey | 64 | 1/2 | 2/2 |" in table


def test_a_model_that_cannot_do_the_task_unpatched_gets_a_note(checkpoint, tmp_path, capsys):
    data = _retrieval(checkpoint, tmp_path / "run", "--lengths", "900", "--depths", "1",
                      "--seeds", "2", "--patch-layers", "0")  # fmt: skip
    assert data["rows"][0]["hits"] == 0  # the random tiny model finds no needle
    assert "note: unpatched, the model found none of the 2 passkey needles" in (
        capsys.readouterr().out
    )


def test_the_bundled_model_says_it_cannot_retrieve_and_names_a_real_checkpoint(tmp_path, capsys):
    args = ["retrieval", "--cpu", "--dtype", "fp32", "--lengths", "1024", "--depths", "1",
            "--seeds", "1", "--patch-layers", "0",
            "--output-dir", str(tmp_path / "run")]  # fmt: skip
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "the bundled reference model cannot retrieve needles" in out
    assert "--gguf-file SmolLM2-135M-Instruct.Q4_1.gguf" in out


def test_attribution_names_the_layer_that_loses_the_needle(checkpoint, tmp_path, monkeypatch):
    """An oracle that answers right unless layer 2 is patched: layer 2 alone loses every
    needle, every layer but 2 finds them all, and the other settings the reverse."""
    import hf_hyper

    def oracle(model, tokenizer, input_ids, device, *, max_new_tokens, stop_at_newline):
        report = hf_hyper.patch_report(model)
        if report is not None and 2 in report.layers:
            return " none", 1
        return " " + re.findall(r"The pass key is (\d+)\. Remember", tokenizer.decode(input_ids))[
            0
        ], 3

    monkeypatch.setattr(retrieval_run, "generate", oracle)
    data = _retrieval(checkpoint, tmp_path / "run", "--lengths", "900", "--depths", "2",
                      "--seeds", "2", "--patch-layers", "all", "--attribution")  # fmt: skip
    settings = list(dict.fromkeys(r["setting"] for r in data["rows"]))
    assert settings == ["0", "all", *[f"only:{i}" for i in range(4)],
                        *[f"except:{i}" for i in range(4)]]  # fmt: skip
    by_layer = {r["layer"]: r for r in data["attribution"]}
    assert sorted(by_layer) == [0, 1, 2, 3]
    for layer, row in by_layer.items():
        assert row["alone_cases"] == row["all_but_cases"] == 4
        assert row["alone_hits"] == (0 if layer == 2 else 4)
        assert row["all_but_hits"] == (4 if layer == 2 else 0)
        low, high = row["alone_ci"]
        assert low <= row["alone_hits"] / 4 <= high
    table = (tmp_path / "run" / "retrieval.md").read_text()
    assert "| passkey | 900 | 2 | 0/4 | [0.00, 0.49] | 4/4 | [0.51, 1.00] |" in table
    assert "- unpatched, passkey at 900: 4/4" in table
    assert (tmp_path / "run" / "retrieval.png").stat().st_size > 1000


def test_one_layer_settings_patch_that_layer_or_every_other(checkpoint):
    import hf_hyper
    from helpers.tiny_models import tiny_model
    from hf_hyper.eval.models import parse_patch_settings, patched

    model = tiny_model("llama")
    settings = dict(parse_patch_settings(["only:1", "except:1", "2"], 4, model=model))
    assert settings["only:1"] == 1 and settings["except:1"] == 3 and settings["2"] == 2
    config = HyperAttentionConfig()
    for label, layers in (("only:1", (1,)), ("except:1", (0, 2, 3))):
        with patched(model, settings[label], config):
            assert hf_hyper.patch_report(model).layers == layers
        assert hf_hyper.patch_report(model) is None
    gemma = tiny_model("gemma3_text")  # layers 1 and 3 full, 0 and 2 sliding-window
    settings = dict(parse_patch_settings(["only:3", "except:3"], 4, model=gemma))
    assert settings["except:3"].layers == (1,)
    with pytest.raises(JobError, match=r"only:2: layer 2 is not one HyperAttention serves; "
                       r"choose among 1, 3"):  # fmt: skip
        parse_patch_settings(["only:2"], 4, model=gemma)
    with pytest.raises(JobError, match=r"except:7: layer 7 does not exist; choose among 0-3"):
        parse_patch_settings(["except:7"], 4, model=model)


def test_bad_one_layer_settings_are_one_line(checkpoint, tmp_path, capsys):
    base = ["retrieval", "--model", str(checkpoint), "--cpu", "--output-dir", str(tmp_path)]
    message = _error(capsys, *base, "--patch-layers", "only:x")
    assert "'only:I' or 'except:I'" in message and "only:x" in message
    assert "layer 9 does not exist; choose among 0-3" in _error(
        capsys, *base, "--patch-layers", "only:9", "--lengths", "900"
    )
