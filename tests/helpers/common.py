"""Input builders and runners shared by the tests."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

# Two CPU (gloo) processes under torchrun: the multi-process check CI can run. On a CUDA
# host two --cpu gloo processes fail in accelerate's barrier (known, open).
cpu_processes_only = pytest.mark.skipif(
    torch.cuda.is_available(), reason="CPU multi-process check for CI (gloo)"
)


def run_two_cpu_processes(module: str, *args: str) -> None:
    """`torchrun --nproc_per_node 2 -m module args`, one thread a process; a failure
    fails the test with the end of its stderr."""
    # --standalone: a free rendezvous port, so two such tests may run side by side
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", module, *args]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]


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


def assert_past_ignores_future(attention, n_prefix: int, n: int = 700, cut: int = 400) -> None:
    """Causal attention(q, k, v) [with n_prefix cached keys]: new values for every query
    and key from `cut` on leave the rows before it unchanged, and change the rows after.

    Past rows may move by float64 rounding only: a query's LSH tile-mates change with the
    future queries, and the CPU matmul rounds a row by its spot in the tile. A leak of
    future tokens would move them by ~1e-2.
    """
    q, k, v = random_qkv(1, 4, 2, n, n + n_prefix, dim=16, seed=5)
    before = attention(q, k, v)
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    gen = torch.Generator().manual_seed(0)
    q2[:, :, cut:] = torch.randn(q2[:, :, cut:].shape, generator=gen, dtype=q.dtype)
    for t in (k2, v2):
        t[:, :, n_prefix + cut :] = torch.randn(
            t[:, :, n_prefix + cut :].shape, generator=gen, dtype=t.dtype
        )
    after = attention(q2, k2, v2)
    assert (before[:, :, :cut] - after[:, :, :cut]).abs().max().item() < 1e-12
    assert not torch.allclose(before[:, :, cut:], after[:, :, cut:])


def grouped_qkv(n: int = 2048, dim: int = 32, groups: int = 32, seed: int = 0):
    """Keys in groups around random centres; each query a group's centre plus noise as
    large as the centre, so its large entries are one group's keys at cosine ~0.7:
    inner products find them, angles only loosely (the real-model case LSH misses)."""
    g = torch.Generator().manual_seed(seed)
    f64 = dict(generator=g, dtype=torch.float64)
    centre = 3 * torch.nn.functional.normalize(torch.randn(2, groups, dim, **f64), dim=-1)
    member = torch.randint(groups, (2, n), generator=g)
    k = torch.gather(centre, 1, member[..., None].expand(-1, -1, dim))
    k = k + 0.3 * torch.randn(2, n, dim, **f64)
    target = torch.randint(groups, (4, n), generator=g)
    q = centre[torch.tensor([0, 0, 1, 1])[:, None], target]
    q = q + 3 / dim**0.5 * torch.randn(4, n, dim, **f64)
    return q[None] * dim**0.5, k[None], torch.randn(1, 2, n, dim, **f64)
