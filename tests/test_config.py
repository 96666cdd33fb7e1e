"""HyperAttentionConfig: presets and validation that names the field."""

import pytest

from hf_hyper import HyperAttentionConfig


def test_the_paper_preset_turns_every_addition_off():
    paper = HyperAttentionConfig.paper(seed=3)
    assert (paper.sinks, paper.window, paper.kmeans_iters, paper.exact_tail) == (0, 0, 0, 0)
    assert paper.seed == 3 and paper.block_size == HyperAttentionConfig().block_size
    assert HyperAttentionConfig().sinks > 0  # the default is not the paper's


def test_the_accurate_preset_probes_clusters_with_a_tail_and_takes_overrides():
    accurate = HyperAttentionConfig.accurate()
    assert accurate.cluster_probes > 0 and accurate.kmeans_iters > 0 and accurate.exact_tail > 0
    assert HyperAttentionConfig.accurate(exact_tail=0, seed=3) == HyperAttentionConfig(
        kmeans_iters=accurate.kmeans_iters, cluster_probes=accurate.cluster_probes, seed=3
    )


@pytest.mark.parametrize("field", ["block_size", "sample_size", "exact_tail", "cluster_probes"])
def test_a_wrong_type_is_both_a_type_and_a_value_error_naming_the_field(field):
    with pytest.raises(ValueError, match=field):
        HyperAttentionConfig(**{field: "8"})
    with pytest.raises(TypeError, match=field):
        HyperAttentionConfig(**{field: 2.0})


@pytest.mark.parametrize("exact_up_to", [0, 6000, "auto"])
def test_runs_exact_is_the_query_length_rule(exact_up_to):
    config = HyperAttentionConfig(exact_up_to=exact_up_to)
    for causal in (False, True):
        limit = config.exact_query_len(causal)
        assert config.runs_exact(limit, causal) and not config.runs_exact(limit + 1, causal)
        assert config.runs_exact(1, causal)
