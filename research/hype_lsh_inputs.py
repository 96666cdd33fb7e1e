"""HyPE + HyperAttention: should the LSH hash the original Q, K or the HyPE-augmented ones?

    python research/hype_lsh_inputs.py --lengths 4096 8192 --seeds 3

Error of HyperAttention-with-HyPE against exact HyPE attention, ||O - O*||_F / ||V||_F,
for two kinds of causal inputs, with the ALiBi preset:
- content: each query is a scaled copy of one earlier key plus noise (the large entries
  are where the content says; HyPE only tilts them);
- position: iid Q, K of small norm, so the bias decides where the mass is (near the
  diagonal), as in a model that attends mostly to recent tokens.
Prints a markdown table; accuracy only (no timing), so it runs on the CPU too.
"""

from __future__ import annotations

import argparse
import math

import torch

from hf_hyper import HyperAttentionConfig
from hf_hyper.hype import HyPEConfig, hype_attention


def inputs(kind: str, n: int, heads: int, dim: int, seed: int, device: str):
    g = torch.Generator(device=device).manual_seed(seed)
    k = torch.randn(1, heads, n, dim, generator=g, device=device)
    v = torch.randn(1, heads, n, dim, generator=g, device=device)
    if kind == "position":
        q = 0.3 * torch.randn(1, heads, n, dim, generator=g, device=device)
        return q, 0.3 * k, v
    limit = torch.arange(1, n + 1, device=device)
    partner = (torch.rand(1, heads, n, generator=g, device=device) * limit).long()
    q = torch.gather(k, 2, partner.clamp_max(n - 1)[..., None].expand(-1, -1, -1, dim))
    q = q * (8.0 / math.sqrt(dim)) + 0.5 * torch.randn(q.shape, generator=g, device=device)
    return q, k, v


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192])
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--sample-size", type=int, default=64)
    p.add_argument("--min-seq-len", type=int, default=256)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()

    hype = HyPEConfig.alibi(args.heads, chunk_size=None)
    mu, tau = (t.float() for t in hype.per_head(args.heads))
    print(f"device {args.device}, torch {torch.__version__}, heads {args.heads}, "
          f"head_dim {args.head_dim}, ALiBi preset mu={hype.mu:.3g}")  # fmt: skip
    print("\n| inputs | n | hash original Q, K | hash augmented Q, K |")
    print("|---|---|---|---|")
    for kind in ("content", "position"):
        for n in args.lengths:
            errors = {False: [], True: []}
            for seed in range(args.seeds):
                q, k, v = inputs(kind, n, args.heads, args.head_dim, seed, args.device)
                exact = hype_attention(q.double(), k.double(), v.double(), causal=True,
                                       mu=mu, tau=tau, chunk_size=None)  # fmt: skip
                for augmented in (False, True):
                    config = HyperAttentionConfig(
                        block_size=args.block_size, sample_size=args.sample_size,
                        min_seq_len=args.min_seq_len, seed=seed, backend="torch",
                    )  # fmt: skip
                    out = hype_attention(q, k, v, causal=True, mu=mu, tau=tau, chunk_size=None,
                                         kernel="hyper", hyper_config=config,
                                         hash_augmented=augmented)  # fmt: skip
                    err = (out.double() - exact).norm() / v.double().norm()
                    errors[augmented].append(err.item())
            cells = [f"{sum(e) / len(e):.4f}" for e in (errors[False], errors[True])]
            print(f"| {kind} | {n} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
