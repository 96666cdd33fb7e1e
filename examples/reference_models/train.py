"""Train a small Llama-architecture causal LM on the corpus, with RoPE, HyPE's ALiBi
preset, or learnable HyPE as its position encoding (transformers + accelerate).

    python examples/reference_models/train.py --corpus corpus --tokenizer tokenizer \\
        --position rope --context 8192 --minutes 20 --out runs/rope-8k
    accelerate launch examples/reference_models/train.py ...   # several GPUs

Random windows of `--context` tokens from the training split (documents joined with EOS);
AdamW with warm-up and cosine decay; bf16 autocast on GPUs. Every `--eval-every` steps the
held-out loss on fixed windows is logged (train_log.jsonl) and the state is saved, so
`--resume` continues a stopped run. The end writes the model (safetensors, shards of at
most 15 MB, bf16 by default), the tokenizer and summary.json (tokens seen, GPU seconds,
losses). Losses are mean next-token NLL in nats.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import time
from pathlib import Path

import numpy as np
import torch


def token_stream(corpus: Path, split: str, tokenizer, cache: Path) -> np.ndarray:
    """All documents of a split joined with EOS, as uint16 token ids (cached)."""
    if cache.is_file():
        return np.load(cache)
    with gzip.open(corpus / f"{split}.jsonl.gz", "rt", encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    ids: list[int] = []
    for start in range(0, len(texts), 256):
        for row in tokenizer(texts[start : start + 256])["input_ids"]:
            ids += row + [tokenizer.eos_token_id]
    array = np.asarray(ids, dtype=np.uint16)
    np.save(cache, array)
    return array


def build_model(args, vocab_size: int, eos_id: int):
    from transformers import AutoModelForCausalLM, LlamaConfig

    import hf_hyper
    from hf_hyper import HyPEConfig

    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=args.hidden, intermediate_size=args.hidden * 8 // 3,
        num_hidden_layers=args.layers, num_attention_heads=args.heads,
        num_key_value_heads=args.heads, max_position_embeddings=args.context * 16,
        tie_word_embeddings=True, bos_token_id=eos_id, eos_token_id=eos_id,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    if args.position != "rope":
        hype = HyPEConfig.alibi(args.heads, learnable=args.position == "hype", chunk_size=None)
        hf_hyper.apply_hype(model, hype, replace_rope=True)
    return model


def windows(stream: np.ndarray, n: int, length: int, rng: np.random.Generator) -> torch.Tensor:
    starts = rng.integers(0, len(stream) - length - 1, size=n)
    return torch.from_numpy(np.stack([stream[s : s + length + 1] for s in starts]).astype(np.int64))


def next_token_loss(model, rows: torch.Tensor) -> torch.Tensor:
    """Mean NLL of rows[:, 1:] given rows[:, :-1] (the window carries one extra token, so
    the labels are passed shifted and the model's own label shift is not used)."""
    logits = model(rows[:, :-1]).logits.float()
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), rows[:, 1:].reshape(-1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--corpus", default="corpus")
    p.add_argument("--tokenizer", default="tokenizer")
    p.add_argument("--out", required=True)
    p.add_argument("--position", choices=["rope", "alibi", "hype"], default="rope")
    p.add_argument("--context", type=int, default=8192)
    p.add_argument("--hidden", type=int, default=384)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--batch", type=int, default=8, help="windows per step (all processes)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--steps", type=int, default=2000, help="schedule length")
    p.add_argument("--minutes", type=float, default=None, help="stop (and save) after this")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-windows", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--save-dtype", choices=["fp32", "bf16", "fp16"], default="bf16")
    args = p.parse_args()

    from accelerate import Accelerator
    from transformers import AutoTokenizer

    accelerator = Accelerator(mixed_precision="bf16" if torch.cuda.is_available() else "no")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    corpus = Path(args.corpus)
    with accelerator.main_process_first():
        train = token_stream(corpus, "train", tokenizer, out / "train_tokens.npy")
        held = token_stream(corpus, "heldout", tokenizer, out / "heldout_tokens.npy")
    torch.manual_seed(args.seed)
    model = build_model(args, len(tokenizer), tokenizer.eos_token_id)
    params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.95),
    )  # fmt: skip
    warmup = max(1, args.steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, args.steps - warmup))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    state = {"step": 0, "tokens": 0, "seconds": 0.0}
    if args.resume and (out / "state").is_dir():
        accelerator.load_state(str(out / "state"))
        state = json.loads((out / "state" / "progress.json").read_text())
    eval_batch = windows(held, args.eval_windows, args.context, np.random.default_rng(1234))
    per_process = max(1, args.batch // accelerator.num_processes)
    rng = np.random.default_rng(args.seed * 1000 + accelerator.process_index + state["step"])
    log = (out / "train_log.jsonl").open("a")
    started = time.perf_counter() - state["seconds"]

    def held_out_loss() -> float:
        model.eval()
        losses = []
        with torch.no_grad():
            for row in eval_batch.split(2):
                row = row.to(accelerator.device)
                losses.append(next_token_loss(model, row))
        model.train()
        return float(torch.stack(losses).mean())

    model.train()
    while state["step"] < args.steps:
        batch = windows(train, per_process, args.context, rng).to(accelerator.device)
        loss = next_token_loss(model, batch)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state["step"] += 1
        state["tokens"] += args.batch * args.context
        state["seconds"] = time.perf_counter() - started
        done = args.minutes is not None and state["seconds"] > 60 * args.minutes
        if state["step"] % args.eval_every == 0 or done or state["step"] == args.steps:
            record = {**state, "train_loss": float(loss), "heldout_loss": held_out_loss(),
                      "lr": scheduler.get_last_lr()[0]}  # fmt: skip
            if accelerator.is_main_process:
                log.write(json.dumps(record) + "\n")
                log.flush()
                print(json.dumps(record), flush=True)
            accelerator.save_state(str(out / "state"))
            if accelerator.is_main_process:
                (out / "state" / "progress.json").write_text(json.dumps(state))
        if done:
            break
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final_loss = held_out_loss()  # before the cast below changes the weights in place
        dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
        final = accelerator.unwrap_model(model).to(dtypes[args.save_dtype])
        final.save_pretrained(out / "model", max_shard_size="15MB")
        tokenizer.save_pretrained(out / "model")
        summary = {**state, "parameters": params, "position": args.position,
                   "context": args.context, "processes": accelerator.num_processes,
                   "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                   "torch": torch.__version__, "heldout_loss": final_loss,
                   "train_tokens": int(len(train)), "heldout_tokens": int(len(held))}  # fmt: skip
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
