"""Negative log-likelihood of a window without materialising full-length logits."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .common import JobError
from .windows import Window

LOGIT_CHUNK = 4096  # positions per lm_head call: 4096 x 128k vocab x fp32 = 2 GiB at most


def _final_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """lm_head plus the output transforms some families apply after it."""
    logits = model.get_output_embeddings()(hidden).float()
    config = model.config
    scaling = getattr(config, "logits_scaling", None)  # granite
    if scaling:
        logits = logits / scaling
    cap = getattr(config, "final_logit_softcapping", None)  # gemma2
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


@torch.no_grad()
def window_nll(
    model: nn.Module, ids: torch.Tensor, score_from: int = 1, chunk: int = LOGIT_CHUNK
) -> tuple[float, int]:
    """(sum of NLL in nats, tokens scored) for ids [L]; token t >= score_from is predicted
    from tokens < t. The decoder runs once; logits are made `chunk` positions at a time."""
    if score_from < 1:
        raise ValueError("score_from must be >= 1: the first token has no context")
    decoder = model.get_decoder()
    hidden = decoder(input_ids=ids[None], use_cache=False).last_hidden_state[0]
    total = torch.zeros((), dtype=torch.float64, device=hidden.device)
    # position p predicts token p + 1
    for p0 in range(score_from - 1, ids.numel() - 1, chunk):
        p1 = min(p0 + chunk, ids.numel() - 1)
        logits = _final_logits(model, hidden[p0:p1])
        labels = ids[p0 + 1 : p1 + 1].to(logits.device)
        loss = nn.functional.cross_entropy(logits, labels, reduction="sum")
        total += loss.double()
    return total.item(), ids.numel() - score_from


def score_window(model, window: Window, device: torch.device, setting: str) -> tuple[float, int]:
    """(NLL sum, scored tokens) of one window; a non-finite NLL is an error naming it."""
    ids = torch.tensor(window.ids, device=device)
    nll, count = window_nll(model, ids, window.score_from)
    if not math.isfinite(nll):
        raise JobError(
            f"non-finite NLL ({nll}) in window {window.id} (patched layers {setting}); "
            "check the dtype (try --dtype fp32) and the HyperAttention settings"
        )
    return nll, count


def mean_nll(
    model,
    windows: list[Window],
    device: torch.device,
    setting: str,
    on_window: Callable[[], object] | None = None,
) -> float:
    """Mean NLL per scored token over the windows (on_window(): called after each)."""
    nll, tokens = 0.0, 0
    for window in windows:
        window_nll, count = score_window(model, window, device, setting)
        nll, tokens = nll + window_nll, tokens + count
        if on_window is not None:
            on_window()
    return nll / tokens
