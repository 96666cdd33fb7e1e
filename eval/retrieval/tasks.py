"""Needle-in-a-haystack cases in the spirit of RULER's NIAH variants, generated offline:
needles (facts with a random value) placed at a chosen depth of a haystack text, and a
question whose answer is the value. Everything about a case follows from (task, length,
depth, seed), so a grid is reproducible and resumable."""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

from ..chat import encode_prompt
from ..common import JobError

TASKS = ("passkey", "kv-number", "kv-word", "multikey", "multivalue")

# Keys and word values: plain English words, two per key so keys do not collide.
_WORD_TEXT = """
    amber anchor arrow autumn badge barrel beacon berry blossom bottle breeze bridge
    canyon carpet castle cedar chalk cherry cinder cloud comet copper coral cotton
    crystal dagger desert dragon ember falcon feather forest garnet glacier harbor
    hazel helmet island ivory jasmine jungle kettle ladder lantern lemon marble meadow
    mirror needle orchid pepper pillow planet pocket quartz raven ribbon river saddle
    silver spider summit thunder timber tunnel velvet violet walnut willow window
    zephyr
"""
WORDS = tuple(_WORD_TEXT.split())


@dataclass(frozen=True)
class Spec:
    """What a task asks: the needle sentences, the question and how the answer starts."""

    intro: str
    needle: str  # with {key} and {value}
    question: str  # with {key}
    answer_start: str  # with {key}
    kind: str  # "number" (7 digits), "word" or "passkey" (5 digits)


SPECS = {
    "passkey": Spec(
        "There is an important pass key hidden inside a lot of irrelevant text. Find it "
        "and memorize it. I will quiz you about the pass key.",
        "The pass key is {value}. Remember it. {value} is the pass key.",
        "What is the pass key?",
        "The pass key is",
        "passkey",
    ),
    "kv-number": Spec(
        "Some special magic numbers are hidden within the following text. Make sure to "
        "memorize them. I will quiz you about the numbers afterwards.",
        "One of the special magic numbers for {key} is: {value}.",
        "What is the special magic number for {key} mentioned in the provided text?",
        "The special magic number for {key} mentioned in the provided text is",
        "number",
    ),
    "kv-word": Spec(
        "Some special magic words are hidden within the following text. Make sure to "
        "memorize them. I will quiz you about the words afterwards.",
        "One of the special magic words for {key} is: {value}.",
        "What is the special magic word for {key} mentioned in the provided text?",
        "The special magic word for {key} mentioned in the provided text is",
        "word",
    ),
}
SPECS["multikey"] = SPECS["kv-number"]
SPECS["multivalue"] = Spec(
    SPECS["kv-number"].intro,
    SPECS["kv-number"].needle,
    "What are all the special magic numbers for {key} mentioned in the provided text?",
    "The special magic numbers for {key} mentioned in the provided text are",
    "number",
)


@dataclass(frozen=True)
class Case:
    task: str
    length: int  # target prompt length in tokens
    depth: float  # where the (first) answer needle sits, 0 = start of the haystack
    seed: int
    input_ids: tuple[int, ...]
    answers: tuple[str, ...]  # all must appear in the prediction
    chat: bool
    needle_spans: tuple[tuple[int, int], ...]  # token ranges of the answer needles

    @property
    def key(self) -> str:
        return f"{self.task}|{self.length}|{self.depth:.4f}|{self.seed}"

    @property
    def prompt_hash(self) -> str:
        return hashlib.sha256(repr(self.input_ids).encode()).hexdigest()[:12]


def check_tasks(names: list[str]) -> list[str]:
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise JobError(f"unknown --tasks {unknown}; choose from {list(TASKS)}")
    return list(dict.fromkeys(names))


def _value(rng: random.Random, kind: str) -> str:
    if kind == "passkey":
        return str(rng.randint(10000, 99999))
    if kind == "number":
        return str(rng.randint(1000000, 9999999))
    return rng.choice(WORDS)


def _needles(task: str, depth: float, rng: random.Random, distractors: int, values: int):
    """[(depth, sentence, is_answer)], the question and answer start, and the answers."""
    spec = SPECS[task]
    keys = rng.sample(range(len(WORDS) ** 2), 1 + distractors)
    names = [f"{WORDS[k // len(WORDS)]}-{WORDS[k % len(WORDS)]}" for k in keys]
    key = names[0]
    answers = [_value(rng, spec.kind)]
    placed = [(depth, spec.needle.format(key=key, value=answers[0]), True)]
    if task == "multikey":  # other keys, same kind of value, anywhere
        for other in names[1:]:
            sentence = spec.needle.format(key=other, value=_value(rng, "number"))
            placed.append((rng.random(), sentence, False))
    if task == "multivalue":  # more values of the same key, anywhere
        while len(answers) < values:
            value = _value(rng, spec.kind)
            if value not in answers:
                answers.append(value)
                placed.append((rng.random(), spec.needle.format(key=key, value=value), True))
    question = spec.question.format(key=key)
    return sorted(placed), question, spec.answer_start.format(key=key), tuple(answers)


