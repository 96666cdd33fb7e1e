"""What the probes' kernels compile to on a Hopper GPU, without one: registers, spills and
the width of their global loads, read from the machine code (SASS) that Triton's own
ptxas makes for sm_90a.

A gathered row is fast only when it is read in 16-byte loads; Triton proves that from
the pointers' and offsets' alignment, and an offset read from memory needs a hint
(`tl.multiple_of`). Spills (local-memory stores) show a tile holding too much. Both can
be checked on a CPU-only machine, before any GPU time is spent:

    python benchmarks/kernel_code.py             # a table, the launch's tile constants
    python benchmarks/kernel_code.py --json -    # the same as JSON on stdout

Needs triton with its NVIDIA backend (the Linux wheel ships ptxas and cuobjdump); run it
without TRITON_INTERPRET, which replaces the kernels by their interpreted form.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ARCH = 90  # sm_90a: the H100 and H200
STRIDES = ("q_stride", "k_stride", "v_stride")
X_STRIDES = ("x_stride_z", "x_stride_p", "x_stride_g", "x_stride_row")
# argument types of a bf16 call whose bases fit int32 (as the fused launches pass them);
# the arguments not named here are int32 scalars
TYPES = {
    **{name: "*bf16" for name in ("Q", "K", "V", "Out", "KS", "VS", "X")},
    **{name: "*fp32" for name in ("LSE", "rest_ptr", "C", "Bias", "Counts", "Limit", "Exact")},
    **{
        name: "*i32"
        for name in ("q_base_ptr", "o_base_ptr", "k_base_ptr", "v_base_ptr", "slot_query_ptr")
    },
    **{
        name: "*i64"
        for name in (
            "tile_cluster_ptr",
            "sink_keys_ptr",
            "sample_ptr",
            "draw_cluster_ptr",
        )
    },  # fmt: skip
    **{name: "*i32" for name in ("chosen_ptr", "starts_ptr", "k_order_ptr")},
    "qk_scale": "fp32",
    "factor": "fp32",
}


def backend_tool(name: str) -> Path | None:
    """A tool of Triton's NVIDIA backend (ptxas, cuobjdump), or None without one."""
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    return path if path.exists() else None


def kernel_cases(probes: int = 4, head_dim: int = 128) -> list[dict]:
    """The probes' kernels with the tiles their launchers use now."""
    from hf_hyper.attention.finders import query_clusters as qc
    from hf_hyper.attention.kernels import probes as kernels

    width = dict(D=head_dim, DV=head_dim, D_PAD=head_dim, DV_PAD=head_dim)
    sample_m, sample_n = qc.SAMPLE_TILE
    top_m, top_c, top_warps = qc.TOP_TILE
    return [
        dict(name="segment", fn=kernels.segment_kernel, warps=qc.SEGMENT_WARPS,
             tile=(qc.SEGMENT_MAX_ROWS, qc.SEGMENT_BLOCK_N), divisible=STRIDES,
             constexprs=dict(**width, BLOCK_M=qc.SEGMENT_MAX_ROWS, BLOCK_N=qc.SEGMENT_BLOCK_N,
                             MERGE=True, IEEE=False, HAS_BAND=False, ALIGN=8, SAMPLE=False,
                             PROBES=1, PROBES_PAD=2)),
        dict(name="segment + sample", fn=kernels.segment_kernel, warps=qc.SEGMENT_WARPS,
             tile=(qc.SEGMENT_MAX_ROWS, qc.SEGMENT_BLOCK_N), divisible=STRIDES,
             constexprs=dict(**width, BLOCK_M=qc.SEGMENT_MAX_ROWS, BLOCK_N=qc.SEGMENT_BLOCK_N,
                             MERGE=True, IEEE=False, HAS_BAND=False, ALIGN=8, SAMPLE=True,
                             PROBES=probes, PROBES_PAD=qc.cluster_slots(probes))),
        dict(name="sample", fn=kernels.probe_sample_kernel, warps=qc.SAMPLE_WARPS,
             tile=qc.SAMPLE_TILE, divisible=STRIDES,
             constexprs=dict(**width, BLOCK_M=sample_m, BLOCK_N=sample_n, PROBES=probes,
                             PROBES_PAD=qc.cluster_slots(probes), IEEE=False, HAS_BAND=False,
                             ALIGN=8)),
        dict(name="top clusters", fn=kernels.top_clusters_kernel, warps=top_warps,
             tile=(top_m, top_c), divisible=X_STRIDES,
             constexprs=dict(D=head_dim, D_PAD=head_dim, BLOCK_M=top_m, BLOCK_C=top_c,
                             TOP=probes, TOP_PAD=qc.cluster_slots(probes), IEEE=False,
                             BUDGET=True, EXACT=True)),
    ]  # fmt: skip


