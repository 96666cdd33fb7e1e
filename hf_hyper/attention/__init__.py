"""Attention kernels and their references. Knows nothing of transformers."""

from .blockwise import attention_with_lse, merge_by_lse
from .diagnostics import AttentionDiagnostics, attention_diagnostics
from .hyper import (
    exact_attention_with_lse,
    hyper_attention,
    hyper_attention_with_lse,
    sorted_block_attention,
)
from .lsh import angular_lsh_rank, gray_code_rank
from .reference import reference_attention

__all__ = [
    "AttentionDiagnostics",
    "attention_diagnostics",
    "angular_lsh_rank",
    "attention_with_lse",
    "exact_attention_with_lse",
    "gray_code_rank",
    "hyper_attention",
    "hyper_attention_with_lse",
    "merge_by_lse",
    "reference_attention",
    "sorted_block_attention",
]
