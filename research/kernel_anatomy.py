"""What the block-sample kernel's time depends on: the same launch of the non-causal
forward at 131k tokens with one thing changed at a time.

    python research/kernel_anatomy.py

Variants: `keys` (sorted position j holds key j, so the LSH block's keys are read
contiguously), `rows` (slot i holds query row i: queries and outputs contiguous),
`nosample` (the block's keys only), `merge` (the causal levels' in-place LSE merge).
The outputs of the variants are wrong by design; only their times mean something.
"""

from __future__ import annotations

import statistics

import torch

import hf_hyper
from hf_hyper import HyperAttentionConfig
from hf_hyper.attention.kernels import forward as forward_kernels
from hf_hyper.eval.bench_attention import planted_inputs

N = 131072
# positions of the block_sample_kernel arguments that the variants replace
SLOT_QUERY, KEY_LIST, N_ROWS, N_KEY, SAMPLE_PAD = (
    forward_kernels.block_sample_kernel.arg_names.index(name)
    for name in ("slot_query_ptr", "key_list_ptr", "n_rows", "n_key", "sample_pad")
)
VARIANTS = ["base", "keys", "rows", "keys+rows", "nosample", "merge", "keys+rows+nosample"]


class TimedLaunch:
    """Stands in for the kernel: changes the launch as the variant says, times it."""

    def __init__(self, kernel, variant: str) -> None:
        self.kernel, self.variant, self.ms = kernel, variant, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs) -> None:
            args = list(args)
            if "keys" in self.variant:
                n_key = args[N_KEY]
                key_list = args[KEY_LIST].clone()
                key_list[:, :n_key] = torch.arange(n_key, device="cuda", dtype=key_list.dtype)
                args[KEY_LIST] = key_list
            if "rows" in self.variant:
                slots = args[SLOT_QUERY]
                i = torch.arange(slots.shape[1], device="cuda", dtype=slots.dtype)
                rows = torch.where(i < args[N_ROWS], i, args[N_ROWS])
                args[SLOT_QUERY] = rows.expand_as(slots).contiguous()
            if "nosample" in self.variant:
                kwargs["HAS_SAMPLE"] = False
                args[SAMPLE_PAD] = 0
            kwargs["MERGE"] = kwargs["MERGE"] or "merge" in self.variant
            for timed in (False, False, True, True, True, True, True):
                start = torch.cuda.Event(enable_timing=True)
                stop = torch.cuda.Event(enable_timing=True)
                start.record()
                self.kernel[grid](*args, **kwargs)
                stop.record()
                stop.synchronize()
                if timed:
                    self.ms.append(start.elapsed_time(stop))

        return launch


def main() -> None:
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}; "
          f"non-causal, {N} tokens, 32 heads, bf16; median of 5 launches")  # fmt: skip
    kernel = forward_kernels.block_sample_kernel
    config = HyperAttentionConfig(seed=0)
    for dim in (128, 64):
        q, k, v = planted_inputs(N, 32, 32, dim, torch.bfloat16, False, 0)
        base = None
        for variant in VARIANTS:
            timed = TimedLaunch(kernel, variant)
            forward_kernels.block_sample_kernel = timed
            try:
                with torch.no_grad():
                    hf_hyper.hyper_attention(q, k, v, causal=False, config=config)
            finally:
                forward_kernels.block_sample_kernel = kernel
            ms = statistics.median(timed.ms)
            base = base or ms
            print(f"d={dim} {variant}: {ms:.3f} ms ({ms / base:.2f}x)", flush=True)
        del q, k, v


if __name__ == "__main__":
    main()
