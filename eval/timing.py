"""Timing and memory measurement shared by the speed benchmarks (CUDA events, medians)."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class Timing:
    ms: float  # median
    ms_min: float
    peak_gib: float  # peak allocated during the call, above what was allocated before
    repeats: int


def time_cuda(fn: Callable[[], object], *, warmup: int = 2, repeats: int = 5) -> Timing:
    """Median wall time of fn() on the current CUDA device, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    peak = (torch.cuda.max_memory_allocated() - before) / 2**30
    return Timing(statistics.median(times), min(times), peak, repeats)


def environment() -> dict[str, str]:
    """Device and library versions, recorded next to every measured number."""
    import transformers

    import hf_hyper

    info = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "hf_hyper": hf_hyper.__version__,
        "cuda": str(torch.version.cuda),
    }
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name()
        info["cudnn"] = str(torch.backends.cudnn.version())
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        pass
    return info
