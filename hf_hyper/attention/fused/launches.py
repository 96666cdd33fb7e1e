"""The fused forward's launches on one problem: strided inputs, the output rows they
fill, and each kernel launched on them (dense, block-sample, the band's corner, the exact
diagonal in cuDNN or the dense kernel), each recorded for the backward when asked. Every
launch forms its addresses from integer bases and merges into the output in place; the
recursion that orders them is in forward.py.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from ...config import HyperAttentionConfig
from ..blockwise import merge_by_lse
from ..numerics import LOG2E
from ..planning import Randomness, RowTarget
from . import tuning
from .cudnn import cudnn_attention_usable, cudnn_forward, diagonal_block_view
from .overlap import DiagonalOverlap
from .records import BlockSampleCall, DenseCall, DiagonalCall
from .support import row_alignment
from .tiles import draw_sample, key_list, plan_tiles
from .tuning import padded_width, sink_tile


class Problem:
    """Strided inputs [b, hq, n, d] / [b, hk, n, d], the output rows and kernel options.

    With `calls` a list, every launch is also recorded there, so the backward can replay
    the same plan (see backward.py). need_lse=False: no log-sum-exp is kept (a
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
        self.qk_scale = scale * LOG2E
        self.ieee = q.dtype == torch.float32
        self.align = row_alignment(q, k, v)
        # 32-bit offsets halve the index traffic whenever every element offset fits
        spans = [t.untyped_storage().nbytes() // t.element_size() for t in (q, k, v)]
        spans.append(b * hq * self.n_query * v.shape[-1])
        self.index_dtype = torch.int32 if max(spans) < 2**31 else torch.int64
        # The plan's integer arrays are shape arithmetic: on the host they cost no
        # launches, and one copy moves them. A CUDA graph cannot capture a copy from
        # host memory that may change, so under capture they are built on the device.
        capturing = q.is_cuda and torch.cuda.is_current_stream_capturing()
        self.plan_device = q.device if capturing else torch.device("cpu")
        # set by a causal forward whose levels run beside its diagonal (overlap.py)
        self.overlap = DiagonalOverlap(q.device, enabled=False)

    @functools.cached_property
    def plan_bases(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(q_base [z, g], k_base [z], v_base [z], o_base [z, g]) on plan_device: element
        offsets of each head's position 0, and its first output row. Pure arithmetic on
        shapes and strides, so on the host it needs no launches."""
        q, k, v = self.q, self.k, self.v
        b, hk = q.shape[0], k.shape[1]
        ints = dict(dtype=torch.int64, device=self.plan_device)
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

    def to_device(self, *arrays: Tensor) -> list[Tensor]:
        """Integer arrays from plan_device on the device in the index type, in one copy:
        a dozen tiny arithmetic launches per recursion level cost more than that."""
        flat = torch.cat([a.reshape(-1) for a in arrays]).to(self.index_dtype)
        if flat.device != self.q.device:
            if self.q.is_cuda:
                flat = flat.pin_memory()
            flat = flat.to(self.q.device, non_blocking=True)
        parts = flat.split([a.numel() for a in arrays])
        return [part.view(a.shape) for part, a in zip(parts, arrays, strict=True)]

    @functools.cached_property
    def _bases(self) -> list[Tensor]:
        """`plan_bases` on the device, in the index type already: the kernels then take
        them (and the levels' sums) as they are. Built on first use, so a call that cuDNN
        runs whole copies nothing."""
        return self.to_device(*self.plan_bases)

    @functools.cached_property
    def head_kv_index(self) -> Tensor:
        """[z * g]: the key problem of each (key head, query head) problem, in q_base's
        order."""
        return torch.arange(self.z, device=self.q.device).repeat_interleave(self.g)

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
            D=self.dim, DV=self.dv, D_PAD=padded_width(self.dim), DV_PAD=padded_width(self.dv),
            IEEE=self.ieee, ALIGN=self.align,
        )  # fmt: skip

    def tiles(self) -> tuple[int, int, int, int]:
        """(BLOCK_M, BLOCK_N, num_warps, num_stages) of the dense kernel."""
        if self.ieee or max(self.dim, self.dv) > 128:
            return tuning.TUNING["dense_small"]
        return tuning.TUNING["dense"]

    def sample_tiles(self, rows_per_block: float) -> tuple[int, ...]:
        """(BLOCK_M, BLOCK_N, num_warps, num_stages[, maxnreg]) of the block-sample
        kernel."""
        table = tuning.TUNING
        if self.ieee or max(self.dim, self.dv) > 128:
            return table["block_sample_ieee"]
        if rows_per_block < tuning.FEW_ROWS_PER_BLOCK:
            return table["block_sample_small"]
        if max(self.dim, self.dv) <= 64:
            return table["block_sample_d64"]
        recorded = self.calls is not None  # the backward will replay these tiles
        return table["block_sample_d128_backward" if recorded else "block_sample_d128"]

    def dense(
        self, q_base: Tensor, o_base: Tensor, kv_index: Tensor, k_base: Tensor,
        v_base: Tensor, n_query: int, n_key: int, *, causal: bool, merge: bool,
    ) -> None:  # fmt: skip
        """Exact attention for each problem zq: rows q_base[zq] + t * stride(seq)."""
        from ..kernels.forward import dense_kernel

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
        q_rank: Tensor, k_rank: Tensor, config: HyperAttentionConfig, rng: Randomness,
        *, merge: bool, sink_keys: Tensor | None = None, band: int = 0,
    ) -> None:  # fmt: skip
        """HyperAttention of one batch of problems zp, addressed in the kernel.

        q_base, o_base [zp, g]: element offset in q and output row of each problem's
        query head at position 0 (its rows follow at stride(2) and 1); k_base, v_base
        [zp]: element offset of the problem's key position 0; q_rank [zp, g, nq] and
        k_rank [zp, nk]: their LSH ranks; sink_keys [zp] integers (or None): leading keys of
        each problem left out of its blocks and sample (attended exactly elsewhere);
        band: each problem's first `band` queries leave its last `band` keys out likewise
        (the corner `corner` attends exactly).
        """
        zp, g, rows_per_head = q_rank.shape
        n_rows, n_key = g * rows_per_head, k_rank.shape[1]
        sample = draw_sample(n_key, zp, config, rng)
        # plan and run at most PLAN_CHUNK_ROWS rows at a time: the plan's sorts and
        # integer arrays then stay small next to the output
        per_chunk = max(1, tuning.PLAN_CHUNK_ROWS // (n_rows + n_key))
        for z0 in range(0, zp, per_chunk):
            z1 = min(zp, z0 + per_chunk)
            self._block_sample_chunk(
                q_base[z0:z1], o_base[z0:z1], k_base[z0:z1], v_base[z0:z1],
                q_rank[z0:z1], k_rank[z0:z1],
                None if sample is None else sample[z0:z1], config, merge=merge,
                sink_keys=None if sink_keys is None else sink_keys[z0:z1], band=band,
            )  # fmt: skip

    def _block_sample_chunk(
        self, q_base: Tensor, o_base: Tensor, k_base: Tensor, v_base: Tensor,
        q_rank: Tensor, k_rank: Tensor, sample: Tensor | None, config: HyperAttentionConfig,
        *, merge: bool, sink_keys: Tensor | None, band: int,
    ) -> None:  # fmt: skip
        from ..kernels.forward import block_sample_kernel

        zp, g, rows_per_head = q_rank.shape
        n_rows, n_key = g * rows_per_head, k_rank.shape[1]
        plan = plan_tiles(q_rank, k_rank, config, sample, self.sample_tiles)
        self.overlap.wait_diagonal()  # the launch merges into the diagonal's output
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
        keys, sample_block = key_list(plan, sample_key if n_sample else None)
        index = self.index_dtype
        q_base, o_base, k_base, v_base = (
            t.to(index).contiguous() for t in (q_base, o_base, k_base, v_base)
        )
        if self.calls is not None:
            self.calls.append(
                BlockSampleCall(
                    q_base,
                    o_base,
                    k_base,
                    v_base,
                    plan,
                    sample,
                    sample_key,
                    n_sample,
                    bias,
                    n_rows,
                    rows_per_head,
                    n_key,
                    keys,
                    sample_block,
                    sink_keys,
                    band,
                )
            )
        grid = (zp * plan.n_tiles,)
        lse, store_lse = self.lse_args(merge)
        block_sample_kernel[grid](
            self.q, self.k, self.v, self.out, lse,
            plan.slot_query, plan.tile_block, q_base, o_base, keys, k_base,
            v_base, sample_block, sample_block if sink_keys is None else sink_keys,
            plan.n_tiles * block_m, plan.n_tiles, n_rows, rows_per_head, g, n_key,
            plan.key_block, plan.n_blocks, plan.block_pad,
            sample_block.shape[1] if n_sample else 0, keys.stride(0),
            self.q.stride(2), self.k.stride(2), self.v.stride(2), self.qk_scale, bias,
            BLOCK_M=block_m, BLOCK_N=block_n, HAS_SAMPLE=plan.sample is not None,
            MERGE=merge, HAS_SINKS=sink_keys is not None, HAS_BAND=band > 0, band=band,
            SINK_N=sink_tile(config.sinks, block_n), num_warps=warps, num_stages=stages,
            **launch_options, **store_lse,
            **self.common(),
        )  # fmt: skip

    # -- whole problems ------------------------------------------------------------

    def exact(self, k_start: int, n_key: int, *, causal: bool, merge: bool) -> None:
        """All queries against keys [k_start, k_start + n_key) of their head."""
        self.dense(
            self.q_base.reshape(-1), self.o_base.reshape(-1), self.head_kv_index,
            self.k_base + k_start * self.k.stride(2), self.v_base + k_start * self.v.stride(2),
            self.n_query, n_key, causal=causal, merge=merge,
        )  # fmt: skip

    def exact_rows(self, row_start: int, n_key: int) -> None:
        """Rows from row_start of every head against keys [0, n_key), merged in (a query
        finder's sinks, which its problems leave out)."""
        rows = self.n_query - row_start
        self.dense(
            self.q_base.reshape(-1) + row_start * self.q.stride(2),
            self.o_base.reshape(-1) + row_start, self.head_kv_index, self.k_base, self.v_base,
            rows, n_key, causal=False, merge=True,
        )  # fmt: skip

    def hyper(
        self, q_rank: Tensor, k_rank: Tensor, k_start: int, config, rng, *, merge: bool,
        n_sink: int = 0, band: int = 0,
    ) -> None:  # fmt: skip
        """Non-causal HyperAttention of all queries against keys [k_start, k_start + nk),
        the first n_sink of them attended exactly (out of the blocks and the sample), and
        with a band, the corner of the first `band` queries and last `band` keys too."""
        sink_keys = None
        if n_sink:
            sink_keys = torch.full((self.z,), n_sink, dtype=torch.int32, device=self.q.device)
        self.block_sample(
            self.q_base, self.o_base,
            self.k_base + k_start * self.k.stride(2), self.v_base + k_start * self.v.stride(2),
            q_rank, k_rank, config, rng, merge=merge, sink_keys=sink_keys, band=band,
        )  # fmt: skip
        if band:
            k_end = k_start + k_rank.shape[1]
            self.corner(
                self.q_base.reshape(-1), self.o_base.reshape(-1), self.head_kv_index,
                self.k_base + k_end * self.k.stride(2), self.v_base + k_end * self.v.stride(2),
                band,
            )  # fmt: skip

    def corner(
        self, q_base: Tensor, o_base: Tensor, kv_index: Tensor, k_end: Tensor, v_end: Tensor,
        band: int,
    ) -> None:  # fmt: skip
        """The band's corner, merged in: the first `band` query rows of each problem (from
        q_base, o_base) attend exactly the `band` keys before k_end[kv_index] (element
        offset of the key after the last; the queries follow those keys)."""
        self.dense(
            q_base, o_base, kv_index, k_end - band * self.k.stride(2),
            v_end - band * self.v.stride(2), band, band, causal=False, merge=True,
        )  # fmt: skip

    def record_sinks(self, row_start: int, n_sink: int) -> None:
        """For the backward: rows from row_start of every head attended keys [0, n_sink)
        exactly (in the block-sample launches that held the sinks), recorded as the one
        dense problem their gradients are."""
        if self.calls is None:
            return
        self.calls.append(
            DenseCall(
                self.q_base.reshape(-1) + row_start * self.q.stride(2),
                self.o_base.reshape(-1) + row_start,
                self.head_kv_index,
                self.k_base,
                self.v_base,
                self.n_query - row_start,
                n_sink,
                False,
            )  # fmt: skip
        )

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
        """The diagonal blocks through cuDNN's fused attention, faster than the Triton
        dense kernel on Hopper (blocks=1: the whole problem,
        causal only with n_query == n_key); False (nothing written) where it cannot run:
        GQA, fp32, head sizes cuDNN does not take, layouts with no view."""
        if self.g != 1 or not cudnn_attention_usable(self.q, self.v):
            return False
        if causal and self.k.shape[2] != self.n_query:  # cuDNN aligns the mask top-left
            return False
        views = [diagonal_block_view(t, blocks) for t in (self.q, self.k, self.v)]
        if any(t is None for t in views) or len({t.shape[:2] for t in views}) != 1:
            return False
        try:
            out, lse, aux = cudnn_forward(
                *views, need_lse=self.need_lse, causal=causal, scale=self.scale
            )
        except RuntimeError:  # a configuration this cuDNN build rejects: Triton runs it
            return False
        if self.calls is not None:
            self.calls.append(DiagonalCall(blocks, causal, aux, tuple(lse.shape)))
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

    def grouped(self, k_start: int = 0, k_end: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Queries [z, g, nq, d], keys [z, nk, d] and values [z, nk, dv] (keys
        [k_start, k_end)) grouped by key head: the layout the finders work in."""
        keys, values = self.k[:, :, k_start:k_end], self.v[:, :, k_start:k_end]
        return (
            self.q.reshape(self.z, self.g, self.n_query, self.dim),
            keys.reshape(self.z, keys.shape[2], self.dim),
            values.reshape(self.z, values.shape[2], self.dv),
        )

    def row_target(
        self, q_base: Tensor, o_base: Tensor, k_base: Tensor, v_base: Tensor
    ) -> RowTarget:
        """These rows (bases as the launches take them: q_base, o_base [zp, g], k_base,
        v_base [zp]) of this problem's tensors and output, for a finder's kernels to
        merge into; the output is allocated, and the diagonal waited for, first."""
        self.overlap.wait_diagonal()  # the rows may hold the diagonal's output
        self.allocate()
        assert self.lse is not None, "a finder's merge needs the log-sum-exp"
        return RowTarget(
            self.q, self.k, self.v, self.out, self.lse, q_base.reshape(-1),
            o_base.reshape(-1), k_base, v_base, self.q.stride(2), self.k.stride(2),
            self.v.stride(2), self.align,
        )  # fmt: skip

    def clear_rows(self) -> None:
        """Every row empty (output 0, log-sum-exp -inf), the log-sum-exp kept: a start
        that merges take as nothing."""
        self.need_lse = True
        self.allocate()
        assert self.lse is not None
        self.out.zero_()
        self.lse.fill_(-math.inf)

    def write_rows(self, out: Tensor, lse: Tensor) -> None:
        """A finder's (out [z, g, nq, dv], lse [z, g, nq]) as every row's output, the
        log-sum-exp kept (the merges to come need it)."""
        self.need_lse = True
        self.allocate()
        assert self.lse is not None
        self.out.view(self.z, self.g, self.n_query, self.dv).copy_(out)
        self.lse.view(self.z, self.g, self.n_query).copy_(lse)

    def merge_rows(self, out: Tensor, lse: Tensor) -> None:
        """Merge a finder's (out [z, g, nq, dv], lse [z, g, nq]) into every row, in
        place; or, given pairs, out [z, g, pairs, size, dv] into the second half of each
        pair of rows (a causal level's queries)."""
        self.overlap.wait_diagonal()  # the rows hold the diagonal's output
        self.allocate()
        assert self.lse is not None
        held_out = self.out.view(self.z, self.g, self.n_query, self.dv)
        held_lse = self.lse.view(self.z, self.g, self.n_query)
        if out.dim() == 5:  # [z, g, pairs, size, dv]: each pair's second half
            pairs, size = out.shape[2:4]
            held_out = held_out.view(self.z, self.g, pairs, 2, size, self.dv)[:, :, :, 1]
            held_lse = held_lse.view(self.z, self.g, pairs, 2, size)[:, :, :, 1]
        merged_out, merged_lse = merge_by_lse(held_out.float(), held_lse, out, lse)
        held_out.copy_(merged_out)
        held_lse.copy_(merged_lse)
