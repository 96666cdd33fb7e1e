"""What LongBench v1 defines per dataset: template, generation length, metric, category.

LongBench-E variants (`<name>_e`) share their base dataset's template, length and metric
and are reported per context-length bucket (0-4k / 4-8k / 8k+ words).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from ..common import JobError

CONFIG_DIR = Path(__file__).with_name("config")

CATEGORIES: dict[str, tuple[str, ...]] = {
    "Single-Doc QA": ("narrativeqa", "qasper", "multifieldqa_en", "multifieldqa_zh"),
    "Multi-Doc QA": ("hotpotqa", "2wikimqa", "musique", "dureader"),
    "Summarization": ("gov_report", "qmsum", "multi_news", "vcsum"),
    "Few-shot Learning": ("trec", "triviaqa", "samsum", "lsht"),
    "Synthetic Tasks": ("passage_count", "passage_retrieval_en", "passage_retrieval_zh"),
    "Code Completion": ("lcc", "repobench-p"),
}
DATASETS: tuple[str, ...] = tuple(name for names in CATEGORIES.values() for name in names)
E_DATASETS: tuple[str, ...] = tuple(
    f"{name}_e"
    for name in (
        "qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "gov_report", "multi_news",
        "trec", "triviaqa", "samsum", "passage_count", "passage_retrieval_en", "lcc",
        "repobench-p",
    )
)  # fmt: skip

METRICS: dict[str, str] = {
    "narrativeqa": "qa_f1", "qasper": "qa_f1", "multifieldqa_en": "qa_f1",
    "multifieldqa_zh": "qa_f1_zh", "hotpotqa": "qa_f1", "2wikimqa": "qa_f1",
    "musique": "qa_f1", "dureader": "rouge_l_zh", "gov_report": "rouge_l",
    "qmsum": "rouge_l", "multi_news": "rouge_l", "vcsum": "rouge_l_zh",
    "trec": "classification", "triviaqa": "qa_f1", "samsum": "rouge_l",
    "lsht": "classification", "passage_count": "count",
    "passage_retrieval_en": "retrieval", "passage_retrieval_zh": "retrieval_zh",
    "lcc": "code_sim", "repobench-p": "code_sim",
}  # fmt: skip

# The benchmark feeds these prompts raw: chat models do better on few-shot and code
# completion without a chat wrapper, and published scores were made that way.
RAW_PROMPT = frozenset({"trec", "triviaqa", "samsum", "lsht", "lcc", "repobench-p"})
# Few-shot answers are scored on their first line: models keep writing more examples.
FIRST_LINE_ONLY = frozenset({"trec", "triviaqa", "samsum", "lsht"})
# samsum generation also stops at a newline (models otherwise repeat "\nDialogue: ...").
STOP_AT_NEWLINE = frozenset({"samsum"})

LENGTH_BUCKETS = ((0, 4000, "0-4k"), (4000, 8000, "4-8k"), (8000, None, "8k+"))


@cache
def _config(name: str) -> dict:
    return json.loads((CONFIG_DIR / name).read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Task:
    """One LongBench dataset as the benchmark runs it."""

    name: str  # as in the data files: "hotpotqa" or "hotpotqa_e"
    base: str  # the dataset whose template, length and metric it uses
    template: str
    max_new_tokens: int
    metric: str
    category: str

    @property
    def by_length(self) -> bool:
        return self.name.endswith("_e")

    @property
    def raw_prompt(self) -> bool:
        return self.base in RAW_PROMPT

    @property
    def first_line_only(self) -> bool:
        return self.base in FIRST_LINE_ONLY

    @property
    def stop_at_newline(self) -> bool:
        return self.base in STOP_AT_NEWLINE


def task(name: str) -> Task:
    if name not in DATASETS and name not in E_DATASETS:
        raise JobError(
            f"unknown LongBench dataset {name!r}; choose from {', '.join(DATASETS)}, "
            f"the LongBench-E sets {', '.join(E_DATASETS)}, or 'all' / 'all_e'"
        )
    base = name.removesuffix("_e") if name in E_DATASETS else name
    category = next(c for c, names in CATEGORIES.items() if base in names)
    return Task(
        name=name,
        base=base,
        template=_config("dataset2prompt.json")[base],
        max_new_tokens=_config("dataset2maxlen.json")[base],
        metric=METRICS[base],
        category=category,
    )


def tasks(names: list[str]) -> list[Task]:
    """Names as given on the command line; 'all' = the 21 sets, 'all_e' = LongBench-E."""
    expanded: list[str] = []
    for name in names:
        expanded += DATASETS if name == "all" else E_DATASETS if name == "all_e" else [name]
    return [task(n) for n in dict.fromkeys(expanded)]


def prompt_budget(value: str) -> int:
    """`--max-length`: a token count, or a model name from the benchmark's
    model2maxlen.json (e.g. chatglm2-6b-32k -> 31500) to use its published budget."""
    presets = _config("model2maxlen.json")
    if value in presets:
        return int(presets[value])
    try:
        budget = int(value)
    except ValueError:
        raise JobError(
            f"--max-length takes a token count or one of {', '.join(presets)}; got {value!r}"
        ) from None
    if budget < 2:
        raise JobError(f"--max-length must be at least 2 tokens; got {budget}")
    return budget


def length_bucket(length: int) -> str:
    for low, high, label in LENGTH_BUCKETS:
        if length >= low and (high is None or length < high):
            return label
    raise ValueError(f"negative length {length}")
