"""Where a call spends its GPU time with each large-entry finder: LSH blocks (the
defaults), k-means blocks (`kmeans_iters`) and cluster probes (`cluster_probes`), beside
cuDNN in the same run.

One causal forward per setting on `bench attention`'s planted inputs (bf16, no autograd),
timed whole (median of 3), then once under torch.profiler with the CUDA time of its
kernels summed by kind:

- `probe kernels`: the probes' Triton segment and sample kernels;
- `choice kernel`: each query's clusters by a running top-c (`top_clusters_kernel`);
  the setting "probes, torch choice" makes that choice in torch ops instead (a score
  matrix in row chunks and topk), for a same-run A/B; "probes, key budget" bounds each
  query's exact keys (`cluster_key_budget`, `--key-budget`);
- `k-means kernels`: the best-centroid and Lloyd-update kernels;
- `matmul`: GEMMs (k-means distances, centroid scores, the exact leaves' and sinks' parts);
- `sort / topk`, `gather / scatter / index`, `elementwise / reduce`, `other`.

`--set NAME=VALUE` runs with a module constant of `finders/query_clusters.py` replaced
(a layout or tile switch); `--sweep NAME=V1,V2 ...` also times every combination of such
values, replayed from the CUDA graph, each after clearing the graphs.

    python research/probe_profile.py --lengths 32768 131072 --dims 64 128 --probes 16 \
        --kmeans-iters 4
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import itertools
import json
import os
from collections import defaultdict
from dataclasses import replace
from unittest import mock

import torch

from hf_hyper import HyperAttentionConfig, hyper_attention
from hf_hyper.attention.finders import query_clusters
from hf_hyper.eval.bench_attention import planted_inputs
from hf_hyper.eval.timing import environment, time_cuda

KINDS = [
    ("probe kernels", ("segment_kernel", "probe_sample_kernel")),
    ("choice kernel", ("top_clusters",)),
    ("k-means kernels", ("best_centroid", "lloyd_update")),
    (
        "HyperAttention kernels",
        ("block_sample", "dense_kernel", "lsh_rank", "query_block", "histogram", "bucket_scatter"),
    ),
    ("matmul", ("gemm", "cutlass", "sm90", "nvjet", "xmma", "cublas")),
    ("sort / topk", ("sort", "topk", "radix", "bitonic", "select")),
    ("gather / scatter / index", ("gather", "scatter", "index")),
    ("elementwise / reduce", ("elementwise", "reduce", "vectorized")),
]


def kind_of(name: str) -> str:
    low = name.lower()
    for kind, marks in KINDS:
        if any(mark in low for mark in marks):
            return kind
    return "other"


def profile_split(
    fn, launches_of: str | None = None
) -> tuple[dict[str, float], dict[str, tuple[float, int]], list[float]]:
    """CUDA milliseconds of one call of fn by kernel kind, (ms, launches) by kernel
    name, and the ms of each launch of the kernels whose name holds `launches_of`, in
    the order they ran."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    split: dict[str, float] = defaultdict(float)
    by_name: dict[str, list] = defaultdict(lambda: [0.0, 0])
    launches = []
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            split[kind_of(event.name)] += event.device_time / 1000
            by_name[event.name[:90]][0] += event.device_time / 1000
            by_name[event.name[:90]][1] += 1
            if launches_of and launches_of in event.name:
                launches.append((event.time_range.start, event.device_time / 1000))
    each = [ms for _, ms in sorted(launches)]
    return dict(split), {name: tuple(v) for name, v in by_name.items()}, each


def probes_config(args: argparse.Namespace, **fields) -> HyperAttentionConfig:
    """The per-query clusters' config of the command line, with these fields changed."""
    leaves = {} if args.min_seq_len is None else dict(min_seq_len=args.min_seq_len)
    return HyperAttentionConfig(
        kmeans_iters=args.kmeans_iters, cluster_probes=args.probes, block_size=args.block_size,
        **leaves, **fields,
    )  # fmt: skip


