"""How fast whole-model prefill could get if the patched layers' attention were free.

Times a Llama-2-7B-shaped model (random weights) unpatched, with HyperAttention in the
last k layers, and with the attention of those layers replaced by a no-op that only
allocates its output: the last is the ceiling any attention kernel can reach (Amdahl).
Prints a markdown table; the numbers committed next to this script came from it.

    python benchmarks/model_ceiling.py --lengths 32768 131072 --layers 28
"""

from __future__ import annotations

import argparse
import functools
from unittest import mock

import torch

from hf_hyper import HyperAttentionConfig
from hf_hyper.eval.bench_model import _prefill, build_model
from hf_hyper.eval.models import patched
from hf_hyper.eval.timing import environment, time_cuda


def _free_attention(query, key, value, **_):
    """Attention that costs nothing: the output buffer, unwritten."""
    return value.new_empty(*query.shape[:3], value.shape[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--shape", default="llama2-7b")
    p.add_argument("--lengths", type=int, nargs="+", default=[32768, 131072])
    p.add_argument("--layers", type=int, default=28)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    model, _ = build_model(
        argparse.Namespace(shape=args.shape, model=None, dtype="bf16", lengths=args.lengths)
    )
    config = HyperAttentionConfig(seed=0)
    print(environment())
    print(f"| length | unpatched ms | hyper ({args.layers}) ms | free attention ({args.layers}) ms"
          " | speedup | ceiling | share of ceiling |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for length in args.lengths:
        ids = torch.randint(0, model.config.vocab_size, (1, length), device="cuda")
        step = functools.partial(_prefill, model, ids, f"length {length}")
        ms = {}
        ms["unpatched"] = time_cuda(step, warmup=1, repeats=args.repeats).ms
        with patched(model, args.layers, config):
            ms["hyper"] = time_cuda(step, warmup=1, repeats=args.repeats).ms
            target = "hf_hyper.patches.attention_interface.hyper_attention"
            with mock.patch(target, _free_attention):
                ms["free"] = time_cuda(step, warmup=1, repeats=args.repeats).ms
        speedup, ceiling = ms["unpatched"] / ms["hyper"], ms["unpatched"] / ms["free"]
        cells = [length, *(f"{ms[key]:.0f}" for key in ("unpatched", "hyper", "free"))]
        cells += [f"{speedup:.2f}x", f"{ceiling:.2f}x", f"{speedup / ceiling:.0%}"]
        print("| " + " | ".join(map(str, cells)) + " |", flush=True)


if __name__ == "__main__":
    main()
