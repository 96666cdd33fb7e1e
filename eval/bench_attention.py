"""Speed of one attention layer: HyperAttention against exact kernels, in one run.

Every timing is a ratio to PyTorch SDPA's cuDNN backend measured in the same process on
the same inputs, and every HyperAttention timing carries its output error against that
exact output, so speed is never quoted without the accuracy it costs.

    hf-hyper bench attention --lengths 4096 16384 65536 131072 --head-dim 64 128
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import hf_hyper
from hf_hyper import HyperAttentionConfig
from hf_hyper.attention import clear_cuda_graphs, cuda_graph_stats

from .common import (
    JobError,
    command_line,
    output_dir,
    save_results,
    today,
)
from .config_arguments import add_config_arguments, config_from_arguments
from .plots import plot_attention
from .timing import environment, time_cuda

# hyper-eager: HyperAttention with CUDA graph replay off, for a same-run A/B
BACKENDS = ("cudnn", "flash2", "flex", "hyper", "hyper-eager")
DEFAULT_BACKENDS = ("cudnn", "flash2", "flex", "hyper")
HYPER_BACKENDS = ("hyper", "hyper-eager")
SDPA_BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash2": SDPBackend.FLASH_ATTENTION}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
COLUMNS = [
    ("n", "n"),
    ("head_dim", "d"),
    ("causal", "causal"),
    ("mode", "mode"),
    ("backend", "backend"),
    ("ms", "ms"),
    ("speedup", "speedup vs cuDNN"),
    ("tflops_equiv", "TFLOP/s equiv."),
    ("peak_gib", "peak GiB"),
    ("graphs_gib", "graphs hold GiB"),
    ("memory", "memory bound"),
    ("err_v", "‖O−O*‖/‖V‖"),
    ("err_rel", "‖O−O*‖/‖O*‖"),
    ("err_grad", "max ‖∇−∇*‖/‖∇*‖"),
]


def planted_inputs(
    n: int, heads: int, kv_heads: int, dim: int, dtype: torch.dtype, causal: bool, seed: int,
    device: str | torch.device = "cuda",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Each query is a scaled copy of one (earlier, if causal) key plus noise: rows with a
    few large entries among many small ones, so the exact output is far from zero and
    the error of an approximation means something (iid inputs give O* ~ 0)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    shape = (1, kv_heads, n, dim)
    k = torch.randn(shape, generator=gen, device=device)
    v = torch.randn(shape, generator=gen, device=device)
    g = heads // kv_heads
    u = torch.rand(1, heads, n, generator=gen, device=device)
    limit = torch.arange(1, n + 1, device=device) if causal else torch.full((n,), n, device=device)
    partner = (u * limit).long().clamp_max(n - 1)
    k_rep = k.repeat_interleave(g, dim=1)
    q = torch.gather(k_rep, 2, partner[..., None].expand(-1, -1, -1, dim))
    q = q * (8.0 / math.sqrt(dim)) + 0.5 * torch.randn(q.shape, generator=gen, device=device)
    del k_rep
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _exact_fn(backend: str, q, k, v, causal: bool) -> Callable[[], torch.Tensor]:
    gqa = q.shape[1] != k.shape[1]
    if backend in SDPA_BACKENDS:
        kind = SDPA_BACKENDS[backend]

        def run() -> torch.Tensor:
            with sdpa_kernel(kind):
                return torch.nn.functional.scaled_dot_product_attention(
                    q, k, v, is_causal=causal, enable_gqa=gqa
                )

        return run
    if backend == "flex":
        from torch.nn.attention.flex_attention import flex_attention

        flex = torch.compile(flex_attention, dynamic=False)
        mask = causal_block_mask(q.shape[2], q.device) if causal else None
        return lambda: flex(q, k, v, block_mask=mask, enable_gqa=gqa)
    raise JobError(f"unknown backend {backend!r}; choose from {BACKENDS}")


def causal_block_mask(n: int, device: torch.device, block: int = 128):
    """FlexAttention's causal BlockMask, built from its block structure: query block i
    fully sees key blocks [0, i) and partly block i. `create_block_mask` evaluates the
    mask on all n x n pairs first, which runs out of memory near 131k tokens."""
    from torch.nn.attention.flex_attention import BlockMask

    blocks = -(-n // block)
    row = torch.arange(blocks, device=device, dtype=torch.int32)
    full_indices = row.expand(blocks, blocks).contiguous()  # the first `row` entries count
    return BlockMask.from_kv_blocks(
        torch.ones(1, 1, blocks, dtype=torch.int32, device=device),
        row.view(1, 1, blocks, 1).expand(1, 1, blocks, blocks).contiguous(),
        row.view(1, 1, blocks),
        full_indices.view(1, 1, blocks, blocks),
        BLOCK_SIZE=block,
        mask_mod=lambda b, h, i, j: i >= j,
        seq_lengths=(n, n),
    )


def _run_fn(
    backend: str, q, k, v, causal: bool, config: HyperAttentionConfig, mode: str, grad=None
):
    if backend in HYPER_BACKENDS:
        if backend == "hyper-eager":
            config = replace(config, cuda_graph_max_len=0)
        forward = lambda: hf_hyper.hyper_attention(q, k, v, causal=causal, config=config)  # noqa: E731
    else:
        forward = _exact_fn(backend, q, k, v, causal)
    if mode == "fwd":

        def run():
            with torch.no_grad():
                return forward()

        return run

    def run_backward():
        for t in (q, k, v):
            t.grad = None
        forward().backward(grad)

    return run_backward


def _errors(out: torch.Tensor, exact: torch.Tensor, v: torch.Tensor) -> tuple[float, float]:
    diff = (out.float() - exact.float()).norm().item()
    v_norm = v.float().norm().item() * math.sqrt(out.shape[1] / v.shape[1])  # per query head
    return diff / v_norm, diff / exact.float().norm().item()


def _grad_error(grads: list[torch.Tensor], exact: list[torch.Tensor]) -> float:
    """Worst relative Frobenius error of dq, dk, dv against the exact gradients."""
    return max(((g - e).norm() / e.norm()).item() for g, e in zip(grads, exact, strict=True))


# forward: the output plus this many bytes per token and query head (the LSE, ranks,
# plan); forward+backward: no more than cuDNN from this length up
FORWARD_BYTES_PER_TOKEN_HEAD = 16
BACKWARD_BOUND_FROM = 16384


def memory_verdict(
    mode: str, n: int, heads: int, v_dim: int, dtype_bytes: int, peak_gib: float,
    cudnn_peak_gib: float | None,
) -> str | None:  # fmt: skip
    """'pass' / 'FAIL' against HyperAttention's memory bound (None where none applies):
    forward peak <= output + FORWARD_BYTES_PER_TOKEN_HEAD per token and query head;
    forward+backward peak <= cuDNN's at BACKWARD_BOUND_FROM tokens and more."""
    peak = peak_gib * 2**30
    if mode == "fwd":
        bound = n * heads * (v_dim * dtype_bytes + FORWARD_BYTES_PER_TOKEN_HEAD)
    elif n >= BACKWARD_BOUND_FROM and cudnn_peak_gib is not None:
        bound = cudnn_peak_gib * 2**30
    else:
        return None
    return "pass" if peak <= bound else "FAIL"


