"""Tiny randomly initialised models of each supported family (no downloads)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

COMMON = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
)
FAMILIES = {
    "llama": {},
    "mistral": {"sliding_window": None},
    "qwen2": {},
    "qwen3": {"head_dim": 16},
    "phi3": {"sliding_window": None, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2},
    "gemma": {"head_dim": 16},
    # sliding-window layers interleaved with full ones, as Gemma 3 does
    "gemma3_text": {
        "head_dim": 16,
        "sliding_window": 16,
        "layer_types": ["sliding_attention", "full_attention"] * 2,
    },
}


def tiny_model(model_type: str, attn_implementation: str = "sdpa", seed: int = 0, **overrides):
    config = AutoConfig.for_model(model_type, **{**COMMON, **FAMILIES[model_type], **overrides})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
    return model.eval()


def save_tiny_checkpoint(
    path: Path,
    vocab_size: int = 256,
    all_bytes: bool = False,
    chat_template: str | None = None,
    max_position_embeddings: int = 512,
) -> Path:
    """A 4-layer Llama and a byte-level BPE tokenizer trained on the bundled text, saved
    as a from_pretrained folder. `all_bytes` seeds the vocabulary with every byte, so any
    text (Chinese too) encodes without <unk>."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from hf_hyper.eval.texts import TextSource, load_documents

    docs = load_documents(TextSource())
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    alphabet = pre_tokenizers.ByteLevel.alphabet() if all_bytes else []
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<unk>", "</s>"], initial_alphabet=alphabet
    )
    tok.train_from_iterator((d.text for d in docs[:10]), trainer)
    if all_bytes:
        from tokenizers import decoders

        tok.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>")
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    model = tiny_model(
        "llama", vocab_size=tok.get_vocab_size(), max_position_embeddings=max_position_embeddings
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
