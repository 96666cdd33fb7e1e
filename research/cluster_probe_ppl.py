"""Perplexity of a per-query large-entry finder, prototyped densely: each query attends
its c k-means clusters of largest estimated mass exactly.

`residual_estimators.py` measured that, on the first cut's rectangle, the c = 8 clusters
of largest estimated mass (|c| exp(s q.mu_c)) per query, about as many keys as one
256-key block, cut the error 1.6-2.4x below k-means blocks. Whether that carries to
perplexity is measured here without kernels: the same causal recursion as
HyperAttention (exact diagonal blocks of at most min_seq_len, a lower-left rectangle
per cut), and in each rectangle the sinks exact, each query's c clusters exact (the
rectangle's keys clustered as `kmeans_iters` does) and a uniform sample of
`sample_size` keys for the rest, weighted per query. All in dense float32 masks, so
only for short windows on a CPU. The same windows run unpatched and with HyperAttention
at the defaults (and with k-means buckets) through `hf_hyper.patch`, for comparison.

    python research/cluster_probe_ppl.py --model DIR --gguf-file F.gguf --text kjv.txt \\
        --length 8192 --windows 2 --clusters 4 8 --patch-last 15 30
"""

from __future__ import annotations

import argparse
import math
from contextlib import contextmanager

import torch
from transformers import AttentionInterface, AutoModelForCausalLM, AutoTokenizer
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

import hf_hyper
from hf_hyper import HyperAttentionConfig
from hf_hyper.attention.finders.kmeans import kmeans_clusters
from hf_hyper.attention.planning import causal_levels
from hf_hyper.eval.texts import window_prefix

PROBE = "cluster_probe"


def rectangle_weights(q, k, scale, n_sink, top_c, config, gen) -> torch.Tensor:
    """Key weights [g, m, nk] of queries q [g, m, d] against keys k [nk, d] (all before
    them): 1 on the sinks and on each query's top_c clusters, the sample's per-query
    weight on the sampled keys outside them, 0 elsewhere."""
    n_key = k.shape[0]
    rest = torch.arange(n_key) >= n_sink
    chosen = torch.zeros(q.shape[0], q.shape[1], n_key, dtype=torch.bool)
    if top_c:
        centroids, assign, counts = kmeans_clusters(
            k[None], 2**config.lsh_num_projs, 4, torch.tensor([n_sink])
        )
        mass = scale * q @ centroids[0].T + counts[0].clamp_min(1e-30).log()
        best = mass.topk(min(top_c, mass.shape[-1]), -1).indices  # [g, m, c]
        in_cluster = torch.zeros(mass.shape, dtype=torch.bool).scatter_(-1, best, True)
        chosen = in_cluster.gather(-1, assign[0].expand(*q.shape[:2], -1)) & rest
    weights = chosen.float()
    weights[..., :n_sink] = 1.0
    sample = torch.randperm(n_key - n_sink, generator=gen)[: config.sample_size] + n_sink
    outside = ~chosen[..., sample]
    per_query = (rest.sum() - chosen.sum(-1)) / outside.sum(-1).clamp_min(1)
    weights[..., sample] += outside * per_query[..., None]
    return weights


def probe_attention(q, k, v, scale, top_c, config, gen) -> torch.Tensor:
    """Causal attention of q [hq, n, d] over k, v [hk, n, d] with the recursion's
    rectangles served as `rectangle_weights` says -> [hq, n, dv]."""
    hq, n, _ = q.shape
    g = hq // k.shape[0]
    padded, base, levels = causal_levels(n, config.min_seq_len)
    if padded != n:
        raise SystemExit(f"length {n} must be min_seq_len times a power of two")
    out = torch.empty(hq, n, v.shape[-1])
    for kv in range(k.shape[0]):
        qh, kh, vh = q[kv * g : (kv + 1) * g].float(), k[kv].float(), v[kv].float()
        weights = torch.zeros(g, n, n)
        for start in range(0, n, base):  # exact diagonal blocks
            block = torch.ones(base, base).tril()
            weights[:, start : start + base, start : start + base] = block
        for level in levels:
            size = level.size
            for pair in range(level.pairs):
                q0, k0 = (2 * pair + 1) * size, 2 * pair * size
                weights[:, q0 : q0 + size, k0 : k0 + size] = rectangle_weights(
                    qh[:, q0 : q0 + size], kh[k0 : k0 + size], scale,
                    config.sinks if pair == 0 else 0, top_c, config, gen,
                )  # fmt: skip
        scores = qh @ kh.T * scale
        scores = scores.masked_fill(weights == 0, float("-inf"))
        probs = torch.exp(scores - scores.amax(-1, keepdim=True)) * weights
        out[kv * g : (kv + 1) * g] = (probs @ vh) / probs.sum(-1, keepdim=True)
    return out


