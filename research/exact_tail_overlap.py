"""Can the exact tail hide behind the rest of the call? One causal layer (bf16, planted
inputs, defaults, seed 0) timed four ways, alternated in rounds in one process:

- no tail: `exact_tail=0`;
- the library's tail (`exact_tail=W`): the call, then the tail's exact part (rectangle
  and triangle flash calls), on one stream;
- side stream: the tail's exact part on a second CUDA stream while the call runs, joined
  before its rows are written;
- one call: the call, then the tail as one flash call whose causal mask aligns lower
  right (key heads repeated where they are fewer).

The tail must read every key and value once, so on one stream it costs at least that
read; on a second stream it costs only what the call leaves of the memory bus and SMs.
Each variant's output is compared with the library's (max abs difference). Prints a
markdown table.

    python research/exact_tail_overlap.py --lengths 32768 131072 --head-dims 128 64 \\
        --kv-heads 32 8 --tail 64 --rounds 3
"""

from __future__ import annotations

import argparse
import itertools
import statistics

import torch

import hf_hyper
from hf_hyper import HyperAttentionConfig
from hf_hyper.attention.exact_tail import exact_tail_attention
from hf_hyper.eval.bench_attention import planted_inputs
from hf_hyper.eval.timing import environment, time_cuda


def side_stream_tail(q, k, v, tail: int, side: torch.cuda.Stream) -> torch.Tensor:
    """The call without a tail on this stream, the tail's exact part on `side`."""
    main = torch.cuda.current_stream()
    side.wait_stream(main)
    with torch.cuda.stream(side):
        out_tail, _ = exact_tail_attention(q[:, :, -tail:], k, v, q.shape[-1] ** -0.5)
    out = hf_hyper.hyper_attention(q, k, v, causal=True, config=HyperAttentionConfig(seed=0))
    main.wait_stream(side)
    out[:, :, -tail:] = out_tail
    return out


def one_call_tail(q, k, v, tail: int) -> torch.Tensor:
    """The call without a tail, then its tail as one lower-right causal flash call."""
    out = hf_hyper.hyper_attention(q, k, v, causal=True, config=HyperAttentionConfig(seed=0))
    g = q.shape[1] // k.shape[1]
    if g > 1:
        k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    # the flash kernel aligns a causal mask lower right when there are fewer queries
    out_tail = torch.ops.aten._scaled_dot_product_flash_attention(
        q[:, :, -tail:], k, v, 0.0, True, False, scale=q.shape[-1] ** -0.5
    )[0]
    out[:, :, -tail:] = out_tail
    return out


def study(n: int, dim: int, kv_heads: int, tail: int, rounds: int) -> list[dict]:
    q, k, v = planted_inputs(n, 32, kv_heads, dim, torch.bfloat16, True, 0)
    side = torch.cuda.Stream()
    calls = {
        "no tail": lambda: hf_hyper.hyper_attention(
            q, k, v, causal=True, config=HyperAttentionConfig(seed=0)
        ),
        "library tail": lambda: hf_hyper.hyper_attention(
            q, k, v, causal=True, config=HyperAttentionConfig(seed=0, exact_tail=tail)
        ),
        "side stream": lambda: side_stream_tail(q, k, v, tail, side),
        "one call": lambda: one_call_tail(q, k, v, tail),
    }
    with torch.no_grad():
        library = calls["library tail"]()
        diffs = {name: (fn() - library).abs().max().item() for name, fn in calls.items()}
        times: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(rounds):
            for name, fn in calls.items():
                times[name].append(time_cuda(fn, repeats=15 if n <= 32768 else 5).ms)
    base = statistics.median(times["no tail"])
    rows = []
    for name in calls:
        ms = statistics.median(times[name])
        rows.append(dict(n=n, dim=dim, kv_heads=kv_heads, variant=name, ms=ms,
                         vs_no_tail=ms / base - 1, max_diff=diffs[name]))  # fmt: skip
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[32768, 131072])
    p.add_argument("--head-dims", type=int, nargs="+", default=[128, 64])
    p.add_argument("--kv-heads", type=int, nargs="+", default=[32, 8])
    p.add_argument("--tail", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    print(environment())
    print("| n | d | kv heads | variant | ms | vs no tail | max abs diff vs library |")
    print("|---|---|---|---|---|---|---|")
    for n, dim, kv_heads in itertools.product(args.lengths, args.head_dims, args.kv_heads):
        for row in study(n, dim, kv_heads, args.tail, args.rounds):
            print(f"| {n} | {dim} | {kv_heads} | {row['variant']} | {row['ms']:.3f} | "
                  f"{100 * row['vs_no_tail']:+.2f}% | {row['max_diff']:.2e} |",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
