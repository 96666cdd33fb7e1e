import importlib.util
import os

import pytest
import torch


def _interpreter_usable() -> bool:
    """Triton's CPU interpreter runs the fused kernels without a GPU; numpy >= 2.3 breaks
    its scalar loads."""
    if importlib.util.find_spec("triton") is None:
        return False
    import numpy

    major, minor = (int(x) for x in numpy.__version__.split(".")[:2])
    return (major, minor) < (2, 3)


# Without a GPU, the kernels are compiled for the interpreter (set before any kernel
# module is imported); nothing outside the fused tests launches them on the CPU.
INTERPRETER = not torch.cuda.is_available() and _interpreter_usable()
if INTERPRETER:
    os.environ["TRITON_INTERPRET"] = "1"

# Under pytest-xdist each worker is one process of several on the machine's cores: one
# intra-op thread each keeps them from oversubscribing the cores with torch's threads,
# which the many small ops of these tests pay for more than they gain.
if "PYTEST_XDIST_WORKER" in os.environ and not torch.cuda.is_available():
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    skip_interpreter = pytest.mark.skip(reason="needs Triton's interpreter (triton, numpy<2.3)")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if "interpreter" in item.keywords and not INTERPRETER:
            item.add_marker(skip_interpreter)


@pytest.fixture(autouse=True)
def counting_sorts_as_without_the_interpreter(request, monkeypatch):
    """The counting sorts run their kernels on CUDA or under the interpreter, their torch
    ops on a plain CPU. Tests not marked `interpreter` check the torch path, so they sort
    as a CPU user's call does: the interpreted bitonic sort of every chunk took up to half
    of their time, and the sort's kernels have interpreter tests of their own."""
    if INTERPRETER and "interpreter" not in request.keywords:
        from helpers.fused_cases import counting_sorts_in_torch_ops

        counting_sorts_in_torch_ops(monkeypatch)


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request) -> str:
    return request.param


@pytest.fixture(autouse=True)
def _same_global_rng_for_every_test():
    # torch seeds its global generator afresh in each process, and a test's draws that it
    # does not seed itself (HyperAttention's hyperplanes and samples under seed=None) would
    # otherwise depend on that and on which tests ran before it in its worker: a failure
    # would not come back when the test is run again
    torch.manual_seed(0)
