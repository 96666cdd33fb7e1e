"""The fused forward replayed from CUDA graphs.

A fused call's host work (the plan's shape arithmetic, a few dozen launches per
recursion level) is the same for every call of one shape, and below 64k tokens a call
made alone waits on it. A patched model makes the same call once per layer, so a graph
captured on the second call of a layout replays the whole forward as one launch for the
calls after it.

What changes between calls reaches the graph through static memory: the inputs, copied
into static buffers (or, for inputs that come again at the same addresses, read where
they lie), and the random draws. Those are drawn eagerly before each replay, from the
call's own randomness, in the order the eager forward draws them (logged at warm-up),
so a replay gives the eager result bit for bit and leaves the generator where the eager
call would. The output is cloned out, since the next replay overwrites it.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..planning import Randomness

# Captured graphs kept, least recently used dropped first, and the device memory they
# may hold together (static inputs plus each graph's private pool): at most this share
# of the device's memory, and at most MAX_GRAPH_BYTES.
MAX_GRAPHS = 8
MAX_GRAPH_BYTES = 8 * 2**30
MAX_GRAPH_MEMORY_SHARE = 1 / 32
# Shapes seen once (not captured yet) remembered.
MAX_SEEN = 256
# In-place graphs (one per set of input addresses) captured per layout, evicted ones
# included: inputs whose addresses keep changing then stop costing captures.
MAX_IN_PLACE = 4

ForwardFn = Callable[[Tensor, Tensor, Tensor, object], tuple[Tensor, Tensor | None]]


class DrawLog:
    """Randomness that notes each draw's kind and arguments while it draws."""

    def __init__(self, rng: Randomness) -> None:
        self.rng = rng
        self.requests: list[tuple[str, tuple]] = []

    def hyperplanes(self, dim: int, count: int) -> Tensor:
        self.requests.append(("hyperplanes", (dim, count)))
        return self.rng.hyperplanes(dim, count)

    def indices(self, high: int, shape: tuple[int, ...]) -> Tensor:
        self.requests.append(("indices", (high, shape)))
        return self.rng.indices(high, shape)


class DrawBuffers:
    """Stands in for `Randomness` while a graph is captured: hands out one static buffer
    per logged draw, in the logged order, which `fill` sets before each replay.

    The buffers are allocated before the capture: one allocated inside it could take
    memory the capture's earlier temporaries used, and the replay would then write those
    temporaries over the draws."""

    def __init__(self, requests: list[tuple[str, tuple]], device: torch.device) -> None:
        self.requests = requests
        self.buffers = [
            torch.empty(args, device=device)  # randn's dtype: the default
            if kind == "hyperplanes"
            else torch.empty(args[1], dtype=torch.int64, device=device)
            for kind, args in requests
        ]
        self.position = 0
        self.filled_from: int | None = None  # the fresh seed the buffers hold the draws of

    def _next(self, kind: str, args: tuple) -> Tensor:
        if self.position >= len(self.requests) or self.requests[self.position] != (kind, args):
            raise RuntimeError("the forward drew differently from its warm-up; not captured")
        self.position += 1
        return self.buffers[self.position - 1]

    def hyperplanes(self, dim: int, count: int) -> Tensor:
        return self._next("hyperplanes", (dim, count))

    def indices(self, high: int, shape: tuple[int, ...]) -> Tensor:
        return self._next("indices", (high, shape))

    def fill(self, rng: Randomness) -> None:
        """Make the logged draws with rng, in their order, into the buffers. A generator
        fresh from the seed of the last fill would draw what the buffers hold: it is left
        unused (it is the call's own, so nothing sees that), and the draws' launches and
        host time are saved."""
        fresh = rng.seed if rng.unused else None
        if fresh is not None and fresh == self.filled_from:
            return
        self.filled_from = None  # a fill cut short leaves no claim behind
        for (kind, args), buffer in zip(self.requests, self.buffers, strict=True):
            buffer.copy_(getattr(rng, kind)(*args))
        self.filled_from = fresh

    def rewind(self) -> None:
        if self.position != len(self.requests):
            raise RuntimeError("the forward drew less than its warm-up; not captured")
        self.position = 0


