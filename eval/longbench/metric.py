"""LongBench v1 scores as an `evaluate` metric; the config name is the dataset.

    import evaluate
    from hf_hyper.eval.longbench import METRIC_PATH
    metric = evaluate.load(METRIC_PATH, "hotpotqa")        # offline: a local module
    metric.compute(predictions=["Paris"], references=[["Paris", "paris, France"]])
    # {'score': 100.0}

Classification sets (trec, lsht) need `all_classes=[...]` (one list for all samples, or
one per sample); LongBench-E sets (`*_e`) need `lengths=[...]` and add per-bucket scores.
Absolute imports only: `evaluate.load` runs this file outside its package.
"""

from __future__ import annotations

import datasets
import evaluate

from hf_hyper.eval.common import JobError
from hf_hyper.eval.longbench.protocol import DATASETS, E_DATASETS, task
from hf_hyper.eval.longbench.scoring import score_task

_CITATION = """\
@article{bai2023longbench,
  title={LongBench: A Bilingual, Multitask Benchmark for Long Context Understanding},
  author={Bai, Yushi and Lv, Xin and Zhang, Jiajie and others},
  journal={arXiv preprint arXiv:2308.14508},
  year={2023}
}
"""


class LongBench(evaluate.Metric):
    """Mean over samples of the best score over gold answers, x 100, as LongBench v1."""

    def _info(self) -> evaluate.MetricInfo:
        if self.config_name not in DATASETS + E_DATASETS:
            raise KeyError(
                f"LongBench metric config must be a dataset name ({', '.join(DATASETS)}, "
                f"or a LongBench-E set); got {self.config_name!r}"
            )
        return evaluate.MetricInfo(
            description="LongBench v1 per-dataset score (QA F1, ROUGE-L, accuracy, "
            "edit similarity, with the benchmark's normalisation).",
            citation=_CITATION,
            inputs_description="predictions: list of str; references: list of lists of "
            "gold answers; all_classes (trec, lsht); lengths (LongBench-E).",
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
            reference_urls=["https://arxiv.org/abs/2308.14508"],
        )

    def _compute(self, predictions, references, all_classes=None, lengths=None):
        if all_classes and isinstance(all_classes[0], str):  # one class list for every sample
            all_classes = [all_classes] * len(predictions)
        try:
            return score_task(task(self.config_name), predictions, references, all_classes, lengths)
        except JobError as err:
            raise ValueError(str(err)) from err
