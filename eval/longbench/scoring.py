"""LongBench v1 metrics, one function per metric: (prediction, answer, classes) -> [0, 1].

Written to give the same numbers as the benchmark's published scorer, quirks included
where they change scores (each is marked); a dataset's score is the mean over samples of
the best score over its gold answers, times 100.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from functools import cache

from .protocol import LENGTH_BUCKETS, Task, length_bucket

# The benchmark's Chinese punctuation set (it has the closing 》 but not the opening 《).
ZH_PUNCTUATION = (
    "！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】"
    "〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏."
)
_EN_PUNCT = set(string.punctuation)
_ZH_PUNCT = set(string.punctuation + ZH_PUNCTUATION)


class MissingExtra(ImportError):
    """A metric's library is not installed."""


def _need(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtra(
            f"LongBench metrics need {module}: pip install 'hf_hyper[longbench]'"
        ) from err


@cache
def _jieba():
    jieba = _need("jieba")
    jieba.setLogLevel(60)  # silence the dictionary-loading chatter
    return jieba


def _cut(text: str) -> list[str]:
    return list(_jieba().cut(text, cut_all=False))


def normalize_en(text: str) -> str:
    """SQuAD-style: lower case, drop punctuation and articles, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _EN_PUNCT)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def normalize_zh(text: str) -> str:
    """Lower case, drop English and Chinese punctuation and all whitespace."""
    return "".join("".join(ch for ch in text.lower() if ch not in _ZH_PUNCT).split())


def token_f1(prediction: Sequence[str], reference: Sequence[str]) -> float:
    overlap = sum((Counter(prediction) & Counter(reference)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(prediction), overlap / len(reference)
    return 2 * precision * recall / (precision + recall)


def qa_f1(prediction: str, answer: str, classes: Sequence[str] = ()) -> float:
    return token_f1(normalize_en(prediction).split(), normalize_en(answer).split())


def qa_f1_zh(prediction: str, answer: str, classes: Sequence[str] = ()) -> float:
    """F1 over jieba words, each normalised; words that normalise to nothing are dropped."""

    def words(text: str) -> list[str]:
        return [w for w in map(normalize_zh, _cut(text)) if w]

    return token_f1(words(prediction), words(answer))


def rouge_l(prediction: str, answer: str, classes: Sequence[str] = ()) -> float:
    """ROUGE-L F of the `rouge` package, which the benchmark used: sentences split at '.',
    words at spaces, no lower-casing or stemming. Its numbers differ from `rouge-score`'s,
    so that package would not reproduce published tables. An empty prediction, or a text
    the package cannot handle, scores 0 (as in the benchmark)."""
    rouge = _need("rouge")
    try:
        scores = rouge.Rouge().get_scores([prediction], [answer], avg=True)
    except (ValueError, RecursionError):
        return 0.0
    return float(scores["rouge-l"]["f"])


def rouge_l_zh(prediction: str, answer: str, classes: Sequence[str] = ()) -> float:
    """ROUGE-L over jieba words joined by spaces."""
    return rouge_l(" ".join(_cut(prediction)), " ".join(_cut(answer)))


def classification(prediction: str, answer: str, classes: Sequence[str] = ()) -> float:
    """1/k if the answer is among the k class names found in the prediction, else 0.
    Class names found only as part of the answer (e.g. 'Location' in 'Other location') are
    dropped first."""
    found = [c for c in classes if c in prediction]
    i = 0
    while i < len(found):
        if found[i] in answer and found[i] != answer:
            del found[i]
            # The published scorer removes while iterating over the same list, which skips
            # the element after each removal; kept so scores stay comparable.
        i += 1
    return 1.0 / len(found) if answer in found else 0.0


def _share_equal(prediction: str, target: str) -> float:
    numbers = re.findall(r"\d+", prediction)
    return sum(n == target for n in numbers) / len(numbers) if numbers else 0.0


def count(prediction: str, answer: str, classes: Sequence[str] = ()) -> float:
    """Share of the numbers in the prediction that equal the answer."""
    return _share_equal(prediction, str(answer))


def _retrieval(pattern: str) -> Callable[[str, str, Sequence[str]], float]:
    def score(prediction: str, answer: str, classes: Sequence[str] = ()) -> float:
        match = re.search(pattern, answer)
        if match is None:
            raise ValueError(f"retrieval answer {answer!r} does not match {pattern!r}")
        return _share_equal(prediction, match.group(1))

    score.__doc__ = f"Share of the numbers in the prediction that equal the answer's {pattern}."
    return score


retrieval = _retrieval(r"Paragraph (\d+)")
retrieval_zh = _retrieval(r"段落(\d+)")


def code_sim(prediction: str, answer: str, classes: Sequence[str] = ()) -> float:
    """Edit similarity of the first line that is not a comment or code fence, in whole
    percent: the benchmark's fuzzywuzzy ratio is rapidfuzz's ratio rounded."""
    fuzz = _need("rapidfuzz.fuzz")
    lines = prediction.lstrip("\n").split("\n")
    line = next((s for s in lines if "`" not in s and "#" not in s and "//" not in s), "")
    return round(fuzz.ratio(line, answer)) / 100


METRIC_FUNCTIONS: dict[str, Callable[[str, str, Sequence[str]], float]] = {
    "qa_f1": qa_f1,
    "qa_f1_zh": qa_f1_zh,
    "rouge_l": rouge_l,
    "rouge_l_zh": rouge_l_zh,
    "classification": classification,
    "count": count,
    "retrieval": retrieval,
    "retrieval_zh": retrieval_zh,
    "code_sim": code_sim,
}


_LIBRARIES = {"qa_f1_zh": ("jieba",), "rouge_l": ("rouge",), "rouge_l_zh": ("rouge", "jieba"),
              "code_sim": ("rapidfuzz.fuzz",)}  # fmt: skip


def require_libraries(tasks: Sequence[Task]) -> None:
    """Fail before hours of generation, not at scoring time."""
    for t in tasks:
        for module in _LIBRARIES.get(t.metric, ()):
            _need(module)


def score_sample(task: Task, prediction: str, answers: Sequence[str], classes=()) -> float:
    """Best score over the gold answers, after the benchmark's post-processing."""
    if task.first_line_only:
        prediction = prediction.lstrip("\n").split("\n")[0]
    metric = METRIC_FUNCTIONS[task.metric]
    return max((metric(prediction, a, classes or ()) for a in answers), default=0.0)


def score_task(
    task: Task,
    predictions: Sequence[str],
    answers: Sequence[Sequence[str]],
    classes: Sequence[Sequence[str] | None] | None = None,
    lengths: Sequence[int] | None = None,
) -> dict[str, float | None]:
    """{'score': mean x 100}; LongBench-E tasks add one entry per length bucket
    (None for an empty bucket)."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions but {len(answers)} answer lists")
    if not predictions:
        raise ValueError(f"no predictions to score for {task.name}")
    classes = classes or [None] * len(predictions)
    triples = zip(predictions, answers, classes, strict=True)
    scores = [score_sample(task, p, a, c) for p, a, c in triples]
    result: dict[str, float | None] = {"score": 100 * sum(scores) / len(scores)}
    if task.by_length:
        if lengths is None or len(lengths) != len(scores):
            raise ValueError(f"{task.name} is scored per length bucket: pass one length each")
        for _, _, label in LENGTH_BUCKETS:
            bucket = [s for s, n in zip(scores, lengths, strict=True) if length_bucket(n) == label]
            result[label] = 100 * sum(bucket) / len(bucket) if bucket else None
    return result
