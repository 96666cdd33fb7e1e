"""What the fused forward launched, kept so the backward replays the same plan."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from .tiles import TilePlan


@dataclass
class DenseCall:
    """One dense (exact) launch: problem zq reads query rows q_base[zq] + t * stride and
    keys of key problem kv_index[zq] from k_base / v_base."""

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
    """One block-sample launch (bases already in the index type), its key walk
    (`tiles.key_list`: key_list, sample_block, each block's run padded to
    plan.block_pad) and the sink and band keys it left out."""

    q_base: Tensor
    o_base: Tensor
    k_base: Tensor
    v_base: Tensor
    plan: TilePlan
    sample: Tensor
    sample_key: Tensor
    n_sample: int
    sample_bias: float
    n_rows: int
    rows_per_head: int
    n_key: int
    key_list: Tensor
    sample_block: Tensor
    sink_keys: Tensor | None = None  # [zp] integers: leading keys left out (sinks)
    band: int = 0  # the first `band` queries left the last `band` keys out (the corner)


@dataclass(frozen=True)
class CudnnAux:
    """The auxiliary results of cuDNN's fused attention forward that its backward takes
    back (in the order `_scaled_dot_product_cudnn_attention` returns them)."""

    cum_seq_q: Tensor | None
    cum_seq_k: Tensor | None
    max_q: int
    max_k: int
    philox_seed: Tensor
    philox_offset: Tensor


@dataclass
class DiagonalCall:
    """Diagonal blocks (or, blocks=1, the whole exact problem) run by cuDNN: its
    auxiliary results and the shape of its log-sum-exp, which its backward takes back."""

    blocks: int
    causal: bool
    aux: CudnnAux
    lse_shape: tuple[int, ...]


@dataclass
class ForwardRecord:
    """The launches of one forward, for its backward: `whole` ran on all queries against
    keys from 0 (exact or non-causal problems, the cached prefix); `square` on the causal
    square of keys from `offset`, zero-padded by `pad` rows."""

    whole: list = field(default_factory=list)
    square: list = field(default_factory=list)
    offset: int = 0
    pad: int = 0
