"""For --diagnose: per layer, the share of query heads whose exact set (LSH block,
sinks, local window, diagonal block) holds a needle token, for the prompt's last query
(the one that starts the answer), measured on the unpatched model's own q and k with the
hyperplanes a seeded HyperAttention call draws."""

from __future__ import annotations

import torch

import hf_hyper
from hf_hyper import HyperAttentionConfig
from hf_hyper.attention.diagnostics import call_region


class NeedleCoverage:
    """capture_attention observer: {layer: share of heads that see a needle exactly}."""

    def __init__(self, config: HyperAttentionConfig, spans) -> None:
        self.config, self.spans, self.shares = config, spans, {}

    def __call__(self, layer: int, q, k, v, *, causal: bool, scale: float) -> None:
        b, hq, n, dim = q.shape
        hk = k.shape[1]
        generator = torch.Generator(device=q.device).manual_seed(self.config.seed)
        qz, kz = q.reshape(b * hk, hq // hk, n, dim), k.reshape(b * hk, n, dim)
        region = call_region(qz, kz, causal, self.config, generator)
        needle = torch.zeros(n, dtype=torch.bool, device=q.device)
        for start, stop in self.spans:
            needle[start:stop] = True
        seen = [region.rows(z, n - 1, n)[:, 0][:, needle].any(-1) for z in range(b * hk)]
        self.shares[layer] = torch.cat(seen).float().mean().item()


@torch.no_grad()
def needle_coverage(model, input_ids, spans, config: HyperAttentionConfig, device) -> dict:
    """{layer: share of heads} for one prompt (the model must be unpatched)."""
    if config.seed is None:
        raise ValueError("--diagnose needs --seed: the exact sets are those of seeded calls")
    observer = NeedleCoverage(config, spans)
    with hf_hyper.capture_attention(model, observer):
        model.get_decoder()(input_ids=torch.tensor([input_ids], device=device), use_cache=False)
    return {str(layer): share for layer, share in sorted(observer.shares.items())}
