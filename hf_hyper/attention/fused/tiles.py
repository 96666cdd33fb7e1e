"""The fused forward's plan of one batch of non-causal problems: the key order, the
query tiles of each key block and the kernel's key list. The same choices as
`planning.plan_blocks` + `planning.pack_query_tiles`, with the per-query work in Triton
passes and the two sorts as counting sorts (bucket_sort.py)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ...config import HyperAttentionConfig
from .. import planning
from ..padding import pad_end, round_up
from ..planning import Randomness
from . import tuning
from .bucket_sort import bucket_tiles, stable_bucket_argsort


@dataclass
class TilePlan:
    """One batch of non-causal problems, planned for the block-sample kernel.

    k_order [zp, nk]: key index at each sorted position; sample [zp, m] or None: sorted
    positions of the sampled keys; slot_query [zp, n_tiles * tile]: query row in each
    slot (n_rows = empty); tile_block [zp, n_tiles]: key block of each tile. key_list:
    where the blocks need no padding for the kernel's key tiles, the kernel's key list
    (see `key_list`) whose head k_order is (a view), so the list costs no copy.
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
        return round_up(self.key_block, self.kernel_tiles[1])

    def sample_blocks(self, pad: int) -> Tensor:
        """The sampled keys' blocks, int32 [zp, m + pad] (-1 on the pad)."""
        return pad_end((self.sample // self.key_block).to(torch.int32), pad, value=-1)


def draw_sample(
    n_key: int, zp: int, config: HyperAttentionConfig, rng: Randomness
) -> Tensor | None:
    """The uniform sample of every problem, [zp, m] sorted positions (None if none):
    drawn for all problems at once, as the torch path does, whatever the chunking."""
    n_blocks = math.ceil(n_key / config.block_size)
    if config.sample_size > 0 and n_blocks > 1:
        return rng.indices(n_key, (zp, config.sample_size))
    return None


def plan_tiles(
    q_rank: Tensor, k_rank: Tensor, config: HyperAttentionConfig, sample: Tensor | None,
    tiles_for: Callable[[float], tuple[int, ...]],
) -> TilePlan:  # fmt: skip
    """`plan_blocks` + `pack_query_tiles` with the per-query work in Triton passes and
    the two sorts as counting sorts (bucket_sort.py): the same key order, query blocks
    and tiles (k_order in int32, half the memory)."""
    from ..kernels.planning import query_block_kernel

    zp, g, rows_per_head = q_rank.shape
    n_rows, n_key = g * rows_per_head, k_rank.shape[1]
    n_blocks = math.ceil(n_key / config.block_size)
    key_block = math.ceil(n_key / n_blocks)
    kernel_tiles = tiles_for(n_rows / n_blocks)
    tile = kernel_tiles[0]
    if config.lsh_num_projs > planning.BUCKET_TABLE_MAX_PROJS:  # no bucket table: torch
        k_rank_sorted, k_order = torch.sort(k_rank, dim=-1, stable=True)
        q_block = planning.query_blocks(
            q_rank, k_rank_sorted, key_block, n_blocks, config.lsh_num_projs
        )
        pack = planning.pack_query_tiles(q_block.reshape(zp, n_rows), n_blocks, tile)
        return TilePlan(
            k_order.to(torch.int32), sample, key_block, n_blocks, pack.slot_query,
            pack.tile_block, pack.n_tiles, kernel_tiles,
        )  # fmt: skip
    dev = q_rank.device
    key_list = order_view = None
    block_n = kernel_tiles[1]
    if key_block % block_n == 0:  # blocks then end on key tiles: sort into the list
        n_sample = 0 if sample is None else sample.shape[1]
        width = n_blocks * key_block + round_up(n_sample, block_n)
        key_list = torch.empty(zp, width, dtype=torch.int32, device=dev)
        order_view = key_list[:, :n_key]
    k_order, starts = stable_bucket_argsort(k_rank, 1 << config.lsh_num_projs, order_view)
    block = torch.empty(zp, n_rows, dtype=planning.block_id_dtype(n_blocks), device=dev)
    grid = (math.ceil(n_rows / tuning.PLAN_ROWS), zp)
    query_block_kernel[grid](
        q_rank.reshape(zp, n_rows).contiguous(), starts, block,
        n_rows, rows_per_head, starts.shape[1], key_block, n_blocks, BLOCK=tuning.PLAN_ROWS,
    )  # fmt: skip
    # the rows of each block go, in row order, to consecutive slots of its tiles
    slot_query, tile_block = bucket_tiles(block, n_blocks, tile)
    return TilePlan(
        k_order, sample, key_block, n_blocks, slot_query, tile_block, tile_block.shape[1],
        kernel_tiles, key_list,
    )  # fmt: skip


def key_list(plan: TilePlan, sample_key: Tensor | None) -> tuple[Tensor, Tensor]:
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
    blocks = pad_end(order, plan.n_blocks * plan.key_block - n_key)
    blocks = blocks.view(zp, plan.n_blocks, plan.key_block)
    blocks = pad_end(blocks, block_pad - plan.key_block).reshape(zp, -1)
    if sample_key is None:
        return blocks, order.new_empty(zp, 0)
    pad = round_up(sample_key.shape[1], plan.kernel_tiles[1]) - sample_key.shape[1]
    return torch.cat([blocks, pad_end(sample_key, pad)], 1), plan.sample_blocks(pad)


def _fill_key_list(plan: TilePlan, sample_key: Tensor | None) -> tuple[Tensor, Tensor]:
    """`key_list` of a plan whose list already holds the sorted keys at its head."""
    keys, zp = plan.key_list, plan.key_list.shape[0]
    head = plan.n_blocks * plan.key_block
    keys[:, plan.k_order.shape[1] : head].zero_()  # the last block's pad, if any
    if sample_key is None:
        return keys, keys.new_empty(zp, 0)
    n_sample = sample_key.shape[1]
    keys[:, head : head + n_sample].copy_(sample_key)
    keys[:, head + n_sample :].zero_()
    return keys, plan.sample_blocks(keys.shape[1] - head - n_sample)
