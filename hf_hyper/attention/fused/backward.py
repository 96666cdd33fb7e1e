"""Fused HyperAttention backward: the forward records its launches (plans, samples,
bases), and the backward replays them with the kernels of `kernels/backward.py`, given
the final output and log-sum-exp.

The hash, the sort and the samples are discrete choices, so for fixed choices the
output is a smooth function of q, k, v and this is its exact gradient (the same as
autograd through the torch path with the same draws). A gradient that reaches the
log-sum-exp enters through the row term: with dL/dlse_i = dlse_i, every part's score
gradient is p * (dO.v - (D - dlse)), since d lse_i / d s_ij = p_ij.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..padding import pad_rows
from . import tuning
from .cudnn import cudnn_backward, diagonal_block_view
from .launches import Problem
from .records import BlockSampleCall, DenseCall, DiagonalCall, ForwardRecord
from .tuning import padded_width


def dense_layout(t: Tensor) -> bool:
    """Whether t covers its memory without gaps or overlaps (any dimension order), so
    `zeros_like` gives a gradient buffer with the same strides."""
    expected = 1
    for i in sorted(range(t.dim()), key=t.stride):
        if t.shape[i] != 1 and t.stride(i) != expected:
            return False
        expected *= t.shape[i]
    return True


def _row_delta(dout: Tensor, out: Tensor) -> Tensor:
    """D = rowsum(dO * O) in float32, [b, h, n] (both row-major [b, h, n, dv])."""
    from ..kernels.backward import row_delta_kernel

    dv = out.shape[-1]
    delta = torch.empty(out.shape[:-1], dtype=torch.float32, device=out.device)
    rows = delta.numel()
    row_delta_kernel[(math.ceil(rows / tuning.DELTA_ROWS),)](
        dout, out, delta, rows, DV=dv, DV_PAD=padded_width(dv), BLOCK=tuning.DELTA_ROWS, num_warps=4
    )
    return delta


class GradientPass:
    """Gradient launches on one `Problem`: dq, dk, dv buffers with the dtype and
    strides of its q, k, v; out, dout, lse, delta its output rows' final values
    (row-major [b, hq, n, .]).

    The buffers are the gradients themselves, not float32 copies: every kernel sums its
    part in float32 and rounds once when it adds it in (a row takes one rounding per
    part and recursion level), so the backward holds no more than the gradients, where
    exact kernels hold a float32 dQ accumulator besides."""

    def __init__(self, problem: Problem, grads: tuple[Tensor, Tensor, Tensor] | None,
                 out: Tensor, dout: Tensor, lse: Tensor, delta: Tensor,
                 use_cudnn: bool = True) -> None:  # fmt: skip
        self.p = problem
        # cuDNN's backward forms its own row term D from dO and O, so it can run the
        # diagonal blocks only while no gradient reaches the log-sum-exp
        self.use_cudnn = use_cudnn
        # None: not allocated yet. If cuDNN's diagonal blocks run first they cover every
        # row, so their gradients are the buffers' first contents (no zero fill).
        self.dq, self.dk, self.dv = grads if grads is not None else (None, None, None)
        self.out, self.dout, self.lse, self.delta = out, dout, lse, delta

    def tiles(self, kind: str) -> tuple[int, int, int, int]:
        p = self.p
        if p.ieee or max(p.dim, p.dv) > 128:
            return tuning.BACKWARD_TUNING["small"]
        return tuning.BACKWARD_TUNING[kind + ("_d128" if max(p.dim, p.dv) > 64 else "")]

    def common(self) -> dict:
        p = self.p
        return dict(
            D=p.dim, DV=p.dv, D_PAD=padded_width(p.dim), DV_PAD=padded_width(p.dv), IEEE=p.ieee,
            ALIGN=p.align,  # a fact about the element offsets, which the buffers share
        )  # fmt: skip

    def strides(self) -> tuple[int, int, int]:
        return self.p.q.stride(2), self.p.k.stride(2), self.p.v.stride(2)

    def run(self, call) -> None:
        if isinstance(call, DiagonalCall):
            if not (self.use_cudnn and self.cudnn_diagonal(call)):
                self.initialise()
                rows, keys = self.p.n_query // call.blocks, self.p.k.shape[2] // call.blocks
                diagonal = self.p.diagonal_problems(call.blocks)
                self.dense(DenseCall(*diagonal, rows, keys, call.causal))
            return
        self.initialise()
        if isinstance(call, DenseCall):
            self.dense(call)
        elif isinstance(call, BlockSampleCall):
            self.block_sample(call)
        else:
            raise TypeError(f"no backward for recorded launch {call!r}")

    def initialise(self) -> None:
        if self.dq is None:
            p = self.p
            self.dq, self.dk, self.dv = (torch.zeros_like(t) for t in (p.q, p.k, p.v))

    def cudnn_diagonal(self, call: DiagonalCall) -> bool:
        """The diagonal blocks' gradient through cuDNN's backward, fed the final output
        and log-sum-exp (its D = rowsum(dO * O) is then the whole row's); False where
        the blocks' rows have no 4-D view cuDNN can take (then Triton runs them)."""
        p, blocks = self.p, call.blocks
        views = [diagonal_block_view(t, blocks) for t in (p.q, p.k, p.v)]
        b, hq, n = p.q.shape[:3]
        base = n // blocks
        if any(t is None for t in views):
            return False
        if views[0].shape[1] == hq * blocks:  # heads outer: row-major rows are a view
            shape = (b, hq * blocks, base)
            out, dout = (t.view(*shape, -1) for t in (self.out, self.dout))
            lse = self.lse.view(shape)
        elif b == 1:  # sequence outer: [blocks, h, base, .] strided views
            out, dout = (
                t.view(hq, blocks, base, -1).transpose(0, 1) for t in (self.out, self.dout)
            )
            lse = self.lse.view(hq, blocks, base).transpose(0, 1).contiguous()
        else:
            return False
        unit = blocks if views[0].shape[1] == hq * blocks else 1  # dim-1 rows per head
        lse = lse.view(call.lse_shape)
        fresh = self.dq is None
        if fresh:  # the blocks cover every row: no zero fill
            self.dq, self.dk, self.dv = (torch.empty_like(t) for t in (p.q, p.k, p.v))
        accs = [diagonal_block_view(t, blocks) for t in (self.dq, self.dk, self.dv)]
        # large inputs go a few heads at a time: cuDNN's outputs and its float32 dQ
        # accumulator then take a fraction of the gradients' size
        large = p.q.numel() * p.q.element_size() >= tuning.SPLIT_BYTES
        chunks = tuning.DIAGONAL_CHUNKS if large else 1
        per_chunk = math.ceil(hq / min(chunks, hq))
        for h0 in range(0, hq, per_chunk):
            rows = slice(h0 * unit, min(hq, h0 + per_chunk) * unit)
            try:
                grads = cudnn_backward(
                    dout[:, rows], *(t[:, rows] for t in views), out[:, rows],
                    lse[:, rows].contiguous(), call.aux, causal=call.causal, scale=p.scale,
                )  # fmt: skip
            except RuntimeError:
                if fresh and h0 == 0:
                    self.dq = self.dk = self.dv = None
                    return False  # nothing written: Triton runs the blocks
                raise
            for acc, grad in zip(accs, grads, strict=True):
                if fresh:
                    acc[:, rows].copy_(grad)
                else:
                    acc[:, rows].add_(grad)
            del grads
        return True

    def dense(self, call: DenseCall) -> None:
        from ..kernels.backward import dense_dkdv_kernel, dense_dq_kernel

        p = self.p
        tensors = (p.q, p.k, p.v, self.dout, self.lse, self.delta)
        block_m, block_n, warps, stages = self.tiles("dq")
        dense_dq_kernel[(call.q_base.numel() * math.ceil(call.n_query / block_m),)](
            *tensors, self.dq, call.q_base, call.o_base, call.kv_index, call.k_base,
            call.v_base, call.n_query, call.n_key, *self.strides(), p.qk_scale, p.scale,
            BLOCK_M=block_m, BLOCK_N=block_n, CAUSAL=call.causal,
            num_warps=warps, num_stages=stages, **self.common(),
        )  # fmt: skip
        # the g query problems that read each key problem, [n_key_problems, g]
        q_problems = torch.argsort(call.kv_index, stable=True).view(-1, p.g)
        block_m, block_n, warps, stages = self.tiles("dkdv")
        dense_dkdv_kernel[(q_problems.shape[0] * math.ceil(call.n_key / block_n),)](
            *tensors, self.dk, self.dv, call.q_base, call.o_base, q_problems, call.k_base,
            call.v_base, call.n_query, call.n_key, *self.strides(), p.qk_scale, p.scale,
            p.g, BLOCK_M=block_m, BLOCK_N=block_n, CAUSAL=call.causal,
            num_warps=warps, num_stages=stages, **self.common(),
        )  # fmt: skip

    def block_sample(self, call: BlockSampleCall) -> None:
        from ..kernels.backward import block_dkdv_kernel, block_sample_dq_kernel

        p, plan = self.p, call.plan
        tensors = (p.q, p.k, p.v, self.dout, self.lse, self.delta)
        zp = plan.slot_query.shape[0]
        has_sinks = call.sink_keys is not None
        sinks = call.sink_keys if has_sinks else plan.tile_block  # unread without sinks
        tile = plan.kernel_tiles[0]  # the tile the plan packed rows into
        n_slots = plan.n_tiles * tile
        has_sample = plan.sample is not None
        _, block_n, warps, stages = self.tiles("dq")
        # key tiles that end where the forward's padded runs end
        sample_pad = call.sample_block.shape[1]
        block_n = math.gcd(block_n, plan.block_pad, sample_pad or plan.block_pad)
        block_sample_dq_kernel[(zp * plan.n_tiles,)](
            *tensors, self.dq, plan.slot_query, plan.tile_block, call.q_base, call.o_base,
            call.key_list, call.k_base, call.v_base, call.sample_block, sinks,
            n_slots, plan.n_tiles, call.n_rows, call.rows_per_head, p.g, call.n_key,
            plan.key_block, plan.n_blocks, plan.block_pad, sample_pad,
            call.key_list.stride(0), *self.strides(), p.qk_scale, p.scale,
            call.sample_bias, BLOCK_M=tile, BLOCK_N=block_n, HAS_SAMPLE=has_sample,
            HAS_SINKS=has_sinks, HAS_BAND=call.band > 0, band=call.band, num_warps=warps,
            num_stages=stages, **self.common(),
        )  # fmt: skip

        # tiles of each key block: used tiles come first, in block order
        used = plan.slot_query.view(zp, plan.n_tiles, tile)[:, :, 0] < call.n_rows
        block_tiles = torch.zeros(zp, plan.n_blocks, dtype=torch.int32, device=used.device)
        block_tiles.scatter_add_(1, plan.tile_block.long(), used.int())
        block_tile = block_tiles.cumsum(1, dtype=torch.int32) - block_tiles
        block_m, block_n, warps, stages = self.tiles("dkdv")
        block_m = math.gcd(block_m, tile)  # row steps that tile the plan's tiles
        sub_tiles = math.ceil(plan.key_block / block_n)
        block_dkdv_kernel[(zp * plan.n_blocks * sub_tiles,)](
            *tensors, self.dk, self.dv, plan.slot_query, block_tile, block_tiles,
            call.q_base, call.o_base, plan.k_order, call.k_base, call.v_base, sinks,
            n_slots, plan.n_blocks, call.n_rows, call.rows_per_head, p.g, call.n_key,
            plan.k_order.stride(0), plan.key_block, sub_tiles, *self.strides(), p.qk_scale,
            p.scale,
            TILE=tile, BLOCK_M=block_m, BLOCK_N=block_n, HAS_SINKS=has_sinks,
            HAS_BAND=call.band > 0, band=call.band, num_warps=warps, num_stages=stages,
            **self.common(),
        )  # fmt: skip
        if has_sample:
            self.sample_dkdv(call, tensors, block_tiles.sum(1, dtype=torch.int32), block_m)

    def sample_dkdv(self, call: BlockSampleCall, tensors: tuple, used_tiles: Tensor,
                    block_m: int) -> None:  # fmt: skip
        """dK, dV of the sampled keys: chunks of tiles add atomically into float32
        scratch rows (one per sample slot), then each key's slots go into dK, dV once."""
        from ..kernels.backward import sample_dkdv_kernel, sample_scatter_kernel

        p, plan = self.p, call.plan
        zp, m = plan.slot_query.shape[0], call.n_sample
        tile = plan.kernel_tiles[0]
        _, block_n, warps, stages = self.tiles("dkdv")
        sub_tiles = math.ceil(m / block_n)
        n_chunks = math.ceil(plan.n_tiles / tuning.SAMPLE_CHUNK_TILES)
        per_launch = max(1, tuning.SAMPLE_SCRATCH_BYTES // (4 * m * (p.dim + p.dv)))
        per_launch = min(per_launch, zp)
        scratch = torch.empty(per_launch * m * (p.dim + p.dv), dtype=torch.float32,
                              device=p.q.device)  # fmt: skip
        for zp0 in range(0, zp, per_launch):
            problems = min(per_launch, zp - zp0)
            sk = scratch[: problems * m * p.dim]
            sv = scratch[problems * m * p.dim : problems * m * (p.dim + p.dv)]
            sk.zero_(), sv.zero_()
            sample_dkdv_kernel[(problems * sub_tiles * n_chunks,)](
                *tensors, sk, sv, plan.slot_query, plan.tile_block, used_tiles,
                call.q_base, call.o_base, call.k_base, call.v_base, call.sample,
                call.sample_key, call.sink_keys if call.sink_keys is not None else call.sample,
                zp0, plan.n_tiles * tile, plan.n_tiles, call.n_rows,
                call.rows_per_head, p.g, plan.key_block, m, sub_tiles, tuning.SAMPLE_CHUNK_TILES,
                n_chunks, *self.strides(), p.qk_scale, p.scale, call.sample_bias,
                TILE=tile, BLOCK_M=block_m, BLOCK_N=block_n,
                HAS_SINKS=call.sink_keys is not None, HAS_BAND=call.band > 0, band=call.band,
                n_key=call.n_key, num_warps=warps, num_stages=stages, **self.common(),
            )  # fmt: skip
            sample_scatter_kernel[(m, problems)](
                self.dk, self.dv, sk, sv, call.k_base, call.v_base, call.sample_key, zp0, m,
                p.k.stride(2), p.v.stride(2), D=p.dim, DV=p.dv, D_PAD=padded_width(p.dim),
                DV_PAD=padded_width(p.dv), SLOTS=tuning.SCATTER_SLOTS, num_warps=1,
            )  # fmt: skip


def fused_backward(
    q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, dout: Tensor,
    record: ForwardRecord, scale: float, dlse: Tensor | None = None,
) -> list[Tensor]:  # fmt: skip
    """[dq, dk, dv] in the dtype and strides of q, k, v, for the forward that filled
    `record` on these (dense-layout) inputs and returned out [b, hq, n, dv] and lse;
    dout and dlse [b, hq, n] (None: no gradient reaches the lse) are their gradients."""
    dout, out = dout.contiguous(), out.contiguous()
    delta = _row_delta(dout, out)
    use_cudnn = dlse is None
    if dlse is not None:
        delta = delta - dlse.to(torch.float32).reshape(delta.shape)
    diagonal_first = sorted(record.square, key=lambda call: not isinstance(call, DiagonalCall))
    if not (record.whole or record.pad):  # the square is all of q, k, v
        run = GradientPass(Problem(q, k, v, scale), None, out, dout, lse, delta, use_cudnn)
        for call in diagonal_first:
            run.run(call)
        run.initialise()
        return [run.dq, run.dk, run.dv]

    grads = [torch.zeros_like(t) for t in (q, k, v)]
    run = GradientPass(Problem(q, k, v, scale), grads, out, dout, lse, delta, use_cudnn)
    for call in record.whole:
        run.run(call)
    if record.square:
        offset, pad = record.offset, record.pad
        dq, dk, dv = grads
        square = (q, k[:, :, offset:], v[:, :, offset:])
        square_grads = (dq, dk[:, :, offset:], dv[:, :, offset:])
        sq_out, sq_dout, sq_lse, sq_delta = out, dout, lse, delta
        if pad:  # as in the forward; padded rows get dO = 0 and L = +inf (p = 0)
            square = tuple(pad_rows(t, pad) for t in square)
            square_grads = tuple(torch.zeros_like(t) for t in square)
            sq_out, sq_dout = pad_rows(out, pad), pad_rows(dout, pad)
            sq_lse = torch.nn.functional.pad(lse, (0, pad), value=math.inf)
            sq_delta = torch.nn.functional.pad(delta, (0, pad))
        run = GradientPass(
            Problem(*square, scale), square_grads, sq_out, sq_dout, sq_lse, sq_delta, use_cudnn
        )
        for call in diagonal_first:
            run.run(call)
        if pad:
            n = q.shape[2]
            dq.add_(square_grads[0][:, :, :n])
            dk[:, :, offset:].add_(square_grads[1][:, :, :n])
            dv[:, :, offset:].add_(square_grads[2][:, :, :n])
    return grads
