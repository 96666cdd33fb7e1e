"""Launch parameters of the fused kernels, in one table per direction.

Tiles are (BLOCK_M, BLOCK_N, num_warps, num_stages[, maxnreg]) for 16-bit inputs with
head_dim <= 128; float32 and larger heads take the "small" entries. They were chosen by
timing the causal forward (and forward+backward) at 131k tokens, 32 heads, bf16, and
the forward's block-sample tiles at 32k too (`benchmarks/tune_fused.py`; the sweeps are
listed in docs/design-notes.md). Read them as `tuning.NAME` at call time, so a sweep can
set them.
"""

from __future__ import annotations

# Forward. A forward recorded for a backward keeps 128-row tiles at head_dim 128: the
# backward replays the plan's tiles, and its kernels prefer taller ones.
TUNING = {
    "dense": (128, 64, 8, 3),
    "dense_small": (64, 32, 4, 2),
    "block_sample_d64": (128, 32, 4, 2, 128),
    "block_sample_d128": (64, 32, 4, 2, 128),
    "block_sample_d128_backward": (128, 32, 4, 3),
    "block_sample_small": (64, 64, 4, 2),
    "block_sample_ieee": (64, 32, 4, 2),
}
# Block-sample tiles for blocks with fewer query rows than this: short tiles waste less.
FEW_ROWS_PER_BLOCK = 192

# Backward. Query-centric dQ kernels hold BLOCK_M rows and walk keys BLOCK_N at a time
# (the block-sample one holds the plan's tile of rows); key-centric dK/dV kernels hold
# BLOCK_N keys and walk rows BLOCK_M at a time (a divisor of the plan's tile).
BACKWARD_TUNING = {
    "dq": (128, 32, 4, 3),
    "dq_d128": (128, 64, 8, 3),
    "dkdv": (32, 128, 4, 3),
    "dkdv_d128": (64, 128, 8, 3),
    "small": (32, 32, 4, 1),
}

# Query rows per program of the planning kernels.
PLAN_ROWS = 1024
# Query plus key rows planned and run per launch of the block-sample kernel: larger
# batches of problems go in chunks, so the plan's sorts and integer arrays stay small
# next to the output; smaller chunks cost launches.
PLAN_CHUNK_ROWS = 2**23

# Tiles of one problem that one program of the sampled-key kernel reads: its atomics
# then add (tiles / SAMPLE_CHUNK_TILES) partial sums per sample slot.
SAMPLE_CHUNK_TILES = 16
# Bound on the float32 scratch of the sampled keys' dK, dV (one row per sample slot):
# problems beyond it run in several launches that reuse it.
SAMPLE_SCRATCH_BYTES = 32 * 2**20
SCATTER_SLOTS = 64  # sample slots compared per step of the scatter kernel
# cuDNN's backward of the diagonal blocks runs in DIAGONAL_CHUNKS groups of heads when q
# takes SPLIT_BYTES or more, so its outputs and float32 dQ accumulator take a fraction
# of the gradients' size.
DIAGONAL_CHUNKS = 4
SPLIT_BYTES = 64 * 2**20
DELTA_ROWS = 64  # rows per program of the D = rowsum(dO * O) kernel


def padded_width(n: int) -> int:
    """A head dimension padded to the kernels' power-of-two register tiles (>= 16)."""
    return max(16, 1 << (n - 1).bit_length())


def sink_tile(n_sink: int, block_n: int) -> int:
    """Keys per tile of the sinks' exact loop: a few sinks fit one 16-wide tile (the
    smallest a tensor-core dot takes), so they cost far less than a BLOCK_N key tile."""
    return min(block_n, padded_width(max(1, n_sink)))
