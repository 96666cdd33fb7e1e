"""LongBench samples from the benchmark's jsonl files (`--data-dir`) or from the hub."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..common import JobError, jsonl_records
from .protocol import Task

FIELDS = ("input", "context", "answers", "length", "dataset", "language", "all_classes", "_id")
HUB_REPO = "THUDM/LongBench"
# The hub repository is a loading script, which recent `datasets` no longer runs; the hub's
# automatic parquet conversion of it lives on this branch, one folder per dataset.
HUB_REVISION = "refs/convert/parquet"
DATA_URL = "https://huggingface.co/datasets/THUDM/LongBench/resolve/main/data.zip"


@dataclass(frozen=True)
class Sample:
    id: str
    input: str
    context: str
    answers: tuple[str, ...]
    length: int  # words (characters for Chinese), as the benchmark counts them
    language: str
    all_classes: tuple[str, ...] | None


def _sample(record: Any, origin: str) -> Sample:
    if not isinstance(record, dict):
        raise JobError(f"{origin}: expected a JSON object, got {type(record).__name__}")
    missing = [f for f in FIELDS if f not in record]
    if missing:
        raise JobError(f"{origin}: missing LongBench field(s) {missing}; expected {FIELDS}")
    answers = record["answers"]
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
        raise JobError(f"{origin}: 'answers' must be a non-empty list of strings")
    classes = record["all_classes"]
    if classes is not None and not (
        isinstance(classes, list) and all(isinstance(c, str) for c in classes)
    ):
        raise JobError(f"{origin}: 'all_classes' must be null or a list of strings")
    try:
        length = int(record["length"])
    except (TypeError, ValueError):
        raise JobError(f"{origin}: 'length' must be an integer") from None
    return Sample(
        id=str(record["_id"]),
        input=str(record["input"] or ""),
        context=str(record["context"] or ""),
        answers=tuple(answers),
        length=length,
        language=str(record["language"]),
        all_classes=tuple(classes) if classes is not None else None,
    )


def read_jsonl(path: Path) -> list[Sample]:
    """Every line checked; a malformed one is an error naming file and line."""
    return [_sample(record, origin) for origin, record in jsonl_records(path)]


def _from_hub(task: Task, repo: str, revision: str) -> Iterable[Sample]:
    try:
        import datasets
    except ImportError as err:
        raise JobError("loading LongBench from the hub needs: pip install datasets") from err
    try:
        table = datasets.load_dataset(repo, task.name, split="test", revision=revision)
    except Exception as err:  # offline, missing config, hub changes: all end the same way
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise JobError(
            f"cannot load {task.name} from {repo}@{revision}: {first}. Offline, download "
            f"{DATA_URL}, unzip it and pass --data-dir <its data/ folder>"
        ) from err
    return [_sample(row, f"{repo}/{task.name}#{i}") for i, row in enumerate(table)]


def load_samples(
    task: Task,
    data_dir: str | None = None,
    repo: str = HUB_REPO,
    revision: str = HUB_REVISION,
) -> list[Sample]:
    """All the dataset's samples, in file order."""
    if data_dir is not None:
        path = Path(data_dir) / f"{task.name}.jsonl"
        if not path.is_file():
            raise JobError(
                f"no {path.name} in {data_dir}: pass --data-dir the folder of LongBench's "
                f"jsonl files (the data/ folder of {DATA_URL})"
            )
        samples = read_jsonl(path)
    else:
        samples = list(_from_hub(task, repo, revision))
    if not samples:
        raise JobError(f"LongBench dataset {task.name} has no samples")
    ids = [s.id for s in samples]
    if len(set(ids)) != len(ids):
        raise JobError(f"{task.name}: duplicate _id values; predictions are keyed by _id")
    return samples