def measure(n: int, dim: int, args: argparse.Namespace, kinds: list[str]) -> list[dict]:
    """cuDNN and each setting at one length and head width, printed as table rows."""
    q, k, v = planted_inputs(n, args.heads, args.heads, dim, torch.bfloat16, True, 0)

    def exact():
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.CUDNN_ATTENTION):
        cudnn = time_cuda(exact, repeats=3)
    row = f"| {n} | {dim} | cuDNN | {cudnn.ms:.1f} | 1 | {cudnn.peak_gib:.2f} |"
    print(row + " |" * len(kinds), flush=True)
    probes = probes_config(args)
    settings = {
        "LSH blocks": HyperAttentionConfig(),
        "k-means blocks": HyperAttentionConfig(kmeans_iters=args.kmeans_iters),
        "probes": probes,
        "probes, torch choice": probes,
        "probes, key budget": replace(probes, cluster_key_budget=args.key_budget),
    }
    rows = []
    for name in args.settings:
        config = settings[name]
        torch_choice = name == "probes, torch choice"

        def call(config=config, torch_choice=torch_choice):
            choice = contextlib.nullcontext()
            if torch_choice:
                choice = mock.patch.object(query_clusters, "kernels_can_cluster", lambda x: False)
            with torch.no_grad(), choice:
                return hyper_attention(q, k, v, causal=True, config=config)

        timing = time_cuda(call, warmup=1, repeats=3)
        split, by_name, each = profile_split(call, args.launches)
        cells = " | ".join(f"{split.get(kind, 0.0):.1f}" for kind in kinds)
        ratio = cudnn.ms / timing.ms
        print(f"| {n} | {dim} | {name} | {timing.ms:.1f} | {ratio:.3f} | {timing.peak_gib:.2f} "
              f"| {cells} |", flush=True)  # fmt: skip
        rows.append(dict(n=n, dim=dim, setting=name, ms=timing.ms, cudnn_ms=cudnn.ms,
                         peak_gib=timing.peak_gib, split_ms=split))  # fmt: skip
        top = sorted(by_name.items(), key=lambda item: -item[1][0])[: args.top]
        rows[-1]["top_kernels"] = [dict(name=t, ms=ms, launches=c) for t, (ms, c) in top]
        for kernel, (ms, launches) in top:
            print(f"    {ms:8.2f} ms {launches:6d}x  {kernel}")
        if args.launches:
            rows[-1]["launches"] = dict(kernel=args.launches, ms=each)
            print(f"    each {args.launches} launch, ms: " + " ".join(f"{ms:.3f}" for ms in each))
    return rows


def time_variant(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, args: argparse.Namespace,
    budget: float, constants: dict,
) -> tuple[float, float]:  # fmt: skip
    """(ms, peak GiB) of the probes setting at a key budget with the finder's module
    constants replaced (tiles, layouts), timed as calls replay it (no profile). The
    graphs are cleared first: a replayed graph keeps the kernels it was captured with."""
    from hf_hyper.attention import clear_cuda_graphs

    config = probes_config(args, cluster_key_budget=budget)
    clear_cuda_graphs()
    with mock.patch.multiple(query_clusters, **constants), torch.no_grad():
        timing = time_cuda(
            lambda: hyper_attention(q, k, v, causal=True, config=config), warmup=3, repeats=5
        )
    torch.cuda.empty_cache()
    return timing.ms, timing.peak_gib


def sweep_segment(n: int, dim: int, args: argparse.Namespace) -> list[dict]:
    """The segment kernel's tiles (keys per step, most rows per tile, warps) at each key
    budget (`--sweep-key-budgets`); printed as table rows."""
    q, k, v = planted_inputs(n, args.heads, args.heads, dim, torch.bfloat16, True, 0)
    rows = []
    for budget, block_n, max_rows, warps in itertools.product(
        args.sweep_key_budgets, args.sweep_block_n, args.sweep_max_rows, args.sweep_warps
    ):
        tile = dict(SEGMENT_BLOCK_N=block_n, SEGMENT_MAX_ROWS=max_rows, SEGMENT_WARPS=warps)
        ms, peak = time_variant(q, k, v, args, budget, tile)
        print(f"| {n} | {dim} | {budget:g} | {block_n} | {max_rows} | {warps} | {ms:.1f} | "
              f"{peak:.2f} |")  # fmt: skip
        rows.append(dict(n=n, dim=dim, cluster_key_budget=budget, **tile, ms=ms, peak_gib=peak))
    return rows


def sweep_sample(n: int, dim: int, args: argparse.Namespace, tiles: list) -> list[dict]:
    """The sample kernel's tiles (rows, draws per step) and warps (`--sweep-sample-warps`)
    at each key budget."""
    q, k, v = planted_inputs(n, args.heads, args.heads, dim, torch.bfloat16, True, 0)
    rows = []
    for budget, tile, warps in itertools.product(
        args.sweep_key_budgets, tiles, args.sweep_sample_warps
    ):
        constants = dict(SAMPLE_TILE=tuple(tile), SAMPLE_WARPS=warps)
        ms, peak = time_variant(q, k, v, args, budget, constants)
        print(f"| {n} | {dim} | {budget:g} | {tuple(tile)} | {warps} | {ms:.1f} | {peak:.2f} |")
        rows.append(dict(n=n, dim=dim, cluster_key_budget=budget, sample_tile=list(tile),
                         sample_warps=warps, ms=ms, peak_gib=peak))  # fmt: skip
    return rows


