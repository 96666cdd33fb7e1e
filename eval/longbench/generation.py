"""Greedy generation with the benchmark's stopping rules."""

from __future__ import annotations

import torch

from .protocol import Task


def stop_tokens(model, tokenizer, task: Task) -> list[int]:
    """The model's own end-of-sequence ids, plus the newline token where the benchmark
    stops at a newline."""
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    if task.stop_at_newline:
        ids.append(tokenizer.encode("\n", add_special_tokens=False)[-1])
    return list(dict.fromkeys(ids))


@torch.inference_mode()
def generate(model, tokenizer, task: Task, input_ids: list[int], device) -> tuple[str, int]:
    """(decoded answer, number of new tokens); greedy, at most task.max_new_tokens."""
    ids = torch.tensor([input_ids], device=device)
    stops = stop_tokens(model, tokenizer, task)
    output = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=task.max_new_tokens,
        # samsum: at least one token, so the newline stop cannot give an empty answer
        min_new_tokens=1 if task.stop_at_newline else None,
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
