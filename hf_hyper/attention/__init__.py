"""Attention kernels and their references. Knows nothing of transformers.

Layers, each importing only those below it: numerics, masks, padding -> lsh, planning,
blockwise, reference, clustering, exact_tail -> kernels (Triton) -> fused (launchers, the
autograd.Function) -> cluster_probes -> torch_backend -> api (the public functions) ->
diagnostics.
"""

from .api import hyper_attention, hyper_attention_with_lse
from .blockwise import attention_with_lse, merge_by_lse
from .diagnostics import AttentionDiagnostics, attention_diagnostics, check_diagnosable
from .fused import clear_cuda_graphs, cuda_graph_stats
from .lsh import angular_lsh_rank, gray_code_rank
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
