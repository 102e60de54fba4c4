"""Whether a nearest stored prompt may answer a new one: similarity plus lexical guards.

Sentence embeddings put "flights from Boston to Denver" next to "flights from Denver to
Boston" and "a 19 year old and a 17 year old" next to "... a 16 year old": they summarise
topic, not the details an answer depends on. Serving a wrong answer is worse than a miss, so a
candidate above the similarity threshold must also pass guards that look at exactly those
details: numbers, quoted strings, negation, specific words present on one side only, and word
order that changes who does what to whom.

Everything here is pure and cheap (tens of µs, no model call), so the serving path can run it
on every candidate.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from dataclasses import dataclass

__all__ = ["AcceptConfig", "Comparison", "Decision", "accept", "compare", "decide"]


@dataclass(frozen=True)
class AcceptConfig:
    # Cosine of normalised MiniLM embeddings a candidate must reach before any guard runs.
    threshold: float = 0.92
    # False: the threshold alone decides here, no guard runs (a model verifier judging every
    # candidate next may make the guards redundant; whether it does is measured, not assumed).
    guards: bool = True
    # Prompts with at most this many content words carry little signal per word, so one
    # changed word moves the cosine less than it moves the meaning: demand more there.
    # Measured: on QQP it refused more duplicates than non-duplicates, so off by default.
    short_max_content_words: int = 3
    short_threshold: float = 0.0
    check_numbers: bool = True
    check_quoted: bool = True
    check_negation: bool = True
    # "Why do deer make sounds?" and "How do deer make sounds?" want different answers; "how"
    # and "what" are left out because "How do I X" / "What is the way to X" are paraphrases.
    check_question_word: bool = True
    # Content words present on one side only (after light stemming). A substitution
    # ("Spain" -> "Colombia") or an added qualifier ("cartoon face") changes what is asked.
    # Measured: QQP duplicates and the GPTCache paraphrases reword freely, so any cap here cost
    # far more right hits than wrong ones (cap 1: mock recall 0.39 -> 0.03); None = no cap.
    max_unmatched_words: int | None = None
    # Same content words whose order changed in a way that breaks their local context
    # ("from A to B" -> "from B to A"); moving a whole clause keeps most bigrams intact.
    check_word_order: bool = True
    max_broken_bigrams: int = 2
    # Heavy rewording breaks bigrams without any role swap, so only near-identical word bags
    # (at most this many content words on one side only) are checked for order.
    order_max_unmatched: int = 4


@dataclass(frozen=True)
class Decision:
    accepted: bool
    reason: str  # "ok", or the first guard that refused


_TOKEN = re.compile(r"[A-Za-z0-9]+(?:['’.][A-Za-z0-9]+)*")
_QUOTED = re.compile(r"\"([^\"]+)\"|“([^”]+)”|``\s*(.+?)\s*''|(?<![A-Za-z])'([^']+)'(?![A-Za-z])")
_NEGATIONS = frozenset(
    {"not", "no", "never", "none", "nobody", "nothing", "nowhere", "neither", "nor", "without",
     "cannot", "cant", "dont", "doesnt", "didnt", "isnt", "arent", "wasnt", "werent", "wont",
     "wouldnt", "shouldnt", "couldnt", "havent", "hasnt", "hadnt", "aint"}
)  # fmt: skip
_NUMBER_WORDS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12",
    "twenty": "20", "thirty": "30", "forty": "40", "fifty": "50", "hundred": "100",
    "thousand": "1000", "million": "1000000", "billion": "1000000000",
    "first": "1", "second": "2", "third": "3", "half": "0.5", "once": "1", "twice": "2",
}  # fmt: skip


def _wordset(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Function words, question scaffolding and politeness: they differ freely between
# paraphrases ("How do I ..." / "What is the best way to ...") without changing the answer.
_STOPWORDS = _wordset(
    """
    a an the and or but if then else so than that this these those there here of in on at
    to for from by with about into onto over under between through during before after
    above below up down out off again further once is am are was were be been being have
    has had having do does did doing done will would shall should can could may might must
    i me my mine myself we us our ours you your yours yourself he him his she her hers it
    its itself they them their theirs what which who whom whose when where why how whether
    all any both each few more most other some such only own same too very just also really
    actually even still s t ll ve re d m o y get gets got getting make makes made making go
    going way ways best good better great top some someone something anyone anything
    everyone everything thing things people person one ones use used using know tell please
    explain like want need possible able there's it's what's i'm don't can't i've let lets
    kind type types much many lot lots via per etc else ever
    """
)
_MONTHS_DAYS = _wordset(
    """
    january february march april may june july august september october november december
    monday tuesday wednesday thursday friday saturday sunday
    """
)


def _words(text: str) -> list[str]:
    out = []
    for tok in _TOKEN.findall(text):
        w = tok.lower().replace("’", "'")
        if w.endswith("'s"):
            w = w[:-2]
        out.append(w.replace("'", "").replace(".", ""))
    return out


def _stem(w: str) -> str:
    # Crude suffix stripping plus a 6-letter prefix: enough that "studying"/"study",
    # "shoes"/"shoe" or "libraries"/"library" match; exact morphology is not needed.
    if w.endswith("ies") and len(w) > 4:
        w = w[:-3] + "y"
    else:
        for suf in ("ing", "ed", "ly", "s"):
            if w.endswith(suf) and not w.endswith("ss") and len(w) - len(suf) >= 3:
                w = w[: -len(suf)]
                break
    return w[:6]


def _numbers(words: list[str]) -> Counter[str]:
    nums: Counter[str] = Counter()
    for w in words:
        if any(c.isdigit() for c in w):
            nums[w.lstrip("0") or "0"] += 1
        elif w in _NUMBER_WORDS and w not in {"one", "second", "once"}:
            # "one" and "second" are far more often pronoun / ordinal-free uses.
            nums[_NUMBER_WORDS[w]] += 1
        elif w in _MONTHS_DAYS:
            nums[w] += 1
    return nums


def _quoted(text: str) -> frozenset[str]:
    return frozenset(
        " ".join(_words(next(g for g in m.groups() if g))) for m in _QUOTED.finditer(text)
    )


def _negated(words: list[str]) -> bool:
    return sum(1 for w in words if w in _NEGATIONS or (w.endswith("nt") and w[:-2] in {
        "do", "does", "did", "is", "are", "was", "were", "wo", "would", "should", "could",
        "have", "has", "had", "ca"})) % 2 == 1  # fmt: skip


_QUESTION_WORDS = frozenset({"why", "where", "who", "whom", "whose", "when", "which"})


def _wh(words: list[str]) -> frozenset[str]:
    # Only the leading question word decides what kind of answer is wanted; a "which" or
    # "when" deep inside a clause ("the year when ...") does not.
    return frozenset(w for w in words[:3] if w in _QUESTION_WORDS)


@dataclass(frozen=True)
class Comparison:
    """The lexical differences between two prompts that the guards act on."""

    content_a: int
    content_b: int
    numbers_differ: bool
    quoted_differ: bool
    negation_differs: bool
    question_word_differs: bool
    unmatched_a: tuple[str, ...]
    unmatched_b: tuple[str, ...]
    broken_bigrams: int


def _content(words: list[str]) -> list[str]:
    return [_stem(w) for w in words if w not in _STOPWORDS and not w.isdigit()]


def _bigrams(seq: list[str]) -> Counter[tuple[str, str]]:
    return Counter(itertools.pairwise(seq))


def compare(a: str, b: str) -> Comparison:
    wa, wb = _words(a), _words(b)
    ca, cb = _content(wa), _content(wb)
    sa, sb = set(ca), set(cb)
    # Bigram breakage over all words (stopwords included: "from"/"to" carry the roles),
    # counted only where both words of the bigram occur on the other side, so plain word
    # substitutions do not count as re-ordering.
    ta = [_stem(w) for w in wa]
    tb = [_stem(w) for w in wb]
    set_tb, set_ta = set(tb), set(ta)
    bg_a, bg_b = _bigrams(ta), _bigrams(tb)
    broken = 0
    for (x, y), _n in bg_a.items():
        if (x in sa or y in sa) and x in set_tb and y in set_tb and bg_b[(x, y)] == 0:
            broken += 1
    broken_b = 0
    for (x, y), _n in bg_b.items():
        if (x in sb or y in sb) and x in set_ta and y in set_ta and bg_a[(x, y)] == 0:
            broken_b += 1
    return Comparison(
        content_a=len(ca),
        content_b=len(cb),
        numbers_differ=_numbers(wa) != _numbers(wb),
        quoted_differ=_quoted(a) != _quoted(b),
        negation_differs=_negated(wa) != _negated(wb),
        question_word_differs=_wh(wa) != _wh(wb),
        unmatched_a=tuple(sorted(sa - sb)),
        unmatched_b=tuple(sorted(sb - sa)),
        broken_bigrams=broken + broken_b,
    )


def accept(query: str, candidate: str, similarity: float, config: AcceptConfig) -> Decision:
    """Decide whether ``candidate``'s stored answer may be served for ``query``."""
    if similarity < config.threshold:
        return Decision(False, "below_threshold")
    if not config.guards:
        return Decision(True, "ok")  # skip the comparison's cost too
    return decide(compare(query, candidate), similarity, config)


