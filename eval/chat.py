"""Prompts as completion text or wrapped in the tokenizer's chat template
(`--chat-template auto|always|never`), shared by the jobs that generate."""

from __future__ import annotations

from .common import JobError

CHAT_MODES = ("auto", "always", "never")


def chat_enabled(tokenizer, mode: str) -> bool:
    """Whether prompts go through the chat template: `auto` where the tokenizer has one."""
    if mode not in CHAT_MODES:
        raise JobError(f"--chat-template must be one of {CHAT_MODES}; got {mode!r}")
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if mode == "always" and not has_template:
        raise JobError(
            "--chat-template always, but the tokenizer has no chat template "
            "(use --chat-template never for a base model)"
        )
    return mode != "never" and has_template


def encode_prompt(tokenizer, text: str, chat: bool, answer_start: str = "") -> list[int]:
    """Token ids of `text` as a user turn (chat) or plain text, followed by
    `answer_start`, the words the answer should continue from."""
    if chat:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
        return list(tokenizer(text + answer_start, add_special_tokens=False)["input_ids"])
    return list(tokenizer(text + answer_start)["input_ids"])