def parse_constants(items: list[str]) -> dict[str, list]:
    """NAME=V1,V2 items of `--set` and `--sweep` -> {NAME: [values]} (Python literals),
    each NAME a module constant of the per-query clusters' finder."""
    constants = {}
    for item in items:
        name, _, values = item.partition("=")
        if not hasattr(query_clusters, name) or not values:
            raise SystemExit(f"probe_profile: {item!r} is not NAME=VALUE[,VALUE] of a "
                             "constant in hf_hyper.attention.finders.query_clusters")  # fmt: skip
        constants[name] = [ast.literal_eval(value) for value in values.split(",")]
    return constants


def sweep_constants(n: int, dim: int, args: argparse.Namespace, swept: dict) -> list[dict]:
    """Every combination of the swept constants at each key budget, timed as replayed."""
    q, k, v = planted_inputs(n, args.heads, args.heads, dim, torch.bfloat16, True, 0)
    rows = []
    for budget in args.sweep_key_budgets:
        for values in itertools.product(*swept.values()):
            constants = dict(zip(swept, values, strict=True))
            ms, peak = time_variant(q, k, v, args, budget, constants)
            shown = ", ".join(f"{name}={value}" for name, value in constants.items())
            print(f"| {n} | {dim} | {budget:g} | {shown} | {ms:.1f} | {peak:.2f} |")
            rows.append(dict(n=n, dim=dim, cluster_key_budget=budget, constants=constants,
                             ms=ms, peak_gib=peak))  # fmt: skip
    return rows


def sweep_plan_budget(n: int, dim: int, args: argparse.Namespace) -> list[dict]:
    """Each plan budget (bytes of plan per row of the call) at each key budget: smaller
    plan budgets plan fewer problems at a time, in more launches."""
    q, k, v = planted_inputs(n, args.heads, args.heads, dim, torch.bfloat16, True, 0)
    rows = []
    for key_budget, budget in itertools.product(args.sweep_key_budgets, args.sweep_plan_bytes):
        ms, peak = time_variant(q, k, v, args, key_budget, dict(PLAN_BYTES_PER_CALL_ROW=budget))
        print(f"| {n} | {dim} | {key_budget:g} | {budget} | {ms:.1f} | {peak:.2f} |")
        rows.append(dict(n=n, dim=dim, cluster_key_budget=key_budget,
                         plan_bytes_per_call_row=budget, ms=ms, peak_gib=peak))  # fmt: skip
    return rows


