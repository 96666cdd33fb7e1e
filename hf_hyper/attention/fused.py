"""Fused HyperAttention forward on CUDA: the same algorithm and random draws as the
plain-torch path, with the work in a few kernels.

The hash is one Triton pass over q and k; sorting and tile packing stay in torch
(O(n) passes over narrow integers); each recursion level is one Triton launch that
forms its addresses from the plan and merges into the output in place. The exact
diagonal blocks of causal attention go to cuDNN's fused attention where it runs (the
fastest exact kernel on Hopper), else to the Triton dense kernel. Nothing of size
O(n * d) is copied except when the causal recursion needs padding (lengths not
divisible by 2**levels) or cuDNN's output needs a layout change.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..config import HyperAttentionConfig
from .bucket_sort import (
    bucket_histogram,
    bucket_scatter,
    bucket_totals,
    stable_bucket_argsort,
)
from .hyper import (
    BUCKET_TABLE_MAX_PROJS,
    _query_blocks,
    _Randomness,
    block_id_dtype,
    causal_levels,
    level_ranks,
    pack_query_tiles,
)
from .lsh import angular_lsh_rank

FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# (BLOCK_M, BLOCK_N, num_warps, num_stages[, maxnreg]) for 16-bit inputs with head_dim
# <= 128, chosen by timing the causal forward at 131k, 32 heads, bf16 on an H100
# (benchmarks/tune_fused.py; float32 and larger heads use small tiles). With the
# one-loop kernel, (128, 32, 4, 3) beat (128, 64, 4, 3) by 4% at head_dim 64; at 128,
# 64-row tiles capped at 128 registers (four programs per SM instead of two) beat
# (128, 32, 4, 3) by 3% (results/attention/tune.txt). A forward recorded for a backward
# keeps 128-row tiles there: the backward replays the plan's tiles, and with 64 rows
# the causal 131k forward+backward took 126-127 ms instead of 117-123 (one process).
# The dense kernel, now used only for GQA/fp32 diagonals and short inputs, was flat
# across shapes.
TUNING = {
    "dense": (128, 64, 8, 3),
    "block_sample_d64": (128, 32, 4, 3),
    "block_sample_d128": (64, 32, 4, 3, 128),
    "block_sample_d128_backward": (128, 32, 4, 3),
    "block_sample_small": (64, 64, 4, 2),
}
MAX_HEAD_DIM = 256
# Query rows per program of the planning kernels. They read a table of where each
# bucket's keys start, so hash widths above BUCKET_TABLE_MAX_PROJS plan in torch.
PLAN_ROWS = 1024
# Query plus key rows planned and run per launch of the block-sample kernel: larger
# batches of problems go in chunks, so the plan's sorts and integer arrays stay small
# next to the output. Smaller chunks cost launches: at 131k tokens and 32 heads (one
# chunk here) 2**20 took the peak from 1.07x to 1.05x of the output's size at
# head_dim 128 but the time from 8.65 to 10.4 ms (results/attention/plan_chunks.txt).
PLAN_CHUNK_ROWS = 2**23


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401

        from . import triton_kernels  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def fused_unsupported_reason(q: Tensor, k: Tensor, v: Tensor) -> str | None:
    """Why the fused kernels cannot run these inputs (None if they can)."""
    if not q.is_cuda:
        return f"the fused kernels need CUDA tensors; q is on {q.device}"
    if not triton_available():
        return "the fused kernels need triton (pip install triton)"
    if q.dtype not in FUSED_DTYPES:
        return f"the fused kernels support fp16/bf16/fp32; got {q.dtype}"
    if max(q.shape[-1], v.shape[-1]) > MAX_HEAD_DIM:
        return f"the fused kernels support head_dim <= {MAX_HEAD_DIM}"
    return None


def _row_alignment(*tensors: Tensor) -> int:
    """Elements per 16 bytes if every row of every tensor starts 16-byte aligned, else 1."""
    per_16b = 16 // tensors[0].element_size()
    for t in tensors:
        strides_ok = all(s % per_16b == 0 for s in t.stride()[:-1])
        if t.data_ptr() % 16 or not strides_ok:
            return 1
    return per_16b


def cudnn_attention_usable(q: Tensor, v: Tensor) -> bool:
    """Whether cuDNN's fused attention (with its log-sum-exp) can run exact blocks of
    these inputs: Hopper or newer, 16-bit, equal q/v head sizes it supports, and the
    cuDNN SDPA backend not switched off by the user."""
    if q.dtype not in (torch.float16, torch.bfloat16) or q.shape[-1] != v.shape[-1]:
        return False
    if q.shape[-1] % 8 or q.shape[-1] > 128:
        return False
    if not hasattr(torch.ops.aten, "_scaled_dot_product_cudnn_attention"):
        return False
    if not (torch.backends.cudnn.is_available() and torch.backends.cuda.cudnn_sdp_enabled()):
        return False
    return torch.cuda.get_device_capability(q.device) >= (9, 0)


def _diagonal_block_view(x: Tensor, blocks: int) -> Tensor | None:
    """x [b, h, n, d] as a 4-D view of its `blocks` diagonal blocks of n/blocks rows,
    without a copy: [b, h*blocks, n/blocks, d] when heads are outer to sequence
    (contiguous [b, h, n, d]), [b*blocks, h, n/blocks, d] when the sequence is outer
    ([b, n, h, d] storage, the models' layout); None if neither is a view."""
    b, h, n, d = x.shape
    base = n // blocks
    split = x.unflatten(2, (blocks, base))  # [b, h, blocks, base, d]
    heads_outer = ((0, 1, 2, 3, 4), (b, h * blocks, base, d))
    seq_outer = ((0, 2, 1, 3, 4), (b * blocks, h, base, d))
    for dims, shape in (heads_outer, seq_outer):
        try:
            return split.permute(*dims).view(shape)
        except RuntimeError:
            continue
    return None


def fused_lsh_rank(x: Tensor, hyperplanes: Tensor) -> Tensor:
    """`angular_lsh_rank` in one Triton pass (x on CUDA, at most 15 hyperplanes)."""
    from .lsh import rank_dtype
    from .triton_kernels import lsh_rank_kernel

    *lead, n, d = x.shape
    x4 = x.reshape(-1, 1, n, d) if len(lead) != 2 else x
    if x4.stride(-1) != 1:
        x4 = x4.contiguous()
    b, h = x4.shape[:2]
    r = hyperplanes.shape[1]
    d_pad = _pow2(d)
    planes = torch.zeros(d_pad, 16, dtype=x.dtype, device=x.device)
    planes[:d, :r] = hyperplanes.to(device=x.device, dtype=x.dtype)
    rank = torch.empty(b, h, n, dtype=rank_dtype(r), device=x.device)
    block = 128 if d_pad <= 128 else 64
    grid = (math.ceil(n / block), b * h)
    lsh_rank_kernel[grid](
        x4, planes, rank, n, h, x4.stride(0), x4.stride(1), x4.stride(2),
        D=d, D_PAD=d_pad, R=r, BLOCK=block, IEEE=x.dtype == torch.float32, num_warps=4,
    )  # fmt: skip
    return rank.view(*lead, n)


def _pow2(n: int) -> int:
    return max(16, 1 << (n - 1).bit_length())


@dataclass
class _TilePlan:
    """One batch of non-causal problems, planned for the block-sample kernel.

    k_order [zp, nk]: key index at each sorted position; sample [zp, m] or None: sorted
    positions of the sampled keys; slot_query [zp, n_tiles * tile]: query row in each
    slot (n_rows = empty); tile_block [zp, n_tiles]: key block of each tile. key_list:
    where the blocks need no padding for the kernel's key tiles, the kernel's key list
    (see `_key_list`) whose head k_order is (a view), so the list costs no copy.
    """

    k_order: Tensor
    sample: Tensor | None
    key_block: int
    n_blocks: int
    slot_query: Tensor
    tile_block: Tensor
    n_tiles: int
    kernel_tiles: tuple[int, ...]
    key_list: Tensor | None = None

    @property
    def block_pad(self) -> int:
        """Each block's run in the key list: key_block padded to the kernel's key tiles."""
        return _round_up(self.key_block, self.kernel_tiles[1])

    def sample_blocks(self, pad: int) -> Tensor:
        """The sampled keys' blocks, int32 [zp, m + pad] (-1 on the pad)."""
        return _pad_end((self.sample // self.key_block).to(torch.int32), pad, value=-1)


def _draw_sample(n_key: int, zp: int, config: HyperAttentionConfig, rng: _Randomness):
    """The uniform sample of every problem, [zp, m] sorted positions (None if none):
    drawn for all problems at once, as the torch path does, whatever the chunking."""
    n_blocks = math.ceil(n_key / config.block_size)
    if config.sample_size > 0 and n_blocks > 1:
        return rng.indices(n_key, (zp, config.sample_size))
    return None


def _plan_tiles(
    q_rank: Tensor, k_rank: Tensor, config: HyperAttentionConfig, sample: Tensor | None,
    tiles_for,
) -> _TilePlan:  # fmt: skip
    """`plan_blocks` + `pack_query_tiles` with the per-query work in Triton passes and
    the two sorts as counting sorts (bucket_sort.py): the same key order, query blocks
    and tiles (k_order in int32, half the memory)."""
    from .triton_kernels import query_block_kernel

    zp, g, rows_per_head = q_rank.shape
    n_rows, n_key = g * rows_per_head, k_rank.shape[1]
    n_blocks = math.ceil(n_key / config.block_size)
    key_block = math.ceil(n_key / n_blocks)
    kernel_tiles = tiles_for(n_rows / n_blocks)
    tile = kernel_tiles[0]
    if config.lsh_num_projs > BUCKET_TABLE_MAX_PROJS:  # no bucket table: torch
        k_rank_sorted, k_order = torch.sort(k_rank, dim=-1, stable=True)
        q_block = _query_blocks(q_rank, k_rank_sorted, key_block, n_blocks, config.lsh_num_projs)
        pack = pack_query_tiles(q_block.reshape(zp, n_rows), n_blocks, tile)
        return _TilePlan(
            k_order.to(torch.int32), sample, key_block, n_blocks, pack.slot_query,
            pack.tile_block, pack.n_tiles, kernel_tiles,
        )  # fmt: skip
    dev = q_rank.device
    key_list = order_view = None
    block_n = kernel_tiles[1]
    if key_block % block_n == 0:  # blocks then end on key tiles: sort into the list
        n_sample = 0 if sample is None else sample.shape[1]
        width = n_blocks * key_block + _round_up(n_sample, block_n)
        key_list = torch.empty(zp, width, dtype=torch.int32, device=dev)
        order_view = key_list[:, :n_key]
    k_order, starts = stable_bucket_argsort(k_rank, 1 << config.lsh_num_projs, order_view)
    block = torch.empty(zp, n_rows, dtype=block_id_dtype(n_blocks), device=dev)
    grid = (math.ceil(n_rows / PLAN_ROWS), zp)
    query_block_kernel[grid](
        q_rank.reshape(zp, n_rows).contiguous(), starts, block,
        n_rows, rows_per_head, starts.shape[1], key_block, n_blocks, BLOCK=PLAN_ROWS,
    )  # fmt: skip
    # the rows of each block go, in row order, to consecutive slots of its tiles
    hist = bucket_histogram(block, n_blocks)
    tiles_per_block = (bucket_totals(hist, n_blocks) + tile - 1) // tile
    tile_end = tiles_per_block.cumsum(1)
    n_tiles = (n_rows + n_blocks * (tile - 1)) // tile  # bound on the tiles used
    tiles = torch.arange(n_tiles, device=dev).expand(zp, -1).contiguous()
    tile_block = torch.searchsorted(tile_end, tiles, right=True).clamp_(max=n_blocks - 1)
    slot_query = torch.full((zp, n_tiles * tile), n_rows, dtype=torch.int32, device=dev)
    bucket_scatter(block, hist, (tile_end - tiles_per_block) * tile, slot_query)
    return _TilePlan(
        k_order, sample, key_block, n_blocks, slot_query, tile_block, n_tiles, kernel_tiles,
        key_list,
    )  # fmt: skip


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _pad_end(x: Tensor, count: int, value: float = 0) -> Tensor:
    """x with `count` entries of `value` appended to its last dim (x itself if none)."""
    return torch.nn.functional.pad(x, (0, count), value=value) if count else x


def _key_list(
    plan: _TilePlan, sample_key: Tensor | None
) -> tuple[Tensor, Tensor]:
    """The block-sample kernel's key walk: (key_list [zp, n_blocks * block_pad +
    sample_pad] int32, sample_block [zp, sample_pad] int32). Each block's sorted key
    indices padded to the kernel's key tiles, then the sampled keys' (padded likewise);
    sample_block: each sampled key's block, -1 on padding (None: no sample, an empty
    [zp, 0]). Pads of nothing copy nothing (the usual case: 256-key blocks), and a plan
    that sorted into its list only fills the list's tail."""
    order = plan.k_order
    zp, n_key = order.shape
    if plan.key_list is not None:
        return _fill_key_list(plan, sample_key)
    block_pad = plan.block_pad
    blocks = _pad_end(order, plan.n_blocks * plan.key_block - n_key)
    blocks = blocks.view(zp, plan.n_blocks, plan.key_block)
    blocks = _pad_end(blocks, block_pad - plan.key_block).reshape(zp, -1)
    if sample_key is None:
        return blocks, order.new_empty(zp, 0)
    pad = _round_up(sample_key.shape[1], plan.kernel_tiles[1]) - sample_key.shape[1]
    return torch.cat([blocks, _pad_end(sample_key, pad)], 1), plan.sample_blocks(pad)


def _fill_key_list(plan: _TilePlan, sample_key: Tensor | None) -> tuple[Tensor, Tensor]:
    """`_key_list` of a plan whose list already holds the sorted keys at its head."""
    keys, zp = plan.key_list, plan.key_list.shape[0]
    head = plan.n_blocks * plan.key_block
    keys[:, plan.k_order.shape[1] : head].zero_()  # the last block's pad, if any
    if sample_key is None:
        return keys, keys.new_empty(zp, 0)
    n_sample = sample_key.shape[1]
    keys[:, head : head + n_sample].copy_(sample_key)
    keys[:, head + n_sample :].zero_()
    return keys, plan.sample_blocks(keys.shape[1] - head - n_sample)


@dataclass
class DenseCall:
    """One `_Problem.dense` launch, kept for the backward."""

    q_base: Tensor
    o_base: Tensor
    kv_index: Tensor
    k_base: Tensor
    v_base: Tensor
    n_query: int
    n_key: int
    causal: bool


@dataclass
class BlockSampleCall:
    """One `_Problem.block_sample` launch (bases already in the index type) and its key
    walk (`_key_list`: key_list, sample_block, each block's run padded to
    plan.block_pad), kept for the backward."""

    q_base: Tensor
    o_base: Tensor
    k_base: Tensor
    v_base: Tensor
    plan: _TilePlan
    sample: Tensor
    sample_key: Tensor
    n_sample: int
    sample_bias: float
    n_rows: int
    rows_per_head: int
    n_key: int
    key_list: Tensor
    sample_block: Tensor


@dataclass
class DiagonalCall:
    """Diagonal blocks (or, blocks=1, the whole exact problem) run by cuDNN, kept for the
    backward: the forward's
    auxiliary results (cum_seq_q, cum_seq_k, max_q, max_k, philox_seed, philox_offset)
    and the shape of its log-sum-exp, which cuDNN's backward takes back."""

    blocks: int
    causal: bool
    aux: tuple
    lse_shape: tuple[int, ...]


class _Problem:
    """Strided inputs [b, hq, n, d] / [b, hk, n, d], the output rows and kernel options.

    With `calls` a list, every launch is also recorded there, so the backward can replay
    the same plan (see fused_backward.py). need_lse=False: no log-sum-exp is kept (a
    single unmerged call whose caller drops it), 1/16 of the output's memory at d=64.
    """

    def __init__(
        self, q: Tensor, k: Tensor, v: Tensor, scale: float, calls: list | None = None,
        need_lse: bool = True,
    ) -> None:  # fmt: skip
        self.q, self.k, self.v = q, k, v
        self.calls = calls
        self.need_lse = need_lse
        # out [b, hq, n, dv] row-major, lse [b, hq, n] float32: allocated by the first
        # kernel that writes them (or adopted from cuDNN), so no second copy is held
        self.out: Tensor | None = None
        self.lse: Tensor | None = None
        b, hq, self.n_query, self.dim = q.shape
        hk = k.shape[1]
        self.g, self.z, self.dv = hq // hk, b * hk, v.shape[-1]
        self.scale = scale
        self.qk_scale = scale * 1.4426950408889634
        self.ieee = q.dtype == torch.float32
        self.align = _row_alignment(q, k, v)
        # 32-bit offsets halve the index traffic whenever every element offset fits
        spans = [t.untyped_storage().nbytes() // t.element_size() for t in (q, k, v)]
        spans.append(b * hq * self.n_query * v.shape[-1])
        self.index_dtype = torch.int32 if max(spans) < 2**31 else torch.int64

    @functools.cached_property
    def _host_bases(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(q_base [z, g], k_base [z], v_base [z], o_base [z, g]) on the host: element
        offsets of each head's position 0, and its first output row. Pure arithmetic on
        shapes and strides, so it needs no launches."""
        q, k, v = self.q, self.k, self.v
        b, hk = q.shape[0], k.shape[1]
        ints = dict(dtype=torch.int64)
        bi = torch.arange(b, **ints).repeat_interleave(hk)
        hki = torch.arange(hk, **ints).repeat(b)
        gi = torch.arange(self.g, **ints)
        heads = hki[:, None] * self.g + gi[None, :]  # [z, g] query head index
        q_base = bi[:, None] * q.stride(0) + heads * q.stride(1)
        # output rows: [b, hq, n] row-major == [z, g, n]
        o_base = (torch.arange(self.z * self.g, **ints) * self.n_query).view(self.z, -1)
        k_base = bi * k.stride(0) + hki * k.stride(1)
        v_base = bi * v.stride(0) + hki * v.stride(1)
        return q_base, k_base, v_base, o_base

    def _to_device(self, *arrays: Tensor) -> list[Tensor]:
        """Host integer arrays on the device in the index type, in one copy: a dozen
        tiny arithmetic launches per recursion level cost more than that."""
        flat = torch.cat([a.reshape(-1) for a in arrays]).to(self.index_dtype)
        if self.q.is_cuda:
            flat = flat.pin_memory()
        flat = flat.to(self.q.device, non_blocking=True)
        parts = flat.split([a.numel() for a in arrays])
        return [part.view(a.shape) for part, a in zip(parts, arrays, strict=True)]

    @functools.cached_property
    def _bases(self) -> list[Tensor]:
        """`_host_bases` on the device, in the index type already: the kernels then take
        them (and the levels' sums) as they are. Built on first use, so a call that cuDNN
        runs whole copies nothing."""
        return self._to_device(*self._host_bases)

    q_base = property(lambda self: self._bases[0])
    k_base = property(lambda self: self._bases[1])
    v_base = property(lambda self: self._bases[2])
    o_base = property(lambda self: self._bases[3])

    def allocate(self) -> None:
        if self.out is None:
            b, hq = self.q.shape[:2]
            self.out = self.q.new_empty(b, hq, self.n_query, self.dv)
            if self.need_lse:
                self.lse = torch.empty(
                    b, hq, self.n_query, dtype=torch.float32, device=self.q.device
                )

    def lse_args(self, merge: bool) -> tuple[Tensor, dict]:
        """The kernels' LSE argument and its STORE_LSE flag (without a table, the output
        stands in as a pointer the kernel never touches)."""
        if self.lse is None:
            if merge:
                raise RuntimeError("merging into rows needs their log-sum-exp (need_lse)")
            return self.out, dict(STORE_LSE=False)
        return self.lse, dict(STORE_LSE=True)

    def common(self) -> dict:
        return dict(
            D=self.dim, DV=self.dv, D_PAD=_pow2(self.dim), DV_PAD=_pow2(self.dv),
            IEEE=self.ieee, ALIGN=self.align,
        )  # fmt: skip

    def tiles(self) -> tuple[int, int, int, int]:
        """(BLOCK_M, BLOCK_N, num_warps, num_stages) of the dense kernel."""
        if self.ieee or max(self.dim, self.dv) > 128:
            return 64, 32, 4, 2
        return TUNING["dense"]

    def sample_tiles(self, rows_per_block: float) -> tuple[int, ...]:
        """(BLOCK_M, BLOCK_N, num_warps, num_stages[, maxnreg]) of the block-sample
        kernel."""
        if self.ieee or max(self.dim, self.dv) > 128:
            return 64, 32, 4, 2
        if rows_per_block < 192:
            return TUNING["block_sample_small"]
        if max(self.dim, self.dv) <= 64:
            return TUNING["block_sample_d64"]
        recorded = self.calls is not None  # the backward will replay these tiles
        return TUNING["block_sample_d128_backward" if recorded else "block_sample_d128"]

    def dense(
        self, q_base: Tensor, o_base: Tensor, kv_index: Tensor, k_base: Tensor,
        v_base: Tensor, n_query: int, n_key: int, *, causal: bool, merge: bool,
    ) -> None:  # fmt: skip
        """Exact attention for each problem zq: rows q_base[zq] + t * stride(seq)."""
        from .triton_kernels import dense_kernel

        if self.calls is not None:
            self.calls.append(
                DenseCall(q_base, o_base, kv_index, k_base, v_base, n_query, n_key, causal)
            )
        self.allocate()
        block_m, block_n, warps, stages = self.tiles()
        grid = (q_base.numel() * math.ceil(n_query / block_m),)
        lse, store_lse = self.lse_args(merge)
        dense_kernel[grid](
            self.q, self.k, self.v, self.out, lse,
            q_base, o_base, kv_index, k_base, v_base,
            n_query, n_key, self.q.stride(2), self.k.stride(2), self.v.stride(2),
            self.qk_scale,
            BLOCK_M=block_m, BLOCK_N=block_n, CAUSAL=causal, MERGE=merge,
            num_warps=warps, num_stages=stages, **store_lse, **self.common(),
        )  # fmt: skip

    def block_sample(
        self, q_base: Tensor, o_base: Tensor, k_base: Tensor, v_base: Tensor,
        q_rank: Tensor, k_rank: Tensor, config: HyperAttentionConfig, rng: _Randomness,
        *, merge: bool,
    ) -> None:  # fmt: skip
        """HyperAttention of one batch of problems zp, addressed in the kernel.

        q_base, o_base [zp, g]: element offset in q and output row of each problem's
        query head at position 0 (its rows follow at stride(2) and 1); k_base, v_base
        [zp]: element offset of the problem's key position 0; q_rank [zp, g, nq] and
        k_rank [zp, nk]: their LSH ranks.
        """
        zp, g, rows_per_head = q_rank.shape
        n_rows, n_key = g * rows_per_head, k_rank.shape[1]
        sample = _draw_sample(n_key, zp, config, rng)
        # plan and run at most PLAN_CHUNK_ROWS rows at a time: the plan's sorts and
        # integer arrays then stay small next to the output
        per_chunk = max(1, PLAN_CHUNK_ROWS // (n_rows + n_key))
        for z0 in range(0, zp, per_chunk):
            z1 = min(zp, z0 + per_chunk)
            self._block_sample_chunk(
                q_base[z0:z1], o_base[z0:z1], k_base[z0:z1], v_base[z0:z1],
                q_rank[z0:z1], k_rank[z0:z1],
                None if sample is None else sample[z0:z1], config, merge=merge,
            )  # fmt: skip

    def _block_sample_chunk(
        self, q_base: Tensor, o_base: Tensor, k_base: Tensor, v_base: Tensor,
        q_rank: Tensor, k_rank: Tensor, sample: Tensor | None, config: HyperAttentionConfig,
        *, merge: bool,
    ) -> None:  # fmt: skip
        from .triton_kernels import block_sample_kernel

        zp, g, rows_per_head = q_rank.shape
        n_rows, n_key = g * rows_per_head, k_rank.shape[1]
        plan = _plan_tiles(q_rank, k_rank, config, sample, self.sample_tiles)
        self.allocate()  # after the plan, whose sorts then never meet the output
        block_m, block_n, warps, stages, *registers = plan.kernel_tiles
        # a register cap only where the tuning names one
        launch_options = dict(maxnreg=registers[0]) if registers else {}
        if plan.sample is not None:
            sample, n_sample = plan.sample, plan.sample.shape[1]
            sample_key = torch.gather(plan.k_order, 1, sample)
            bias = math.log2(n_key / n_sample)
        else:
            sample = sample_key = plan.k_order
            n_sample, bias = 0, 0.0
        key_list, sample_block = _key_list(plan, sample_key if n_sample else None)
        index = self.index_dtype
        q_base, o_base, k_base, v_base = (
            t.to(index).contiguous() for t in (q_base, o_base, k_base, v_base)
        )
        if self.calls is not None:
            self.calls.append(
                BlockSampleCall(
                    q_base, o_base, k_base, v_base, plan, sample, sample_key, n_sample,
                    bias, n_rows, rows_per_head, n_key, key_list, sample_block,
                )  # fmt: skip
            )
        grid = (zp * plan.n_tiles,)
        lse, store_lse = self.lse_args(merge)
        block_sample_kernel[grid](
            self.q, self.k, self.v, self.out, lse,
            plan.slot_query, plan.tile_block, q_base, o_base, key_list, k_base,
            v_base, sample_block,
            plan.n_tiles * block_m, plan.n_tiles, n_rows, rows_per_head, g, n_key,
            plan.key_block, plan.n_blocks, plan.block_pad,
            sample_block.shape[1] if n_sample else 0, key_list.stride(0),
            self.q.stride(2), self.k.stride(2), self.v.stride(2), self.qk_scale, bias,
            BLOCK_M=block_m, BLOCK_N=block_n, HAS_SAMPLE=plan.sample is not None,
            MERGE=merge, num_warps=warps, num_stages=stages,
            **launch_options, **store_lse, **self.common(),
        )  # fmt: skip

    # -- whole problems ------------------------------------------------------------

    def exact(self, k_start: int, n_key: int, *, causal: bool, merge: bool) -> None:
        """All queries against keys [k_start, k_start + n_key) of their head."""
        z, g = self.z, self.g
        kv_index = torch.arange(z, device=self.q.device).repeat_interleave(g)
        self.dense(
            self.q_base.reshape(-1), self.o_base.reshape(-1), kv_index,
            self.k_base + k_start * self.k.stride(2), self.v_base + k_start * self.v.stride(2),
            self.n_query, n_key, causal=causal, merge=merge,
        )  # fmt: skip

    def hyper(
        self, q_rank: Tensor, k_rank: Tensor, k_start: int, config, rng, *, merge: bool
    ) -> None:
        """Non-causal HyperAttention of all queries against keys [k_start, k_start + nk)."""
        self.block_sample(
            self.q_base, self.o_base,
            self.k_base + k_start * self.k.stride(2), self.v_base + k_start * self.v.stride(2),
            q_rank, k_rank, config, rng, merge=merge,
        )  # fmt: skip

    def diagonal_problems(self, blocks: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(q_base, o_base, kv_index, k_base, v_base) of the `blocks` equal diagonal
        blocks as dense problems, ordered (z, g, block)."""
        z, g, dev = self.z, self.g, self.q.device
        base = self.n_query // blocks
        blk = torch.arange(blocks, device=dev)
        q_base = (self.q_base[:, :, None] + blk * base * self.q.stride(2)).reshape(-1)
        o_base = (self.o_base[:, :, None] + blk * base).reshape(-1)
        kv_index = (torch.arange(z, device=dev)[:, None, None] * blocks + blk).expand(z, g, -1)
        k_base = (self.k_base[:, None] + blk * base * self.k.stride(2)).reshape(-1)
        v_base = (self.v_base[:, None] + blk * base * self.v.stride(2)).reshape(-1)
        return q_base, o_base, kv_index.reshape(-1), k_base, v_base

    def dense_diagonal(self, blocks: int) -> None:
        """Exact causal attention inside each of `blocks` equal diagonal blocks (Triton)."""
        base = self.n_query // blocks
        self.dense(*self.diagonal_problems(blocks), base, base, causal=True, merge=False)

    def cudnn_diagonal(self, blocks: int, causal: bool = True) -> bool:
        """The diagonal blocks through cuDNN's fused attention, which on Hopper runs them
        1.3x faster than the Triton dense kernel at head_dim 128 (blocks=1: the whole
        problem, 3x faster; causal needs n_query == n_key there); False (nothing
        written) where it cannot run: GQA, fp32, head sizes cuDNN does not take, layouts
        with no view."""
        if self.g != 1 or not cudnn_attention_usable(self.q, self.v):
            return False
        if causal and self.k.shape[2] != self.n_query:  # cuDNN aligns the mask top-left
            return False
        views = [_diagonal_block_view(t, blocks) for t in (self.q, self.k, self.v)]
        if any(t is None for t in views) or len({t.shape[:2] for t in views}) != 1:
            return False
        try:
            out, lse, *aux = torch.ops.aten._scaled_dot_product_cudnn_attention(
                *views, None, self.need_lse, 0.0, causal, False, scale=self.scale
            )
        except RuntimeError:  # a configuration this cuDNN build rejects: Triton runs it
            return False
        if self.calls is not None:
            self.calls.append(DiagonalCall(blocks, causal, tuple(aux[:6]), tuple(lse.shape)))
        b, hq, n = self.q.shape[:3]
        base, dv = n // blocks, self.dv
        if views[0].shape[1] == hq * blocks and out.is_contiguous():
            # [b, h*blocks, base, d] row-major is [b, h, n, d] row-major: adopt it
            self.out = out.view(b, hq, n, dv)
            self.lse = lse.reshape(b, hq, n) if self.need_lse else None
            return True
        self.allocate()
        if views[0].shape[1] == hq * blocks:
            self.out.view(b, hq * blocks, base, dv).copy_(out)
            if self.need_lse:
                self.lse.view(b, hq * blocks, base).copy_(lse.view(b, hq * blocks, base))
        else:  # [b*blocks, h, base, d]
            blocked = out.unflatten(0, (b, blocks)).transpose(1, 2)
            self.out.view(b, hq, blocks, base, dv).copy_(blocked)
            if self.need_lse:
                lse = lse.reshape(b, blocks, hq, base).transpose(1, 2)
                self.lse.view(b, hq, blocks, base).copy_(lse)
        return True

    def causal_diagonal(self, config: HyperAttentionConfig) -> None:
        """The exact diagonal blocks of the causal recursion (q, k, v of the same padded
        length N). Launched before the hash: the GPU runs this long kernel while the
        host hashes and plans the first level, instead of waiting for it."""
        _, base, _ = causal_levels(self.n_query, config.min_seq_len)
        blocks = self.n_query // base
        if not self.cudnn_diagonal(blocks):
            self.dense_diagonal(blocks)

    def causal_levels(self, q_rank: Tensor, k_rank: Tensor, config, rng) -> None:
        """The off-diagonal blocks of the causal recursion, merged into the diagonal's
        output: one batched block-sample launch per level."""
        _, _, levels = causal_levels(self.n_query, config.min_seq_len)
        z, g = self.z, self.g
        q_base, k_base, v_base, o_base = self._host_bases
        for level in levels:
            size, pairs = level.size, level.pairs
            q_rank_l, k_rank_l = level_ranks(q_rank, k_rank, level)
            pair = torch.arange(pairs)
            # problem (z, pair): queries from (2 pair + 1) size, keys from 2 pair size
            q_first = ((2 * pair + 1) * size)[None, :, None]
            k_first = (2 * pair * size)[None, :]
            bases = self._to_device(
                (q_base[:, None, :] + q_first * self.q.stride(2)).reshape(z * pairs, g),
                (o_base[:, None, :] + q_first).reshape(z * pairs, g),
                (k_base[:, None] + k_first * self.k.stride(2)).reshape(-1),
                (v_base[:, None] + k_first * self.v.stride(2)).reshape(-1),
            )  # fmt: skip
            self.block_sample(*bases, q_rank_l, k_rank_l, config, rng, merge=True)


def _pad_seq(x: Tensor, rows: int) -> Tensor:
    return torch.nn.functional.pad(x, (0, 0, 0, rows))


@dataclass
class ForwardRecord:
    """The launches of one forward, for its backward: `whole` ran on all queries against
    keys from 0 (exact or non-causal problems, the cached prefix); `square` on the causal
    square of keys from `offset`, zero-padded by `pad` rows."""

    whole: list = field(default_factory=list)
    square: list = field(default_factory=list)
    offset: int = 0
    pad: int = 0


def fused_hyper_attention_with_lse(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool,
    scale: float,
    config: HyperAttentionConfig,
    rng: _Randomness,
    hash_dims: int | None = None,
    record: ForwardRecord | None = None,
    need_lse: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """HyperAttention forward with Triton kernels; inputs already validated.

    Same draws in the same order as the torch path (hyperplanes once, then one sample
    per level, then the prefix's), so both give the same result up to rounding.
    record: if given, filled with the launches, for `fused_backward`. need_lse=False:
    the caller drops the log-sum-exp, so calls that merge nothing (non-causal) keep
    none and return None for it.
    """
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    b, hq, n_query, dim = q.shape
    hk, n_key = k.shape[1], k.shape[2]
    g = hq // hk
    calls = None if record is None else record.whole
    problem = _Problem(q, k, v, scale, calls, need_lse=need_lse or causal)

    def ranks() -> tuple[Tensor, Tensor]:
        """LSH ranks of all queries [b*hk, g, nq] and keys [b*hk, nk]."""
        hd = dim if hash_dims is None else hash_dims
        planes = rng.hyperplanes(hd, config.lsh_num_projs)
        q_rank = angular_lsh_rank(q[..., :hd], planes).reshape(b * hk, g, n_query)
        return q_rank, angular_lsh_rank(k[..., :hd], planes).reshape(b * hk, n_key)

    if not causal:
        if min(n_query, n_key) <= config.min_seq_len:
            if not problem.cudnn_diagonal(1, causal=False):
                problem.exact(0, n_key, causal=False, merge=False)
        else:
            problem.hyper(*ranks(), 0, config, rng, merge=False)
        return problem.out, problem.lse

    if n_query <= config.min_seq_len:  # short: exact, cached prefix included
        if not problem.cudnn_diagonal(1, causal=True):
            problem.exact(0, n_key, causal=True, merge=False)
        return problem.out, problem.lse

    offset = n_key - n_query
    padded_n, _, _ = causal_levels(n_query, config.min_seq_len)
    pad = padded_n - n_query
    q_sq, k_sq, v_sq = q, k[:, :, offset:], v[:, :, offset:]
    if pad:
        # Zero rows at the end, seen only by discarded padded queries; they rank 0.
        q_sq, k_sq, v_sq = (_pad_seq(t, pad) for t in (q_sq, k_sq, v_sq))
    square = _Problem(q_sq, k_sq, v_sq, scale, None if record is None else record.square)
    if record is not None:
        record.offset, record.pad = offset, pad
    square.causal_diagonal(config)  # no draws: the random stream's order is unchanged
    q_rank, k_rank = ranks()
    k_rank_sq = _pad_end(k_rank[:, offset:], pad).contiguous()
    square.causal_levels(_pad_end(q_rank, pad), k_rank_sq, config, rng)
    if pad:
        problem.allocate()
        problem.out.copy_(square.out[:, :, :n_query])
        problem.lse.copy_(square.lse[:, :, :n_query])
    else:  # the same rows in the same layout
        problem.out, problem.lse = square.out, square.lse
    del square
    if offset:  # the cached prefix is visible to every query
        if min(n_query, offset) <= config.min_seq_len:
            problem.exact(0, offset, causal=False, merge=True)
        else:
            problem.hyper(q_rank, k_rank[:, :offset].contiguous(), 0, config, rng, merge=True)
    return problem.out, problem.lse


__all__ = [
    "ForwardRecord",
    "cudnn_attention_usable",
    "fused_hyper_attention_with_lse",
    "fused_lsh_rank",
    "fused_unsupported_reason",
    "triton_available",
]
