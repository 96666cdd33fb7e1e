"""CUDA graph replay of the fused forward (fused/graphs.py): a replay equals the eager
call bit for bit with the same draws, and the cache captures, replays, bounds and falls
back as it says.

Without a GPU, the cache runs with an emulated capture that re-runs the forward on the
static inputs and the draw buffers instead of replaying a graph: that checks
the contract a real graph relies on (the draws logged at warm-up, filled before each
replay, are the eager call's draws, in its order) on the torch path."""

from __future__ import annotations

import pytest
import torch

from helpers.common import random_qkv
from hf_hyper import HyperAttentionConfig
from hf_hyper.attention import (
    clear_cuda_graphs,
    cuda_graph_stats,
    hyper_attention,
    hyper_attention_with_lse,
)
from hf_hyper.attention.fused.graphs import DrawBuffers, DrawLog, GraphCache, static_like
from hf_hyper.attention.planning import Randomness
from hf_hyper.attention.torch_backend import torch_hyper_attention

CONFIG = HyperAttentionConfig(
    block_size=32, sample_size=32, min_seq_len=128, sink_tokens=4, local_window=16
)


class EmulatedCapture:
    """CapturedForward's draw handling without a graph: the warm-up logs the draws, and
    each "replay" fills the buffers and re-runs the forward on them and on the static
    inputs."""

    def __init__(self, forward, q, k, v, copy_inputs):
        self.forward, self.inputs = forward, None
        if copy_inputs:
            self.inputs = [static_like(t) for t in (q, k, v)]
            for buffer, t in zip(self.inputs, (q, k, v), strict=True):
                buffer.copy_(t)
        log = DrawLog(Randomness(torch.Generator().manual_seed(0), q.device))
        forward(*(self.inputs or (q, k, v)), log)
        self.draws, self.bytes = DrawBuffers(log.requests, q.device), 0

    def __call__(self, q, k, v, rng):
        if self.inputs is not None:
            for buffer, t in zip(self.inputs, (q, k, v), strict=True):
                buffer.copy_(t)
        self.draws.fill(rng)
        out, lse = self.forward(*(self.inputs or (q, k, v)), self.draws)
        self.draws.rewind()
        return out.clone(), lse.clone()


def _torch_forward(causal: bool, config: HyperAttentionConfig):
    def forward(q, k, v, rng):
        return torch_hyper_attention(
            q, k, v, causal=causal, scale=q.shape[-1] ** -0.5, config=config, rng=rng,
            hash_dims=q.shape[-1],
        )  # fmt: skip

    return forward


@pytest.mark.parametrize("causal, n_query, n_key", [(True, 500, 500), (True, 300, 520),
                                                    (False, 400, 450)])  # fmt: skip
@pytest.mark.parametrize("seeded", [True, False])
def test_replays_equal_the_eager_call_and_leave_the_generator_alike(causal, n_query, n_key, seeded):
    forward = _torch_forward(causal, CONFIG)
    cache = GraphCache(capture=EmulatedCapture)
    for call in range(4):  # eager on first sight, capture + replay, then replays
        q, k, v = random_qkv(1, 4, 2, n_query, n_key, dim=16, seed=call)
        results, states = [], []
        for through_cache in (False, True):
            generator = torch.Generator().manual_seed(call) if seeded else None
            torch.manual_seed(100 + call)
            rng = Randomness(generator, q.device)
            if through_cache:
                results.append(cache.run("key", forward, q, k, v, rng))
            else:
                results.append(forward(q, k, v, rng))
            states.append((generator or torch.default_generator).get_state())
        (eager_out, eager_lse), (out, lse) = results
        assert torch.equal(out, eager_out) and torch.equal(lse, eager_lse)
        assert torch.equal(states[0], states[1])
    assert (cache.stats.eager_first, cache.stats.replayed) == (1, 3)
    assert cache.stats.captured >= 1


