"""HyperAttention's executor on CUDA: the block plans of a finder's ranks run in Triton
kernels, in one-way layers: support / tuning / records -> bucket_sort, tiles, cudnn ->
launches (one problem's kernel launches) -> forward (the recursion) -> backward ->
graphs (CUDA graph replay of the forward) -> function (the autograd.Function and the
entry the API calls). It imports no finder: the API hands it one. The kernels
themselves are in `hf_hyper.attention.kernels`."""

from .function import FusedHyperAttention, fused_hyper_attention
from .graphs import clear_cuda_graphs, cuda_graph_stats
from .support import fused_unsupported_reason, triton_available

__all__ = [
    "FusedHyperAttention",
    "clear_cuda_graphs",
    "cuda_graph_stats",
    "fused_hyper_attention",
    "fused_unsupported_reason",
    "triton_available",
]
