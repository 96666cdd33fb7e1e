"""Fused-vs-torch comparison cases, shared by the GPU tests and the interpreter tests
(tests/attention/test_fused_interpreter.py, Triton's interpreter on a CPU)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from unittest.mock import patch

import torch

from hf_hyper import HyperAttentionConfig
from hf_hyper.attention import hyper_attention_with_lse, planning
from hf_hyper.attention.finders import finder_of_call
from hf_hyper.attention.finders.lsh import fused_lsh_rank, gray_code_rank, rank_dtype
from hf_hyper.attention.fused.forward import fused_forward
from hf_hyper.attention.fused.function import FusedHyperAttention
from hf_hyper.attention.fused.tiles import draw_sample, plan_tiles
from hf_hyper.attention.planning import Randomness, pack_query_tiles, plan_blocks


@dataclass
class Case:
    batch: int
    q_heads: int
    kv_heads: int
    n_query: int
    n_key: int
    dim: int
    v_dim: int
    causal: bool
    config: dict = field(default_factory=dict)
    seq_first: bool = False  # q laid out [b, n, h, d] and transposed (model layout)

    def __str__(self) -> str:
        kind = "causal" if self.causal else "full"
        return (
            f"{kind}-b{self.batch}-h{self.q_heads}/{self.kv_heads}-n{self.n_query}/{self.n_key}"
            f"-d{self.dim}/{self.v_dim}{'-T' if self.seq_first else ''}"
            + (f"-sinks{self.config['sink_tokens']}" if self.config.get("sink_tokens") else "")
            + (f"-window{self.config['local_window']}" if self.config.get("local_window") else "")
            + (f"-kmeans{self.config['kmeans_iters']}" if self.config.get("kmeans_iters") else "")
        )


SMALL = dict(block_size=8, sample_size=8, min_seq_len=16, lsh_num_projs=3)
SMALL_CASES = [
    Case(1, 2, 2, 40, 40, 16, 16, False, SMALL),
    Case(1, 2, 1, 40, 40, 16, 16, False, SMALL),
    Case(1, 2, 2, 64, 64, 16, 16, True, SMALL),
    Case(2, 4, 2, 50, 50, 16, 8, True, SMALL, seq_first=True),  # padding, GQA, dv < d
    Case(1, 2, 1, 40, 70, 16, 16, True, SMALL),  # cached prefix, hyper part
    Case(1, 2, 1, 10, 70, 16, 16, True, SMALL),  # short: exact with prefix
    Case(1, 2, 1, 10, 70, 16, 16, False, SMALL),
    Case(1, 2, 2, 33, 33, 20, 12, True, dict(block_size=8, sample_size=0, min_seq_len=8)),
    Case(1, 2, 1, 64, 64, 16, 16, True, dict(SMALL, lsh_num_projs=13)),  # planned in torch
    # blocks a multiple of the key tiles: the sort writes the key list in place (a short
    # last block; causal levels with a sample padded to the tiles)
    Case(1, 2, 1, 63, 63, 16, 16, False, dict(SMALL, block_size=32)),
    Case(
        1, 2, 2, 128, 128, 16, 16, True, dict(SMALL, block_size=32, sample_size=40, min_seq_len=32)
    ),  # fmt: skip
    # attention sinks: non-causal, causal square, padding + GQA, a long cached prefix
    # (sinks in the prefix problem), a short one (sinks straddle prefix and square)
    Case(1, 2, 2, 40, 40, 16, 16, False, dict(SMALL, sink_tokens=3)),
    Case(1, 2, 1, 64, 64, 16, 16, True, dict(SMALL, sink_tokens=4)),
    Case(2, 4, 2, 50, 50, 16, 8, True, dict(SMALL, sink_tokens=2), seq_first=True),
    Case(1, 2, 1, 40, 70, 16, 16, True, dict(SMALL, sink_tokens=4)),
    Case(1, 2, 1, 62, 64, 16, 16, True, dict(SMALL, sink_tokens=4)),
    # the local window: causal square with sinks, padding + GQA, a long cached prefix (the
    # band crosses the prefix's end), and no sinks
    Case(1, 2, 1, 64, 64, 16, 16, True, dict(SMALL, sink_tokens=2, local_window=5)),
    Case(2, 4, 2, 50, 50, 16, 8, True, dict(SMALL, sink_tokens=1, local_window=6), seq_first=True),
    Case(1, 2, 1, 40, 70, 16, 16, True, dict(SMALL, sink_tokens=3, local_window=4)),
    Case(1, 2, 2, 64, 64, 16, 16, True, dict(SMALL, sink_tokens=0, local_window=8)),
    # k-means buckets: non-causal, causal with sinks (padding + GQA), a cached prefix
    Case(1, 2, 1, 40, 40, 16, 16, False, dict(SMALL, kmeans_iters=3, sink_tokens=2)),
    Case(2, 4, 2, 50, 50, 16, 8, True, dict(SMALL, kmeans_iters=2), seq_first=True),
    Case(1, 2, 1, 40, 70, 16, 16, True, dict(SMALL, kmeans_iters=2, local_window=3)),
]
GPU = dict(block_size=64, sample_size=64, min_seq_len=256)
GPU_CASES = [
    Case(1, 4, 4, 2048, 2048, 64, 64, False, GPU),
    Case(1, 4, 4, 2048, 2048, 64, 64, True, GPU),
    Case(2, 8, 2, 1500, 1500, 128, 128, True, GPU, seq_first=True),
    Case(1, 4, 1, 1024, 3000, 64, 32, True, GPU),
    Case(1, 2, 2, 700, 1800, 96, 96, False, GPU),
    Case(1, 4, 2, 200, 900, 64, 64, True, GPU),  # short query block with prefix: exact
    Case(1, 4, 2, 2048, 2048, 64, 64, True, dict(GPU, lsh_num_projs=13)),  # torch planning
    # ~256 rows per key block: 16-bit inputs take 128-row tiles
    Case(
        1, 4, 4, 4096, 4096, 128, 128, True, dict(block_size=256, sample_size=256, min_seq_len=1024)
    ),  # fmt: skip
    # attention sinks (causal with cuDNN's diagonal, GQA with a cached prefix, non-causal)
    Case(1, 4, 4, 2048, 2048, 64, 64, True, dict(GPU, sink_tokens=4)),
    Case(1, 4, 1, 1024, 3000, 64, 32, True, dict(GPU, sink_tokens=4)),
    Case(2, 8, 2, 1500, 1500, 128, 128, True, dict(GPU, sink_tokens=16), seq_first=True),
    # the local window (with the sinks; a cached prefix the band crosses; padding + GQA)
    Case(1, 4, 4, 2048, 2048, 64, 64, True, dict(GPU, sink_tokens=4, local_window=64)),
    Case(1, 4, 1, 1024, 3000, 64, 32, True, dict(GPU, sink_tokens=4, local_window=32)),
    Case(
        2,
        8,
        2,
        1500,
        1500,
        128,
        128,
        True,
        dict(GPU, sink_tokens=4, local_window=100),
        seq_first=True,
    ),  # fmt: skip
    Case(1, 2, 2, 700, 1800, 96, 96, False, dict(GPU, sink_tokens=1)),
]
# k-means buckets in fp32 only: a float64 run clusters differently from a bf16 one, so
# the rounding rule, which compares against float64 with the same buckets, does not apply
KMEANS_GPU_CASES = [
    Case(1, 4, 4, 2048, 2048, 64, 64, True, dict(GPU, kmeans_iters=4)),
    Case(2, 8, 2, 1500, 1500, 128, 128, True, dict(GPU, kmeans_iters=4), seq_first=True),
    Case(1, 4, 1, 1024, 3000, 64, 32, True, dict(GPU, kmeans_iters=4, local_window=32)),
    Case(1, 2, 2, 700, 1800, 96, 96, False, dict(GPU, kmeans_iters=4)),
]


def make_inputs(case: Case, dtype: torch.dtype, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shape_q = (case.batch, case.n_query, case.q_heads, case.dim)
    q = torch.randn(*shape_q, generator=g)
    q = q.transpose(1, 2) if case.seq_first else q.transpose(1, 2).contiguous()
    k = torch.randn(case.batch, case.kv_heads, case.n_key, case.dim, generator=g)
    v = torch.randn(case.batch, case.kv_heads, case.n_key, case.v_dim, generator=g)
    return tuple(t.to(device=device, dtype=dtype) for t in (q, k, v))


def compare(case: Case, dtype: torch.dtype, device: str) -> tuple[float, float]:
    """(max |out difference|, max |lse difference|) of fused vs torch path, same draws."""
    q, k, v = make_inputs(case, dtype, device)
    config = HyperAttentionConfig(backend="torch", seed=3, **case.config)
    out_t, lse_t = hyper_attention_with_lse(q, k, v, causal=case.causal, config=config)
    out_f, lse_f = _fused_with_lse(case, q, k, v, config)
    out_err = (out_t.float() - out_f.float()).abs().max().item()
    lse_err = (lse_t.float() - lse_f.float()).abs().max().item()
    if not case.causal:  # without the LSE (hyper_attention's call): the same output
        out_n, lse_n = _fused_with_lse(case, q, k, v, config, need_lse=False)
        if lse_n is not None or not torch.equal(out_n, out_f):
            out_err = float("inf")
    return out_err, lse_err


@contextmanager
def planes_exact_in(dtype: torch.dtype) -> Iterator[None]:
    """Hyperplanes rounded to `dtype`: a float64 run then hashes with the very planes a
    low-precision run uses, so both make the same discrete choices (blocks, samples)
    and their difference is rounding alone."""
    draw = Randomness.hyperplanes

    def rounded(self, dim: int, count: int) -> torch.Tensor:
        return draw(self, dim, count).to(dtype).to(torch.float32)

    with patch.object(Randomness, "hyperplanes", rounded):
        yield


def kernel_finder(case: Case, config: HyperAttentionConfig):
    """The call's finder as the fused path makes it, its kernels allowed (the config
    given may name backend "torch" for the reference run)."""
    kernels = replace(config, backend="auto")
    return partial(finder_of_call, kernels, hash_dims=case.dim, scale=case.dim**-0.5)


def _fused_with_lse(case: Case, q, k, v, config: HyperAttentionConfig, need_lse: bool = True):
    rng = Randomness(torch.Generator(device=q.device).manual_seed(3), q.device)
    return fused_forward(
        q, k, v, causal=case.causal, scale=case.dim**-0.5, config=config, rng=rng,
        finder_of_planes=kernel_finder(case, config), need_lse=need_lse,
    )  # fmt: skip


def forward_errors(case: Case, dtype: torch.dtype, device: str) -> dict[str, tuple[float, float]]:
    """Max |out error| and max |lse error| of the fused forward and of the torch path,
    both in `dtype`, against the torch path in float64 on the same inputs with the same
    draws (FlashAttention's test: the fast path's rounding against plain torch's)."""
    q, k, v = make_inputs(case, dtype, device)
    config = HyperAttentionConfig(backend="torch", seed=3, **case.config)
    with planes_exact_in(dtype):
        truth = hyper_attention_with_lse(
            q.double(), k.double(), v.double(), causal=case.causal, config=config
        )
        runs = {
            "torch": hyper_attention_with_lse(q, k, v, causal=case.causal, config=config),
            "fused": _fused_with_lse(case, q, k, v, config),
        }

    def max_errors(run) -> tuple[float, float]:
        out_err, lse_err = ((got.double() - want).abs().max().item()
                            for got, want in zip(run, truth, strict=True))  # fmt: skip
        return out_err, lse_err

    return {name: max_errors(run) for name, run in runs.items()}


def gradients(
    case: Case, inputs, fused: bool, weight: torch.Tensor, lse_weight: torch.Tensor | None = None
) -> list[torch.Tensor]:
    """(dq, dk, dv) in float32 of sum(out * weight) (+ sum(lse * lse_weight)), through the
    fused backward or autograd over the torch path; the same draws (seed 3) either way."""
    config = HyperAttentionConfig(backend="torch", seed=3, **case.config)
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    if fused:
        dev = leaves[0].device
        rng = Randomness(torch.Generator(device=dev).manual_seed(3), dev)
        out, lse = FusedHyperAttention.apply(
            *leaves, case.causal, case.dim**-0.5, config, rng, kernel_finder(case, config), None
        )
    else:
        out, lse = hyper_attention_with_lse(*leaves, causal=case.causal, config=config)
    loss = (out * weight.to(out.dtype)).sum()
    if lse_weight is not None:
        loss = loss + (lse * lse_weight.to(lse.dtype)).sum()
    loss.backward()
    return [t.grad.float() for t in leaves]


def output_weight(case: Case, device: str) -> torch.Tensor:
    shape = (case.batch, case.q_heads, case.n_query, case.v_dim)
    return torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(device)


def lse_weight(case: Case, device: str) -> torch.Tensor:
    shape = (case.batch, case.q_heads, case.n_query)
    return torch.randn(shape, generator=torch.Generator().manual_seed(2)).to(device)


def compare_grads(case: Case, dtype: torch.dtype, device: str, through_lse: bool = False) -> float:
    """Largest |dq, dk, dv difference| of the fused backward vs autograd through the torch
    path (same draws), relative to the largest torch-path gradient entry; through_lse:
    the loss uses the log-sum-exp as well as the output."""
    inputs, weight = make_inputs(case, dtype, device), output_weight(case, device)
    extra = lse_weight(case, device) if through_lse else None
    want, got = (gradients(case, inputs, fused, weight, extra) for fused in (False, True))
    return max(((w - g).abs().max() / w.abs().max()).item() for w, g in zip(want, got, strict=True))


def low_precision_grad_errors(case: Case, dtype: torch.dtype, device: str) -> dict[str, float]:
    """Worst relative Frobenius error of (dq, dk, dv) against the float32 torch path on
    the same (rounded) inputs and hyperplanes, for the fused backward and the torch path
    in `dtype`."""
    inputs, weight = make_inputs(case, dtype, device), output_weight(case, device)
    with planes_exact_in(dtype):
        truth = gradients(case, [t.float() for t in inputs], False, weight)
        errors = {}
        for name, fused in (("torch", False), ("fused", True)):
            got = gradients(case, inputs, fused, weight)
            errors[name] = max(
                ((g - t).norm() / t.norm()).item() for g, t in zip(got, truth, strict=True)
            )
    return errors


# (shape of x, hyperplanes, transpose heads and sequence first)
LSH_CASES = [((2, 3, 50, 16), 7, False), ((2, 3, 50, 20), 3, True), ((70, 8), 15, False),
             ((4, 33, 64), 0, False), ((1, 2, 300, 128), 7, True)]  # fmt: skip


def lsh_mismatches(shape, num_projs: int, seq_first: bool, dtype, device: str) -> int:
    """Rows whose fused rank differs from the torch formula, among rows whose every
    projection is clear of zero (where summation order cannot flip a sign)."""
    g = torch.Generator().manual_seed(num_projs)
    x = torch.randn(*shape, generator=g)
    if seq_first:
        x = x.transpose(-2, -3).contiguous().transpose(-2, -3)
    x = x.to(device=device, dtype=dtype)
    planes = torch.randn(shape[-1], num_projs, generator=g).to(device)
    got = fused_lsh_rank(x, planes)
    proj = x.double() @ planes.to(dtype).double()
    want = gray_code_rank(proj > 0).to(rank_dtype(num_projs))
    clear = (proj.abs() > 1e-2 * proj.abs().mean()).all(-1) if num_projs else proj.sum(-1) == 0
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape)
    return int((got != want)[clear].sum()) + int((~clear).all())


