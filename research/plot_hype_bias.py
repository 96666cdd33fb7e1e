"""Bias vs distance of HyPE's ALiBi preset against ALiBi itself; writes a table and a plot.

    python research/plot_hype_bias.py --heads 8 --out results/hype/alibi_preset.png

The preset matches ALiBi within max_error wherever |ALiBi| <= fit_bias and falls faster
beyond; the plot shows both regions (log-scaled magnitudes), the table a few distances.
"""

from __future__ import annotations

import argparse
import math

import torch

from hf_hyper.hype import HyPEConfig, alibi_slopes, hype_bias


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--fit-bias", type=float, default=30.0)
    p.add_argument("--max-error", type=float, default=0.05)
    p.add_argument("--out", default="alibi_preset.png")
    args = p.parse_args()

    config = HyPEConfig.alibi(args.heads, fit_bias=args.fit_bias, max_error=args.max_error)
    mu, tau = config.per_head(args.heads)
    slopes = alibi_slopes(args.heads)
    distances = torch.unique(torch.logspace(0, math.log10(60000), 400).round()).double()
    zero = torch.zeros(1, dtype=torch.float64)
    bias = hype_bias(distances, zero, mu, tau)[:, :, 0]  # [h, n]: query at d, key at 0
    alibi = -torch.tensor(slopes, dtype=torch.float64)[:, None] * distances

    print(f"heads {args.heads}, mu {config.mu:.4g}, fit_bias {args.fit_bias}, "
          f"max_error {args.max_error}")  # fmt: skip
    print("\n| head | slope | max abs error where abs(ALiBi) <= fit_bias | HyPE / ALiBi at 60000 |")
    print("|---|---|---|---|")
    for h in range(args.heads):
        inside = alibi[h].abs() <= args.fit_bias
        err = (bias[h] - alibi[h]).abs()[inside].max().item()
        ratio = (bias[h, -1] / alibi[h, -1]).item()
        print(f"| {h + 1} | {slopes[h]:.4g} | {err:.4f} | {ratio:.3f} |")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for h in (0, args.heads // 2, args.heads - 1):
        line = ax.plot(distances, -alibi[h], linestyle="--", linewidth=1)[0]
        ax.plot(distances, -bias[h], color=line.get_color(), label=f"head {h + 1}")
    ax.axhline(args.fit_bias, color="grey", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("distance i - j (tokens)")
    ax.set_ylabel("penalty -bias (solid HyPE, dashed ALiBi)")
    ax.set_title(f"HyPE ALiBi preset, {args.heads} heads (grey: fit_bias)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
