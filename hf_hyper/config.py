"""Configuration dataclasses, validated where they are built so errors name the field."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

BACKENDS = ("auto", "torch", "triton")
# Query lengths up to which HyperAttention's fused kernels were not faster than cuDNN's
# exact attention, forward or forward+backward, head_dim 64 or 128, with the default
# parameters: `exact_up_to="auto"`.
MEASURED_CROSSOVER = {False: 12288, True: 24576}
# Attention sinks attended exactly when the config does not say. On pretrained
# checkpoints 1, 4 and 16 sinks gave nearly the same perplexity and none a far worse one;
# 4 also covers models that spread their sink over a few tokens.
DEFAULT_SINK_TOKENS = 4
# Keys before each query attended exactly across the causal recursion's cuts by default:
# none, as on pretrained checkpoints the gain did not pay for the time.
DEFAULT_LOCAL_WINDOW = 0
# Queries up to which inference calls replay CUDA graphs by default (cuda_graph_max_len
# "auto"): below it the host's work per call is a large share of the time; above it the
# GPU's dominates, while a graph holds static copies of its inputs and output. Per-query
# clusters launch several times more small kernels a call (each probe rank's tiles, in
# plan chunks), so their host work still dominates at 131k.
DEFAULT_CUDA_GRAPH_MAX_LEN = 65536
CLUSTERS_CUDA_GRAPH_MAX_LEN = 262144
# The last queries of a causal call attended exactly by default: where a prompt ends with
# its question, the rows that generation reads from; see `exact_tail`.
DEFAULT_EXACT_TAIL = 0
# The accurate preset: on pretrained checkpoints 2 Lloyd iterations with 4 probes kept
# perplexity within about half a percent of exact, and a 64-query tail gave back the
# needles that the approximate last rows lost.
ACCURATE_KMEANS_ITERS = 2
ACCURATE_CLUSTER_PROBES = 4
ACCURATE_EXACT_TAIL = 64


def parse_length_or_auto(text: str) -> int | str:
    """A query length from text, or "auto" (exact_up_to, cuda_graph_max_len)."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"expected a query length or 'auto'; got {text!r}") from None


class ConfigTypeError(TypeError, ValueError):
    """A field of the wrong type: a TypeError, and a ValueError like every other bad value,
    so one `except ValueError` catches any invalid config."""


