"""LongBench v1 / LongBench-E: generate answers unpatched and with HyperAttention in the
last k layers, then score them as the benchmark does.

    hf-hyper longbench --model THUDM/chatglm2-6b-32k --trust-remote-code \\
        --max-length chatglm2-6b-32k --patch-layers 0 4 8 12 all --datasets all
    hf-hyper longbench --model ./my-model --data-dir LongBench/data --datasets hotpotqa_e
    accelerate launch -m hf_hyper.eval.longbench --model ...   # data parallel over samples
    hf-hyper longbench score longbench-results                 # re-score saved predictions

Each prediction is appended to a jsonl as soon as it is made; re-running the same command
resumes. Output: longbench.json (every score), longbench.md (datasets x settings plus
category averages) and longbench.png (score vs number of patched layers).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..chat import CHAT_MODES
from ..common import (
    JobError,
    command_line,
    exit_status,
    output_dir,
    release_processes,
    save_results,
    today,
)
from ..generation import generate
from ..models import (
    add_hyper_arguments,
    add_model_arguments,
    check_patch_values,
    check_patchable,
    hyper_config,
    load_model,
    num_layers,
    parse_patch_settings,
    patched,
)
from ..plots import plot_longbench
from ..timing import environment
from .prompts import build_prompt, uses_chat
from .protocol import prompt_budget, tasks
from .report import markdown, score_predictions
from .samples import HUB_REPO, HUB_REVISION, Sample, load_samples
from .scoring import MissingExtra, require_libraries
from .store import PredictionFile, check_run_settings, write_run_settings

# Room left under max_position_embeddings by the default budget: the chat wrapper and the
# longest generation (512 tokens for the summarisation sets).
DEFAULT_HEADROOM = 600


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    data = p.add_argument_group("data")
    data.add_argument(
        "--datasets", nargs="+", default=["all"],
        help="LongBench dataset names, 'all' (the 21 v1 sets) or 'all_e' (LongBench-E)",
    )  # fmt: skip
    data.add_argument("--data-dir", default=None, help="folder of LongBench's <dataset>.jsonl")
    data.add_argument("--hub-repo", default=HUB_REPO)
    data.add_argument("--hub-revision", default=HUB_REVISION)
    data.add_argument("--max-samples", type=int, default=None, help="first N of each dataset")
    gen = p.add_argument_group("prompting")
    gen.add_argument(
        "--max-length", default=None,
        help="prompt budget in tokens (longer prompts lose their middle), or a model name "
        "from LongBench's model2maxlen.json; default: max_position_embeddings - "
        f"{DEFAULT_HEADROOM}",
    )  # fmt: skip
    gen.add_argument(
        "--chat-template", choices=CHAT_MODES, default="auto",
        help="wrap prompts in the tokenizer's chat template (auto: when it has one); the "
        "few-shot and code sets always go raw, as in the benchmark",
    )  # fmt: skip
    add_hyper_arguments(p, patch_default=["0", "all"])
    p.add_argument("--output-dir", default="longbench-results")


def _budget(args: argparse.Namespace, model) -> int:
    if args.max_length is not None:
        return prompt_budget(str(args.max_length))
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(
        model.config, "seq_length", None
    )
    if not limit or limit <= DEFAULT_HEADROOM:
        raise JobError("cannot derive a prompt budget from the model config: pass --max-length")
    return int(limit) - DEFAULT_HEADROOM


def _record(sample: Sample, prompt, pred: str, new_tokens: int) -> dict[str, Any]:
    return {
        "_id": sample.id,
        "pred": pred,
        "answers": list(sample.answers),
        "all_classes": list(sample.all_classes) if sample.all_classes is not None else None,
        "length": sample.length,
        "prompt_tokens": prompt.prompt_tokens,
        "input_tokens": len(prompt.input_ids),
        "truncated": prompt.truncated,
        "chat": prompt.chat,
        "new_tokens": new_tokens,
    }


def run(args: argparse.Namespace) -> Path | None:
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    if args.max_samples is not None and args.max_samples < 1:
        raise JobError(f"--max-samples must be at least 1; got {args.max_samples}")
    check_patch_values(args.patch_layers, args.plan)
    hyper = hyper_config(args)
    chosen = tasks(args.datasets)
    try:
        require_libraries(chosen)
    except MissingExtra as err:
        raise JobError(str(err)) from err
    if args.max_length is not None:
        prompt_budget(str(args.max_length))  # a bad value fails before the model loads
    accelerator = Accelerator(cpu=args.cpu)
    if args.device_map and accelerator.num_processes > 1:
        raise JobError("--device-map shards one model copy: run it in a single process")
    rank, world = accelerator.process_index, accelerator.num_processes
    everything = {t.name: load_samples(t, args.data_dir, args.hub_repo, args.hub_revision)
                  for t in chosen}  # fmt: skip
    samples = {name: s[: args.max_samples] for name, s in everything.items()}

    model, tokenizer = load_model(args, accelerator.device)
    layer_total = num_layers(model)
    settings = parse_patch_settings(args.patch_layers, layer_total, args.plan, model)
    if any(count for _, count in settings):
        check_patchable(model)
    budget = _budget(args, model)
    chat = {t.name: uses_chat(t, tokenizer, args.chat_template) for t in chosen}
    out = output_dir(args.output_dir)
    run_settings = dict(model=args.model, tokenizer=args.tokenizer or args.model,
                        dtype=args.dtype, max_length=budget, chat_template=args.chat_template,
                        hyper_config=hyper.to_dict())  # fmt: skip
    fresh = check_run_settings(out, run_settings)
    accelerator.wait_for_everyone()
    if fresh and accelerator.is_main_process:
        write_run_settings(out, {**run_settings, "num_layers": layer_total})

    for label, count in settings:
        with patched(model, count, hyper):
            for t in chosen:
                file = PredictionFile(out, label, t.name, rank)
                done = file.done()
                mine = [s for s in samples[t.name][rank::world] if s.id not in done]
                desc = f"patched {label:>3} {t.name}"
                for sample in tqdm(mine, desc=desc, disable=not accelerator.is_main_process):
                    prompt = build_prompt(t, sample, tokenizer, budget, args.chat_template)
                    pred, new_tokens = generate(
                        model, tokenizer, prompt.input_ids, accelerator.device,
                        max_new_tokens=t.max_new_tokens, stop_at_newline=t.stop_at_newline,
                    )  # fmt: skip
                    file.append(_record(sample, prompt, pred, new_tokens))
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        release_processes()
        return None

    for label, _ in settings:
        for t in chosen:
            PredictionFile(out, label, t.name, rank).merge(
                [s.id for s in samples[t.name]], [s.id for s in everything[t.name]]
            )
    scores = score_predictions(
        out, layer_total, only_ids={n: {s.id for s in v} for n, v in samples.items()}
    )
    labels = [label for label, _ in settings]
    scores["rows"] = [r for r in scores["rows"] if r["setting"] in labels and r["dataset"] in chat]
    scores["averages"] = [a for a in scores["averages"] if a["setting"] in labels]
    payload = {
        "job": "longbench",
        "command": command_line("longbench"),
        "date": today(),
        "environment": environment(),
        "processes": world,
        "model": args.model,
        "dtype": args.dtype,
        "num_layers": layer_total,
        "max_length": budget,
        "chat_template": {name: used for name, used in chat.items()},
        "data": args.data_dir or f"{args.hub_repo}@{args.hub_revision}",
        "max_samples": args.max_samples,
        "hyper_config": hyper.to_dict(),
        **scores,
    }
    save_results(out, "longbench", payload, (), plot_longbench, table=markdown(payload))
    release_processes()
    return out


SCORE_DESCRIPTION = """Score saved LongBench predictions again, as the benchmark does; no
model is loaded. Reads a `hf-hyper longbench` output folder (or a folder of
LongBench-format <dataset>.jsonl prediction files) and writes longbench.json, .md, .png.

    hf-hyper longbench score longbench-results
    hf-hyper longbench score preds/ --num-layers 28 --output-dir rescored
