"""Plots made from the JSON a job wrote (so they can be redrawn where matplotlib is)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .common import JobError, require_matplotlib


def _load(path: Path) -> dict:
    if not path.is_file():
        raise JobError(f"no results file at {path}; run the benchmark first")
    return json.loads(path.read_text())


def _save(plt, fig, png_path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return Path(png_path)


def plot_attention(json_path: Path, png_path: Path) -> Path:
    """Time vs sequence length, log-log, one panel per (head_dim, mode, causal)."""
    data = _load(Path(json_path))
    rows = [r for r in data["rows"] if r.get("ms")]
    panels = sorted({(r["head_dim"], r["mode"], r["causal"]) for r in rows})
    plt = require_matplotlib()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (dim, mode, causal) in zip(axes[0], panels, strict=True):
        panel = [r for r in rows if (r["head_dim"], r["mode"], r["causal"]) == (dim, mode, causal)]
        for backend in dict.fromkeys(r["backend"] for r in panel):
            pts = sorted((r["n"], r["ms"]) for r in panel if r["backend"] == backend)
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=backend)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length")
        ax.set_ylabel("ms")
        ax.set_title(f"{'causal' if causal else 'non-causal'} {mode}, d={dim}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    env = data.get("environment", {})
    fig.suptitle(f"{env.get('device', '')}  torch {env.get('torch', '')}  {data.get('date', '')}")
    return _save(plt, fig, png_path)


def plot_ppl(json_path: Path, png_path: Path) -> Path:
    """Perplexity vs number of patched layers, one line per window length."""
    data = _load(Path(json_path))
    plt = require_matplotlib()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for length in sorted({r["length"] for r in data["rows"]}):
        rows = [r for r in data["rows"] if r["length"] == length]
        # the final k layers make the line; a plan or chosen layers (only:I, except:I)
        # are points of their own, labelled, at their count of patched layers
        last_k = [r for r in rows if _counts_from_the_last(r["patched_layers"])]
        pts = sorted((r["layer_count"], r["ppl"]) for r in last_k)
        if pts:
            (line,) = ax.plot(*zip(*pts, strict=True), marker="o", label=f"{length} tokens")
        for r in rows:
            if not _counts_from_the_last(r["patched_layers"]):
                ax.scatter(r["layer_count"], r["ppl"], marker="x",
                           color=line.get_color() if pts else None)  # fmt: skip
                ax.annotate(r["patched_layers"], (r["layer_count"], r["ppl"]), fontsize=6)
    ax.set_xlabel(f"patched layers (of {data.get('num_layers', '?')}, counted from the last)")
    ax.set_ylabel("perplexity")
    ax.set_title(str(data.get("model", "")), fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(plt, fig, png_path)


def _counts_from_the_last(setting: str) -> bool:
    return setting == "all" or setting.isdigit()


def plot_model(json_path: Path, png_path: Path) -> Path:
    """Prefill time vs length (log-log), one line per patch setting."""
    data = _load(Path(json_path))
    rows = [r for r in data["rows"] if r.get("ms")]
    plt = require_matplotlib()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for label in dict.fromkeys(r["patched_layers"] for r in rows):
        pts = sorted((r["length"], r["ms"]) for r in rows if r["patched_layers"] == label)
        ax.plot(*zip(*pts, strict=True), marker="o", label=f"{label} patched")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("prompt length (tokens)")
    ax.set_ylabel("prefill ms")
    env = data.get("environment", {})
    ax.set_title(f"{data.get('model', '')}  {env.get('device', '')}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _save(plt, fig, png_path)


def plot_longbench(json_path: Path, png_path: Path) -> Path:
    """Score vs number of patched final layers, one line per task category (the
    HyperAttention paper's LongBench figure)."""
    data = _load(Path(json_path))
    points = [
        a for a in data["averages"] if a.get("layer_count") is not None and a["score"] is not None
    ]
    if not points:
        raise JobError("no patch settings with a known layer count to plot")
    plt = require_matplotlib()
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for group in dict.fromkeys(a["group"] for a in points):
        pts = sorted((a["layer_count"], a["score"]) for a in points if a["group"] == group)
        bold = group == "All"
        ax.plot(*zip(*pts, strict=True), marker="o", label=group,
                linewidth=2.5 if bold else 1.2, color="black" if bold else None)  # fmt: skip
    ax.set_xlabel(f"patched layers (of {data.get('num_layers', '?')}, counted from the last)")
    ax.set_ylabel("LongBench score")
    ax.set_title(str(data.get("model", "")), fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, png_path)


def plot_diagnose(json_path: Path, png_path: Path) -> Path:
    """Per layer x head heat maps: output error, log10 alpha, log10 kappa (p99/p1)."""
    data = _load(Path(json_path))
    heads = data["heads"]
    layers = sorted({h["layer"] for h in heads})
    n_heads = max(h["head"] for h in heads) + 1
    panels = [
        ("error", "error ‖O−O*‖/‖V‖", lambda x: x),
        ("alpha", "log10 α", math.log10),
        ("log10_kappa_99", "log10 κ (p99/p1 rows)", lambda x: x),
    ]
    height = 1.5 + 0.35 * len(layers)
    plt = require_matplotlib()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.0 * len(panels), height))
    for ax, (field, title, f) in zip(axes, panels, strict=True):
        grid = [[math.nan] * n_heads for _ in layers]
        for h in heads:
            value = h[field]
            if value is not None and (value > 0 or f is not math.log10):
                grid[layers.index(h["layer"])][h["head"]] = f(value)
        image = ax.imshow(grid, aspect="auto", cmap="viridis", origin="lower")
        fig.colorbar(image, ax=ax)
        ax.set_yticks(range(len(layers)), [str(i) for i in layers])
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"{data.get('model', '')} at {data.get('length')} tokens", fontsize=9)
    return _save(plt, fig, png_path)