def plan_mismatches(device: str) -> list[str]:
    """Fields in which the fused planner (Triton, or torch for wide hashes) differs from
    the torch path's plan_blocks + pack_query_tiles."""
    g = torch.Generator().manual_seed(0)
    config = HyperAttentionConfig(block_size=16, sample_size=8, lsh_num_projs=4)
    q_rank = torch.randint(0, 16, (3, 2, 150), generator=g).to(device, torch.int16)
    k_rank = torch.randint(0, 16, (3, 200), generator=g).to(device, torch.int16)

    def rng() -> Randomness:
        return Randomness(torch.Generator(device=device).manual_seed(1), torch.device(device))

    ref = plan_blocks(q_rank, k_rank, config, rng())
    pack = pack_query_tiles(ref.q_block.reshape(3, 300), ref.n_blocks, 32)
    bad = []
    for name, max_projs in (("triton", planning.BUCKET_TABLE_MAX_PROJS), ("torch", -1)):
        saved, planning.BUCKET_TABLE_MAX_PROJS = planning.BUCKET_TABLE_MAX_PROJS, max_projs
        try:
            sample = draw_sample(200, 3, config, rng())
            a = plan_tiles(q_rank, k_rank, config, sample, lambda _: (32, 16, 4, 2))
        finally:
            planning.BUCKET_TABLE_MAX_PROJS = saved
        used = (a.slot_query.view(3, a.n_tiles, 32)[:, :, 0] < 300).cpu()
        checks = {
            "k_order": torch.equal(a.k_order.long().cpu(), ref.k_order.cpu()),
            "sample": torch.equal(a.sample.cpu(), ref.sample.cpu()),
            "slot_query": torch.equal(a.slot_query.long().cpu(), pack.slot_query.long().cpu()),
            "tile_block": torch.equal(a.tile_block.cpu()[used], pack.tile_block.cpu()[used]),
            "n_tiles": a.n_tiles == pack.n_tiles,
        }
        bad += [f"{name}: {field}" for field, same in checks.items() if not same]
    return bad


