"""Patch a Llama-shaped model (random weights: speed does not depend on them) and time a
long prefill, unpatched vs patched, in one run. Needs a CUDA GPU (a 7B-shaped prefill at
32k tokens); on a CPU, examples/long_sequence.py runs one attention call instead.

    python examples/patched_prefill.py --seq-len 32768 --patch-layers 28
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

import hf_hyper
from hf_hyper import HyperAttentionConfig
from hf_hyper.eval.common import show_defaults

LLAMA2_7B = dict(
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    vocab_size=32000,
)


def timed_prefill(model, ids: torch.Tensor, repeats: int) -> tuple[float, bool]:
    times, finite = [], True
    for i in range(repeats + 1):  # first call warms up
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad():
            logits = model(ids, logits_to_keep=1).logits
        torch.cuda.synchronize()
        finite &= bool(torch.isfinite(logits).all())
        if i:
            times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2], finite


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seq-len", type=int, default=32768, help="prompt tokens")
    p.add_argument(
        "--patch-layers", "--last-layers", dest="patch_layers", type=int, default=28,
        help="final layers patched (--last-layers: the old name)",
    )  # fmt: skip
    p.add_argument("--repeats", type=int, default=2, help="timed prefills after a warm-up")
    show_defaults(p)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print(
            "patched_prefill.py: needs a CUDA GPU (it times a 7B-shaped prefill); on a CPU "
            "run examples/long_sequence.py",
            file=sys.stderr,
        )
        sys.exit(2)
    print(f"building a Llama-2-7B-shaped model and timing {args.seq_len} tokens ...", flush=True)

    config = LlamaConfig(**LLAMA2_7B, max_position_embeddings=args.seq_len)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(
            config, torch_dtype=torch.bfloat16, attn_implementation="sdpa"
        ).eval()
    ids = torch.randint(0, config.vocab_size, (1, args.seq_len), device="cuda")
    base_ms, base_ok = timed_prefill(model, ids, args.repeats)
    report = hf_hyper.patch(
        model, last_layers=args.patch_layers, config=HyperAttentionConfig(seed=0)
    )
    torch.cuda.reset_peak_memory_stats()
    patched_ms, patched_ok = timed_prefill(model, ids, args.repeats)
    peak = torch.cuda.max_memory_allocated() / 2**30
    print(
        json.dumps(
            {
                "seq_len": args.seq_len,
                "patched_layers": list(report.layers),
                "unpatched_ms": round(base_ms, 1),
                "patched_ms": round(patched_ms, 1),
                "speedup": round(base_ms / patched_ms, 3),
                "patched_peak_gib": round(peak, 2),
                "finite": base_ok and patched_ok,
            }
        )
    )


if __name__ == "__main__":
    main()