def graphs_held_gib() -> float:
    """Device memory the captured CUDA graphs hold (static inputs and their pools)."""
    return cuda_graph_stats().held_bytes / 2**30


def exact_flops(n: int, heads: int, dim: int, causal: bool, mode: str) -> float:
    flops = 4.0 * heads * n * n * dim * (0.5 if causal else 1.0)
    return flops * (3.5 if mode == "fwd+bwd" else 1.0)  # backward ~2.5x forward


def hyper_config_from(args: argparse.Namespace) -> HyperAttentionConfig:
    return config_from_arguments(args, HyperAttentionConfig)


def run_benchmark(args: argparse.Namespace) -> list[dict]:
    if not torch.cuda.is_available():
        raise JobError("the attention benchmark times CUDA kernels; run it on a GPU machine")
    bad = [b for b in args.backends if b not in BACKENDS]
    if bad:
        raise JobError(f"unknown backend(s) {bad}; choose from {list(BACKENDS)}")
    dtype = DTYPES[args.dtype]
    config = hyper_config_from(args)
    rows: list[dict] = []
    for dim in args.head_dim:
        for causal in {"yes": [True], "no": [False], "both": [False, True]}[args.causal]:
            for n in args.lengths:
                q, k, v = planted_inputs(n, args.heads, args.kv_heads, dim, dtype, causal, 0)
                with torch.no_grad(), sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                    exact = torch.nn.functional.scaled_dot_product_attention(
                        q, k, v, is_causal=causal, enable_gqa=args.heads != args.kv_heads
                    )
                # one upstream gradient for every backend, so their gradients compare
                gen = torch.Generator(device="cuda").manual_seed(1)
                out_grad = torch.randn(exact.shape, generator=gen, device="cuda", dtype=dtype)
                for mode in args.modes:
                    base_ms = exact_grads = cudnn_peak = None
                    for backend in args.backends:
                        row = dict(n=n, head_dim=dim, causal=causal, mode=mode, backend=backend)
                        rows.append(row)
                        grad = mode == "fwd+bwd"
                        q.requires_grad_(grad), k.requires_grad_(grad), v.requires_grad_(grad)
                        try:
                            fn = _run_fn(backend, q, k, v, causal, config, mode, out_grad)
                            if mode == "fwd":
                                with torch.no_grad():
                                    row["err_v"], row["err_rel"] = _errors(fn(), exact, v)
                            else:
                                fn()
                                grads = [t.grad.float() for t in (q, k, v)]
                                if backend == "cudnn":
                                    exact_grads = grads
                                elif exact_grads is not None:
                                    row["err_grad"] = _grad_error(grads, exact_grads)
                                del grads
                            timing = time_cuda(fn, warmup=args.warmup, repeats=args.repeats)
                        except torch.OutOfMemoryError:
                            row["note"] = "out of memory"
                            torch.cuda.empty_cache()
                            print(f"  {row}", flush=True)
                            continue
                        except Exception as err:  # a backend that cannot run this shape
                            row["note"] = f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
                            print(f"  {row}", flush=True)
                            continue
                        row.update(ms=timing.ms, ms_min=timing.ms_min, peak_gib=timing.peak_gib)
                        flops = exact_flops(n, args.heads, dim, causal, mode)
                        row["tflops_equiv"] = flops / timing.ms / 1e9
                        if backend == "cudnn":
                            base_ms, cudnn_peak = timing.ms, timing.peak_gib
                        row["speedup"] = base_ms / timing.ms if base_ms else None
                        if backend in HYPER_BACKENDS:
                            row["graphs_gib"] = graphs_held_gib()
                            clear_cuda_graphs()  # each row holds only its own graphs
                            row["memory"] = memory_verdict(
                                mode, n, args.heads, dim, q.element_size(), timing.peak_gib,
                                cudnn_peak,
                            )  # fmt: skip
                        print(f"  {row}", flush=True)
                q.requires_grad_(False), k.requires_grad_(False), v.requires_grad_(False)
                del q, k, v, exact, exact_grads, out_grad
                torch.cuda.empty_cache()
    return rows


