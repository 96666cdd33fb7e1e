"""What the exact tail (config.exact_tail) costs one causal layer: the defaults with tails
of several lengths, alternated in rounds in one process, with cuDNN's exact attention
(SDPA) as the yardstick, and the tail's own exact part timed alone.

    python benchmarks/exact_tail_cost.py --lengths 32768 131072 --tails 0 16 32 64 128 256

Prints a markdown table (median over rounds of each round's median) and writes the rows
as JSON to --json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics

import torch

import hf_hyper
from hf_hyper import HyperAttentionConfig
from hf_hyper.attention.exact_tail import exact_tail_attention
from hf_hyper.eval.bench_attention import planted_inputs
from hf_hyper.eval.timing import environment, time_cuda


def measure(q, k, v, tails: list[int], rounds: int, repeats: int) -> dict[str, dict]:
    """Per-round medians (ms): each tail's whole call, each tail's exact part alone, and
    cuDNN's exact attention, alternated so drift hits every setting alike."""
    scale = q.shape[-1] ** -0.5
    n = q.shape[2]
    calls = {"sdpa": lambda: torch.nn.functional.scaled_dot_product_attention(
        q, k, v, is_causal=True)}  # fmt: skip
    for tail in tails:
        config = HyperAttentionConfig(seed=0, exact_tail=tail)
        calls[f"call{tail}"] = lambda c=config: hf_hyper.hyper_attention(
            q, k, v, causal=True, config=c
        )
        if tail:
            rows = q[:, :, n - tail :]
            calls[f"part{tail}"] = lambda r=rows: exact_tail_attention(r, k, v, scale)
    times: dict[str, list[float]] = {name: [] for name in calls}
    with torch.no_grad():
        for _ in range(rounds):
            for name, fn in calls.items():
                times[name].append(time_cuda(fn, repeats=repeats).ms)
    return {name: statistics.median(ms) for name, ms in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[32768, 131072])
    p.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--tails", type=int, nargs="+", default=[0, 16, 32, 64, 128, 256])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", default=None, help="write the rows here")
    args = p.parse_args()
    rows = []
    print("| n | d | exact_tail | ms | vs first | tail part alone ms | cuDNN ms | speedup |")
    print("|---|---|---|---|---|---|---|---|")
    for n, dim in itertools.product(args.lengths, args.head_dims):
        q, k, v = planted_inputs(n, args.heads, args.heads, dim, torch.bfloat16, True, 0)
        ms = measure(q, k, v, args.tails, args.rounds, 15 if n <= 32768 else 5)
        base = ms[f"call{args.tails[0]}"]
        for tail in args.tails:
            row = dict(n=n, dim=dim, exact_tail=tail, ms=ms[f"call{tail}"],
                       tail_alone_ms=ms.get(f"part{tail}", 0.0), sdpa_ms=ms["sdpa"])  # fmt: skip
            row |= dict(vs_first=row["ms"] / base - 1, speedup=row["sdpa_ms"] / row["ms"])
            rows.append(row)
            print(f"| {n} | {dim} | {tail} | {row['ms']:.3f} | {100 * row['vs_first']:+.2f}% | "
                  f"{row['tail_alone_ms']:.3f} | {row['sdpa_ms']:.3f} | {row['speedup']:.2f}x |",
                  flush=True)  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": environment(), "args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
