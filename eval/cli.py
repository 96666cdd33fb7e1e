"""`hf-hyper` command line: one sub-command per job; bad input is one line and exit 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .common import show_defaults

EXAMPLES = {
    "ppl": (
        "hf-hyper ppl --model meta-llama/Llama-2-7b-hf --lengths 4096 16384 "
        "--patch-layers 0 16 all\n"
        "hf-hyper ppl --model ./my-model --files book.txt --lengths 32768 --stride 8192\n"
        "hf-hyper ppl --model ./my-model --dataset pg19 --split test --max-documents 20\n"
        "accelerate launch -m hf_hyper.eval.ppl --model ./my-model --lengths 32768"
    ),
    "bench attention": (
        "hf-hyper bench attention --lengths 8192 32768 131072 --head-dim 64 128\n"
        "hf-hyper bench attention --causal yes --modes fwd fwd+bwd --backends cudnn hyper"
    ),
    "bench model": (
        "hf-hyper bench model --shape llama2-7b --lengths 8192 32768 --patch-layers 0 16 28\n"
        "hf-hyper bench model --model meta-llama/Llama-2-7b-hf --lengths 16384"
    ),
    "bench paper": (
        "hf-hyper bench paper\n"
        "hf-hyper bench paper --lengths 4096 32768 131072 --patch-layers 0 all"
    ),
    "longbench": (
        "hf-hyper longbench --model THUDM/chatglm2-6b-32k --trust-remote-code "
        "--max-length chatglm2-6b-32k --patch-layers 0 4 8 all\n"
        "hf-hyper longbench --model ./my-model --data-dir LongBench/data --datasets all_e\n"
        "hf-hyper longbench score longbench-results\n"
        "accelerate launch -m hf_hyper.eval.longbench --model ./my-model --datasets hotpotqa"
    ),
    "diagnose": (
        "hf-hyper diagnose --model meta-llama/Llama-2-7b-hf --length 32768\n"
        "hf-hyper diagnose --length 8192 --ppl-budget 0.02"
    ),
    "plan": (
        "hf-hyper plan --model ./my-model --length 8192 --ppl-budget 0.01 "
        "--retrieval-budget 0.9\n"
        "hf-hyper plan --model ./my-model --length 32768 --target-length 131072 "
        "--modes fast fast+tail accurate"
    ),
    "retrieval": (
        "hf-hyper retrieval --model ./my-model --lengths 4096 8192 --tasks passkey kv-number\n"
        "hf-hyper retrieval --model ./my-model --files book.txt --depths 10 --seeds 3 --diagnose\n"
        "accelerate launch -m hf_hyper.eval.retrieval --model ./my-model"
    ),
    "plot": "hf-hyper plot attention bench-attention-results/attention.json\n"
    "hf-hyper plot ppl ppl-results/ppl.json\n"
    "hf-hyper plot longbench longbench-results/longbench.json",
}


def _job(subparsers, name: str, module, help_text: str) -> None:
    p = subparsers.add_parser(
        name.split()[-1],
        help=help_text,
        description=module.__doc__
        + ("\nNeeds a CUDA GPU: it times CUDA kernels.\n" if name.startswith("bench") else ""),
        epilog="examples:\n  " + EXAMPLES[name].replace("\n", "\n  "),
        formatter_class=HelpFormatter,
    )
    module.add_arguments(p)
    show_defaults(p)
    p.set_defaults(run=module.run)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description and examples as written."""


def _parser() -> argparse.ArgumentParser:
    from . import bench_attention, bench_model, bench_paper, diagnose, planner, ppl
    from .longbench import run as longbench
    from .retrieval import run as retrieval

    top = argparse.ArgumentParser(
        prog="hf-hyper",
        description="HyperAttention for HuggingFace models: evaluation and benchmark jobs.",
    )
    jobs = top.add_subparsers(dest="job", required=True, metavar="JOB")
    _job(jobs, "ppl", ppl, "long-context perplexity, unpatched vs patched layers")
    _job(jobs, "longbench", longbench, "LongBench v1 scores ('longbench score DIR' re-scores)")
    _job(jobs, "diagnose", diagnose, "per-layer/head error and alpha, kappa; layer choice")
    _job(jobs, "retrieval", retrieval, "needle-in-a-haystack grid, unpatched vs patched layers")
    _job(jobs, "plan", planner, "per-layer plan under perplexity and retrieval budgets")
    bench = jobs.add_parser("bench", help="speed: one attention layer, or a whole model")
    what = bench.add_subparsers(dest="bench_job", required=True, metavar="WHAT")
    _job(what, "bench attention", bench_attention, "one attention layer vs exact kernels (GPU)")
    _job(what, "bench model", bench_model, "whole-model prefill, unpatched vs patched (GPU)")
    _job(what, "bench paper", bench_paper, "the paper's speed experiments beside its numbers (GPU)")

    plot = jobs.add_parser(
        "plot",
        help="redraw a job's plot from its JSON",
        epilog="examples:\n  " + EXAMPLES["plot"].replace("\n", "\n  "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    plot.add_argument(
        "paths", nargs="+", metavar="[KIND] JSON",
        help="a job's JSON (its job is read from it; a KIND before it must agree)",
    )  # fmt: skip
    plot.add_argument("--png", default=None, help="default: next to the JSON")
    plot.set_defaults(run=_plot)
    return top


def _plot(args: argparse.Namespace) -> None:
    import json
    from pathlib import Path

    from . import plots
    from .common import JobError

    # job recorded in the JSON -> (kind word, plot)
    draw = {
        "bench attention": ("attention", plots.plot_attention),
        "ppl": ("ppl", plots.plot_ppl),
        "bench model": ("model", plots.plot_model),
        "bench paper": ("attention", plots.plot_attention),
        "longbench": ("longbench", plots.plot_longbench),
        "longbench score": ("longbench", plots.plot_longbench),
        "diagnose": ("diagnose", plots.plot_diagnose),
        "retrieval": ("retrieval", plots.plot_retrieval),
    }
    if len(args.paths) > 2:
        raise JobError("plot takes one JSON file (optionally after its kind)")
    kind, src = (None, Path(args.paths[0])) if len(args.paths) == 1 else args.paths
    src = Path(src)
    if not src.is_file():
        raise JobError(f"no JSON file at {src}")
    try:
        job = json.loads(src.read_text(encoding="utf-8")).get("job")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
        raise JobError(f"{src} is not a job's JSON ({err})") from err
    if job not in draw:
        raise JobError(f"{src} records no job hf-hyper can plot (job={job!r})")
    word, plot = draw[job]
    if kind is not None and kind != word:
        raise JobError(f"{src} was written by '{job}', not '{kind}': drop the kind or use {word}")
    png = Path(args.png) if args.png else src.with_suffix(".png")
    if not png.parent.is_dir():
        raise JobError(f"--png {png}: no folder {png.parent}; create it or pick another path")
    try:
        print(plot(src, png))
    except (KeyError, TypeError, IndexError, ValueError) as err:
        raise JobError(
            f"{src} lacks what a {job} plot needs ({type(err).__name__}: {err}); "
            f"rerun hf-hyper {job} to rewrite it"
        ) from None


def main(argv: Sequence[str] | None = None) -> int:
    from .common import exit_status

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["longbench", "score"]:  # a second form of one job, not a sub-job
        from .longbench.run import main as longbench_main

        return longbench_main(argv[1:])
    args = _parser().parse_args(argv)
    return exit_status("hf-hyper", args.run, args)


if __name__ == "__main__":
    sys.exit(main())
