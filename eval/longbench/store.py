"""Where predictions live: one jsonl per (patch setting, dataset), written as they come.

    <out>/run.json                                what produced the predictions
    <out>/predictions/patched-<k>/<dataset>.jsonl  final file, in dataset order
    <out>/predictions/patched-<k>/<dataset>.parts/rank<r>.jsonl   in progress

Each process appends to its own part file; the main process merges them into the final
file once every sample is done, so an interrupted run resumes where it stopped and ends
with the same final file. Records carry LongBench's own keys (pred, answers, all_classes,
length), so the benchmark's scorer reads them too.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..cache import ResultLog
from ..common import JobError, jsonl_records, write_json

PREDICTIONS = "predictions"
SETTING_PREFIX = "patched-"


def setting_dir(out: Path, label: str) -> Path:
    return out / PREDICTIONS / f"{SETTING_PREFIX}{label}"


def check_run_settings(out: Path, settings: dict[str, Any]) -> bool:
    """True when `out` has no run.json yet. Predictions made with other settings (model,
    dtype, prompt budget, chat mode, HyperAttention config) are never mixed in."""
    path = out / "run.json"
    if not path.is_file():
        return True
    before = json.loads(path.read_text())
    changed = sorted(k for k in settings if before.get(k) != settings[k])
    if changed:
        raise JobError(
            f"{out} holds predictions made with different settings ({', '.join(changed)}: "
            f"{[before.get(k) for k in changed]} then, {[settings[k] for k in changed]} now); "
            "use another --output-dir"
        )
    return False


def write_run_settings(out: Path, settings: dict[str, Any]) -> None:
    write_json(out / "run.json", settings)


class PredictionFile:
    """The predictions of one patch setting on one dataset."""

    def __init__(self, out: Path, label: str, dataset: str, rank: int) -> None:
        folder = setting_dir(out, label)
        self.path = folder / f"{dataset}.jsonl"
        self.parts = folder / f"{dataset}.parts"
        self.rank = rank
        self._log: ResultLog | None = None

    def done(self) -> dict[str, dict[str, Any]]:
        """Finished records by sample id: the final file and every process's part file."""
        records = {r["_id"]: r for r in read_records(self.path)} if self.path.is_file() else {}
        if self.parts.is_dir():
            records.update(ResultLog(self.parts, self.rank).load())
        return records

    def append(self, record: dict[str, Any]) -> None:
        if self._log is None:
            self._log = ResultLog(self.parts, self.rank)
        self._log.append({"key": record["_id"], **record})

    def merge(self, required: list[str], order: list[str]) -> None:
        """Final file in dataset `order` (predictions of an earlier, larger run are kept);
        then the part files go."""
        done = self.done()
        missing = [i for i in required if i not in done]
        if missing:
            raise JobError(
                f"{self.path.name}: {len(missing)} sample(s) have no prediction "
                f"(first: {missing[0]}); re-run the same command to finish them"
            )
        rank = {sample_id: i for i, sample_id in enumerate(order)}
        lines = [
            json.dumps({k: v for k, v in done[i].items() if k != "key"}, ensure_ascii=False) + "\n"
            for i in sorted(done, key=lambda i: (rank.get(i, len(rank)), i))
        ]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(lines), encoding="utf-8")
        tmp.replace(self.path)
        if self.parts.is_dir():
            shutil.rmtree(self.parts)


def read_records(path: Path) -> list[dict[str, Any]]:
    """A prediction file: one JSON object per line with at least pred and answers."""
    records = []
    for origin, record in jsonl_records(path):
        if not isinstance(record, dict) or "pred" not in record or "answers" not in record:
            raise JobError(f"{origin}: a prediction needs 'pred' and 'answers'")
        records.append(record)
    return records
