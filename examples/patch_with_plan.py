"""Patch a model with a per-layer plan and see what it changes: one long window of text,
unpatched and patched (mean next-token loss), then unpatch and check the model is bit for
bit what it was.

    python examples/patch_with_plan.py          # the bundled reference model, a plan made here
    python examples/patch_with_plan.py --model <dir> --gguf-file SmolLM2-135M-Instruct.Q4_1.gguf \\
        --plan results/plans/smollm2_8k.plan.json --text python311_docs.txt

Without --plan it makes one in code (the later half of the layers fast, the last one
with an exact tail) and, with --save, writes it as `hf-hyper plan` would. `hf-hyper plan`
chooses the layers by measurement instead; this only shows how a plan is used.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_hyper
from hf_hyper import HyperAttentionConfig, Plan
from hf_hyper.eval.common import show_defaults
from hf_hyper.eval.models import REFERENCE_MODEL_DIR, num_layers
from hf_hyper.eval.texts import TextSource, load_documents
from hf_hyper.plan import PlanError


def example_plan(model, seed: int) -> Plan:
    """The later half of the layers with the default config, the last with an exact tail
    of 64 queries (where a prompt's question reads the context); seeded, so two runs
    draw the same hyperplanes and samples and print the same loss."""
    n = num_layers(model)
    layers = {i: HyperAttentionConfig(seed=seed) for i in range(n // 2, n - 1)}
    layers[n - 1] = HyperAttentionConfig(exact_tail=64, seed=seed)
    return Plan(layers, model_type=model.config.model_type, num_layers=n)


def window_loss(model, ids: torch.Tensor) -> tuple[float, torch.Tensor]:
    """(mean next-token loss over the window, the last position's logits)."""
    with torch.no_grad():
        logits = model(ids).logits.float()
    loss = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:])
    return loss.item(), logits[0, -1]


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default=str(REFERENCE_MODEL_DIR), help="a path or hub name")
    p.add_argument("--gguf-file", help="a GGUF checkpoint inside --model (needs gguf)")
    p.add_argument("--plan", help="a plan file (hf-hyper plan, Plan.save); default: made here")
    p.add_argument("--save", help="write the plan made here to this JSON file")
    p.add_argument("--text", help="a UTF-8 text file (default: the bundled text)")
    p.add_argument("--seq-len", type=int, default=8192, help="tokens in the window")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0, help="seed of the plan made here")
    show_defaults(p)
    args = p.parse_args()

    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    model = AutoModelForCausalLM.from_pretrained(
        args.model, gguf_file=args.gguf_file, dtype=dtype
    ).to(args.device)
    tokenizer = AutoTokenizer.from_pretrained(args.model, gguf_file=args.gguf_file)
    if args.text:
        text = Path(args.text).read_text(encoding="utf-8")
    else:
        text = "\n\n".join(doc.text for doc in load_documents(TextSource()))
    # a window needs only the text's start: 16 characters a token is more than any
    # tokenizer needs, and spares tokenizing a whole book
    text = text[: 16 * args.seq_len]
    ids = tokenizer(text, return_tensors="pt").input_ids[:, : args.seq_len].to(args.device)
    if ids.shape[1] < args.seq_len:
        print(f"patch_with_plan.py: the text has {ids.shape[1]} tokens, fewer than "
              f"--seq-len {args.seq_len}: give a longer --text or a smaller --seq-len",
              file=sys.stderr)  # fmt: skip
        return 2

    try:
        plan = Plan.load(args.plan) if args.plan else example_plan(model, args.seed)
        plan.check_model(model.config.model_type, num_layers(model), args.plan or "the plan")
    except PlanError as err:
        print(f"patch_with_plan.py: {err}", file=sys.stderr)
        return 2
    exact_loss, exact_logits = window_loss(model, ids)
    print(hf_hyper.patch(model, plan=plan))
    patched_loss, patched_logits = window_loss(model, ids)
    hf_hyper.unpatch(model)
    _, again_logits = window_loss(model, ids)
    if args.save and not args.plan:
        plan.save(args.save)
    row = {
        "tokens": args.seq_len,
        "layers_patched": sorted(plan.layers),
        "loss_exact": round(exact_loss, 5),
        "loss_patched": round(patched_loss, 5),
        # the rounded losses can agree where the patched layers changed the output
        "patched_logits_differ": not torch.equal(exact_logits, patched_logits),
        "perplexity_change": f"{100 * (math.exp(patched_loss - exact_loss) - 1):+.2f}%",
        "unpatched_bit_identical": bool(torch.equal(exact_logits, again_logits)),
    }
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
