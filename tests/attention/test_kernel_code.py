"""The probes' kernels as compiled for a Hopper GPU, checked on any machine whose triton
ships the NVIDIA backend's tools (`benchmarks/kernel_code.py`, in a process of its own:
the test session runs the kernels in Triton's interpreter)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compiled() -> dict[str, dict]:
    triton = pytest.importorskip("triton")
    tools = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    if not (tools / "cuobjdump").exists():
        pytest.skip("this triton has no NVIDIA backend tools")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "kernel_code.py"), "--json", "-"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    return {row["kernel"]: row for row in json.loads(run.stdout.splitlines()[-1])}


@pytest.mark.slow
@pytest.mark.parametrize("kernel", ["segment", "segment + sample", "sample", "top clusters"])
def test_rows_are_read_in_16_byte_loads(compiled, kernel):
    """Gathered rows whose addresses come from memory are read 16 bytes at a time (the
    alignment hint), not element by element, which made the probes' kernels slow."""
    row = compiled[kernel]
    assert row["loads_2_bytes"] == 0 and row["loads_16_bytes"] > 0, row


@pytest.mark.slow
def test_the_sample_kernel_does_not_spill(compiled):
    """Each row's clusters are read once, before the draws' loop: read inside it they
    were pipelined with the keys and spilled."""
    assert compiled["sample"]["spill_stores"] == 0, compiled["sample"]
