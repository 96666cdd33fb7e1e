"""Same-process A/B of HyperAttention's exact parts (attention sinks, the local window)
against the paper's algorithm and cuDNN: one layer forward, bf16, 32 heads (CUDA only).

Settings are timed in interleaved rounds in one process, so the differences between them
are not process-to-process noise; each cell is the best of the rounds' medians.

    python research/exact_parts_ab.py --lengths 32768 131072 --head-dims 64 128 \
        --settings 0:0 4:0 4:256 > exact_parts.md
"""

from __future__ import annotations

import argparse

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from hf_hyper import HyperAttentionConfig, hyper_attention
from hf_hyper.eval.timing import environment, time_cuda


def setting(text: str) -> tuple[int, int]:
    """'S:W' -> (sink_tokens, local_window)."""
    sinks, window = text.split(":")
    return int(sinks), int(window)


def best_times(q, k, v, causal: bool, settings: list, rounds: int) -> dict:
    """Best-of-rounds median ms of cuDNN and of HyperAttention per (sinks, window)."""

    def cudnn():
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)

    def hyper(sinks: int, window: int):
        config = HyperAttentionConfig(
            sink_tokens=sinks, local_window=window, seed=0, backend="triton"
        )
        return lambda: hyper_attention(q, k, v, causal=causal, config=config)

    best = {key: float("inf") for key in ["cudnn", *settings]}
    for _ in range(rounds):
        best["cudnn"] = min(best["cudnn"], time_cuda(cudnn, repeats=7).ms)
        for sw in settings:
            best[sw] = min(best[sw], time_cuda(hyper(*sw), repeats=7).ms)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[32768, 131072])
    p.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    p.add_argument("--settings", type=setting, nargs="+", default=[(0, 0), (4, 0), (4, 256)],
                   help="sink_tokens:local_window pairs; the first is the baseline")  # fmt: skip
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("exact_parts_ab.py: needs a CUDA device (timings are GPU timings)")
    env = environment()
    print(f"device {env.get('device')}, torch {env['torch']}, triton {env.get('triton')}\n")
    names = [f"s{s} w{w}" for s, w in args.settings]
    head = "| n | d | causal | cuDNN ms | " + " | ".join(f"{n} ms (x cuDNN)" for n in names)
    print(head + " | " + " | ".join(f"{n} cost" for n in names[1:]) + " |")
    print("|" + "---|" * (4 + 2 * len(names) - 1))
    gen = torch.Generator(device="cuda").manual_seed(0)
    for n in args.lengths:
        for dim in args.head_dims:
            shape = (1, args.heads, n, dim)
            qkv = [torch.randn(shape, device="cuda", generator=gen, dtype=torch.bfloat16)
                   for _ in range(3)]  # fmt: skip
            for causal in (True, False):
                # the window only changes causal calls: non-causal rows show "-" for it
                runs = [sw for sw in args.settings if causal or sw[1] == 0]
                best = best_times(*qkv, causal, runs, args.rounds)
                base = best[args.settings[0]]
                cells, costs = [], []
                for sw in args.settings:
                    ms = best.get(sw)
                    cells.append("-" if ms is None else f"{ms:.2f} ({best['cudnn'] / ms:.1f}x)")
                    if sw != args.settings[0]:
                        costs.append("-" if ms is None else f"{100 * (ms / base - 1):+.1f}%")
                row = [str(n), str(dim), str(causal), f"{best['cudnn']:.2f}", *cells, *costs]
                print("| " + " | ".join(row) + " |", flush=True)
            del qkv
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
