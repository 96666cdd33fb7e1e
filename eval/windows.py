"""Token windows for perplexity: non-overlapping chunks or sliding windows with a stride."""

from __future__ import annotations

from dataclasses import dataclass

from .common import JobError


@dataclass(frozen=True)
class Window:
    """Tokens of one stream from `start` (after the window's prefix, if any); only tokens
    from `score_from` on (window-relative, >= 1) are scored, each predicted from
    everything before it."""

    id: str
    stream: str
    start: int
    ids: tuple[int, ...]
    score_from: int

    @property
    def scored_tokens(self) -> int:
        return len(self.ids) - self.score_from


def make_windows(
    streams: list[tuple[str, list[int]]],
    length: int,
    stride: int | None = None,
    max_windows: int | None = None,
    prefix: tuple[int, ...] = (),
) -> list[Window]:
    """Windows of exactly `length` tokens: `prefix` (the tokens the tokenizer puts before
    any text, such as Gemma's <bos>; see `texts.window_prefix`), then text.

    stride None: consecutive non-overlapping chunks (a stream's remainder is dropped).
    stride s: windows end every s tokens; each scores only the tokens the previous window
    of its stream did not (the perplexity-guide scheme), so every token after the first
    window's of a stream is scored once with at least length - s tokens of context.
    The prefix is never scored; the first text token is predicted from it alone.
    """
    lead = len(prefix)
    if length < 2 + lead:
        raise JobError(f"window length must be at least {2 + lead} tokens; got {length}")
    span = length - lead  # text tokens per window
    if stride is not None and not 0 < stride <= span:
        raise JobError(f"--stride must be in [1, {span}]; got {stride}")
    first_scored = lead if lead else 1
    windows: list[Window] = []
    for name, ids in streams:
        if len(ids) < span:
            continue
        if stride is None:
            for i, start in enumerate(range(0, len(ids) - span + 1, span)):
                chunk = tuple(prefix) + tuple(ids[start : start + span])
                windows.append(Window(f"{name}:{length}:{i}", name, start, chunk, first_scored))
        else:
            end = span
            head = tuple(prefix) + tuple(ids[:span])
            windows.append(Window(f"{name}:{length}:0", name, 0, head, first_scored))
            i = 1
            while end < len(ids):
                new_end = min(end + stride, len(ids))
                start = new_end - span
                chunk = tuple(prefix) + tuple(ids[start:new_end])
                windows.append(
                    Window(f"{name}:{length}:{i}", name, start, chunk, lead + end - start)
                )
                end, i = new_end, i + 1
        if max_windows and len(windows) >= max_windows:
            return windows[:max_windows]
    if not windows:
        longest = max((len(ids) for _, ids in streams), default=0)
        raise JobError(
            f"no window of {length} tokens fits the text (longest stream {longest} tokens): "
            "use shorter --lengths, more text, or join documents"
        )
    return windows
