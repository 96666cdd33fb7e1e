"""Which layers lose the needle: retrieval with each layer alone patched, and with every
layer but one patched (the settings 'only:I' and 'except:I' of --patch-layers).

A layer that loses needles alone is one HyperAttention cannot serve as configured; a
layer whose exclusion restores the all-layers rate is one the others lean on. Each rate
carries its 95% interval, since a per-layer grid is small.
"""

from __future__ import annotations

from typing import Any

from ..common import markdown_table
from ..models import ONE_LAYER_SETTING

COLUMNS = [
    ("task", "task"),
    ("length", "length"),
    ("layer", "layer"),
    ("alone", "alone patched: hits"),
    ("alone_interval", "95% interval"),
    ("all_but", "all but this layer: hits"),
    ("all_but_interval", "95% interval"),
]


def attribution_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per task, length and layer: the hits with that layer alone patched and with every
    layer but it, from `summarize`'s rows (one per setting, task and length)."""
    by_key: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        match = ONE_LAYER_SETTING.fullmatch(row["setting"])
        if not match:
            continue
        kind, layer = match.group(1), int(match.group(2))
        entry = by_key.setdefault(
            (row["task"], row["length"], layer),
            dict(task=row["task"], length=row["length"], layer=layer),
        )
        prefix = "alone" if kind == "only" else "all_but"
        entry |= {
            f"{prefix}_hits": row["hits"],
            f"{prefix}_cases": row["cases"],
            f"{prefix}_ci": [row["ci_low"], row["ci_high"]],
            prefix: f"{row['hits']}/{row['cases']}",
            f"{prefix}_interval": row["interval"],
        }
    return [by_key[key] for key in sorted(by_key)]


def attribution_table(rows: list[dict[str, Any]], attribution: list[dict[str, Any]]) -> str:
    """The per-layer table, after the reference rates (unpatched, all layers) it reads
    against; '' without one-layer settings."""
    if not attribution:
        return ""
    references = [
        f"- {'unpatched' if r['setting'] == '0' else 'all layers patched'}, {r['task']} at "
        f"{r['length']}: {r['hits']}/{r['cases']} {r['interval']}"
        for r in rows
        if r["setting"] in ("0", "all")
    ]
    head = "\nPer layer (each alone patched, and every layer but it):\n\n"
    head += "\n".join(references) + ("\n\n" if references else "")
    return head + markdown_table(attribution, COLUMNS)
