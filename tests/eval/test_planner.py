"""`hf-hyper plan`: the search (bisection, candidates, the choice by modelled time), the
budgets, a whole run on a tiny checkpoint whose answers depend on which layers run which
mode, resume, and bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import hf_hyper
from helpers.tiny_models import save_tiny_checkpoint
from hf_hyper import Plan
from hf_hyper.eval import cli, planner
from hf_hyper.eval.common import JobError
from hf_hyper.eval.plan_search import (
    EXACT,
    budget_share,
    choose,
    keeps_budgets,
    layers_by_mode,
    modelled_ms,
    most_layers,
    rank_alone,
    search,
)
from hf_hyper.eval.planner import read_layer_times

SMALL_HYPER = ["--block-size", "8", "--sample-size", "8", "--min-seq-len", "64", "--seed", "0"]
SMALL_RUN = ["--length", "400", "--calibration-windows", "1", "--validation-windows", "1",
             "--calibration-cases", "2", "--validation-cases", "3"]  # fmt: skip
TIMES = {EXACT: 10.0, "fast": 1.0, "fast+tail": 1.1}


def _rates(**hits: int) -> dict:
    return {task: {"hits": n, "cases": 10} for task, n in hits.items()}


def test_most_layers_finds_the_last_k_that_fits():
    for limit in range(0, 9):
        asked = []

        def fits(k, limit=limit, asked=asked):
            asked.append(k)
            return k <= limit

        assert most_layers(fits, 8) == limit
        assert len(asked) <= 4  # bisection: ceil(log2(9)) trials


def test_search_gives_each_mode_alone_and_the_modes_nested():
    ranked = [3, 0, 2, 1]

    # fast loses the needle in layer 2; fast+tail never does
    def fits(assignment):
        return assignment.get(2) != "fast"

    candidates = search(fits, ranked, ["fast", "fast+tail"])
    assert candidates == [
        {3: "fast", 0: "fast"},
        {3: "fast+tail", 0: "fast+tail", 2: "fast+tail", 1: "fast+tail"},
        {3: "fast", 0: "fast", 2: "fast+tail", 1: "fast+tail"},
    ]
    best = choose(candidates, range(4), TIMES)
    assert best == candidates[2]
    assert modelled_ms(best, range(5), TIMES) == pytest.approx(1 + 1 + 1.1 + 1.1 + 10)
    # layers a plan cannot patch (sliding-window ones) are left out of the model
    assert modelled_ms(best, [0, 3], TIMES) == pytest.approx(2)
    assert choose([{}, {}], range(4), TIMES) is None


def test_trial_tables_name_layers_by_mode_in_ranges():
    assignment = {9: "fast", 0: "fast", 1: "fast", 2: "fast", 5: "fast", 7: "t", 8: "t"}
    assert layers_by_mode(assignment) == "fast 0-2,5,9; t 7-8"
    assert layers_by_mode({}) == EXACT


def test_budgets_bound_perplexity_and_every_task_share():
    base = {"ppl": 10.0, "retrieval": _rates(passkey=10, kv=5)}
    ok = {"ppl": 10.1, "retrieval": _rates(passkey=9, kv=5)}
    assert keeps_budgets(ok, base, 0.01, 0.9)
    assert not keeps_budgets(ok | {"ppl": 10.11}, base, 0.01, 0.9)
    assert not keeps_budgets(ok | {"retrieval": _rates(passkey=8, kv=5)}, base, 0.01, 0.9)
    assert not keeps_budgets(ok | {"retrieval": _rates(passkey=10, kv=4)}, base, 0.01, 0.9)


def test_budget_share_is_the_largest_share_used():
    base = {"ppl": 10.0, "retrieval": _rates(passkey=10, kv=5)}
    at_ppl = {"ppl": 10.1, "retrieval": _rates(passkey=10, kv=5)}
    assert budget_share(at_ppl, base, 0.01, 0.9) == pytest.approx(1.0)
    lost = {"ppl": 10.0, "retrieval": _rates(passkey=8, kv=5)}
    assert budget_share(lost, base, 0.01, 0.9) == pytest.approx(2.0)  # 2 of the 1 allowed
    better = {"ppl": 9.9, "retrieval": _rates(passkey=10, kv=5)}
    assert budget_share(better, base, 0.01, 0.9) == pytest.approx(0.0)  # no lost hits
    assert budget_share(lost, base, 0.01, 1.0) == float("inf")  # none may be lost
    assert budget_share(better, base, 0.0, 1.0) == 0.0


# Gemma 3 270M at 32k on an H200 (results/retrieval/gemma3_32k_layers_h200.md): each full
# layer alone in the fast mode, perplexity over unpatched and kv-number hits of 100 (layer
# 5's: those of layers 5 and 17 together, since 17 alone loses none).
GEMMA_32K_ALONE = {5: (1.0498, 27), 11: (1.1383, 56), 17: (1.0034, 79)}
GEMMA_32K_ERROR_RANKS = [11, 17, 5]  # what the attention errors on one window ranked


def _gemma_like_trial(assignment: dict[int, str]) -> dict:
    """Perplexity factors multiply; hits are the fewest of any patched layer's."""
    ppl, hits = 15.21, 77
    for layer in assignment:
        factor, alone = GEMMA_32K_ALONE[layer]
        ppl, hits = ppl * factor, min(hits, alone)
    return {"ppl": ppl, "retrieval": {"kv-number": {"hits": hits, "cases": 100}}}


