"""Configuration dataclasses, validated where they are built so errors name the field."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

BACKENDS = ("auto", "torch", "triton")


def _require_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"HyperAttentionConfig.{name} must be an int; got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"HyperAttentionConfig.{name} must be {bound}; got {value}")


@dataclass(frozen=True)
class HyperAttentionConfig:
    """Parameters of HyperAttention (defaults are the paper's).

    lsh_num_projs: random hyperplanes of the angular LSH (2**lsh_num_projs buckets).
    block_size: keys per diagonal block of the sorted order, attended exactly.
    sample_size: keys drawn uniformly to estimate the mass outside the block; 0 disables.
    min_seq_len: problems no longer than this run exact attention; in causal attention
        the diagonal blocks of the recursion are at most this long and exact.
    seed: if set, every call draws its hyperplanes and samples from a generator seeded
        with it, so calls are reproducible; if None the global torch RNG is used.
    backend: "torch" (plain torch ops, any device), "triton" (fused CUDA kernels,
        forward and backward; an error where they cannot run) or "auto" (triton where it
        can run, else torch). Both compute the same algorithm with the same random draws
        and are differentiable (the sampled and hashed choices are held fixed).
    """

    lsh_num_projs: int = 7
    block_size: int = 256
    sample_size: int = 256
    min_seq_len: int = 4096
    seed: int | None = None
    backend: str = "auto"

    def __post_init__(self) -> None:
        _require_int("lsh_num_projs", self.lsh_num_projs, 0, 48)
        _require_int("block_size", self.block_size, 1)
        _require_int("sample_size", self.sample_size, 0)
        _require_int("min_seq_len", self.min_seq_len, 1)
        if self.seed is not None:
            _require_int("seed", self.seed, 0)
        if self.backend not in BACKENDS:
            raise ValueError(
                f"HyperAttentionConfig.backend must be one of {BACKENDS}; got {self.backend!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
