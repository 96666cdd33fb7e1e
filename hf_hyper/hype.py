"""HyPE (Angelotti 2023): a hyperbolic relative position bias carried by Q and K columns.

The bias of query position i on key position j is

    bias(i, j) = -2 * tau * sinh(mu * (i - j))

so with tau, mu > 0 earlier keys (i > j) are penalised the more the farther they are,
~ ALiBi's -m * (i - j) with m = 2 * tau * mu while mu * (i - j) is small. Because
sinh(x + y) = sinh(x) cosh(y) + cosh(x) sinh(y), with x = mu (i - c), y = mu (c - j)
for any centre c, the bias is the dot product of two columns appended to each query
[-2 tau sinh(x), -2 tau cosh(x)] and key [cosh(y), sinh(y)]: it runs inside any kernel
that takes Q, K, V (SDPA, FlexAttention, HyperAttention) with no L x L mask.

Numerics: choosing c near the queries keeps x small, and the terms are then of the size of
the bias itself (no constant tau-sized terms that cancel), so low-precision inputs keep
the bias near the diagonal. Queries are processed in chunks, each with its own centre.
Far-away past keys, whose y would overflow the dtype, are clamped: their bias saturates
at a value so negative that their softmax weight is exactly zero anyway.
No import of transformers here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from .attention import future_key_mask, hyper_attention
from .config import HyperAttentionConfig

# Bound on |bias terms| so the kernels' float32 sums never overflow to inf - inf = NaN.
_MAX_TERM = 1e30


def alibi_slopes(num_heads: int) -> list[float]:
    """ALiBi's geometric slopes (Press et al. 2022), with its rule for non-powers of two."""

    def power_of_two(n: int) -> list[float]:
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]

    if num_heads & (num_heads - 1) == 0:
        return power_of_two(num_heads)
    closest = 2 ** math.floor(math.log2(num_heads))
    return power_of_two(closest) + power_of_two(2 * closest)[0::2][: num_heads - closest]


@dataclass(frozen=True)
class HyPEConfig:
    """Parameters of the bias -2 tau sinh(mu (i - j)); scalars or one value per head.

    learnable: `HyPE` modules built from this config hold mu, tau as parameters.
    chunk_size: queries per kernel call (each chunk re-centres positions); None = one call.
    """

    mu: float | tuple[float, ...] = 1e-3
    tau: float | tuple[float, ...] = 1.0
    learnable: bool = False
    chunk_size: int | None = 1024

    def __post_init__(self) -> None:
        for name in ("mu", "tau"):
            value = getattr(self, name)
            values = value if isinstance(value, tuple) else (value,)
            if not values or not all(
                isinstance(x, (int, float)) and math.isfinite(x) for x in values
            ):
                raise ValueError(
                    f"HyPEConfig.{name} must be a finite number or tuple; got {value!r}"
                )
        if (
            isinstance(self.mu, tuple)
            and isinstance(self.tau, tuple)
            and len(self.mu) != len(self.tau)
        ):
            raise ValueError(f"HyPEConfig: {len(self.mu)} mu values but {len(self.tau)} tau values")
        if self.chunk_size is not None and (
            not isinstance(self.chunk_size, int) or self.chunk_size < 1
        ):
            raise ValueError(
                f"HyPEConfig.chunk_size must be a positive int or None; got {self.chunk_size!r}"
            )

    @classmethod
    def alibi(
        cls, num_heads: int, fit_bias: float = 30.0, max_error: float = 0.05, **kwargs
    ) -> HyPEConfig:
        """Approximate ALiBi: |bias - alibi| <= max_error wherever |alibi| <= fit_bias.

        The error of 2 tau sinh(mu d) against m d is ~ m d (mu d)^2 / 6. One mu shared by
        all heads (so GQA keys need no per-head columns), set by the smallest slope; each
        head's tau = m_h / (2 mu). Beyond fit_bias the bias falls faster than ALiBi's.
        """
        slopes = alibi_slopes(num_heads)
        # worst case is the smallest slope at |alibi| = fit_bias: err = fit_bias^3 c^2 / 6
        c = math.sqrt(6 * max_error / fit_bias**3)
        mu = c * min(slopes)
        return cls(mu=mu, tau=tuple(m / (2 * mu) for m in slopes), **kwargs)

    def per_head(self, num_heads: int) -> tuple[Tensor, Tensor]:
        """(mu [h], tau [h]) as float64 tensors."""
        out = []
        for name in ("mu", "tau"):
            value = getattr(self, name)
            if isinstance(value, tuple):
                if len(value) != num_heads:
                    raise ValueError(
                        f"HyPEConfig.{name} has {len(value)} values for {num_heads} heads"
                    )
                out.append(torch.tensor(value, dtype=torch.float64))
            else:
                out.append(torch.full((num_heads,), float(value), dtype=torch.float64))
        return out[0], out[1]


def hype_bias(q_pos: Tensor, k_pos: Tensor, mu: Tensor, tau: Tensor) -> Tensor:
    """Explicit bias [h, nq, nk] (the L x L reference the fused form must equal)."""
    distance = (q_pos[:, None] - k_pos[None, :]).to(mu.dtype)
    return -2 * tau[:, None, None] * torch.sinh(mu[:, None, None] * distance)


