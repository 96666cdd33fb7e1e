"""Estimators of the softmax mass HyperAttention does not attend exactly, on a real
model's attention inputs.

HyperAttention estimates everything outside the sinks and a query's block from one
uniform sample of keys; on pretrained models its blocks find about chance mass, so that
sample carries the approximation, and its variance grows as the rectangle does. Here
the keys outside the sinks are clustered (`kmeans_clusters`, as `kmeans_iters` does) and
each cluster is modelled as a Gaussian with diagonal covariance: its mass for a query
is |c| exp(s q.mu_c + s^2/2 sum_i q_i^2 var_ci) and its value sum that times the
cluster's mean value. On the lower-left rectangle of the first causal cut (as
`large_entry_oracle.py`), ||O - O*||_F / ||V||_F of, all with the sinks exact:

- `sample`: the uniform sample (what HyperAttention is when its blocks find nothing);
- `centroids`: the cluster model alone, without the variance term;
- `gaussian`: the cluster model with it;
- `centroids + sample`, `gaussian + sample`: the model plus the sample as a control
  variate (each sampled key adds its true minus its modelled weight, scaled up),
  unbiased again;
- `cluster + centroids + sample`: each query's cluster of largest estimated mass
  (|c| exp(s q.mu_c), as `kmeans_iters` picks it) exact, the other clusters as in
  `centroids + sample`;
- `top-c clusters + sample`: the query's c clusters of largest estimated mass exact, the
  sample for the rest (c = 1: k-means HyperAttention with a whole cluster for its
  block); the mean number of exact keys per query is printed after the table.

    python research/residual_estimators.py --model DIR --gguf-file F.gguf --text kjv.txt \\
        --length 8192 --layers 5 12 18 25
"""

from __future__ import annotations

import argparse
import math

import torch
from captured_window import add_window_arguments, cut_rectangles, model_and_window

from hf_hyper import HyperAttentionConfig, capture_attention
from hf_hyper.attention.finders.kmeans import kmeans_clusters

ESTIMATORS = [
    "sample",
    "centroids",
    "gaussian",
    "centroids + sample",
    "gaussian + sample",
    "cluster + centroids + sample",
]
TOP_CLUSTERS = (1, 2, 4, 8)
ESTIMATORS += [f"top-{c} clusters + sample" for c in TOP_CLUSTERS]


def cluster_model(keys, values, n_sink: int, clusters: int, iterations: int):
    """(assign [n], log |c| [C], centroid [C, d], variance [C, d], mean value [C, dv]) of
    the keys after the sinks; the sinks get cluster -1."""
    centroids, assign, counts = kmeans_clusters(
        keys[None].float(), clusters, iterations, torch.tensor([n_sink])
    )
    assign, counts = assign[0].clone(), counts[0].double()
    assign[:n_sink] = -1
    size = counts.clamp_min(1)[:, None]
    member = torch.nn.functional.one_hot(assign.clamp_min(0), counts.shape[0]).double()
    member[:n_sink] = 0
    mean = member.T @ keys / size
    variance = (member.T @ keys.pow(2) / size - mean.pow(2)).clamp_min(0)
    mean_value = member.T @ values / size
    return assign, counts.clamp_min(1e-30).log(), mean, variance, mean_value