def static_like(t: Tensor) -> Tensor:
    """An uninitialised tensor of t's shape, strides, dtype and device."""
    return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device)


class CapturedForward:
    """One forward captured: its draws' buffers, its outputs, and with copy_inputs its
    static inputs; without, it reads the captured call's input addresses, so it may
    replay only calls whose inputs lie at those addresses in the same layout."""

    def __init__(
        self, forward: ForwardFn, q: Tensor, k: Tensor, v: Tensor, copy_inputs: bool
    ) -> None:
        # the inputs' device, whichever is current: a graph, its pool and its streams
        # belong to one device (accelerate places models on several)
        with torch.cuda.device(q.device):
            self._capture(forward, q, k, v, copy_inputs)

    def _capture(self, forward: ForwardFn, q, k, v, copy_inputs: bool) -> None:
        device = q.device
        before = torch.cuda.memory_allocated(device)
        self.inputs: list[Tensor] | None = None
        inputs = [q, k, v]
        if copy_inputs:
            self.inputs = inputs = [static_like(t) for t in (q, k, v)]
            for buffer, t in zip(inputs, (q, k, v), strict=True):
                buffer.copy_(t)
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            # libraries initialise per stream lazily, which a capture may not do; the
            # warm-up draws from a generator of its own, so the caller's is untouched
            warm_up = DrawLog(Randomness(torch.Generator(device=device).manual_seed(0), device))
            forward(*inputs, warm_up)
            self.draws = DrawBuffers(warm_up.requests, device)
        stream.synchronize()
        static_bytes = torch.cuda.memory_allocated(device) - before
        torch.cuda.empty_cache()  # as the capture does first: the pool's growth is its own
        reserved = torch.cuda.memory_reserved(device)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, stream=stream):
            self.outputs = forward(*inputs, self.draws)
        self.draws.rewind()
        self.bytes = static_bytes + torch.cuda.memory_reserved(device) - reserved

    def __call__(
        self, q: Tensor, k: Tensor, v: Tensor, rng: Randomness
    ) -> tuple[Tensor, Tensor | None]:
        if self.inputs is not None:
            for buffer, t in zip(self.inputs, (q, k, v), strict=True):
                buffer.copy_(t)
        self.draws.fill(rng)
        with torch.cuda.device(q.device):
            self.graph.replay()
        out, lse = self.outputs
        return out.clone(), None if lse is None else lse.clone()


@dataclass
class GraphStats:
    """What the graph cache did: calls run eagerly on first sight of their shape, graphs
    captured, replays (in_place: of graphs that read the inputs where they lie, the rest
    copy them in), the calls that could not use a graph, by reason, and the device
    memory the kept graphs hold (static inputs and pools)."""

    eager_first: int = 0
    captured: int = 0
    replayed: int = 0
    replayed_in_place: int = 0
    fallbacks: Counter = field(default_factory=Counter)
    held_bytes: int = 0


