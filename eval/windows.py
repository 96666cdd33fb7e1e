"""Token windows for perplexity: non-overlapping chunks or sliding windows with a stride."""

from __future__ import annotations

from dataclasses import dataclass

from .common import JobError


@dataclass(frozen=True)
class Window:
    """Tokens [start, start + len(ids)) of one stream; only tokens from `score_from` on
    (window-relative, >= 1) are scored, each predicted from everything before it."""

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
) -> list[Window]:
    """Windows of exactly `length` tokens.

    stride None: consecutive non-overlapping chunks (a stream's remainder is dropped).
    stride s: windows end every s tokens; each scores only the tokens the previous window
    of its stream did not (the perplexity-guide scheme), so every token after the first
    `length` of a stream is scored once with at least length - s tokens of context.
    """
    if length < 2:
        raise JobError(f"window length must be at least 2 tokens; got {length}")
    if stride is not None and not 0 < stride <= length:
        raise JobError(f"--stride must be in [1, length={length}]; got {stride}")
    windows: list[Window] = []
    for name, ids in streams:
        if len(ids) < length:
            continue
        if stride is None:
            for i, start in enumerate(range(0, len(ids) - length + 1, length)):
                chunk = tuple(ids[start : start + length])
                windows.append(Window(f"{name}:{length}:{i}", name, start, chunk, 1))
        else:
            end = length
            windows.append(Window(f"{name}:{length}:0", name, 0, tuple(ids[:length]), 1))
            i = 1
            while end < len(ids):
                new_end = min(end + stride, len(ids))
                start = new_end - length
                chunk = tuple(ids[start:new_end])
                windows.append(Window(f"{name}:{length}:{i}", name, start, chunk, end - start))
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
