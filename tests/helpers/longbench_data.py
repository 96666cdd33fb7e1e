"""A small LongBench-format sample (our own synthetic text, the benchmark's field names)."""

from __future__ import annotations

import json
from pathlib import Path

WORDS = [
    "river", "stone", "lamp", "harbor", "orchard", "violet", "engine", "paper", "silver",
    "meadow", "lantern", "copper", "winter", "signal", "marble", "garden", "thunder",
]  # fmt: skip


def _text(seed: int, n_words: int) -> str:
    words = [WORDS[(seed * 7 + i * 3 + i // 5) % len(WORDS)] for i in range(n_words)]
    return " ".join(words).capitalize() + "."


def _row(dataset: str, i: int, **fields) -> dict:
    row = {
        "input": "",
        "context": "",
        "answers": [],
        "length": 0,
        "dataset": dataset,
        "language": "en",
        "all_classes": None,
        "_id": f"{dataset}-{i:03d}",
    }
    row.update(fields)
    return row


def rows(dataset: str, count: int) -> list[dict]:
    base = dataset.removesuffix("_e")
    out = []
    for i in range(count):
        context = " ".join(_text(i * 11 + j, 12) for j in range(6 + 4 * i))
        if base in ("hotpotqa", "multifieldqa_en"):
            row = _row(dataset, i, input=f"Which word opens passage {i}?",
                       context=context, answers=[WORDS[i].capitalize()])  # fmt: skip
        elif base == "multifieldqa_zh":
            zh = "这是一段关于河流和石头的文章。" * (3 + i)
            row = _row(dataset, i, input="文章的主题是什么？", context=zh,
                       answers=["河流和石头"], language="zh")  # fmt: skip
        elif base == "trec":
            classes = ["Location", "Number", "Other location", "Description"]
            row = _row(dataset, i, input=f"Question: where is {WORDS[i]}?\nType:",
                       context=context, answers=[classes[i % 4]], all_classes=classes)  # fmt: skip
        elif base == "samsum":
            row = _row(dataset, i, input="Dialogue: Ann: hi\nBob: hello\nSummary:",
                       context=context, answers=["Ann and Bob greet each other."])  # fmt: skip
        elif base == "passage_retrieval_en":
            row = _row(dataset, i, input=_text(i, 8), context=context,
                       answers=[f"Paragraph {i + 1}"])  # fmt: skip
        elif base == "passage_count":
            row = _row(dataset, i, context=context, answers=[str(3 + i)])
        elif base == "lcc":
            code = "\n".join(f"x{j} = compute({j})" for j in range(10 + 5 * i))
            row = _row(dataset, i, context=code + "\n", answers=[f"x{10 + 5 * i} = compute(0)"],
                       language="python")  # fmt: skip
        else:
            raise KeyError(dataset)
        words = len(row["context"].split())
        row["length"] = words if dataset == base else (1000, 5000, 9000)[i % 3]  # E buckets
        out.append(row)
    return out


def write_sample(folder: Path, counts: dict[str, int]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for dataset, count in counts.items():
        lines = [json.dumps(r, ensure_ascii=False) for r in rows(dataset, count)]
        (folder / f"{dataset}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder
