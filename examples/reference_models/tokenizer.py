"""A byte-level BPE tokenizer trained on the corpus' training split, saved as a standard
Hugging Face tokenizer (`AutoTokenizer.from_pretrained(out)` loads it).

    python examples/reference_models/tokenizer.py --corpus corpus --out tokenizer

Held-out documents are never seen. Prints tokens per character on the held-out split.
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections.abc import Iterator
from pathlib import Path

EOS = "<|endoftext|>"
PAD = "<|pad|>"


def texts(path: Path) -> Iterator[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)["text"]


def train(corpus: Path, out: Path, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts(corpus / "train.jsonl.gz"), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=PAD
    )
    tokenizer.save_pretrained(out)
    return tokenizer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--corpus", default="corpus")
    p.add_argument("--out", default="tokenizer")
    p.add_argument("--vocab-size", type=int, default=16384)
    args = p.parse_args()
    tokenizer = train(Path(args.corpus), Path(args.out), args.vocab_size)
    heldout = list(texts(Path(args.corpus) / "heldout.jsonl.gz"))
    chars = sum(len(t) for t in heldout)
    tokens = sum(len(tokenizer(t)["input_ids"]) for t in heldout)
    print(f"vocabulary {len(tokenizer)}; held-out: {tokens} tokens, "
          f"{tokens / chars:.3f} tokens per character")  # fmt: skip


if __name__ == "__main__":
    main()
