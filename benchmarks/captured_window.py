"""One window of held-out text through a real checkpoint, for the benchmarks that study
its captured attention inputs (`large_entry_oracle.py`, `bucket_finders.py`)."""

from __future__ import annotations

import argparse

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def add_window_arguments(p: argparse.ArgumentParser, length: int) -> None:
    p.add_argument("--model", required=True)
    p.add_argument("--gguf-file", default=None)
    p.add_argument("--text", required=True, help="a UTF-8 text file")
    p.add_argument("--length", type=int, default=length)
    p.add_argument("--layers", type=int, nargs="+", default=None, help="default: all patchable")


def model_and_window(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.Tensor]:
    """The model in float32 and the text's first args.length tokens as the tokenizer
    makes them (with whatever prefix it adds, as the jobs' windows have)."""
    tokenizer = AutoTokenizer.from_pretrained(args.model, gguf_file=args.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(
        args.model, gguf_file=args.gguf_file, dtype=torch.float32
    ).eval()
    with open(args.text, encoding="utf-8") as f:
        text = f.read(args.length * 12)  # a dozen characters per token is plenty
    return model, tokenizer(text, return_tensors="pt").input_ids[:, : args.length]
