"""Time a plan's modes on this GPU, for `hf-hyper plan --layer-times`: one causal attention
call of the model's shape at the target length per mode (each mode's config as the plan
file records it) and exact attention (SDPA), then the plan's modelled attention time.

    python benchmarks/plan_layer_times.py --plan results/plans/smollm2_8k.plan.json \
        --shape 9 3 64 --target-length 131072 --json layer_times.json

Needs no checkpoint: the shape is (query heads, key/value heads, head dim).
"""

from __future__ import annotations

import argparse
import json

import torch

from hf_hyper import Plan
from hf_hyper.eval.plan_search import EXACT, modelled_ms
from hf_hyper.eval.planner import shape_times
from hf_hyper.eval.timing import environment


def mode_configs(plan: Plan) -> tuple[dict[int, str], dict]:
    """(layer -> mode name, mode name -> config) from the plan's recorded modes."""
    modes = {int(layer): mode for layer, mode in plan.info["modes"].items()}
    configs = {}
    for layer, mode in modes.items():
        configs.setdefault(mode, plan.layers[layer])
    return modes, configs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--plan", required=True, help="a plan file written by `hf-hyper plan`")
    p.add_argument("--shape", type=int, nargs=3, required=True, metavar=("HEADS", "KV", "DIM"))
    p.add_argument("--target-length", type=int, default=131072)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default=None, help="write the times here (the --layer-times file)")
    args = p.parse_args()
    plan = Plan.load(args.plan)
    modes, configs = mode_configs(plan)
    env = environment()
    print(env)
    times = shape_times(
        tuple(args.shape), torch.bfloat16, torch.device("cuda"), configs, args.target_length,
        args.repeats,
    )  # fmt: skip
    total = plan.num_layers or (max(modes) + 1)
    exact_ms, planned_ms = modelled_ms({}, total, times), modelled_ms(modes, total, times)
    print(f"\n| mode | ms at {args.target_length} | vs exact |\n|---|---|---|")
    for name, ms in times.items():
        print(f"| {name} | {ms:.2f} | {times[EXACT] / ms:.2f}x |")
    print(
        f"\nplan: {len(modes)} of {total} layers patched; modelled attention time "
        f"{planned_ms:.1f} ms against {exact_ms:.1f} ms exact ({exact_ms / planned_ms:.2f}x)"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(times, f, indent=1)
        print("wrote", args.json)


if __name__ == "__main__":
    main()
