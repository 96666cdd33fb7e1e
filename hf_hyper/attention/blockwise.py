"""Exact attention that also returns its log-sum-exp, and the LSE merge.

Internal layout: queries `[z, g, n, d]` and keys/values `[z, m, d]`, where `z` folds
batch, key heads and independent sub-problems, and `g` is the number of query heads that
share one key head (GQA), so repeated keys are never materialised.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .masks import future_key_mask
from .numerics import MASKED_LOGIT, accumulation_dtype

# Upper bound on score-matrix elements held at once; keeps 131k-token calls in memory.
SCORE_BUDGET = 1 << 26
# Causal calls run in at least this many blocks of rows, each against only the keys its
# last row sees: 8 blocks compute 56% of the square instead of all of it.
CAUSAL_ROW_BLOCKS = 8
MIN_ROW_BLOCK = 128

# mask_fn(z_start, z_stop, row_start, row_stop) -> bool mask, True where a key is hidden,
# broadcastable to [z, g, rows, m].
MaskFn = Callable[[int, int, int, int], Tensor]


def attention_with_lse(
    q: Tensor, k: Tensor, v: Tensor, scale: float, mask_fn: MaskFn | None = None
) -> tuple[Tensor, Tensor]:
    """softmax(scale * q k^T) v and its row LSE, chunked to bound memory.

    q [z, g, n, d], k [z, m, d], v [z, m, dv] -> out [z, g, n, dv], lse [z, g, n]
    (both in the accumulation dtype).
    """
    z, g, n, _ = q.shape
    m = k.shape[1]
    acc = accumulation_dtype(q.dtype)
    per_z = max(1, g * n * m)
    z_step = max(1, min(z, SCORE_BUDGET // per_z))
    row_step = n if z_step > 1 or per_z <= SCORE_BUDGET else max(1, SCORE_BUDGET // (g * m))
    causal = isinstance(mask_fn, CausalMask)
    if causal:
        row_step = min(row_step, max(MIN_ROW_BLOCK, -(-n // CAUSAL_ROW_BLOCKS)))
    outs, lses = [], []
    for z0 in range(0, z, z_step):
        z1 = min(z, z0 + z_step)
        k_c, v_c = k[z0:z1].to(acc), v[z0:z1].to(acc)
        row_outs, row_lses = [], []
        for r0 in range(0, n, row_step):
            r1 = min(n, r0 + row_step)
            seen = mask_fn.visible_keys(r1) if causal else m
            # The score matrix is the only large tensor: scale the queries instead, and
            # shift, exponentiate and sum it in place, one exp per score (logsumexp then
            # exp(scores - lse) took two). In-place is safe under autograd: the matmul
            # does not keep its output, and the shift is a detached constant.
            q_c = q[z0:z1, :, r0:r1].to(acc) * scale
            scores = torch.einsum("zgnd,zmd->zgnm", q_c, k_c[:, :seen])
            if causal:
                scores.masked_fill_(mask_fn(z0, z1, r0, r1, key_stop=seen), MASKED_LOGIT)
            elif mask_fn is not None:
                scores.masked_fill_(mask_fn(z0, z1, r0, r1), MASKED_LOGIT)
            row_max = scores.detach().amax(dim=-1, keepdim=True)
            weights = scores.sub_(row_max).exp_()
            total = weights.sum(dim=-1, keepdim=True)
            row_outs.append(torch.einsum("zgnm,zmd->zgnd", weights, v_c[:, :seen]) / total)
            row_lses.append((row_max + total.log()).squeeze(-1))
        outs.append(torch.cat(row_outs, dim=2))
        lses.append(torch.cat(row_lses, dim=2))
    return torch.cat(outs, dim=0), torch.cat(lses, dim=0)


class CausalMask:
    """The causal MaskFn: queries are the last `n_query` of `n_key` positions, so row i
    sees keys <= i + n_key - n_query. It also tells how many keys a block of rows sees,
    which lets `attention_with_lse` skip the keys after a block's last query."""

    def __init__(self, n_query: int, n_key: int, device: torch.device) -> None:
        self.n_query, self.n_key, self.device = n_query, n_key, device

    def __call__(self, z0: int, z1: int, r0: int, r1: int, key_stop: int | None = None) -> Tensor:
        # [rows, key_stop or n_key], broadcasts over z and g
        return future_key_mask(self.n_query, self.n_key, self.device, r0, r1, key_stop=key_stop)

    def visible_keys(self, row_stop: int) -> int:
        """Keys seen by rows before row_stop: those up to the last row's position."""
        return max(1, min(self.n_key, row_stop + self.n_key - self.n_query))


def causal_mask_fn(n_query: int, n_key: int, device: torch.device) -> MaskFn:
    """Queries are the last `n_query` positions of the keys: row i sees keys <= i + offset."""
    return CausalMask(n_query, n_key, device)


def merge_by_lse(
    out_a: Tensor, lse_a: Tensor, out_b: Tensor, lse_b: Tensor
) -> tuple[Tensor, Tensor]:
    """Combine attention over two disjoint key sets into attention over their union.

    out_* [..., n, dv], lse_* [..., n]. Exact: each output is re-weighted by the share
    of the total softmax mass its key set holds, exp(lse_part - lse_union).
    """
    lse = torch.logaddexp(lse_a, lse_b)
    weight_a = torch.exp(lse_a - lse).unsqueeze(-1)
    weight_b = torch.exp(lse_b - lse).unsqueeze(-1)
    return out_a * weight_a + out_b * weight_b, lse
