"""Scores from prediction files: per dataset and patch setting, category averages, table."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..common import JobError
from .protocol import CATEGORIES, DATASETS, E_DATASETS, LENGTH_BUCKETS, task
from .scoring import MissingExtra, score_task
from .store import PREDICTIONS, SETTING_PREFIX, read_records

BUCKETS = tuple(label for _, _, label in LENGTH_BUCKETS)


def find_prediction_files(root: Path) -> dict[str, dict[str, Path]]:
    """{setting label: {dataset: file}} from a run's output folder, or from a folder of
    LongBench-format `<dataset>.jsonl` files (one setting, named after the folder)."""
    root = Path(root)
    if not root.is_dir():
        raise JobError(f"no folder {root} (pass a longbench output folder or prediction folder)")
    known = set(DATASETS + E_DATASETS)

    def datasets_in(folder: Path) -> dict[str, Path]:
        return {p.stem: p for p in sorted(folder.glob("*.jsonl")) if p.stem in known}

    if (root / PREDICTIONS).is_dir():
        found = {
            d.name.removeprefix(SETTING_PREFIX): datasets_in(d)
            for d in sorted((root / PREDICTIONS).iterdir())
            if d.is_dir()
        }
    else:
        found = {root.name: datasets_in(root)}
    found = {label: files for label, files in found.items() if files}
    if not found:
        raise JobError(
            f"no prediction files (<dataset>.jsonl named after a LongBench dataset) in {root}"
        )
    return found


def score_file(path: Path, only_ids: set[str] | None = None) -> dict[str, Any]:
    """One dataset's scores from its prediction file."""
    t = task(path.stem)
    records = read_records(path)
    if only_ids is not None:
        records = [r for r in records if r.get("_id") in only_ids]
    if t.by_length and any("length" not in r for r in records):
        raise JobError(f"{path}: LongBench-E predictions need each sample's 'length'")
    try:
        result = score_task(
            t,
            [r["pred"] for r in records],
            [r["answers"] for r in records],
            [r.get("all_classes") for r in records],
            [r["length"] for r in records] if t.by_length else None,
        )
    except MissingExtra as err:
        raise JobError(str(err)) from err
    except ValueError as err:
        raise JobError(f"{path}: {err}") from err
    truncated = sum(bool(r.get("truncated")) for r in records)
    return {"dataset": t.name, "category": t.category, "samples": len(records),
            "truncated": truncated, **result}  # fmt: skip


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def averages(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per setting: each category's mean over its datasets (LongBench v1 sets only), the
    mean over all v1 sets, and the LongBench-E mean per length bucket."""
    result = []
    for label in dict.fromkeys(r["setting"] for r in rows):
        mine = [r for r in rows if r["setting"] == label and r["dataset"] in DATASETS]
        base = {"setting": label, "layer_count": next(
            r["layer_count"] for r in rows if r["setting"] == label)}  # fmt: skip
        for category in CATEGORIES:
            scores = [r["score"] for r in mine if r["category"] == category]
            if scores:
                result.append({**base, "group": category, "score": _mean(scores)})
        if mine:
            result.append({**base, "group": "All", "score": _mean([r["score"] for r in mine])})
        e_rows = [r for r in rows if r["setting"] == label and r["dataset"] in E_DATASETS]
        if e_rows:
            buckets = {b: _mean([r.get(b) for r in e_rows]) for b in BUCKETS}
            scores = [r["score"] for r in e_rows]
            result.append({**base, "group": "LongBench-E", "score": _mean(scores), **buckets})
    return result


def layer_count(label: str, num_layers: int | None) -> int | None:
    if label == "all":
        return num_layers
    return int(label) if label.isdigit() else None


def score_predictions(
    root: Path, num_layers: int | None = None, only_ids: dict[str, set[str]] | None = None
) -> dict[str, Any]:
    """rows (setting x dataset) and averages for every prediction file under `root`."""
    rows = []
    for label, files in find_prediction_files(root).items():
        for dataset, path in files.items():
            ids = only_ids.get(dataset) if only_ids else None
            row = score_file(path, ids)
            rows.append({"setting": label, "layer_count": layer_count(label, num_layers), **row})
    return {"rows": rows, "averages": averages(rows)}


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def markdown(payload: dict[str, Any]) -> str:
    """Datasets (and LongBench-E buckets) down, patch settings across, averages last."""
    rows, avgs = payload["rows"], payload["averages"]
    labels = list(dict.fromkeys(r["setting"] for r in rows))
    header = ["dataset", "category", *(f"patched {label}" for label in labels)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    by_key = {(r["setting"], r["dataset"]): r for r in rows}
    order = [d for d in DATASETS + E_DATASETS if any(d == r["dataset"] for r in rows)]
    for dataset in order:
        category = task(dataset).category
        cells = [_cell(by_key.get((lb, dataset), {}).get("score")) for lb in labels]
        lines.append(f"| {dataset} | {category} | " + " | ".join(cells) + " |")
        if dataset in E_DATASETS:
            for b in BUCKETS:
                cells = [_cell(by_key.get((lb, dataset), {}).get(b)) for lb in labels]
                lines.append(f"| {dataset} {b} | {category} | " + " | ".join(cells) + " |")
    by_group = {(a["setting"], a["group"]): a for a in avgs}
    for group in dict.fromkeys(a["group"] for a in avgs):
        cells = [_cell(by_group.get((lb, group), {}).get("score")) for lb in labels]
        lines.append(f"| **{group}** | average | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
