"""LongBench metrics against values worked out by hand (English and Chinese)."""

from __future__ import annotations

import pytest

from hf_hyper.eval.longbench import METRIC_PATH
from hf_hyper.eval.longbench import scoring as m
from hf_hyper.eval.longbench.protocol import task

pytest.importorskip("jieba")
pytest.importorskip("rouge")
pytest.importorskip("rapidfuzz")


def test_qa_f1_normalises_case_punctuation_and_articles():
    # "the eiffel tower" -> [eiffel, tower]; gold -> [eiffel, tower, in, paris]
    assert m.qa_f1("The Eiffel Tower!", "eiffel tower in Paris") == pytest.approx(2 / 3)
    assert m.qa_f1("an apple", "Apple.") == 1.0
    assert m.qa_f1("banana", "apple") == 0.0
    assert m.qa_f1("", "apple") == 0.0


def test_qa_f1_zh_uses_jieba_words_and_drops_punctuation():
    # jieba: 北京 / 是 / 中国 / 的 / 首都 / 。  -> 5 words after dropping "。"; gold: 北京
    # precision 1/5, recall 1 -> F1 = 2 * 0.2 / 1.2 = 1/3
    assert m.qa_f1_zh("北京是中国的首都。", "北京") == pytest.approx(1 / 3)
    assert m.qa_f1_zh("“北京”", "北京") == 1.0
    assert m.normalize_zh("Ａ，B c。") == "ａbc"


def test_rouge_l_is_the_benchmark_package_not_rouge_score():
    # The `rouge` package counts distinct words: hyp {the, cat, sat, on, mat} = 5,
    # ref {the, cat, lay, on, mat} = 5; the LCS "the cat on the mat" has 4 distinct
    # words -> P = R = F = 0.8 (rouge-score's ROUGE-L would say 5/6).
    assert m.rouge_l("the cat sat on the mat", "the cat lay on the mat") == pytest.approx(0.8)
    assert m.rouge_l("", "anything") == 0.0  # the package refuses an empty hypothesis
    assert m.rouge_l("Same words", "same words") == pytest.approx(0.5)  # no lower-casing


def test_rouge_l_zh_on_jieba_words():
    # 会议/讨论/了/预算/问题 vs 会议/讨论/了/预算: LCS 4 -> P 4/5, R 1 -> F = 8/9
    assert m.rouge_l_zh("会议讨论了预算问题", "会议讨论了预算") == pytest.approx(8 / 9)


def test_classification_drops_classes_that_are_part_of_the_answer():
    classes = ["Loc", "Other Loc", "Number"]
    assert m.classification("Other Loc", "Other Loc", classes) == 1.0  # "Loc" inside it
    assert m.classification("Loc or Number", "Number", classes) == 0.5
    assert m.classification("no idea", "Number", classes) == 0.0
    # The published scorer's removal while iterating skips the element after a removal:
    # found [a, ab, abc]; "a" removed, "ab" skipped -> [ab, abc] -> 1/2, not 1.
    assert m.classification("abc", "abc", ["a", "ab", "abc", "x"]) == 0.5


def test_retrieval_count_and_code_similarity():
    assert m.retrieval("Paragraph 3, not Paragraph 12", "Paragraph 3") == 0.5
    assert m.retrieval("none", "Paragraph 3") == 0.0
    assert m.retrieval_zh("答案是段落5", "段落5") == 1.0
    with pytest.raises(ValueError, match="does not match"):
        m.retrieval("Paragraph 1", "the first one")
    assert m.count("There are 7 unique paragraphs out of 10", "7") == 0.5
    # first line without a fence or comment; Indel ratio 2*3/(3+5) = 0.75
    assert m.code_sim("```python\n# next\nabc\n", "abcde") == 0.75
    assert m.code_sim("\n\nx = foo(1)\ny = 2", "x = foo(1)") == 1.0
    assert m.code_sim("ab", "abcd") == pytest.approx(round(200 * 2 / 6) / 100)  # whole percent


def test_task_scores_first_line_max_over_answers_and_length_buckets():
    trec = task("trec")
    classes = ["Location", "Number"]
    # few-shot sets keep only the first line: "Number" on line 2 does not count
    assert m.score_task(trec, ["Location\nNumber"], [["Location"]], [classes]) == {"score": 100.0}
    qa = task("hotpotqa")
    assert m.score_task(qa, ["Paris", "x"], [["London", "Paris"], ["y"]]) == {"score": 50.0}
    e = m.score_task(task("hotpotqa_e"), ["one", "two", "six"], [["one"], ["x"], ["six"]], None,
                     [100, 5000, 12000])  # fmt: skip
    assert e == {"score": pytest.approx(200 / 3), "0-4k": 100.0, "4-8k": 0.0, "8k+": 100.0}
    with pytest.raises(ValueError, match="length"):
        m.score_task(task("hotpotqa_e"), ["one"], [["one"]])


def test_evaluate_module_loads_offline_and_matches():
    evaluate = pytest.importorskip("evaluate")
    metric = evaluate.load(METRIC_PATH, "multifieldqa_zh")
    result = metric.compute(predictions=["北京是中国的首都。"], references=[["北京", "上海"]])
    assert result == {"score": pytest.approx(100 / 3)}
    lsht = evaluate.load(METRIC_PATH, "lsht")
    result = lsht.compute(predictions=["体育", "财经"], references=[["体育"], ["体育"]],
                          all_classes=["体育", "财经"])  # fmt: skip
    assert result == {"score": 50.0}
    with pytest.raises(KeyError, match="dataset name"):
        evaluate.load(METRIC_PATH, "not_a_dataset")