def decide(c: Comparison, similarity: float, config: AcceptConfig) -> Decision:
    """The guards applied to an already computed comparison (lets research reuse them)."""
    if similarity < config.threshold:
        return Decision(False, "below_threshold")
    if not config.guards:
        return Decision(True, "ok")
    if (
        min(c.content_a, c.content_b) <= config.short_max_content_words
        and similarity < config.short_threshold
    ):
        return Decision(False, "short_below_threshold")
    if config.check_numbers and c.numbers_differ:
        return Decision(False, "numbers_differ")
    if config.check_quoted and c.quoted_differ:
        return Decision(False, "quoted_differ")
    if config.check_negation and c.negation_differs:
        return Decision(False, "negation_mismatch")
    if config.check_question_word and c.question_word_differs:
        return Decision(False, "question_word_differs")
    if (
        config.max_unmatched_words is not None
        and len(c.unmatched_a) + len(c.unmatched_b) > config.max_unmatched_words
    ):
        return Decision(False, "content_words_differ")
    if (
        config.check_word_order
        and c.broken_bigrams > config.max_broken_bigrams
        and len(c.unmatched_a) + len(c.unmatched_b) <= config.order_max_unmatched
    ):
        return Decision(False, "word_order_differs")
    return Decision(True, "ok")
