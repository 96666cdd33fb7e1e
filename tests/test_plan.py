"""Per-layer plans (hf_hyper.Plan): validation, the JSON file, and clear errors for a
file that is not a plan."""

import json

import pytest

from hf_hyper import HyperAttentionConfig, Plan, PlanError

FAST = HyperAttentionConfig(seed=0)
ACCURATE = HyperAttentionConfig(seed=0, exact_tail=64, kmeans_iters=2, cluster_probes=4)


def test_a_plan_saves_and_loads_to_the_same_layers_and_records_its_context(tmp_path):
    plan = Plan({3: FAST, 1: ACCURATE}, model_type="llama", num_layers=4,
                info={"budget": {"ppl": 0.01}})  # fmt: skip
    assert list(plan.layers) == [1, 3]  # sorted
    path = plan.save(tmp_path / "p.json")
    data = json.loads(path.read_text())
    assert data["format"] == "hf_hyper.plan" and "torch" in data["versions"]
    again = Plan.load(path)
    assert again.layers == plan.layers and again.model_type == "llama"
    assert again.num_layers == 4 and again.info == {"budget": {"ppl": 0.01}}


@pytest.mark.parametrize(
    "layers, message",
    [({}, "at least one"), ({-1: FAST}, "indices"), ({"2": FAST}, "indices"),
     ({0: {"seed": 0}}, "HyperAttentionConfig")],
)  # fmt: skip
def test_plan_rejects_bad_layers(layers, message):
    with pytest.raises(PlanError, match=message):
        Plan(layers)


def test_plan_rejects_a_layer_beyond_its_model():
    with pytest.raises(PlanError, match="num_layers=4"):
        Plan({4: FAST}, num_layers=4)


def _plan_file(tmp_path, **changes):
    data = Plan({0: FAST}, model_type="llama").to_dict() | changes
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"format": "other"}, "not a plan"),
        ({"version": 99}, "version 99"),
        ({"layers": {}}, "map layer indices"),
        ({"layers": {"x": {}}}, "not a layer index"),
        ({"layers": {"0": {"blok_size": 3}}}, "unknown fields \\['blok_size'\\]"),
        ({"layers": {"0": {"block_size": -3}}}, "block_size"),
        ({"layers": {"0": {"exact_tail": "8"}}}, "exact_tail"),
        ({"model_type": 3}, "model_type"),
        ({"num_layers": "30"}, "num_layers"),
    ],
)
def test_a_malformed_plan_file_names_the_file_and_the_problem(tmp_path, changes, message):
    path = _plan_file(tmp_path, **changes)
    with pytest.raises(PlanError, match=message) as err:
        Plan.load(path)
    assert str(path) in str(err.value)


def test_a_missing_or_broken_file_is_a_plan_error(tmp_path):
    with pytest.raises(PlanError, match="no plan file"):
        Plan.load(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"format": "hf_hyper.plan", ')
    with pytest.raises(PlanError, match="not readable JSON"):
        Plan.load(broken)


def test_check_model_refuses_another_model_type_or_depth():
    plan = Plan({5: FAST}, model_type="llama", num_layers=30)
    plan.check_model("llama", 30)
    with pytest.raises(PlanError, match="model type 'llama'; this model is 'qwen2'"):
        plan.check_model("qwen2", 30)
    with pytest.raises(PlanError, match="30 layers; this one has 4"):
        plan.check_model("llama", 4)
    with pytest.raises(PlanError, match="lacks"):
        Plan({5: FAST}).check_model("llama", 4)
