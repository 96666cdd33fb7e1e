"""The causal mask, built in one place for every caller."""

from __future__ import annotations

import torch
from torch import Tensor


def future_key_mask(
    n_query: int,
    n_key: int,
    device: torch.device | str | None = None,
    row_start: int = 0,
    row_stop: int | None = None,
    key_start: int = 0,
    key_stop: int | None = None,
) -> Tensor:
    """bool [row_stop - row_start, key_stop - key_start], True where key j lies after
    query i.

    Queries are the last n_query positions of the n_key keys (prefill with a cached
    prefix when n_query < n_key), so query i sits at position i + n_key - n_query.
    The optional bounds select a window of query rows and keys (default: all).
    """
    row_stop = n_query if row_stop is None else row_stop
    key_stop = n_key if key_stop is None else key_stop
    positions = torch.arange(row_start, row_stop, device=device) + (n_key - n_query)
    return torch.arange(key_start, key_stop, device=device)[None, :] > positions[:, None]