"""


def add_score_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("predictions", help="a longbench output folder, or a folder of "
                   "LongBench-format <dataset>.jsonl prediction files")  # fmt: skip
    p.add_argument("--output-dir", default=None, help="default: the predictions folder")
    p.add_argument("--num-layers", type=int, default=None,
                   help="the model's layer count, to place 'all' on the plot")  # fmt: skip


def score(args: argparse.Namespace) -> Path:
    """Score saved predictions again (no model needed)."""
    import json

    root = Path(args.predictions)
    run_file = root / "run.json"
    known = json.loads(run_file.read_text()) if run_file.is_file() else {}
    layers = args.num_layers or known.get("num_layers")
    scores = score_predictions(root, layers)
    out = output_dir(args.output_dir or root)
    payload = {
        "job": "longbench score",
        "command": command_line("longbench score"),
        "date": today(),
        "model": known.get("model"),
        "num_layers": layers,
        "max_length": known.get("max_length"),
        "hyper_config": known.get("hyper_config"),
        **scores,
    }
    save_results(out, "longbench", payload, (), plot_longbench, table=markdown(payload))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    scoring = argv[:1] == ["score"]
    parser = argparse.ArgumentParser(
        prog="hf-hyper longbench" + (" score" if scoring else ""),
        description=SCORE_DESCRIPTION if scoring else __doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    (add_score_arguments if scoring else add_arguments)(parser)
    args = parser.parse_args(argv[1:] if scoring else argv)
    return exit_status(parser.prog, score if scoring else run, args)