@contextmanager
def probed(model, first_layer: int, top_c: int, config: HyperAttentionConfig):
    """Layers from first_layer on run `probe_attention`; the rest their own attention."""
    previous = model.config._attn_implementation
    original = ALL_ATTENTION_FUNCTIONS[previous]
    gen = torch.Generator().manual_seed(config.seed or 0)

    def attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
        if module.layer_idx < first_layer:
            return original(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
        out = probe_attention(query[0], key[0], value[0], scaling, top_c, config, gen)
        return out.to(query.dtype).transpose(0, 1)[None], None

    AttentionInterface.register(PROBE, attention)
    AttentionMaskInterface.register(PROBE, ALL_MASK_ATTENTION_FUNCTIONS[previous])
    model.set_attn_implementation(PROBE)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def nll(model, windows: list[torch.Tensor], prefix: int) -> float:
    """Mean negative log-likelihood of every window token after the prefix."""
    total, count = 0.0, 0
    for ids in windows:
        with torch.no_grad():
            logits = model(ids[None]).logits[0, prefix:-1].float()
        targets = ids[prefix + 1 :]
        total += torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item()
        count += targets.numel()
    return total / count


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--gguf-file", default=None)
    p.add_argument("--text", required=True)
    p.add_argument("--length", type=int, default=8192)
    p.add_argument("--windows", type=int, default=2)
    p.add_argument("--clusters", type=int, nargs="+", default=[8], help="c, clusters per query")
    p.add_argument("--patch-last", type=int, nargs="+", default=[30])
    p.add_argument(
        "--no-reference", dest="reference", action="store_false",
        help="skip the HyperAttention rows (LSH and k-means buckets through hf_hyper.patch)",
    )  # fmt: skip
    args = p.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.model, gguf_file=args.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(
        args.model, gguf_file=args.gguf_file, dtype=torch.float32
    ).eval()
    head = list(window_prefix(tokenizer))
    body = args.length - len(head)
    with open(args.text, encoding="utf-8") as f:
        text = f.read(args.length * args.windows * 12)
    stream = tokenizer(text, add_special_tokens=False).input_ids
    windows = [torch.tensor(head + stream[w * body : (w + 1) * body]) for w in range(args.windows)]
    layers = model.config.num_hidden_layers
    config = HyperAttentionConfig(seed=0, backend="torch")
    base = nll(model, windows, len(head))
    print(f"{args.windows} windows of {args.length} tokens; unpatched ppl {math.exp(base):.4f}")
    print("\n| final layers | method | ppl | vs unpatched |\n|---|---|---|---|")

    def row(last, method, value):
        change = math.exp(value - base) - 1
        print(f"| {last} | {method} | {math.exp(value):.4f} | {change:+.2%} |", flush=True)

    for last in args.patch_last:
        references = (("HyperAttention, LSH", {}), ("k-means 4", {"kmeans_iters": 4}))
        for name, settings in references if args.reference else ():
            hf_hyper.patch(model, last_layers=last, config=HyperAttentionConfig(
                seed=0, backend="torch", **settings))  # fmt: skip
            row(last, name, nll(model, windows, len(head)))
            hf_hyper.unpatch(model)
        for top_c in args.clusters:
            with probed(model, layers - last, top_c, config):
                row(last, f"top-{top_c} clusters + sample (dense prototype)", nll(
                    model, windows, len(head)))  # fmt: skip


if __name__ == "__main__":
    main()
