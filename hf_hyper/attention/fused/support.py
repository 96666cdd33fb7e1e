"""Whether the fused kernels can run a call, and why not."""

from __future__ import annotations

import functools

import torch
from torch import Tensor

FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401

        from ..kernels import forward  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def fused_unsupported_reason(q: Tensor, k: Tensor, v: Tensor) -> str | None:
    """Why the fused kernels cannot run these inputs (None if they can)."""
    if not q.is_cuda:
        return f"the fused kernels need CUDA tensors; q is on {q.device}"
    if not triton_available():
        return "the fused kernels need triton (pip install triton)"
    if q.dtype not in FUSED_DTYPES:
        return f"the fused kernels support fp16/bf16/fp32; got {q.dtype}"
    if max(q.shape[-1], v.shape[-1]) > MAX_HEAD_DIM:
        return f"the fused kernels support head_dim <= {MAX_HEAD_DIM}"
    return None


def row_alignment(*tensors: Tensor) -> int:
    """Elements per 16 bytes if every row of every tensor starts 16-byte aligned, else 1."""
    per_16b = 16 // tensors[0].element_size()
    for t in tensors:
        strides_ok = all(s % per_16b == 0 for s in t.stride()[:-1])
        if t.data_ptr() % 16 or not strides_ok:
            return 1
    return per_16b
