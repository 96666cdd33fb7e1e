"""Held-out loss of trained reference models at several lengths, with exact attention and
with HyperAttention in every layer: does a model trained at L still predict well at 2L,
4L, 8L, and does HyperAttention keep what exact attention gives?

    python examples/reference_models/extrapolation.py runs/rope runs/alibi runs/hype \\
        --lengths 8192 16384 32768 65536 --attention exact hyper --out extrapolation.json

Each run folder holds `model/` (from train.py) and `heldout_tokens.npy`. Windows start at
evenly spaced offsets of the held-out token stream (documents joined with EOS); the loss
is mean next-token NLL in nats, in float32. HyperAttention runs with its default settings
(seed 0); in HyPE models it carries the HyPE bias (`hf_hyper.patch` on a HyPE model).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import hf_hyper


def load(run: Path):
    from transformers import AutoModelForCausalLM

    config = json.loads((run / "model" / "config.json").read_text())
    if config.get("hf_hyper_hype"):
        return hf_hyper.load_hype_model(run / "model")
    return AutoModelForCausalLM.from_pretrained(run / "model")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("runs", nargs="+")
    p.add_argument("--lengths", type=int, nargs="+", default=[8192, 16384, 32768, 65536])
    p.add_argument("--windows", type=int, default=8)
    p.add_argument("--attention", nargs="+", choices=["exact", "hyper"], default=["exact"])
    p.add_argument("--out", default="extrapolation.json")
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results: dict[str, dict[str, dict[int, float]]] = {}
    for run in map(Path, args.runs):
        held = np.load(run / "heldout_tokens.npy")
        model = load(run).to(device, torch.float32).eval()
        results[run.name] = {}
        for attention in args.attention:
            if attention == "hyper":
                hf_hyper.patch(model, last_layers=model.config.num_hidden_layers,
                               config=hf_hyper.HyperAttentionConfig(seed=0))  # fmt: skip
            results[run.name][attention] = losses = {}
            for n in args.lengths:
                losses[n] = heldout_loss(model, held, n, args.windows, device)
                print(f"{run.name} {attention} {n}: {losses[n]:.4f}", flush=True)
            if attention == "hyper":
                hf_hyper.unpatch(model)
        del model
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    columns = [(r, a) for r in results for a in args.attention]
    print("\n| evaluated at | " + " | ".join(f"{r} {a}" for r, a in columns) + " |")
    print("|---|" + "---|" * len(columns))
    for n in args.lengths:
        print(f"| {n} | " + " | ".join(f"{results[r][a][n]:.3f}" for r, a in columns) + " |")


def heldout_loss(model, held: np.ndarray, n: int, windows: int, device: str) -> float:
    """Mean next-token NLL over `windows` windows of n tokens at evenly spaced offsets."""
    starts = np.linspace(0, len(held) - n - 2, windows).astype(int)
    losses = []
    with torch.no_grad():
        for s in starts:
            x = torch.from_numpy(held[s : s + n + 1].astype(np.int64)).to(device)
            logits = model(x[None, :-1]).logits.float()[0]
            losses.append(torch.nn.functional.cross_entropy(logits, x[1:]).item())
    return float(np.mean(losses))


if __name__ == "__main__":
    main()
