"""Greedy generation that stops at the model's end of sequence (and, optionally, at a
newline), shared by the jobs that score generated answers."""

from __future__ import annotations

import torch


def stop_tokens(model, tokenizer, stop_at_newline: bool) -> list[int]:
    """The model's own end-of-sequence ids, plus the newline token if asked."""
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    if stop_at_newline:
        ids.append(tokenizer.encode("\n", add_special_tokens=False)[-1])
    return list(dict.fromkeys(ids))


@torch.inference_mode()
def generate(
    model, tokenizer, input_ids: list[int], device, *, max_new_tokens: int,
    stop_at_newline: bool = False,
) -> tuple[str, int]:  # fmt: skip
    """(decoded answer, number of new tokens); greedy, at most max_new_tokens."""
    ids = torch.tensor([input_ids], device=device)
    stops = stop_tokens(model, tokenizer, stop_at_newline)
    output = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        # a newline stop must not give an empty answer: at least one token
        min_new_tokens=1 if stop_at_newline else None,
        do_sample=False,
        num_beams=1,
        temperature=None,
        top_p=None,
        top_k=None,
        eos_token_id=stops or None,
        pad_token_id=stops[0] if stops else tokenizer.pad_token_id,
    )
    new = output[0, ids.shape[1] :]
    return tokenizer.decode(new, skip_special_tokens=True), int(new.numel())