# (rows, n, buckets, key dtype, rows strided): with 256-key chunks
# several chunks and a partial one, the 8-bit ranks, int16 block numbers, a chunk
# widened to 1024 for 600 buckets (several of the bookkeeping's bucket tiles), more
# chunks than one bookkeeping tile holds, torch beyond 4096 buckets.
BUCKET_SORT_CASES = [
    (2, 600, 128, torch.uint8, True),
    (2, 300, 16, torch.int16, False),
    (1, 1500, 600, torch.int16, True),
    (2, 5000, 100, torch.uint8, False),
    (1, 3000, 5000, torch.int32, False),
]


def bucket_sort_mismatches(device: str, only: int | None = None) -> list[str]:
    """Cases where the counting sort's order or bucket starts differ from torch's
    stable sort, or (first case) a scatter to shifted spots moves an untouched one, or
    (second case) a sort into the head of wider rows writes past it. only: that case
    alone (its input is the same as in a run of all)."""
    from hf_hyper.attention.fused.bucket_sort import (
        bucket_histogram,
        bucket_place,
        bucket_scatter,
        bucket_spots,
        stable_bucket_argsort,
    )

    g = torch.Generator().manual_seed(0)
    bad = []
    for i, (rows, n, buckets, dtype, strided) in enumerate(BUCKET_SORT_CASES):
        keys = torch.randint(0, buckets, (rows, 2 * n), generator=g).to(device, dtype)
        if only is not None and i != only:
            continue
        keys = keys[:, :n] if strided else keys[:, :n].contiguous()
        order, starts = stable_bucket_argsort(keys, buckets)
        want = torch.sort(keys.long(), dim=-1, stable=True).indices
        count = torch.nn.functional.one_hot(keys.long(), buckets).sum(1)
        name = f"{(rows, n, buckets, dtype)}"
        if not torch.equal(order.long(), want):
            bad.append(f"{name}: order")
        if not torch.equal(starts[:, 1:].long(), count.cumsum(1)):
            bad.append(f"{name}: starts")
        if i == 0:  # into the second half of rows twice as long: the first half stays
            shifted = torch.full((rows, 2 * n), -1, dtype=torch.int32, device=device)
            bucket_scatter(keys, bucket_histogram(keys, buckets), n + starts[:, :-1], shifted)
            if not torch.equal(shifted[:, n:], order) or not (shifted[:, :n] == -1).all():
                bad.append(f"{name}: shifted scatter")
        if i == 1:  # into the head of rows n + 5 long: the tail stays
            wide = torch.full((rows, n + 5), -1, dtype=torch.int32, device=device)
            stable_bucket_argsort(keys, buckets, out=wide[:, :n])
            if not torch.equal(wide[:, :n], order) or not (wide[:, n:] == -1).all():
                bad.append(f"{name}: sort into a wider row")
        # runs that start on tiles of 5: each key's run, its tiles and every tile's key
        tile, n_tiles = 5, (n + buckets * 4) // 5 + 3
        count = count.cpu()
        tiles = (count + tile - 1) // tile
        tile_end = tiles.cumsum(1)
        spots = torch.arange(n_tiles).expand(rows, -1).contiguous()
        want_bucket = torch.searchsorted(tile_end, spots, right=True).clamp(max=buckets - 1)
        key_sorted = keys.long().cpu().gather(1, want.cpu())
        within = torch.arange(n) - (count.cumsum(1) - count).gather(1, key_sorted)
        slot = ((tile_end - tiles) * tile).gather(1, key_sorted) + within
        want_slots = torch.full((rows, n_tiles * tile), -1, dtype=torch.int32)
        want_slots.scatter_(1, slot, want.cpu().to(torch.int32))
        hist = bucket_histogram(keys, buckets)
        tile_bucket = torch.full((rows, n_tiles), -1, dtype=torch.int64, device=device)
        starts = bucket_spots(hist, buckets, tile, tile_bucket)
        slots = torch.full((rows, n_tiles * tile), -1, dtype=torch.int32, device=device)
        bucket_place(keys, hist, buckets, slots)
        if not torch.equal(starts[:, 1:].long().cpu(), tile_end):
            bad.append(f"{name}: tile starts")
        if not torch.equal(tile_bucket.cpu(), want_bucket):
            bad.append(f"{name}: tile keys")
        if not torch.equal(slots.cpu(), want_slots):
            bad.append(f"{name}: tile slots")
    return bad


def counting_sorts_in_torch_ops(monkeypatch) -> None:
    """Route the counting sorts through their torch ops (the same order bit for bit,
    which the sort's own interpreter tests check against torch.sort): a test of other
    kernels in Triton's interpreter then does not spend most of its time in the
    interpreted bitonic sort of each chunk."""
    from hf_hyper.attention.fused import bucket_sort

    monkeypatch.setattr(bucket_sort, "MAX_BUCKETS", 0)