def test_the_cache_is_bounded_and_least_recently_used_goes_first():
    forward = _torch_forward(True, CONFIG)
    cache = GraphCache(max_graphs=2, capture=EmulatedCapture)
    q, k, v = random_qkv(1, 2, 2, 300, 300, dim=16)
    rng = Randomness(torch.Generator().manual_seed(0), q.device)
    for key in ("a", "a", "b", "b", "a", "c", "c"):
        cache.run(key, forward, q, k, v, rng)
    # the same tensors every call: each layout's graph reads them in place
    assert [key[0] for key in cache.graphs] == ["a", "c"]  # b was the least recently used
    assert cache.stats.captured == 3 and cache.stats.replayed_in_place == 4


def test_the_graphs_memory_is_bounded_too():
    class HundredBytes(EmulatedCapture):
        def __init__(self, *args):
            super().__init__(*args)
            self.bytes = 100

    forward = _torch_forward(True, CONFIG)
    cache = GraphCache(max_bytes=250, capture=HundredBytes)
    q, k, v = random_qkv(1, 2, 2, 300, 300, dim=16)
    rng = Randomness(torch.Generator().manual_seed(0), q.device)
    for key in ("a", "a", "b", "b", "c", "c"):
        cache.run(key, forward, q, k, v, rng)
    assert [key[0] for key in cache.graphs] == ["b", "c"]
    assert cache.stats.held_bytes == 200


def test_inputs_at_new_addresses_replay_a_copying_graph_that_follows_their_values():
    forward = _torch_forward(True, CONFIG)
    cache = GraphCache(capture=EmulatedCapture)
    held = []  # kept alive, so no call's inputs reuse an earlier call's addresses
    for call in range(4):
        q, k, v = random_qkv(1, 2, 2, 300, 300, dim=16, seed=call)
        held.append((q, k, v))
        torch.manual_seed(call)
        want, _ = forward(q, k, v, Randomness(None, q.device))
        torch.manual_seed(call)
        out, _ = cache.run("key", forward, q, k, v, Randomness(None, q.device))
        assert torch.equal(out, want)
    assert cache.stats.replayed_in_place == 0 and cache.stats.replayed == 3
    assert cache.graphs["key"].inputs is not None


def test_a_forward_that_draws_differently_from_its_warm_up_is_not_captured():
    draws = DrawBuffers([("hyperplanes", (4, 3))], torch.device("cpu"))
    with pytest.raises(RuntimeError, match="drew differently"):
        draws.indices(10, (2, 5))
    with pytest.raises(RuntimeError, match="drew less"):
        draws.rewind()


def test_draws_from_a_fresh_seed_are_kept_between_fills_and_redrawn_otherwise():
    requests = [("hyperplanes", (4, 3)), ("indices", (50, (2, 6))), ("indices", (9, (3,)))]
    draws = DrawBuffers(requests, torch.device("cpu"))

    def rng_of(seed: int, fresh: bool) -> Randomness:
        generator = torch.Generator().manual_seed(seed)
        return Randomness(generator, torch.device("cpu"), seed if fresh else None)

    def drawn(seed: int) -> list[torch.Tensor]:
        rng = rng_of(seed, fresh=False)
        return [getattr(rng, kind)(*args) for kind, args in requests]

    for seed, fresh in [(0, True), (0, True), (1, True), (1, False), (1, True), (0, True)]:
        rng = rng_of(seed, fresh)
        kept = fresh and draws.filled_from == seed
        draws.fill(rng)
        assert all(torch.equal(a, b) for a, b in zip(draws.buffers, drawn(seed), strict=True))
        assert rng.unused == kept  # drawn unless the buffers already held its draws
    used = rng_of(0, fresh=True)
    used.indices(5, (1,))  # no longer at its seed's start: its draws are other ones
    draws.fill(used)
    assert not torch.equal(draws.buffers[0], drawn(0)[0])