def _cut(text: str, fraction: float) -> int:
    """A character position about `fraction` into text, moved to the next sentence end
    (within 300 characters) so needles do not split words."""
    at = int(round(fraction * len(text)))
    if at <= 0 or at >= len(text):
        return max(0, min(at, len(text)))
    ends = [i for i in (text.find(". ", at, at + 300), text.find("\n", at, at + 300)) if i >= 0]
    return min(ends) + 1 if ends else at


def build_case(
    task: str, length: int, depth: float, seed: int, stream: list[int], tokenizer, chat: bool,
    *, distractors: int = 3, values: int = 4, allow_repeat: bool = False,
) -> Case:  # fmt: skip
    """The case (task, length, depth, seed) over the haystack token `stream`: a prompt of
    about `length` tokens (intro, haystack with needles, question, answer start)."""
    if not stream:
        raise JobError("the haystack text is empty: give --files or --dataset with some text")
    rng = random.Random(f"{task}|{length}|{depth:.4f}|{seed}")  # str seeds are stable
    needles, question, answer_start, answers = _needles(task, depth, rng, distractors, values)

    def prompt(haystack: list[int]) -> tuple[list[int], str]:
        text = tokenizer.decode(haystack, skip_special_tokens=True)
        pieces, last = [], 0
        for fraction, sentence, _ in needles:
            at = max(last, _cut(text, fraction))
            pieces += [text[last:at], f" {sentence} "]
            last = at
        context = "".join(pieces + [text[last:]])
        body = f"{SPECS[task].intro}\n\n{context}\n\n{question}"
        return encode_prompt(tokenizer, body, chat, " " + answer_start), context

    fixed = len(prompt([])[0])
    if fixed >= length:
        raise JobError(
            f"the {task} needles and question take {fixed} tokens, more than --lengths "
            f"{length}: use a longer length"
        )
    budget = length - fixed
    if budget > len(stream) and not allow_repeat:
        raise JobError(
            f"the haystack has {len(stream)} tokens, fewer than the {budget} a {length}-token "
            "prompt needs: give more text, or pass --allow-repeat to repeat it"
        )
    start = rng.randrange(max(1, len(stream) - budget + 1)) if budget <= len(stream) else 0
    for _ in range(4):  # decoding and re-encoding moves the count a little: settle it
        haystack = [stream[(start + i) % len(stream)] for i in range(budget)]
        ids, _ = prompt(haystack)
        if len(ids) <= length:
            break
        budget -= len(ids) - length
    spans = _spans(ids, tokenizer, [s for _, s, answer in needles if answer])
    return Case(task, length, depth, seed, tuple(ids), answers, chat, spans)


def _spans(ids: list[int], tokenizer, sentences: list[str]) -> tuple[tuple[int, int], ...]:
    """Token ranges [start, stop) of the answer needles in the prompt (for --diagnose)."""
    text = tokenizer.decode(ids)
    spans = []
    for sentence in sentences:
        at = text.find(sentence)
        if at >= 0:
            spans.append(_token_range(ids, tokenizer, at, at + len(sentence)))
    return tuple(spans)


def _token_range(ids: list[int], tokenizer, lo: int, hi: int) -> tuple[int, int]:
    """[start, stop) of the tokens whose decoded text overlaps characters [lo, hi) of
    decode(ids), by binary search on the decoded length of prefixes."""

    def prefix_len(n: int) -> int:
        return len(tokenizer.decode(ids[:n]))

    def first_reaching(target: int) -> int:
        a, b = 0, len(ids)
        while a < b:
            m = (a + b) // 2
            if prefix_len(m) > target:
                b = m
            else:
                a = m + 1
        return a

    return max(0, first_reaching(lo) - 1), min(len(ids), first_reaching(hi - 1))


def found(value: str, prediction: str) -> bool:
    """The value appears in the prediction as a whole word or number."""
    return re.search(rf"(?<![0-9A-Za-z]){re.escape(value)}(?![0-9A-Za-z])", prediction) is not None


def score(case_answers: tuple[str, ...], prediction: str) -> bool:
    """Exact match: every answer value appears in the prediction."""
    return all(found(value, prediction) for value in case_answers)