def estimates(
    scores, q, values, n_sink: int, scale: float, model, sample_size: int, gen, exact_keys: dict
):
    """Each estimator's output [g, rows, dv] for scores [g, rows, n] (already scaled);
    exact_keys[c] is set to the mean number of keys the top-c clusters hold."""
    assign, log_count, mean, variance, mean_value = model
    n_key = scores.shape[-1]
    top = scores.amax(-1, keepdim=True)
    weight = torch.exp(scores - top)
    sink_num, sink_den = weight[..., :n_sink] @ values[:n_sink], weight[..., :n_sink].sum(-1)
    # log of each cluster's modelled mass for each query, [g, rows, C]
    first = scale * q @ mean.T
    second = 0.5 * scale**2 * q.pow(2) @ variance.T
    rest = torch.arange(n_key) >= n_sink
    sample = torch.randperm(n_key - n_sink, generator=gen)[:sample_size] + n_sink
    up = (n_key - n_sink) / sample.numel()
    out = {}

    def merged(num, den):
        return (sink_num + num) / (sink_den + den)[..., None]

    sample_w = weight[..., sample]
    out["sample"] = merged(up * sample_w @ values[sample], up * sample_w.sum(-1))
    for name, log_mass in (("centroids", first), ("gaussian", first + second)):
        mass = torch.exp(log_mass + log_count - top)
        out[name] = merged(mass @ mean_value, mass.sum(-1))
    none = torch.zeros(first.shape, dtype=torch.bool)
    for model_name, log_mass in (("centroids", first), ("gaussian", first + second)):
        cluster_mass = torch.exp(log_mass + log_count - top)
        key_model = torch.exp(log_mass[..., assign[sample]] - top)  # modelled, sampled keys

        def control_variate(skip, cluster_mass=cluster_mass, key_model=key_model):
            """The model over clusters where `skip` [g, rows, C] is False, corrected by
            the sample on its keys of those clusters: (numerator, denominator)."""
            kept = cluster_mass * ~skip
            in_model = ~skip.gather(-1, assign[sample].expand(*skip.shape[:2], -1))
            true_w, model_w = sample_w * in_model, key_model * in_model
            num = kept @ mean_value + up * (
                true_w @ values[sample] - model_w @ mean_value[assign[sample]]
            )
            return num, kept.sum(-1) + up * (true_w - model_w).sum(-1)

        num, den = control_variate(none)
        out[f"{model_name} + sample"] = merged(num, den.clamp_min(1e-300))
        if model_name == "centroids":
            # the query's cluster of largest estimated mass exact, as kmeans_iters picks it
            best = cluster_mass.argmax(-1, keepdim=True)
            own_keys = (assign[None, None] == best) & rest  # [g, rows, n]
            exact_w = weight * own_keys
            own = none.scatter(-1, best, True)
            num, den = control_variate(own)
            out["cluster + centroids + sample"] = merged(
                exact_w @ values + num, (exact_w.sum(-1) + den).clamp_min(1e-300)
            )
            # the c clusters of largest estimated mass exact, the sample for the rest
            order = cluster_mass.argsort(-1, descending=True)
            for c in TOP_CLUSTERS:
                chosen = none.scatter(-1, order[..., :c], True)
                keys_in = chosen.gather(-1, assign.clamp_min(0).expand(*chosen.shape[:2], -1))
                keys_in &= rest
                exact_w = weight * keys_in
                in_rest = ~keys_in[..., sample]
                # each row's sample weight: its keys outside the exact ones over its
                # sampled keys outside them
                row_up = (rest.sum() - keys_in.sum(-1)) / in_rest.sum(-1).clamp_min(1)
                rest_w = sample_w * in_rest * row_up[..., None]
                out[f"top-{c} clusters + sample"] = merged(
                    exact_w @ values + rest_w @ values[sample], exact_w.sum(-1) + rest_w.sum(-1)
                )
                exact_keys[c] = keys_in.sum(-1).double().mean().item()
    return out


def rectangle_errors(
    q, k, v, scale, config: HyperAttentionConfig, rows: int, iterations: int, exact_keys: dict
):
    gen = torch.Generator().manual_seed(0)
    sq = dict.fromkeys(ESTIMATORS, 0.0)
    v_sq = 0.0
    for r in cut_rectangles(q, k, v, scale, rows):
        v_sq += r.v_sq
        model = cluster_model(r.k, r.v, config.sinks, 2**config.lsh_num_projs, iterations)
        found = estimates(
            r.scores, r.q, r.v, config.sinks, scale, model, config.sample_size, gen, exact_keys
        )
        for name, est in found.items():
            sq[name] += (est - r.exact).pow(2).sum().item()
    return {name: math.sqrt(value / v_sq) for name, value in sq.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_window_arguments(p, length=8192)
    p.add_argument("--rows", type=int, default=2048, help="queries measured after the cut")
    p.add_argument("--iterations", type=int, default=4, help="Lloyd's iterations")
    args = p.parse_args()
    model, ids = model_and_window(args)
    config = HyperAttentionConfig(seed=0, backend="torch")
    print(f"{args.model} {args.gguf_file or ''}, {ids.shape[1]} tokens, config {config.to_dict()}")
    print("\n| layer | " + " | ".join(ESTIMATORS) + " |")
    print("|---" * (1 + len(ESTIMATORS)) + "|")

    sizes = {}

    def report(layer, q, k, v, *, causal, scale):
        exact_keys = {}
        errors = rectangle_errors(q, k, v, scale, config, args.rows, args.iterations, exact_keys)
        sizes[layer] = exact_keys
        print(f"| {layer} | " + " | ".join(f"{e:.4f}" for e in errors.values()) + " |", flush=True)

    with torch.no_grad(), capture_attention(model, report, layers=args.layers):
        model(ids)
    print("\nmean exact keys per query (last KV head), top-c clusters:")
    for layer, exact_keys in sizes.items():
        print(f"  layer {layer}: " + ", ".join(f"c={c}: {n:.0f}" for c, n in exact_keys.items()))


if __name__ == "__main__":
    main()