class GraphCache:
    """Captured forwards keyed by everything that fixes their launches, bounded in count
    and bytes.

    A call's layout key (shapes, strides, dtypes, config) gets a graph that copies the
    inputs in, captured on its second sight. Inputs that come again at the same
    addresses (a benchmark's repeated call, a model whose layers reuse the allocator's
    blocks) get a graph of their own that reads them in place, without the copies, up to
    MAX_IN_PLACE captures per layout.
    """

    def __init__(
        self, max_graphs: int = MAX_GRAPHS, max_bytes: int | None = None,
        capture: Callable[..., CapturedForward] = CapturedForward,
    ) -> None:  # fmt: skip
        """max_bytes None: MAX_GRAPH_MEMORY_SHARE of the device, at most MAX_GRAPH_BYTES."""
        self.max_graphs, self.max_bytes, self.capture = max_graphs, max_bytes, capture
        self.graphs: OrderedDict[tuple, CapturedForward] = OrderedDict()
        self.seen: OrderedDict[tuple, None] = OrderedDict()
        self.failed: dict[tuple, str] = {}
        self.in_place: Counter = Counter()  # in-place graphs captured per layout key
        self.stats = GraphStats()

    def clear(self) -> None:
        self.graphs.clear()
        self.seen.clear()
        self.failed.clear()
        self.in_place.clear()
        self.stats = GraphStats()

    def run(
        self, key: tuple, forward: ForwardFn, q: Tensor, k: Tensor, v: Tensor, rng: Randomness
    ) -> tuple[Tensor, Tensor | None]:
        """forward(q, k, v, rng), from a graph where one is captured or can be."""
        if q.is_cuda and torch.cuda.is_current_stream_capturing():
            # the caller captures a graph of its own: our launches go into it
            self.stats.fallbacks["inside a capture of the caller"] += 1
            return forward(q, k, v, rng)
        addressed = (key, q.data_ptr(), k.data_ptr(), v.data_ptr())
        if addressed in self.graphs:
            self.stats.replayed_in_place += 1
            return self._replay(addressed, q, k, v, rng)
        if (
            addressed in self.seen
            and self.in_place[key] < MAX_IN_PLACE
            and self._capture(addressed, forward, q, k, v, copy_inputs=False)
        ):
            self.in_place[key] += 1
            self.stats.replayed_in_place += 1
            return self._replay(addressed, q, k, v, rng)
        first_sight = key not in self.seen
        self._see(key)
        self._see(addressed)
        if key in self.graphs:
            return self._replay(key, q, k, v, rng)
        if first_sight:
            # the first call of a layout runs eagerly, which also compiles its kernels
            self.stats.eager_first += 1
            return forward(q, k, v, rng)
        if self._capture(key, forward, q, k, v, copy_inputs=True):
            return self._replay(key, q, k, v, rng)
        self.stats.fallbacks[self.failed.get(key, "evicted on capture")] += 1
        return forward(q, k, v, rng)

    def _see(self, key: tuple) -> None:
        self.seen[key] = None
        self.seen.move_to_end(key)
        if len(self.seen) > MAX_SEEN:
            self.seen.popitem(last=False)

    def _replay(self, key: tuple, q, k, v, rng) -> tuple[Tensor, Tensor | None]:
        self.graphs.move_to_end(key)
        self.stats.replayed += 1
        return self.graphs[key](q, k, v, rng)

    def _capture(self, key: tuple, forward: ForwardFn, q, k, v, copy_inputs: bool) -> bool:
        """Capture a graph under key; False (the reason kept) where capture fails."""
        if key in self.failed:
            return False
        try:
            captured = self.capture(forward, q, k, v, copy_inputs)
        except (RuntimeError, torch.OutOfMemoryError) as err:
            message = str(err).splitlines()[0][:100] if str(err) else ""
            self.failed[key] = f"capture failed: {type(err).__name__}: {message}"
            if q.is_cuda:
                torch.cuda.synchronize(q.device)
            return False
        self.stats.captured += 1
        self.graphs[key] = captured
        self._evict(self.byte_budget(q.device))
        return key in self.graphs

    def byte_budget(self, device: torch.device) -> int:
        """The memory the kept graphs may hold on device."""
        if self.max_bytes is not None:
            return self.max_bytes
        if device.type != "cuda":
            return MAX_GRAPH_BYTES
        total = torch.cuda.get_device_properties(device).total_memory
        return min(MAX_GRAPH_BYTES, int(total * MAX_GRAPH_MEMORY_SHARE))

    def _evict(self, max_bytes: int) -> None:
        while len(self.graphs) > 1 and (
            len(self.graphs) > self.max_graphs
            or sum(g.bytes for g in self.graphs.values()) > max_bytes
        ):
            self.graphs.popitem(last=False)
        self.stats.held_bytes = sum(g.bytes for g in self.graphs.values())


GRAPHS = GraphCache()


def cuda_graph_stats() -> GraphStats:
    """What the fused path's graph cache did in this process."""
    return GRAPHS.stats


def clear_cuda_graphs() -> None:
    """Drop every captured graph (and its memory) and reset the counts."""
    GRAPHS.clear()


__all__ = [
    "GRAPHS",
    "CapturedForward",
    "DrawBuffers",
    "DrawLog",
    "GraphCache",
    "GraphStats",
    "clear_cuda_graphs",
    "cuda_graph_stats",
    "static_like",
]
