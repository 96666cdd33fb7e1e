"""The examples a user copies from run (small sizes) or refuse in one line on a CPU."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _run(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True,
                          text=True, timeout=300)  # fmt: skip


@pytest.mark.parametrize(
    "name, args",
    [("long_sequence.py", ["--seq-len", "4096", "--heads", "2", "--head-dim", "32"]),
     ("hype_long.py", ["--seq-len", "2048", "--heads", "2", "--head-dim", "32"])],
)  # fmt: skip
def test_example_runs_and_prints_finite_rows(name, args):
    run = _run(name, *args, "--device", "cpu")
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert rows and all(row["finite"] for row in rows)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_gpu_example_refuses_a_cpu_machine_in_one_line():
    run = _run("patched_prefill.py")
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "patched_prefill.py: needs a CUDA GPU (it times a 7B-shaped prefill); on a CPU run "
        "examples/long_sequence.py"
    ]


def test_examples_take_the_jobs_names_and_keep_the_old_ones():
    new = _run("long_sequence.py", "--seq-len", "1024", "--heads", "1", "--head-dim", "16",
               "--dtype", "fp32", "--device", "cpu")  # fmt: skip
    old = _run("long_sequence.py", "--seq-len", "1024", "--heads", "1", "--head-dim", "16",
               "--dtype", "float32", "--device", "cpu")  # fmt: skip
    assert new.returncode == old.returncode == 0, old.stderr[-1000:]
    assert '"dtype": "fp32"' in new.stdout and '"dtype": "fp32"' in old.stdout
    helped = _run("patched_prefill.py", "--help").stdout
    assert "--patch-layers PATCH_LAYERS, --last-layers PATCH_LAYERS" in helped
