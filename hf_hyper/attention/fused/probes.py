"""Launchers of the cluster probes' forward kernels (`kernels.probes`): plain tensors in,
the probes' (out, lse) accumulated in place. Inference only: the probes' backward runs
in torch ops (`cluster_probes`)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..numerics import LOG2E
from .tuning import padded_width

# Keys per step of both kernels: a cluster's run is short (about block_size / probes
# keys on average), and the sample is a few hundred draws.
SEGMENT_BLOCK_N = 32
SAMPLE_TILE = (64, 64)  # (BLOCK_M, BLOCK_N) of the sample kernel


def segment_tile_rows(n_rows: int, clusters: int) -> int:
    """Query rows per tile of the segment kernel: about the rows a cluster gets, a power
    of two from 16 (the smallest a tensor-core dot takes) to 64."""
    per_cluster = max(1, -(-n_rows // clusters))
    return min(64, max(16, 1 << (per_cluster - 1).bit_length()))


def empty_accumulators(z: int, n_rows: int, dv: int, device) -> tuple[Tensor, Tensor]:
    """float32 (out [z, rows + 1, dv], lse [z, rows + 1]): the last row of each problem
    takes the tiles' empty slots."""
    out = torch.zeros(z, n_rows + 1, dv, dtype=torch.float32, device=device)
    return out, torch.full((z, n_rows + 1), float("-inf"), device=device)


def segment_attention(
    q_rows: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, slot_query: Tensor,
    seg_start: Tensor, seg_len: Tensor, k_order: Tensor, sinks: Tensor, n_query: int,
    band: int, scale: float, merge: bool, block_m: int,
) -> None:  # fmt: skip
    """Fold each packed tile's attention over its cluster's run of k_order into (out,
    lse). q_rows [z, rows, d], k [z, nk, d], v [z, nk, dv] contiguous; slot_query
    [z, tiles * block_m] (rows: an empty slot); seg_start, seg_len [z, tiles]; k_order
    [z, nk]; sinks [z] (int64)."""
    from ..kernels.probes import segment_kernel

    z, n_rows, dim = q_rows.shape
    n_key, dv = k.shape[1], v.shape[-1]
    n_tiles = seg_start.shape[1]
    segment_kernel[(z * n_tiles,)](
        q_rows, k, v, out, lse, slot_query, seg_start, seg_len, k_order, sinks,
        slot_query.shape[1], n_tiles, n_rows, n_query, n_key, band, scale * LOG2E,
        D=dim, DV=dv, D_PAD=padded_width(dim), DV_PAD=padded_width(dv),
        BLOCK_M=block_m, BLOCK_N=SEGMENT_BLOCK_N, MERGE=merge,
        IEEE=q_rows.dtype == torch.float32, HAS_BAND=band > 0, num_warps=4, num_stages=2,
    )  # fmt: skip


def sample_attention(
    q_rows: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, sample: Tensor,
    draw_cluster: Tensor, chosen: Tensor, rest: Tensor, sinks: Tensor, n_query: int,
    band: int, scale: float,
) -> None:  # fmt: skip
    """Merge each row's share of the sample into (out, lse): sample, draw_cluster [z, m]
    (the drawn keys and their clusters), chosen [z, rows, probes] (each row's clusters),
    rest [z, rows] float32 (the keys each row does not attend exactly)."""
    from ..kernels.probes import probe_sample_kernel

    z, n_rows, dim = q_rows.shape
    n_key, dv = k.shape[1], v.shape[-1]
    block_m, block_n = SAMPLE_TILE
    probe_sample_kernel[(z * -(-n_rows // block_m),)](
        q_rows, k, v, out, lse, sample, draw_cluster, chosen, rest, sinks,
        n_rows, n_query, n_key, sample.shape[1], band, scale * LOG2E,
        D=dim, DV=dv, D_PAD=padded_width(dim), DV_PAD=padded_width(dv),
        BLOCK_M=block_m, BLOCK_N=block_n, PROBES=chosen.shape[-1],
        IEEE=q_rows.dtype == torch.float32, HAS_BAND=band > 0, num_warps=4, num_stages=2,
    )  # fmt: skip