def test_ranking_by_measured_effect_finds_the_layer_an_error_ranking_misses():
    base = _gemma_like_trial({})
    ranking = rank_alone(_gemma_like_trial, base, [5, 11, 17], "fast", 0.03, 0.9)
    assert ranking[0]["layer"] == 17 and [r["rank"] for r in ranking] == [1, 2, 3]
    assert ranking[0]["budget_share"] < 1 < ranking[1]["budget_share"] <= ranking[2]["budget_share"]

    def fits(assignment):
        return keeps_budgets(_gemma_like_trial(assignment), base, 0.03, 0.9)

    times = {EXACT: 63.7, "fast": 8.7}
    by_effect = search(fits, [r["layer"] for r in ranking], ["fast"])
    assert choose(by_effect, [5, 11, 17], times) == {17: "fast"}
    assert choose(search(fits, GEMMA_32K_ERROR_RANKS, ["fast"]), [5, 11, 17], times) is None


def test_layer_times_file_is_checked(tmp_path):
    good = tmp_path / "t.json"
    good.write_text(json.dumps(TIMES))
    assert read_layer_times(str(good), ["fast"]) == {EXACT: 10.0, "fast": 1.0}
    bad = tmp_path / "bad.json"
    for text in ("{", json.dumps({EXACT: 1.0}), json.dumps({EXACT: 1, "fast": -1})):
        bad.write_text(text)
        with pytest.raises(JobError, match="--layer-times"):
            read_layer_times(str(bad), ["fast"])
    with pytest.raises(JobError, match="no such file"):
        read_layer_times(str(tmp_path / "none.json"), ["fast"])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(
        tmp_path_factory.mktemp("tiny-llama"), all_bytes=True, max_position_embeddings=2048
    )


def _needle_values(text: str) -> list[str]:
    key = re.findall(r"for (\S+) mentioned", text)
    if key:
        return re.findall(rf"for {re.escape(key[-1])} is: (\w+)\.", text)
    return re.findall(r"The pass key is (\d+)\. Remember", text)


def _oracle_losing_needles_in(fragile: set[int]):
    """An answerer that reads the prompt, unless a layer of `fragile` runs without an
    exact tail: the planner must keep those layers exact or give them the tail."""

    def answer(model, tokenizer, case, device):
        report = hf_hyper.patch_report(model)
        configs = report.configs if report else {}
        if any(configs[i].exact_tail == 0 for i in fragile & set(configs)):
            return " nothing", 2
        return " " + ", ".join(_needle_values(tokenizer.decode(list(case.input_ids)))), 3

    return answer


def _plan(checkpoint: Path, out: Path, times: Path, *extra: str) -> int:
    return cli.main(["plan", "--model", str(checkpoint), "--cpu", "--dtype", "fp32",
                     "--output-dir", str(out), "--layer-times", str(times), "--ppl-budget",
                     "1.0", *SMALL_RUN, *SMALL_HYPER, *extra])  # fmt: skip