def hype_columns(
    q_pos: Tensor,
    k_pos: Tensor,
    centre: float,
    mu: Tensor,
    tau: Tensor,
    scale: float,
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """Columns whose dot product is bias / scale: q [h, nq, 2], k [h, nk, 2] (float64).

    A common factor moves from the query side to the key side so both fit `dtype`; keys
    whose y would overflow are clamped (see module doc)."""
    x = mu[:, None] * (q_pos.to(mu.dtype) - centre)[None, :]
    y = mu[:, None] * (centre - k_pos.to(mu.dtype))[None, :]
    q_cols = torch.stack((torch.sinh(x), torch.cosh(x)), -1) * (-2 * tau / scale)[:, None, None]
    q_max = float(q_cols.detach().abs().max()) if q_cols.numel() else 1.0
    balance = math.sqrt(max(q_max, 1.0))
    limit = torch.finfo(dtype).max / 8
    # cosh(y) * balance must fit the dtype and q * k terms the float32 accumulator
    y_max = min(math.log(limit / balance), math.log(_MAX_TERM / max(q_max, 1.0)))
    y = torch.clamp(y, max=y_max)  # only far past keys: bias saturates, weight stays 0
    k_cols = torch.stack((torch.cosh(y), torch.sinh(y)), -1) * balance
    return q_cols / balance, k_cols


def _split_columns(q_cols: Tensor, k_cols: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Carry each column as high + low part in `dtype`: (qh + ql)(kh + kl) ~ qh kh + qh kl
    + ql kh, exact products summed in float32, so ~16 bits of the bias survive bf16."""
    if torch.finfo(dtype).bits >= 32:
        return q_cols, k_cols
    qh = q_cols.to(dtype).to(q_cols.dtype)
    kh = k_cols.to(dtype).to(k_cols.dtype)
    ql, kl = q_cols - qh, k_cols - kh
    q_split = torch.stack((qh, qh, ql), -1).flatten(-2)  # [h, n, 6]
    k_split = torch.stack((kh, kl, kh), -1).flatten(-2)
    return q_split, k_split


def _augment(t: Tensor, cols: Tensor, multiple: int) -> Tensor:
    """Append cols [h or 1, n, c] to t [b, h, n, d] and zero-pad d to a multiple."""
    b, h, n, d = t.shape
    c = cols.shape[-1]
    cols = cols.to(t.dtype).unsqueeze(0).expand(b, h, n, c)
    pad = (-(d + c)) % multiple
    parts = [t, cols] + ([t.new_zeros(b, h, n, pad)] if pad else [])
    return torch.cat(parts, dim=-1)


def sdpa_kernel(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float) -> Tensor:
    """SDPA with bottom-right causal alignment (queries are the last rows of the keys)."""
    groups = q.shape[1] // k.shape[1]
    if v.shape[-1] != q.shape[-1]:  # fused kernels want one head_dim: pad V, slice back
        v_in = torch.nn.functional.pad(v, (0, q.shape[-1] - v.shape[-1]))
    else:
        v_in = v
    mask = None
    if causal and q.shape[2] > 1:
        mask = ~future_key_mask(q.shape[2], k.shape[2], q.device)
    out = torch.nn.functional.scaled_dot_product_attention(
        q, k, v_in, attn_mask=mask, scale=scale, enable_gqa=groups > 1
    )
    return out[..., : v.shape[-1]]


def hype_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool,
    mu: Tensor,
    tau: Tensor,
    scale: float | None = None,
    kernel: str = "sdpa",
    chunk_size: int | None = 1024,
    hyper_config: HyperAttentionConfig | None = None,
    q_offset: int | None = None,
    hash_augmented: bool = False,
) -> Tensor:
    """Attention with the HyPE bias through a fused kernel.

    q [b, hq, nq, d], k/v [b, hk, nk, d]; mu, tau [hq] (tensors: may require grad).
    Query i sits at position q_offset + i (default: the last nq of nk positions).
    kernel: "sdpa" or "hyper" (HyperAttention; runs in float32, so the bias columns keep
    full precision). The softmax scale applies to q.k only: columns are divided by it.
    hash_augmented: HyperAttention's LSH sees the HyPE columns too (default: only the
    original head_dim features, the better of the two as measured).
    """
    b, hq, n_query, dim = q.shape
    hk, n_key = k.shape[1], k.shape[2]
    if mu.shape != (hq,) or tau.shape != (hq,):
        raise ValueError(f"mu and tau need one value per query head ({hq}); got {tuple(mu.shape)}")
    scale = dim**-0.5 if scale is None else float(scale)
    offset = n_key - n_query if q_offset is None else q_offset
    if kernel not in ("sdpa", "hyper"):
        raise ValueError(f"kernel must be 'sdpa' or 'hyper'; got {kernel!r}")
    if kernel == "hyper":
        hyper_config = _without_exact_parts(hyper_config or HyperAttentionConfig())
    work_dtype = torch.promote_types(q.dtype, torch.float32) if kernel == "hyper" else q.dtype
    mu_w, tau_w = mu.to(q.device, torch.float64), tau.to(q.device, torch.float64)
    shared_mu = bool((mu_w == mu_w[0]).all()) and not mu.requires_grad
    if not shared_mu and hk != hq:  # key columns differ per query head: give each its keys
        k, v = (t.repeat_interleave(hq // hk, dim=1) for t in (k, v))
    if not causal:
        span = n_key if chunk_size is None else n_key + chunk_size
        reach = float(mu_w.abs().max()) * span
        if reach > 60:
            raise ValueError(
                f"non-causal HyPE with mu*L = {reach:.0f} overflows {work_dtype}: future keys "
                "get an unbounded positive bias; use a smaller mu or chunk_size"
            )
    multiple = 8
    step = n_query if chunk_size is None else chunk_size
    positions = torch.arange(max(n_key, offset + n_query), device=q.device)
    outs = []
    for start in range(0, n_query, step):
        stop = min(n_query, start + step)
        key_stop = min(n_key, offset + stop) if causal else n_key
        q_pos = positions[offset + start : offset + stop]
        centre = (offset + start + offset + stop - 1) / 2
        q_cols, k_cols = hype_columns(
            q_pos, positions[:key_stop], centre, mu_w, tau_w, scale, work_dtype
        )
        if shared_mu:
            k_cols = k_cols[:1]  # identical for every head
        q_cols, k_cols = _split_columns(q_cols, k_cols, work_dtype)
        q_aug = _augment(q[:, :, start:stop].to(work_dtype), q_cols, multiple)
        k_aug = _augment(k[:, :, :key_stop].to(work_dtype), k_cols, multiple)
        v_chunk = v[:, :, :key_stop].to(work_dtype)
        if kernel == "sdpa":
            out = sdpa_kernel(q_aug, k_aug, v_chunk, causal=causal, scale=scale)
        else:
            out = hyper_attention(
                q_aug,
                k_aug,
                v_chunk,
                causal=causal,
                scale=scale,
                config=hyper_config,
                hash_dims=None if hash_augmented else dim,
            )
        outs.append(out.to(q.dtype))
    return torch.cat(outs, dim=2)


def _without_exact_parts(config: HyperAttentionConfig) -> HyperAttentionConfig:
    """HyPE's bias is carried by column pairs whose large products cancel in float32 only
    when a kernel sums them in one order; a separate exact part (attention sinks, the
    local window's corners) sums them in another and loses the bias. HyPE's own bias
    already decides how much the first and the nearest tokens get, so HyPE runs
    HyperAttention without them: the defaults are dropped, other values refused."""
    defaults = HyperAttentionConfig(min_seq_len=config.min_seq_len)
    for name in ("sink_tokens", "local_window"):
        if getattr(config, name) not in (0, getattr(defaults, name)):
            raise ValueError(
                f"HyPE with HyperAttention runs without attention sinks or a local window; "
                f"got HyperAttentionConfig({name}={getattr(config, name)}): set {name}=0"
            )
    return replace(config, sink_tokens=0, local_window=0)


class HyPE(nn.Module):
    """HyPE parameters of one attention layer; `learnable=True` makes mu, tau trainable."""

    def __init__(self, config: HyPEConfig, num_heads: int) -> None:
        super().__init__()
        self.config = config
        mu, tau = config.per_head(num_heads)
        if config.learnable:
            if (mu <= 0).any() or (tau <= 0).any():
                raise ValueError(
                    "learnable HyPE needs mu > 0 and tau > 0: they are learned as logarithms, "
                    f"which keeps them positive; got mu={mu.tolist()}, tau={tau.tolist()}"
                )
            # In log space a step changes mu by a fraction of itself: mu ~ 1e-5 next to
            # weights ~ 1e-2 would otherwise be thrown across zero by the first update.
            self.log_mu = nn.Parameter(mu.log().float())
            self.log_tau = nn.Parameter(tau.log().float())
        else:
            self.register_buffer("fixed_mu", mu.float())
            self.register_buffer("fixed_tau", tau.float())

    @property
    def mu(self) -> Tensor:
        return self.log_mu.exp() if self.config.learnable else self.fixed_mu

    @property
    def tau(self) -> Tensor:
        return self.log_tau.exp() if self.config.learnable else self.fixed_tau

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        *,
        causal: bool = True,
        scale: float | None = None,
        kernel: str = "sdpa",
        hyper_config: HyperAttentionConfig | None = None,
    ) -> Tensor:
        return hype_attention(
            q,
            k,
            v,
            causal=causal,
            mu=self.mu,
            tau=self.tau,
            scale=scale,
            kernel=kernel,
            chunk_size=self.config.chunk_size,
            hyper_config=hyper_config,
        )


__all__: Sequence[str] = [
    "HyPE",
    "HyPEConfig",
    "alibi_slopes",
    "hype_attention",
    "hype_bias",
    "hype_columns",
]
