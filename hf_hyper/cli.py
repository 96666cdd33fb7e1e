"""`hf-hyper` command line: one sub-command per job; bad input is one line and exit 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

EXAMPLES = {
    "bench attention": (
        "hf-hyper bench attention --lengths 8192 32768 131072 --head-dim 64 128\n"
        "hf-hyper bench attention --causal yes --modes fwd fwd+bwd --backends cudnn hyper"
    ),
    "plot": "hf-hyper plot attention bench-attention/attention.json",
}


def _parser() -> argparse.ArgumentParser:
    from hf_hyper.eval import bench_attention

    top = argparse.ArgumentParser(
        prog="hf-hyper",
        description="HyperAttention for HuggingFace models: benchmarks and evaluation jobs.",
    )
    jobs = top.add_subparsers(dest="job", required=True, metavar="JOB")

    bench = jobs.add_parser("bench", help="speed benchmarks (attention layer)")
    bench_jobs = bench.add_subparsers(dest="bench_job", required=True, metavar="WHAT")
    attention = bench_jobs.add_parser(
        "attention",
        help="one attention layer: HyperAttention vs cuDNN / FlashAttention-2 / Flex",
        description=bench_attention.__doc__,
        epilog="examples:\n  " + EXAMPLES["bench attention"].replace("\n", "\n  "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench_attention.add_arguments(attention)
    attention.set_defaults(run=bench_attention.run)

    plot = jobs.add_parser(
        "plot",
        help="redraw a job's plot from its JSON",
        epilog="example:\n  " + EXAMPLES["plot"],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    plot.add_argument("kind", choices=["attention"])
    plot.add_argument("json_path")
    plot.add_argument("--png", default=None, help="default: next to the JSON")
    plot.set_defaults(run=_plot)
    return top


def _plot(args: argparse.Namespace) -> None:
    from pathlib import Path

    from hf_hyper.eval.plots import plot_attention

    src = Path(args.json_path)
    png = Path(args.png) if args.png else src.with_suffix(".png")
    print(plot_attention(src, png))


def main(argv: Sequence[str] | None = None) -> int:
    from hf_hyper.eval.common import JobError

    args = _parser().parse_args(argv)
    try:
        args.run(args)
    except JobError as err:
        print(f"hf-hyper: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
