"""Prompts as the benchmark builds them: template, middle truncation, chat wrapper."""

from __future__ import annotations

from dataclasses import dataclass

from ..chat import chat_enabled, encode_prompt
from .protocol import Task
from .samples import Sample


@dataclass(frozen=True)
class Prompt:
    input_ids: list[int]
    prompt_tokens: int  # the templated prompt before truncation, as the benchmark counts it
    truncated: bool
    chat: bool


def truncate_middle(tokenizer, text: str, budget: int) -> tuple[str, int, bool]:
    """Keep the first and last budget/2 tokens: instructions sit at both ends of every
    LongBench template, so the middle of the context is what can go. Tokens are counted
    with the tokenizer's special tokens and decoded without them, as the benchmark does."""
    ids = tokenizer(text)["input_ids"]
    if len(ids) <= budget:
        return text, len(ids), False
    half = budget // 2
    head = tokenizer.decode(ids[:half], skip_special_tokens=True)
    tail = tokenizer.decode(ids[-half:], skip_special_tokens=True)
    return head + tail, len(ids), True


def uses_chat(task: Task, tokenizer, mode: str) -> bool:
    """Chat template per the mode, except for the tasks the benchmark prompts raw."""
    return chat_enabled(tokenizer, mode) and not task.raw_prompt


def build_prompt(task: Task, sample: Sample, tokenizer, budget: int, chat_mode: str) -> Prompt:
    """Token ids to generate from (the prompt ends where the answer should start)."""
    text = task.template.format(context=sample.context, input=sample.input)
    text, prompt_tokens, truncated = truncate_middle(tokenizer, text, budget)
    chat = uses_chat(task, tokenizer, chat_mode)
    return Prompt(encode_prompt(tokenizer, text, chat), prompt_tokens, truncated, chat)