def test_a_failed_capture_runs_eagerly_once_counted_and_is_not_retried():
    attempts = []

    def failing_capture(forward, q, k, v, copy_inputs):
        attempts.append(1)
        raise RuntimeError("operation not permitted when stream is capturing")

    forward = _torch_forward(True, CONFIG)
    cache = GraphCache(capture=failing_capture)
    q, k, v = random_qkv(1, 2, 2, 300, 300, dim=16)
    for _ in range(3):
        rng = Randomness(torch.Generator().manual_seed(0), q.device)
        out, _ = cache.run("key", forward, q, k, v, rng)
        want, _ = forward(q, k, v, Randomness(torch.Generator().manual_seed(0), q.device))
        assert torch.equal(out, want)
    assert len(attempts) == 2  # in place, then copying; neither retried
    assert sum(cache.stats.fallbacks.values()) == 2
    assert all("capture failed: RuntimeError" in r for r in cache.stats.fallbacks)


def test_cuda_graph_max_len_is_validated():
    for bad in (-1, "long"):
        with pytest.raises(ValueError, match="cuda_graph_max_len"):
            HyperAttentionConfig(cuda_graph_max_len=bad)
    with pytest.raises(TypeError, match="cuda_graph_max_len"):
        HyperAttentionConfig(cuda_graph_max_len=1.5)


def test_auto_graph_length_reaches_further_for_per_query_clusters():
    from hf_hyper.config import CLUSTERS_CUDA_GRAPH_MAX_LEN, DEFAULT_CUDA_GRAPH_MAX_LEN

    assert CLUSTERS_CUDA_GRAPH_MAX_LEN > DEFAULT_CUDA_GRAPH_MAX_LEN
    assert HyperAttentionConfig().cuda_graph_max_len == "auto"
    for blocks in (HyperAttentionConfig(), HyperAttentionConfig(kmeans_iters=2)):
        assert blocks.graph_max_len == DEFAULT_CUDA_GRAPH_MAX_LEN
    assert HyperAttentionConfig.accurate().graph_max_len == CLUSTERS_CUDA_GRAPH_MAX_LEN
    for length in (0, 4096):  # a length given is kept, whatever the finder
        assert HyperAttentionConfig.accurate(cuda_graph_max_len=length).graph_max_len == length


# --- on a GPU: real graphs against eager fused calls ---------------------------------

# (causal, n_query, n_key, q heads, kv heads, head_dim, dtype, window, kmeans_iters):
# cuDNN's diagonal (MHA, bf16), the Triton dense one (GQA, fp32), a cached prefix,
# padding, non-causal; k-means buckets with GQA levels and with a prefix
GPU_GRAPH_CASES = [
    (True, 4096, 4096, 4, 4, 64, torch.bfloat16, 0, 0),
    (True, 3000, 3000, 4, 2, 64, torch.float32, 16, 0),
    (True, 2500, 4000, 4, 2, 128, torch.bfloat16, 0, 0),
    (False, 3000, 3500, 4, 1, 64, torch.float16, 0, 0),
    (True, 4096, 4096, 4, 2, 64, torch.bfloat16, 0, 4),
    (True, 2500, 4000, 4, 1, 128, torch.float16, 0, 2),
]
GPU_CONFIG = HyperAttentionConfig(block_size=64, sample_size=64, min_seq_len=512)


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_GRAPH_CASES, ids=str)
@pytest.mark.parametrize("seeded", [True, False])
def test_graph_replays_equal_eager_fused_calls_bit_for_bit(case, seeded):
    causal, n_query, n_key, hq, hk, dim, dtype, window, iterations = case
    settings = {"local_window": window, "kmeans_iters": iterations}
    graphs = HyperAttentionConfig(
        **{**GPU_CONFIG.to_dict(), **settings, "seed": 0 if seeded else None}
    )
    eager = HyperAttentionConfig(**{**graphs.to_dict(), "cuda_graph_max_len": 0})
    clear_cuda_graphs()
    for call in range(4):
        q, k, v = random_qkv(1, hq, hk, n_query, n_key, dim=dim, dtype=dtype, device="cuda",
                             seed=call)  # fmt: skip
        results, states = [], []
        for config in (eager, graphs):
            torch.cuda.manual_seed(100 + call)
            results.append(hyper_attention_with_lse(q, k, v, causal=causal, config=config))
            states.append(torch.cuda.get_rng_state())
        (eager_out, eager_lse), (out, lse) = results
        assert torch.equal(out, eager_out) and torch.equal(lse, eager_lse)
        assert torch.equal(states[0], states[1])
        # the one-output call keeps no log-sum-exp where nothing merges: its own key
        torch.cuda.manual_seed(7)
        want = hyper_attention(q, k, v, causal=causal, config=eager)
        torch.cuda.manual_seed(7)
        assert torch.equal(hyper_attention(q, k, v, causal=causal, config=graphs), want)
    stats = cuda_graph_stats()
    assert stats.fallbacks == {}
    assert stats.replayed == 6 and stats.captured >= 2