def sweep_graphs(n: int, dim: int, args: argparse.Namespace) -> list[dict]:
    """The probes setting timed (no profile) with each cuda_graph_max_len and key budget
    (`--sweep-key-budgets`): a max_len of 0 runs eagerly, one at or above n replays a
    CUDA graph from the third call (the host's launches gone), so the difference is
    what the host costs the call."""
    q, k, v = planted_inputs(n, args.heads, args.heads, dim, torch.bfloat16, True, 0)
    rows = []
    for budget, max_len in itertools.product(args.sweep_key_budgets, args.sweep_graph_max_len):
        config = probes_config(args, cuda_graph_max_len=max_len, cluster_key_budget=budget)
        with torch.no_grad():
            timing = time_cuda(
                lambda config=config: hyper_attention(q, k, v, causal=True, config=config),
                warmup=3, repeats=5,
            )  # fmt: skip
        print(f"| {n} | {dim} | {budget:g} | {max_len} | {timing.ms:.1f} | "
              f"{timing.peak_gib:.2f} |")  # fmt: skip
        rows.append(dict(n=n, dim=dim, cluster_key_budget=budget, cuda_graph_max_len=max_len,
                         ms=timing.ms, peak_gib=timing.peak_gib))  # fmt: skip
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[32768, 131072])
    p.add_argument("--dims", type=int, nargs="+", default=[128])
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--probes", type=int, default=16)
    p.add_argument("--kmeans-iters", type=int, default=4)
    p.add_argument("--block-size", type=int, default=256, help="the probes' block_size")
    p.add_argument("--min-seq-len", type=int, default=None,
                   help="the probes' min_seq_len (exact leaves; default: the config)")  # fmt: skip
    names = ["LSH blocks", "k-means blocks", "probes", "probes, torch choice", "probes, key budget"]
    p.add_argument("--settings", nargs="+", default=names[:3], choices=names)
    p.add_argument("--key-budget", type=float, default=1.5,
                   help="the setting 'probes, key budget': its cluster_key_budget")  # fmt: skip
    p.add_argument("--launches", default=None, metavar="NAME",
                   help="also list each launch's ms of the kernels so named, in order")  # fmt: skip
    p.add_argument("--top", type=int, default=0, help="also list the N costliest kernels")
    p.add_argument(
        "--sweep-block-n",
        type=int,
        nargs="*",
        default=[],
        help="also time the probes with these segment-kernel keys per step",
    )
    p.add_argument("--sweep-max-rows", type=int, nargs="+", default=[64])
    p.add_argument("--sweep-warps", type=int, nargs="+", default=[4])
    p.add_argument("--sweep-sample-tiles", type=int, nargs="*", default=[],
                   help="also time the probes with these sample tiles, as M N pairs")  # fmt: skip
    p.add_argument("--sweep-sample-warps", type=int, nargs="+", default=[4])
    p.add_argument("--sweep-plan-bytes", type=int, nargs="*", default=[],
                   help="also time the probes with these plan budgets (B per row)")  # fmt: skip
    p.add_argument("--sweep-graph-max-len", type=int, nargs="*", default=[],
                   help="also time the probes at these cuda_graph_max_len (0: eager)")  # fmt: skip
    p.add_argument("--sweep-key-budgets", type=float, nargs="+", default=[0.0],
                   help="the graph and plan sweeps' key budgets (0: none)")  # fmt: skip
    p.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                   help="the finder's module constants for the whole run")  # fmt: skip
    p.add_argument("--sweep", nargs="*", default=[], metavar="NAME=V1,V2",
                   help="also time every combination of these constants' values")  # fmt: skip
    p.add_argument("--json", default=None)
    args = p.parse_args()
    fixed = {name: values[0] for name, values in parse_constants(args.set).items()}
    swept = parse_constants(args.sweep)
    env = environment()
    print(env, fixed or "")
    with mock.patch.multiple(query_clusters, **fixed) if fixed else contextlib.nullcontext():
        run(args, env, swept)


def run(args: argparse.Namespace, env: dict, swept: dict) -> None:
    kinds = [kind for kind, _ in KINDS] + ["other"]
    header = "| n | d | setting | ms | vs cuDNN | peak GiB | " + " | ".join(kinds) + " |"
    print("\n" + header + "\n" + "|---" * (6 + len(kinds)) + "|")
    rows = [row for n in args.lengths for dim in args.dims for row in measure(n, dim, args, kinds)]
    if args.sweep_block_n:
        print("\n| n | d | key budget | keys per step | most rows | warps | ms | peak GiB |"
              "\n|---|---|---|---|---|---|---|---|")  # fmt: skip
        for n in args.lengths:
            for dim in args.dims:
                rows += sweep_segment(n, dim, args)
    if args.sweep_sample_tiles:
        print("\n| n | d | key budget | sample tile (rows, draws per step) | warps | ms "
              "| peak GiB |\n|---|---|---|---|---|---|---|")  # fmt: skip
        pairs = args.sweep_sample_tiles
        tiles = list(zip(pairs[::2], pairs[1::2], strict=True))
        for n in args.lengths:
            for dim in args.dims:
                rows += sweep_sample(n, dim, args, tiles)
    if args.sweep_plan_bytes:
        print("\n| n | d | key budget | plan bytes per call row | ms | peak GiB |"
              "\n|---|---|---|---|---|---|")  # fmt: skip
        for n in args.lengths:
            for dim in args.dims:
                rows += sweep_plan_budget(n, dim, args)
    if args.sweep_graph_max_len:
        print("\n| n | d | key budget | cuda_graph_max_len | ms | peak GiB |"
              "\n|---|---|---|---|---|---|")  # fmt: skip
        for n in args.lengths:
            for dim in args.dims:
                rows += sweep_graphs(n, dim, args)
    if swept:
        print("\n| n | d | key budget | constants | ms | peak GiB |\n|---|---|---|---|---|---|")
        for n in args.lengths:
            for dim in args.dims:
                rows += sweep_constants(n, dim, args, swept)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(environment=env, args=vars(args), rows=rows), f, indent=1)
        print("wrote", os.path.basename(args.json))


if __name__ == "__main__":
    main()
