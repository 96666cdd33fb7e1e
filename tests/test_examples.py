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


def test_plan_example_patches_the_plans_layers_and_unpatches_bit_for_bit(tmp_path):
    saved = tmp_path / "made.plan.json"
    run = _run("patch_with_plan.py", "--seq-len", "4608", "--device", "cpu", "--save", str(saved))
    assert run.returncode == 0, run.stderr[-2000:]
    row = json.loads(run.stdout.strip().splitlines()[-1])
    assert row["layers_patched"] == [3, 4, 5]  # the reference model's later half
    assert row["unpatched_bit_identical"] is True
    assert row["patched_logits_differ"] is True  # 4608 > min_seq_len: HyperAttention ran
    again = _run("patch_with_plan.py", "--seq-len", "4608", "--device", "cpu")
    assert json.loads(again.stdout.strip().splitlines()[-1]) == row  # the plan is seeded
    plan = json.loads(saved.read_text())
    assert plan["model_type"] == "llama" and plan["layers"]["5"]["exact_tail"] == 64


def test_plan_example_refuses_a_plan_for_another_model_in_one_line(tmp_path):
    from hf_hyper import HyperAttentionConfig, Plan

    other = tmp_path / "gemma.plan.json"
    Plan({17: HyperAttentionConfig()}, model_type="gemma3_text", num_layers=18).save(other)
    run = _run("patch_with_plan.py", "--seq-len", "1024", "--device", "cpu", "--plan", str(other))
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert lines[-1].startswith("patch_with_plan.py: ") and "gemma3_text" in lines[-1]
    assert "Traceback" not in run.stderr