def add_arguments(p: argparse.ArgumentParser) -> None:
    lengths = [4096, 8192, 16384, 32768, 65536, 131072]
    p.add_argument("--lengths", type=int, nargs="+", default=lengths)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=None, help="default: --heads (no GQA)")
    p.add_argument("--head-dim", type=int, nargs="+", default=[64, 128])
    p.add_argument("--causal", choices=["yes", "no", "both"], default="both")
    p.add_argument("--modes", nargs="+", choices=["fwd", "fwd+bwd"], default=["fwd"])
    p.add_argument(
        "--backends", nargs="+", default=list(DEFAULT_BACKENDS),
        help=f"from {list(BACKENDS)}; hyper-eager is hyper without CUDA graphs",
    )  # fmt: skip
    p.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    add_config_arguments(
        p.add_argument_group("HyperAttention"), HyperAttentionConfig, defaults={"seed": 0}
    )
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--output-dir", default="bench-attention-results")


def run(args: argparse.Namespace) -> Path:
    args.kv_heads = args.kv_heads or args.heads
    if args.heads % args.kv_heads:
        raise JobError(f"--heads ({args.heads}) must be a multiple of --kv-heads ({args.kv_heads})")
    if not torch.cuda.is_available():  # before the output folder: no empty folders
        raise JobError("the attention benchmark times CUDA kernels; run it on a GPU machine")
    out = output_dir(args.output_dir)
    rows = run_benchmark(args)
    payload = {
        "job": "bench attention",
        "command": command_line("bench attention"),
        "date": today(),
        "environment": environment(),
        "shape": {"batch": 1, "heads": args.heads, "kv_heads": args.kv_heads, "dtype": args.dtype},
        "hyper_config": hyper_config_from(args).to_dict(),
        "rows": rows,
    }
    save_results(out, "attention", payload, COLUMNS, plot_attention)
    return out
