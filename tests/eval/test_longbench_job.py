"""LongBench job: protocol tables, data checks, prompts and truncation, the CLI end to end
on a tiny model, resume after an interruption, re-scoring, two processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.common import cpu_processes_only, run_two_cpu_processes
from helpers.longbench_data import rows, write_sample
from helpers.tiny_models import save_tiny_checkpoint
from hf_hyper.eval import cli, generation
from hf_hyper.eval.common import JobError
from hf_hyper.eval.longbench import protocol
from hf_hyper.eval.longbench.prompts import build_prompt, truncate_middle
from hf_hyper.eval.longbench.samples import load_samples, read_jsonl

pytest.importorskip("jieba")
pytest.importorskip("rouge")
pytest.importorskip("rapidfuzz")

CHAT = "{% for m in messages %}<|user|>{{ m['content'] }}{% endfor %}<|assistant|>"
COUNTS = {"hotpotqa": 2, "multifieldqa_zh": 2, "trec": 2, "samsum": 2,
          "passage_retrieval_en": 2, "lcc": 2, "hotpotqa_e": 3}  # fmt: skip
SMALL_HYPER = ["--block-size", "8", "--sample-size", "8", "--min-seq-len", "16"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny-chat-llama")
    return save_tiny_checkpoint(path, vocab_size=400, all_bytes=True, chat_template=CHAT)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_sample(tmp_path_factory.mktemp("longbench-data"), COUNTS)


@pytest.fixture(scope="module")
def tokenizer(checkpoint):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(checkpoint)


def _longbench(checkpoint: Path, data: Path, out: Path, *extra: str) -> int:
    args = ["longbench", "--model", str(checkpoint), "--cpu", "--dtype", "fp32",
            "--data-dir", str(data), "--output-dir", str(out), "--max-length", "160",
            *SMALL_HYPER, *extra]  # fmt: skip
    return cli.main(args)


def test_protocol_tables():
    assert len(protocol.DATASETS) == 21 and len(protocol.E_DATASETS) == 13
    assert [t.name for t in protocol.tasks(["all"])] == list(protocol.DATASETS)
    hotpot_e = protocol.task("hotpotqa_e")
    assert hotpot_e.base == "hotpotqa" and hotpot_e.by_length and hotpot_e.max_new_tokens == 32
    assert hotpot_e.template == protocol.task("hotpotqa").template
    assert protocol.task("gov_report").max_new_tokens == 512
    assert protocol.task("lcc").raw_prompt and not protocol.task("qasper").raw_prompt
    assert protocol.prompt_budget("chatglm2-6b-32k") == 31500
    assert protocol.prompt_budget("4000") == 4000
    with pytest.raises(JobError, match="unknown LongBench dataset 'hotpot'"):
        protocol.task("hotpot")
    with pytest.raises(JobError, match="token count or one of"):
        protocol.prompt_budget("big")
    assert [protocol.length_bucket(n) for n in (0, 3999, 4000, 8000)] == [
        "0-4k", "0-4k", "4-8k", "8k+",
    ]  # fmt: skip


def test_config_files_are_the_benchmarks_unchanged():
    shared = Path(__file__).resolve().parents[3] / "shared" / "data" / "longbench"
    if not shared.is_dir():
        pytest.skip("the benchmark's config is not beside this checkout")
    for name in ("dataset2prompt.json", "dataset2maxlen.json", "model2maxlen.json", "LICENSE"):
        assert (protocol.CONFIG_DIR / name).read_bytes() == (shared / name).read_bytes()


def test_bad_data_files_give_clear_errors(tmp_path):
    good = rows("hotpotqa", 2)
    path = tmp_path / "hotpotqa.jsonl"
    path.write_text(json.dumps(good[0]) + "\n{not json\n")
    with pytest.raises(JobError, match=r"hotpotqa.jsonl:2: not valid JSON"):
        read_jsonl(path)
    path.write_bytes(json.dumps(good[0]).encode() + b'\n{"input": "caf\xe9"}\n')
    with pytest.raises(JobError, match=r"hotpotqa.jsonl is not UTF-8 text \(byte"):
        read_jsonl(path)
    broken = dict(good[0])
    del broken["answers"]
    path.write_text(json.dumps(broken) + "\n")
    with pytest.raises(JobError, match=r":1: missing LongBench field\(s\) \['answers'\]"):
        read_jsonl(path)
    path.write_text(json.dumps({**good[0], "answers": "Paris"}) + "\n")
    with pytest.raises(JobError, match="non-empty list of strings"):
        read_jsonl(path)
    path.write_text(json.dumps(good[0]) + "\n" + json.dumps(good[0]) + "\n")
    with pytest.raises(JobError, match="duplicate _id"):
        load_samples(protocol.task("hotpotqa"), str(tmp_path))
    with pytest.raises(JobError, match="no qasper.jsonl in .*data.zip"):
        load_samples(protocol.task("qasper"), str(tmp_path))


def test_truncation_keeps_head_and_tail(tokenizer):
    text = " ".join(f"word{i}" for i in range(300))
    ids = tokenizer(text)["input_ids"]
    cut, counted, truncated = truncate_middle(tokenizer, text, 60)
    assert truncated and counted == len(ids) and cut.startswith("word0 word1")
    assert cut.endswith("word298 word299")
    assert cut == tokenizer.decode(ids[:30]) + tokenizer.decode(ids[-30:])
    assert truncate_middle(tokenizer, "short text", 60) == ("short text", len(
        tokenizer("short text")["input_ids"]), False)  # fmt: skip


def test_prompts_follow_the_template_and_chat_rules(tokenizer, data_dir):
    qa = protocol.task("hotpotqa")
    sample = load_samples(qa, str(data_dir))[0]
    prompt = build_prompt(qa, sample, tokenizer, 10_000, "auto")
    text = tokenizer.decode(prompt.input_ids)
    assert prompt.chat and text.startswith("<|user|>Answer the question based on")
    assert text.endswith(f"Question: {sample.input}\nAnswer:<|assistant|>")
    assert not prompt.truncated and prompt.prompt_tokens == len(prompt.input_ids) - len(
        tokenizer("<|user|><|assistant|>", add_special_tokens=False)["input_ids"])  # fmt: skip
    trec = protocol.task("trec")
    raw = build_prompt(trec, load_samples(trec, str(data_dir))[0], tokenizer, 10_000, "auto")
    assert not raw.chat  # few-shot sets stay raw even for chat models
    assert not build_prompt(qa, sample, tokenizer, 10_000, "never").chat
    short = build_prompt(qa, sample, tokenizer, 40, "never")
    assert short.truncated and len(short.input_ids) <= 42


def test_samsum_stops_at_newline(tokenizer):
    from transformers import AutoModelForCausalLM

    newline = tokenizer.encode("\n", add_special_tokens=False)[-1]
    model = AutoModelForCausalLM.from_pretrained(tokenizer.name_or_path)
    assert newline in generation.stop_tokens(
        model, tokenizer, protocol.task("samsum").stop_at_newline
    )
    assert newline not in generation.stop_tokens(
        model, tokenizer, protocol.task("hotpotqa").stop_at_newline
    )


def test_job_end_to_end_rescoring_and_settings_guard(checkpoint, data_dir, tmp_path):
    out = tmp_path / "run"
    datasets = ["--datasets", *COUNTS]
    assert _longbench(checkpoint, data_dir, out, *datasets, "--patch-layers", "0", "2") == 0
    data = json.loads((out / "longbench.json").read_text())
    assert {(r["setting"], r["dataset"]) for r in data["rows"]} == {
        (s, d) for s in ("0", "2") for d in COUNTS
    }
    for r in data["rows"]:
        assert r["samples"] == COUNTS[r["dataset"]] and 0 <= r["score"] <= 100
    e_row = next(r for r in data["rows"] if r["dataset"] == "hotpotqa_e")
    assert {"0-4k", "4-8k", "8k+"} <= set(e_row)
    groups = {a["group"] for a in data["averages"]}
    assert {"All", "LongBench-E", "Multi-Doc QA", "Few-shot Learning"} <= groups
    assert data["chat_template"]["hotpotqa"] and not data["chat_template"]["trec"]
    table = (out / "longbench.md").read_text()
    assert "| hotpotqa_e 8k+ |" in table and "patched 2" in table
    assert (out / "longbench.png").is_file()

    trec = [json.loads(s) for s in (out / "predictions/patched-0/trec.jsonl").open()]
    assert [r["_id"] for r in trec] == ["trec-000", "trec-001"]
    assert all(r["truncated"] and r["input_tokens"] <= 160 for r in trec)
    assert not list(out.glob("predictions/*/*.parts"))  # merged and cleaned up

    # scoring alone, from the files, gives the same numbers
    assert cli.main(["longbench", "score", str(out), "--output-dir", str(tmp_path / "s")]) == 0
    again = json.loads((tmp_path / "s" / "longbench.json").read_text())
    assert again["rows"] == data["rows"] and again["averages"] == data["averages"]

    # a changed prompt budget must not mix with these predictions
    assert _longbench(checkpoint, data_dir, out, "--datasets", "trec",
                      "--max-length", "120") == 2  # fmt: skip


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_files(checkpoint, data_dir, tmp_path, monkeypatch):
    extra = ["--datasets", "hotpotqa", "trec", "samsum", "--patch-layers", "0", "all"]
    assert _longbench(checkpoint, data_dir, tmp_path / "whole", *extra) == 0

    real, calls = generation.generate, []

    def dies_on_fourth(*args, **kwargs):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr("hf_hyper.eval.longbench.run.generate", dies_on_fourth)
    assert _longbench(checkpoint, data_dir, tmp_path / "cut", *extra) == 130  # Ctrl-C
    parts = list((tmp_path / "cut").glob("predictions/*/*.parts/rank0.jsonl"))
    assert sum(len(p.read_text().splitlines()) for p in parts) == 3
    monkeypatch.setattr("hf_hyper.eval.longbench.run.generate", real)
    counting = []
    monkeypatch.setattr(
        "hf_hyper.eval.longbench.run.generate",
        lambda *a, **k: counting.append(1) or real(*a, **k),
    )
    assert _longbench(checkpoint, data_dir, tmp_path / "cut", *extra) == 0
    assert len(counting) == 2 * 6 - 3  # only the samples not done before
    for whole in sorted((tmp_path / "whole" / "predictions").rglob("*.jsonl")):
        cut = tmp_path / "cut" / whole.relative_to(tmp_path / "whole")
        assert cut.read_bytes() == whole.read_bytes(), whole.name


@cpu_processes_only
@pytest.mark.slow
def test_two_processes_give_the_same_predictions(checkpoint, data_dir, tmp_path):
    extra = ["--datasets", "hotpotqa", "hotpotqa_e", "--patch-layers", "0", "2"]
    assert _longbench(checkpoint, data_dir, tmp_path / "one", *extra) == 0
    run_two_cpu_processes(
        "hf_hyper.eval.longbench", "--model", str(checkpoint), "--cpu", "--dtype", "fp32",
        "--data-dir", str(data_dir), "--max-length", "160",
        "--output-dir", str(tmp_path / "two"), *SMALL_HYPER, *extra,
    )  # fmt: skip
    one = json.loads((tmp_path / "one" / "longbench.json").read_text())
    two = json.loads((tmp_path / "two" / "longbench.json").read_text())
    assert two["processes"] == 2 and two["rows"] == one["rows"]
    for path in sorted((tmp_path / "one" / "predictions").rglob("*.jsonl")):
        other = tmp_path / "two" / path.relative_to(tmp_path / "one")
        assert other.read_bytes() == path.read_bytes(), path.name


@pytest.mark.gpu
def test_job_runs_on_cuda_in_bf16(checkpoint, data_dir, tmp_path):
    out = tmp_path / "gpu"
    args = ["longbench", "--model", str(checkpoint), "--dtype", "bf16", "--data-dir",
            str(data_dir), "--output-dir", str(out), "--max-length", "160", *SMALL_HYPER,
            "--datasets", "hotpotqa", "lcc", "--patch-layers", "0", "all"]  # fmt: skip
    assert cli.main(args) == 0
    data = json.loads((out / "longbench.json").read_text())
    assert "device" in data["environment"]  # recorded only when CUDA is in use
    assert len(data["rows"]) == 4 and all(0 <= r["score"] <= 100 for r in data["rows"])


def test_score_help_describes_scoring(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["longbench", "score", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "Score saved LongBench predictions again" in text and "--num-layers" in text
