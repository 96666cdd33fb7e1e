"""The causal forward's work beside its exact diagonal, on a second CUDA stream.

The exact diagonal blocks are one long compute-bound launch that reads only q, k, v.
The hash and each level's plan are strings of short launches, and only the levels'
block-sample launches read the diagonal's output. With the diagonal on the caller's
stream and everything after it on a stream of higher priority, the short launches'
thread blocks are scheduled as SMs free up inside the diagonal's run, instead of after
it.

Nothing crosses between the streams unordered:
- the side stream starts by waiting for the caller's stream, so it sees the inputs;
- the caller's stream runs only the diagonal until `close`, and the side stream
  waits for it (`wait_diagonal`) before the first launch that reads its output;
- `close` makes the caller's stream wait for the side stream, and marks the outputs
  the side stream allocated as used by the caller's stream, so the caching allocator
  does not hand their memory to the side stream (one of torch's pool streams, which
  other code may also be given) while the caller still reads them.

The forward does not overlap what it records for a backward: the records' tensors
would outlive the side stream's ordering.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
from torch import Tensor


@functools.cache
def _side_stream(device: torch.device) -> torch.cuda.Stream:
    # torch maps a priority past the device's range to its highest: the side stream's
    # blocks then go before the diagonal's as SMs free up
    return torch.cuda.Stream(device, priority=-(2**16))


class DiagonalOverlap:
    """Open it just before launching the diagonal on the caller's stream, run the rest
    of the forward under `beside()`, call `wait_diagonal()` before the first launch that
    reads the diagonal's output, and `close(outputs)` at the end. Off CUDA, or when not
    enabled, every step does nothing."""

    def __init__(self, device: torch.device, enabled: bool = True) -> None:
        self.enabled = enabled and device.type == "cuda"
        self.waiting = self.enabled
        if self.enabled:
            self.main = torch.cuda.current_stream(device)
            self.side = _side_stream(device)
            self.side.wait_stream(self.main)

    @contextlib.contextmanager
    def beside(self) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        with torch.cuda.stream(self.side):
            yield

    def wait_diagonal(self) -> None:
        if self.waiting:
            self.side.wait_stream(self.main)
            self.waiting = False

    def close(self, *outputs: Tensor | None) -> None:
        if not self.enabled:
            return
        self.wait_diagonal()
        self.main.wait_stream(self.side)
        if not torch.cuda.is_current_stream_capturing():  # a graph's outputs stay its own
            for t in outputs:
                if t is not None:
                    t.record_stream(self.main)
        self.enabled = False
