"""Append-only per-item results (a window, a sample), so a killed run loses at most the
item in flight."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def run_key(settings: dict[str, Any]) -> str:
    """Short stable hash of everything that changes a window's result."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


class ResultLog:
    """One JSON line per finished item in `<dir>/rank<r>.jsonl` (one file per process, so
    processes never share a file); reading merges every rank's file. Records have a "key"."""

    def __init__(self, directory: Path, rank: int) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"rank{rank}.jsonl"
        if self.path.is_file() and self.path.stat().st_size:
            with self.path.open("rb") as f:
                f.seek(-1, os.SEEK_END)
                cut_short = f.read(1) != b"\n"
            if cut_short:  # a kill mid-write: end that line so new records stay whole
                with self.path.open("a") as f:
                    f.write("\n")

    def load(self) -> dict[str, dict[str, Any]]:
        done: dict[str, dict[str, Any]] = {}
        for path in sorted(self.directory.glob("rank*.jsonl")):
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a kill
                    continue
                done[record["key"]] = record
        return done

    def append(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