@pytest.mark.gpu
def test_a_graph_reading_inputs_in_place_follows_their_new_values():
    q, k, v = random_qkv(1, 4, 2, 3000, 3000, dim=64, dtype=torch.bfloat16, device="cuda")
    eager = HyperAttentionConfig(**{**GPU_CONFIG.to_dict(), "seed": 0, "cuda_graph_max_len": 0})
    graphs = HyperAttentionConfig(**{**GPU_CONFIG.to_dict(), "seed": 0})
    clear_cuda_graphs()
    for _ in range(4):
        want = hyper_attention(q, k, v, causal=True, config=eager)
        assert torch.equal(hyper_attention(q, k, v, causal=True, config=graphs), want)
        for t in (q, k, v):
            t.mul_(1.25).add_(0.1)  # same addresses, new values
    assert cuda_graph_stats().replayed_in_place == 3  # calls 2-4: captured on the second


@pytest.mark.gpu
def test_auto_graph_length_follows_the_finder(monkeypatch):
    # the two resolved lengths shrunk around one call's length: the block finder's call
    # runs eagerly, the per-query clusters' call replays a graph
    from hf_hyper import config as config_module

    monkeypatch.setattr(config_module, "DEFAULT_CUDA_GRAPH_MAX_LEN", 1024)
    monkeypatch.setattr(config_module, "CLUSTERS_CUDA_GRAPH_MAX_LEN", 4096)
    q, k, v = random_qkv(1, 4, 2, 3000, 3000, dim=64, dtype=torch.bfloat16, device="cuda")
    captured = {}
    for name, settings in (("blocks", {}), ("clusters", {"kmeans_iters": 2, "cluster_probes": 4})):
        config = HyperAttentionConfig(**{**GPU_CONFIG.to_dict(), **settings, "seed": 0})
        assert config.cuda_graph_max_len == "auto"
        clear_cuda_graphs()
        for _ in range(3):
            hyper_attention(q, k, v, causal=True, config=config)
        captured[name] = cuda_graph_stats().captured
    assert captured["blocks"] == 0 and captured["clusters"] >= 1, captured


@pytest.mark.gpu
def test_graphs_stay_out_of_autograd_and_long_calls():
    q, k, v = random_qkv(1, 2, 2, 2048, 2048, dim=64, dtype=torch.float32, device="cuda")
    clear_cuda_graphs()
    config = HyperAttentionConfig(**{**GPU_CONFIG.to_dict(), "cuda_graph_max_len": 1024})
    for _ in range(3):
        hyper_attention(q, k, v, causal=True, config=config)
    assert cuda_graph_stats().captured == 0 and cuda_graph_stats().eager_first == 0
    q.requires_grad_(True)
    for _ in range(3):
        hyper_attention(q, k, v, causal=True, config=GPU_CONFIG).sum().backward()
    assert cuda_graph_stats().captured == 0
    assert sum(cuda_graph_stats().fallbacks.values()) == 3
