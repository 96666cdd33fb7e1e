"""Numeric conventions shared by the torch path, the fused launchers and the kernels."""

from __future__ import annotations

import math

import torch

# Kernels keep scores in log2 units (exp2 is the fast instruction): s * LOG2E.
LOG2E = math.log2(math.e)

# A finite stand-in for -inf: rows with every key masked get a tiny, finite LSE that
# merges with weight exactly 0, and no NaN can reach the gradients of discarded rows.
MASKED_LOGIT = -1e30


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Scores, softmax and LSE run in at least float32 (float64 stays float64)."""
    return torch.promote_types(dtype, torch.float32)
