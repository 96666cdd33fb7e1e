"""HyperAttention through Triton kernels on CUDA, in one-way layers:
support / tuning / records -> hashing, bucket_sort, tiles, cudnn -> forward -> backward
-> graphs (CUDA graph replay of the forward) -> function (the autograd.Function and the
entry the API calls). The kernels themselves
are in `hf_hyper.attention.kernels`."""

from .function import FusedHyperAttention, fused_hyper_attention
from .graphs import clear_cuda_graphs, cuda_graph_stats
from .hashing import fused_lsh_rank
from .support import fused_unsupported_reason, triton_available

__all__ = [
    "FusedHyperAttention",
    "clear_cuda_graphs",
    "cuda_graph_stats",
    "fused_hyper_attention",
    "fused_lsh_rank",
    "fused_unsupported_reason",
    "triton_available",
]
