"""Attention kernels and their references. Knows nothing of transformers.

Layers, each importing only those below it: numerics, masks, padding, planning,
blockwise, reference, exact_tail -> kernels (Triton) -> fused (the executor of block
plans: launchers, the autograd.Function) -> finders (LSH, k-means, per-query clusters) ->
torch_backend -> api (the public functions) -> diagnostics.
"""

from .api import hyper_attention, hyper_attention_with_lse
from .blockwise import attention_with_lse, merge_by_lse
from .diagnostics import AttentionDiagnostics, attention_diagnostics, check_diagnosable
from .finders import angular_lsh_rank, gray_code_rank
from .fused import clear_cuda_graphs, cuda_graph_stats
from .masks import future_key_mask
from .reference import reference_attention

__all__ = [
    "AttentionDiagnostics",
    "angular_lsh_rank",
    "attention_diagnostics",
    "check_diagnosable",
    "attention_with_lse",
    "clear_cuda_graphs",
    "cuda_graph_stats",
    "future_key_mask",
    "gray_code_rank",
    "hyper_attention",
    "hyper_attention_with_lse",
    "merge_by_lse",
    "reference_attention",
]