def test_a_plan_keeps_the_needles_and_resumes(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(planner, "answer", _oracle_losing_needles_in({1, 2}))
    times = tmp_path / "times.json"
    times.write_text(json.dumps(TIMES))
    out = tmp_path / "run"
    assert _plan(checkpoint, out, times) == 0
    data = json.loads((out / "plan-search.json").read_text())
    plan = Plan.load(out / "plan.json")
    assert plan.model_type == "llama" and plan.num_layers == 4
    modes = data["plan"]
    assert sorted(map(int, modes)) == [0, 1, 2, 3]  # the oracle's budget allows every layer
    assert modes["1"] == modes["2"] == "fast+tail"
    # each layer was measured alone; the two that lose needles rank last
    assert data["rank"] == "alone" and data["served_layers"] == [0, 1, 2, 3]
    assert sorted(r["layer"] for r in data["ranking"][2:]) == [1, 2]
    assert all(r["budget_share"] > 1 for r in data["ranking"][2:])
    assert "each patched alone" in (out / "plan-search.md").read_text()
    for layer, mode in modes.items():
        assert plan.layers[int(layer)].exact_tail == (0 if mode == "fast" else 64)
    # the least modelled time of the candidates, all measured within the budgets
    best = min(c["modelled_ms"] for c in data["candidates"] if c["layers"])
    assert data["modelled_ms"] == best
    for stage in ("calibration", "validation"):
        for setting in ("unpatched", "plan"):
            assert all(r["hits"] == r["cases"] for r in data[stage][setting]["retrieval"].values())
    assert data["validation"]["plan"]["retrieval"]["passkey"]["cases"] == 3
    assert plan.info["validation"] == data["validation"]
    # a rerun measures nothing again: every trial comes from the cache
    log = next(out.glob("trials-*"))
    lines = sum(1 for f in log.iterdir() for _ in f.open())
    assert _plan(checkpoint, out, times) == 0
    assert sum(1 for f in log.iterdir() for _ in f.open()) == lines
    # the plan file drives the other jobs
    ppl = ["ppl", "--model", str(checkpoint), "--cpu", "--dtype", "fp32", "--lengths", "400",
           "--max-windows", "1", "--plan", str(out / "plan.json"), "--patch-layers", "0",
           "plan", "--output-dir", str(tmp_path / "ppl")]  # fmt: skip
    assert cli.main(ppl) == 0
    # the quick ranking by attention error still plans, and measures no layer alone
    quick = tmp_path / "quick"
    assert _plan(checkpoint, quick, times, "--rank", "error") == 0
    data = json.loads((quick / "plan-search.json").read_text())
    assert data["rank"] == "error"
    assert data["ranking"] == sorted(data["layer_errors"], key=lambda r: r["rank"])
    assert "each patched alone" not in (quick / "plan-search.md").read_text()


def _error(capsys, *args: str) -> str:
    assert cli.main(list(args)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_bad_input_and_budgets_nothing_keeps(checkpoint, tmp_path, capsys, monkeypatch):
    times = tmp_path / "times.json"
    times.write_text(json.dumps(TIMES))
    base = ["plan", "--model", str(checkpoint), "--cpu", "--output-dir", str(tmp_path / "o")]
    assert "--retrieval-budget must be in [0, 1]" in _error(
        capsys, *base, "--retrieval-budget", "1.5"
    )
    assert "--ppl-budget must be >= 0" in _error(capsys, *base, "--ppl-budget", "-1")
    assert "every call is short enough" in _error(capsys, *base, "--length", "64", *SMALL_HYPER)
    assert "must map each of" in _error(
        capsys, *base, "--layer-times", str(tmp_path / "times.json"), "--modes", "accurate"
    )
    windows = _error(capsys, *base, *SMALL_HYPER, "--length", "400",
                     "--calibration-windows", "100000", "--layer-times", str(times))  # fmt: skip
    assert "the plan needs 100004" in windows
    slow = tmp_path / "slow.json"
    slow.write_text(json.dumps({EXACT: 1.0, "fast": 2.0, "fast+tail": 2.0}))
    monkeypatch.setattr(planner, "answer", _oracle_losing_needles_in({0, 1, 2, 3}))
    assert "no mode is faster than exact" in _error(
        capsys, *base, *SMALL_RUN, *SMALL_HYPER, "--layer-times", str(slow)
    )
    out = tmp_path / "none"
    message = _error(capsys, *base[:-1], str(out), *SMALL_RUN, *SMALL_HYPER,
                     "--layer-times", str(times), "--modes", "fast")  # fmt: skip
    assert "no layer keeps both budgets" in message
    assert (out / "plan-search.md").is_file() and not (out / "plan.json").exists()


def test_timing_that_runs_out_of_memory_is_one_line(checkpoint, tmp_path, capsys, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(planner, "layer_times", out_of_memory)
    args = ["plan", "--model", str(checkpoint), "--cpu", "--dtype", "fp32",
            "--output-dir", str(tmp_path / "o"), *SMALL_RUN, *SMALL_HYPER]  # fmt: skip
    message = _error(capsys, *args)
    assert "ran out of memory" in message and "--layer-times" in message
