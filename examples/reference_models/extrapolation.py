"""Held-out loss of trained reference models at several lengths (exact attention): does a
model trained at L still predict well at 2L, 4L, 8L?

    python examples/reference_models/extrapolation.py runs/rope runs/alibi runs/hype \\
        --lengths 8192 16384 32768 65536 --out extrapolation.json

Each run folder holds `model/` (from train.py) and `heldout_tokens.npy`. Windows start at
evenly spaced offsets of the held-out token stream (documents joined with EOS); the loss
is mean next-token NLL in nats, in float32.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def load(run: Path):
    from transformers import AutoModelForCausalLM

    import hf_hyper

    config = json.loads((run / "model" / "config.json").read_text())
    if config.get("hf_hyper_hype"):
        return hf_hyper.load_hype_model(run / "model")
    return AutoModelForCausalLM.from_pretrained(run / "model")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("runs", nargs="+")
    p.add_argument("--lengths", type=int, nargs="+", default=[8192, 16384, 32768, 65536])
    p.add_argument("--windows", type=int, default=8)
    p.add_argument("--out", default="extrapolation.json")
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results = {}
    for run in map(Path, args.runs):
        held = np.load(run / "heldout_tokens.npy")
        model = load(run).to(device, torch.float32).eval()
        results[run.name] = {}
        for n in args.lengths:
            starts = np.linspace(0, len(held) - n - 2, args.windows).astype(int)
            losses = []
            with torch.no_grad():
                for s in starts:
                    x = torch.from_numpy(held[s : s + n + 1].astype(np.int64)).to(device)
                    logits = model(x[None, :-1]).logits.float()[0]
                    losses.append(torch.nn.functional.cross_entropy(logits, x[1:]).item())
            results[run.name][n] = float(np.mean(losses))
            print(f"{run.name} {n}: {results[run.name][n]:.4f}", flush=True)
        del model
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    names = list(results)
    print("\n| trained at 8k, evaluated at | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for n in args.lengths:
        print(f"| {n} | " + " | ".join(f"{results[r][n]:.3f}" for r in names) + " |")


if __name__ == "__main__":
    main()