def _require_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigTypeError(f"HyperAttentionConfig.{name} must be an int; got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"HyperAttentionConfig.{name} must be {bound}; got {value}")


def _require_length_or_auto(name: str, value: Any) -> None:
    if value == "auto":
        return
    if isinstance(value, str):
        raise ValueError(
            f"HyperAttentionConfig.{name} must be an int >= 0 or 'auto'; got {value!r}"
        )
    _require_int(name, value, 0)


@dataclass(frozen=True)
class HyperAttentionConfig:
    """Parameters of HyperAttention. The defaults are what measured best on pretrained
    checkpoints (attention sinks on); `HyperAttentionConfig.paper()` is the paper's
    algorithm.

    lsh_num_projs: random hyperplanes of the angular LSH (2**lsh_num_projs buckets).
    block_size: keys per diagonal block of the sorted order, attended exactly.
    sample_size: keys drawn uniformly to estimate the mass outside the block; 0 disables.
    min_seq_len: problems no longer than this run exact attention; in causal attention
        the diagonal blocks of the recursion are at most this long and exact.
    sink_tokens: keys [0, sink_tokens) are attended exactly by every query that may see
        them and are left out of the LSH blocks and the samples: pretrained models put
        much of their attention on the first tokens (attention sinks), which sampling
        estimates badly. At most min_seq_len // 2 (they must fit the first exact block).
        0 is the paper's algorithm. None (default) becomes DEFAULT_SINK_TOKENS,
        or min_seq_len // 2 where that is smaller, when the config is made, so the
        config shows the number used; the default is measured on pretrained checkpoints.
    local_window: in causal attention, every query attends exactly at least the
        local_window keys before it: where a recursion cut separates a query from its
        nearest keys, the first local_window queries after the cut attend the
        local_window keys before it exactly (left out of their blocks and samples).
        Pretrained models lean on nearby tokens, which the LSH blocks and the sample
        serve badly across a cut. 0: the paper's algorithm (its accuracy against
        its time on pretrained checkpoints: docs/design-notes.md). sink_tokens +
        local_window is at most min_seq_len // 2. Ignored by non-causal calls, which have no order.
        None (default) becomes DEFAULT_LOCAL_WINDOW, capped so the sum fits, when the
        config is made.
    kmeans_iters: 0 (default): the blocks come from angular LSH, the paper's. n > 0: each
        problem clusters its keys into 2**lsh_num_projs k-means clusters (n Lloyd
        iterations; causal: each lower-left block its own keys, which precede its
        queries) and each query takes the cluster of largest estimated mass. On
        pretrained checkpoints it removes part of the perplexity excess, in Triton kernels
        on CUDA, at a cost in speed over the LSH blocks (measured: docs/design-notes.md).
    cluster_probes: 0 (default): each query attends the block its tile shares (from
        the LSH or, with kmeans_iters, the k-means ranks). c > 0: each problem clusters
        its keys by k-means (kmeans_iters iterations; enough clusters that c of them
        hold about block_size keys, at least 2**lsh_num_projs) and each query attends
        its own c clusters of largest estimated mass exactly, the sample estimating
        its other keys. A per-query finder: on pretrained checkpoints it finds far more
        of the large entries than shared blocks. Its plan runs
        in torch ops, its attention in Triton kernels for CUDA calls without autograd
        ("triton" refuses calls that need gradients; "torch" never uses the kernels).
    cluster_key_budget: with cluster_probes, a bound on each query's exact keys: it walks
        its c best clusters, best first, and keeps each while its keys stay within this
        multiple of c x the problem's mean cluster size (the best cluster is always
        kept); the clusters it passes over join the keys the sample stands for. The
        choice by estimated mass favours large clusters, so without a bound a query
        can attend several times the keys it is meant to. 0 (default): no bound.
    exact_up_to: calls with at most this many queries run exact attention, however long
        min_seq_len lets the recursion go (0: min_seq_len alone decides). "auto" takes
        the measured crossover (MEASURED_CROSSOVER), below which the approximation is
        slower than the exact kernel.
    exact_tail: causal calls only: the last exact_tail queries of a call that runs
        approximately attend every key they may see exactly; the other rows are those of
        the call without a tail, bit for bit. A prompt's last tokens are where
        generation reads the context, and a needle lost there is lost for good, while the
        tail costs exact_tail * n work against the call's n^2 / 2. 0: no tail.
    seed: if set, every call draws its hyperplanes and samples from a generator seeded
        with it, so calls are reproducible; if None the global torch RNG is used.
    backend: "torch" (plain torch ops, any device), "triton" (fused CUDA kernels,
        forward and backward; an error where they cannot run) or "auto" (triton where it
        can run, else torch). Both compute the same algorithm with the same random draws
        and are differentiable (the sampled and hashed choices are held fixed).
    cuda_graph_max_len: fused calls without autograd of at most this many queries replay
        a CUDA graph captured on the second call of their shape, layout and config
        (a patched model's layers share one), which removes the host's work per call; the
        result equals the eager call's bit for bit. 0: always eager. "auto" (default):
        DEFAULT_CUDA_GRAPH_MAX_LEN, or CLUSTERS_CUDA_GRAPH_MAX_LEN for per-query
        clusters, whose host work is larger (`graph_max_len`).
    """

    lsh_num_projs: int = field(
        default=7, metadata={"help": "random hyperplanes of the angular LSH (2**r buckets)"}
    )
    block_size: int = field(
        default=256, metadata={"help": "keys per block of the sorted order, attended exactly"}
    )
    sample_size: int = field(
        default=256, metadata={"help": "keys sampled uniformly for the rest; 0 disables"}
    )
    min_seq_len: int = field(
        default=4096,
        metadata={"help": "problems (and causal diagonal blocks) up to this long run exact"},
    )
    sink_tokens: int | None = field(
        default=None,
        metadata={
            "help": "keys [0, s) attended exactly by every query (attention sinks); "
            f"default: {DEFAULT_SINK_TOKENS}, or min_seq_len // 2 if smaller"
        },
    )
    local_window: int | None = field(
        default=None,
        metadata={
            "help": "causal: the w keys before each query attended exactly across cuts; "
            f"default: {DEFAULT_LOCAL_WINDOW}, or less where min_seq_len // 2 is smaller"
        },
    )
    kmeans_iters: int = field(
        default=0,
        metadata={
            "help": "0: angular LSH buckets (the paper's); n: buckets are 2**r k-means "
            "clusters of each problem's keys after n Lloyd iterations"
        },
    )
    cluster_probes: int = field(
        default=0,
        metadata={
            "help": "0: blocks shared by a tile of queries; c: each query attends its own c "
            "k-means clusters exactly (needs --kmeans-iters)"
        },
    )
    cluster_key_budget: float = field(
        default=0.0,
        metadata={
            "help": "with cluster probes: each query's exact keys at most this multiple of "
            "c x the mean cluster size, its best cluster always kept (0: no bound)",
            "parse": float,
        },
    )
    exact_up_to: int | str = field(
        default=0,
        metadata={
            "help": "calls with at most this many queries run exact; 'auto' = the measured "
            "crossover (0: min_seq_len alone decides)",
            "parse": parse_length_or_auto,
        },
    )
    exact_tail: int = field(
        default=DEFAULT_EXACT_TAIL,
        metadata={"help": "causal: the last t queries of a call attend every key exactly"},
    )
    seed: int | None = field(
        default=None, metadata={"help": "seed of the hyperplanes and samples of every call"}
    )
    backend: str = field(default="auto", metadata={"help": "kernels to run", "choices": BACKENDS})
    cuda_graph_max_len: int | str = field(
        default="auto",
        metadata={
            "help": "inference calls up to this many queries replay CUDA graphs; 0: never; "
            "'auto': by the finder",
            "parse": parse_length_or_auto,
        },
    )

    def __post_init__(self) -> None:
        _require_int("lsh_num_projs", self.lsh_num_projs, 0, 48)
        _require_int("block_size", self.block_size, 1)
        _require_int("sample_size", self.sample_size, 0)
        _require_int("min_seq_len", self.min_seq_len, 1)
        _require_int("kmeans_iters", self.kmeans_iters, 0)
        _require_length_or_auto("cuda_graph_max_len", self.cuda_graph_max_len)
        _require_int("cluster_probes", self.cluster_probes, 0)
        _require_int("exact_tail", self.exact_tail, 0)
        budget = self.cluster_key_budget
        if isinstance(budget, bool) or not isinstance(budget, (int, float)):
            raise ConfigTypeError(
                f"HyperAttentionConfig.cluster_key_budget must be a number; got {budget!r}"
            )
        if not (math.isfinite(budget) and budget >= 0):
            raise ValueError(
                f"HyperAttentionConfig.cluster_key_budget must be a finite number >= 0; "
                f"got {budget}"
            )
        object.__setattr__(self, "cluster_key_budget", float(budget))
        if budget and not self.cluster_probes:
            raise ValueError(
                "HyperAttentionConfig.cluster_key_budget bounds the keys of the cluster "
                "probes: set cluster_probes > 0 (and kmeans_iters > 0) as well, or leave it 0"
            )
        if self.cluster_probes and not self.kmeans_iters:
            raise ValueError(
                "HyperAttentionConfig.cluster_probes needs k-means clusters to probe: "
                "set kmeans_iters > 0 (e.g. 4) as well"
            )
        # None asks for the default that fits min_seq_len; the config then holds (and its
        # repr, to_dict and saved plans show) the number every call uses
        if self.sink_tokens is None:
            object.__setattr__(self, "sink_tokens", min(DEFAULT_SINK_TOKENS, self.min_seq_len // 2))
        # the sinks sit inside the first exact block of every problem that has them
        _require_int("sink_tokens", self.sink_tokens, 0, self.min_seq_len // 2)
        if self.local_window is None:
            room = self.min_seq_len // 2 - self.sink_tokens
            object.__setattr__(self, "local_window", max(0, min(DEFAULT_LOCAL_WINDOW, room)))
        else:
            _require_int("local_window", self.local_window, 0)
            # the corner a cut leaves must sit in the first half's keys beside the sinks
            if self.sinks + self.local_window > self.min_seq_len // 2:
                raise ValueError(
                    f"HyperAttentionConfig: sink_tokens + local_window must be at most "
                    f"min_seq_len // 2 = {self.min_seq_len // 2}; got {self.sinks} + "
                    f"{self.local_window}: lower local_window or raise min_seq_len"
                )
        _require_length_or_auto("exact_up_to", self.exact_up_to)
        if self.seed is not None:
            _require_int("seed", self.seed, 0)
        if self.backend not in BACKENDS:
            raise ValueError(
                f"HyperAttentionConfig.backend must be one of {BACKENDS}; got {self.backend!r}"
            )

    @classmethod
    def paper(cls, **overrides: Any) -> HyperAttentionConfig:
        """The paper's algorithm: angular LSH blocks and a uniform sample, with no attention
        sinks, local window, k-means or exact tail; other fields as given, else defaults."""
        fields = dict(sink_tokens=0, local_window=0, kmeans_iters=0, cluster_probes=0,
                      exact_tail=0)  # fmt: skip
        return cls(**(fields | overrides))

    @classmethod
    def accurate(cls, **overrides: Any) -> HyperAttentionConfig:
        """Closest to exact on pretrained checkpoints: each query attends its own k-means
        clusters (ACCURATE_CLUSTER_PROBES of them, ACCURATE_KMEANS_ITERS Lloyd iterations)
        and the last ACCURATE_EXACT_TAIL queries attend exactly. Slower than the defaults:
        a plan (`hf-hyper plan`) gives it only the layers that need it."""
        fields = dict(kmeans_iters=ACCURATE_KMEANS_ITERS, cluster_probes=ACCURATE_CLUSTER_PROBES,
                      exact_tail=ACCURATE_EXACT_TAIL)  # fmt: skip
        return cls(**(fields | overrides))

    @property
    def finder(self) -> str:
        """How calls choose the keys each query attends exactly: "lsh" (the paper's
        blocks), "kmeans" (blocks of k-means clusters, kmeans_iters > 0) or "clusters"
        (each query's own clusters, cluster_probes > 0)."""
        if self.cluster_probes:
            return "clusters"
        return "kmeans" if self.kmeans_iters else "lsh"

    @property
    def allows_kernels(self) -> bool:
        """Whether calls may run Triton kernels where they serve the inputs (the backend
        is not "torch"): the one reading of `backend` for the executor and the finders."""
        return self.backend != "torch"

    @property
    def sinks(self) -> int:
        """The number of attention-sink keys every call uses (sink_tokens, resolved)."""
        return self.sink_tokens

    @property
    def window(self) -> int:
        """The local window every causal call uses (local_window, resolved)."""
        return self.local_window

    @property
    def graph_max_len(self) -> int:
        """Inference calls of at most this many queries replay CUDA graphs
        (cuda_graph_max_len, resolved)."""
        if self.cuda_graph_max_len != "auto":
            return self.cuda_graph_max_len
        if self.finder == "clusters":
            return CLUSTERS_CUDA_GRAPH_MAX_LEN
        return DEFAULT_CUDA_GRAPH_MAX_LEN

    def exact_query_len(self, causal: bool) -> int:
        """Calls with at most this many queries run exact attention."""
        limit = MEASURED_CROSSOVER[causal] if self.exact_up_to == "auto" else self.exact_up_to
        return max(self.min_seq_len, limit)

    def runs_exact(self, n_query: int, causal: bool) -> bool:
        """Whether a call of n_query queries runs exact attention: the one rule that the
        attention function, every adapter and every job apply (min_seq_len, exact_up_to)."""
        return n_query <= self.exact_query_len(causal)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