def compiled_counts(case: dict) -> dict:
    """Compile one case for sm_90a and count its machine code's loads and spills."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn, constexprs = case["fn"], case["constexprs"]
    names = fn.arg_names
    signature = {n: "constexpr" if n in constexprs else TYPES.get(n, "i32") for n in names}
    # what Triton's launcher infers from a call whose pointers and strides are 16-aligned
    aligned = [n for n in names if signature[n].startswith("*") or n in case["divisible"]]
    source = ASTSource(
        fn=fn, signature=signature,
        constexprs={(names.index(n),): v for n, v in constexprs.items()},
        attrs={(names.index(n),): [["tt.divisibility", 16]] for n in aligned},
    )  # fmt: skip
    kernel = triton.compile(
        source, target=GPUTarget("cuda", ARCH, 32),
        options={"num_warps": case["warps"], "num_stages": 2},
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(kernel.asm["cubin"])
        dump = str(backend_tool("cuobjdump"))
        sass = subprocess.run([dump, "-sass", str(cubin)], capture_output=True, text=True)
        usage = subprocess.run([dump, "-res-usage", str(cubin)], capture_output=True, text=True)
    ops = Counter(re.findall(r"\b(LDG(?:STS)?[.\w]*|STL[.\w]*)", sass.stdout))
    registers, stack = re.search(r"REG:(\d+) STACK:(\d+)", usage.stdout).groups()
    wide = sum(c for op, c in ops.items() if op.startswith("LDG") and op.endswith(".128"))
    return dict(
        kernel=case["name"], tile=list(case["tile"]), warps=case["warps"],
        registers=int(registers), stack_bytes=int(stack), loads_16_bytes=wide,
        loads_2_bytes=sum(c for op, c in ops.items() if op.startswith("LDG") and "16" in op
                          and not op.endswith(".128")),
        spill_stores=sum(c for op, c in ops.items() if op.startswith("STL")),
    )  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--probes", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=128, choices=[64, 128])
    p.add_argument("--json", default=None, help="write JSON here ('-': stdout)")
    args = p.parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("kernel_code: unset TRITON_INTERPRET (it swaps the kernels for interpreted ones)")
    if backend_tool("cuobjdump") is None:
        sys.exit("kernel_code: this triton has no NVIDIA backend tools (cuobjdump)")
    rows = [compiled_counts(case) for case in kernel_cases(args.probes, args.head_dim)]
    if args.json == "-":
        print(json.dumps(rows))
        return
    import triton

    print(f"sm_{ARCH}a, triton {triton.__version__}, bf16, head_dim {args.head_dim}, "
          f"{args.probes} probes, 16-byte aligned rows\n")  # fmt: skip
    print("| kernel | tile | warps | registers | stack bytes | 16-byte loads | 2-byte loads "
          "| spill stores |\n|---|---|---|---|---|---|---|---|")  # fmt: skip
    for r in rows:
        print(f"| {r['kernel']} | {tuple(r['tile'])} | {r['warps']} | {r['registers']} "
              f"| {r['stack_bytes']} | {r['loads_16_bytes']} | {r['loads_2_bytes']} "
              f"| {r['spill_stores']} |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
