"""Input builders shared by the tests."""

from __future__ import annotations

import torch


def random_qkv(
    batch: int,
    q_heads: int,
    kv_heads: int,
    n_query: int,
    n_key: int,
    dim: int = 16,
    v_dim: int | None = None,
    dtype: torch.dtype = torch.float64,
    device: str = "cpu",
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, q_heads, n_query, dim, generator=g, dtype=torch.float64)
    k = torch.randn(batch, kv_heads, n_key, dim, generator=g, dtype=torch.float64)
    v = torch.randn(batch, kv_heads, n_key, v_dim or dim, generator=g, dtype=torch.float64)
    return tuple(t.to(device=device, dtype=dtype) for t in (q, k, v))


def planted_qkv(
    n: int, dim: int = 64, heads: int = 2, logit: float = 10.0, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each query points at one random key (plus noise) with scaled logit ~`logit`, so every
    row has a few large entries among many small ones: the structure HyperAttention is
    built for, where the exact output is far from zero."""
    g = torch.Generator().manual_seed(seed)
    k = torch.nn.functional.normalize(torch.randn(1, heads, n, dim, generator=g), dim=-1)
    partner = torch.randint(n, (1, heads, n), generator=g)
    near = torch.gather(k, 2, partner[..., None].expand(-1, -1, -1, dim))
    noise = 0.05 * torch.randn(1, heads, n, dim, generator=g) / dim**0.5
    q = logit * dim**0.5 * torch.nn.functional.normalize(near + noise, dim=-1)
    v = torch.randn(1, heads, n, dim, generator=g)
    return q.double(), k.double(), v.double()


def relative_error_to_v(out: torch.Tensor, exact: torch.Tensor, v: torch.Tensor) -> float:
    """||O - O*||_F / ||V||_F: the scale of the paper's guarantee (see README)."""
    return ((out.double() - exact.double()).norm() / v.double().norm()).item()