def _heat(ax, grid, lengths, depth_values, title, cmap, vmin, vmax):
    image = ax.imshow(grid, origin="upper", aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
    ax.set_yticks(range(len(depth_values)), [f"{d:.0%}" for d in depth_values])
    ax.set_xlabel("prompt tokens")
    ax.set_ylabel("needle depth")
    ax.set_title(title, fontsize=9)
    return image


def plot_retrieval(json_path: Path, png_path: Path) -> Path:
    """Per task: a depth x length accuracy map per setting, then each patched setting
    minus the unpatched one (the usual needle-in-a-haystack plots); with a per-layer
    attribution, below them per task and length the hit rate of each layer alone patched
    and of all layers but it, with 95% intervals."""
    data = _load(Path(json_path))
    lengths, depth_values = data["lengths"], data["depths"]
    attribution = data.get("attribution") or []
    one_layer = {f"{kind}:{r['layer']}" for r in attribution for kind in ("only", "except")}
    settings = [s for s in dict.fromkeys(r["setting"] for r in data["rows"]) if s not in one_layer]
    base = "0" if "0" in settings else None
    diffs = [s for s in settings if base is not None and s != base]
    cells = {(c["setting"], c["task"], c["length"], c["depth"]): c["accuracy"]
             for c in data["cells"]}  # fmt: skip
    panels = sorted({(r["task"], r["length"]) for r in attribution})

    def grid(setting: str, task: str) -> list[list[float]]:
        return [[cells.get((setting, task, n, d), math.nan) for n in lengths]
                for d in depth_values]  # fmt: skip

    plt = require_matplotlib()
    columns = max(len(settings) + len(diffs), 1)
    tasks = data["tasks"]
    fig = plt.figure(figsize=(max(3.2 * columns, 8.0), 2.8 * len(tasks) + 3.2 * len(panels)))
    layout = fig.add_gridspec(len(tasks) + len(panels), columns)
    for row, task in enumerate(tasks):
        for col, setting in enumerate(settings):
            ax = fig.add_subplot(layout[row, col])
            image = _heat(ax, grid(setting, task), lengths, depth_values,
                          f"{task}, patched {setting}", "RdYlGn", 0, 1)  # fmt: skip
            if col == len(settings) - 1:
                fig.colorbar(image, ax=ax, label="accuracy")
        for col, setting in enumerate(diffs, start=len(settings)):
            ax = fig.add_subplot(layout[row, col])
            patched, exact = grid(setting, task), grid(base, task)
            delta = [[p - e for p, e in zip(pr, er, strict=True)]
                     for pr, er in zip(patched, exact, strict=True)]  # fmt: skip
            image = _heat(ax, delta, lengths, depth_values,
                          f"{task}, patched {setting} - exact", "RdBu", -1, 1)  # fmt: skip
            fig.colorbar(image, ax=ax, label="accuracy difference")
    references = {(r["setting"], r["task"], r["length"]): r["accuracy"] for r in data["rows"]}
    for row, (task, length) in enumerate(panels, start=len(tasks)):
        ax = fig.add_subplot(layout[row, :])
        chosen = [r for r in attribution if (r["task"], r["length"]) == (task, length)]
        _attribution_panel(ax, chosen, references, task, length)
    fig.suptitle(f"{data.get('model', '')}  {data.get('date', '')}", fontsize=9)
    return _save(plt, fig, png_path)


def _attribution_panel(ax, rows: list[dict], references: dict, task: str, length: int) -> None:
    series = (("alone", "alone patched", "o", -0.12), ("all_but", "all layers but this", "s", 0.12))
    for prefix, label, marker, shift in series:
        points = [r for r in rows if f"{prefix}_hits" in r]
        if not points:
            continue
        layers = [r["layer"] + shift for r in points]  # side by side, not on top
        rates = [r[f"{prefix}_hits"] / r[f"{prefix}_cases"] for r in points]
        below = [rate - r[f"{prefix}_ci"][0] for rate, r in zip(rates, points, strict=True)]
        above = [r[f"{prefix}_ci"][1] - rate for rate, r in zip(rates, points, strict=True)]
        ax.errorbar(layers, rates, yerr=[below, above], marker=marker, linestyle="",
                    capsize=2, label=label)  # fmt: skip
    for setting, label, style in (("0", "unpatched", "-"), ("all", "all patched", "--")):
        rate = references.get((setting, task, length))
        if rate is not None:
            ax.axhline(rate, color="grey", linestyle=style, linewidth=1, label=label)
    ax.set_xticks(sorted({r["layer"] for r in rows}))
    ax.set_xlabel("layer")
    ax.set_ylabel("hit rate (95% interval)")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(f"{task} at {length} tokens: which layers lose the needle")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=4)
