"""Hard pairs made by rule from real prompts, for training the verifier.

A bi-encoder cannot see what these change: one word that flips the answer (a number, am/pm,
a month, an antonym, a negation, two entities or roles swapped) scores 0.95-0.99 cosine, and
harmless rewordings ("how do I" / "how can I", "what" / "which", a clause moved) trip the
lexical guards. Each rule takes a text and returns a changed text or None when it does not
apply; `negative` rules change the answer, `positive` rules keep it. Applied to texts of the
training split only (see `splits.py`); the evaluation sets never pass through here.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence

from benchmarks.quality.datasets import Pair

Rule = Callable[[str, random.Random], str | None]

_ANTONYMS = [
    ("ascending", "descending"), ("before", "after"), ("import", "export"),
    ("increase", "decrease"), ("buy", "sell"), ("buying", "selling"), ("min", "max"),
    ("minimum", "maximum"), ("first", "last"), ("upload", "download"), ("enable", "disable"),
    ("encrypt", "decrypt"), ("open", "close"), ("start", "stop"), ("input", "output"),
    ("left", "right"), ("up", "down"), ("north", "south"), ("east", "west"), ("hot", "cold"),
    ("cheap", "expensive"), ("best", "worst"), ("more", "less"), ("longest", "shortest"),
    ("largest", "smallest"), ("biggest", "smallest"), ("high", "low"), ("higher", "lower"),
    ("positive", "negative"), ("add", "remove"), ("push", "pull"), ("win", "lose"),
    ("male", "female"), ("true", "false"), ("old", "new"), ("fast", "slow"),
    ("faster", "slower"), ("inside", "outside"), ("above", "below"), ("send", "receive"),
    ("server", "client"), ("read", "write"), ("lowercase", "uppercase"),
    ("compress", "decompress"), ("serialize", "deserialize"), ("horizontal", "vertical"),
    ("internal", "external"), ("public", "private"), ("sync", "async"), ("with", "without"),
    ("always", "never"), ("legal", "illegal"), ("possible", "impossible"),
    ("advantages", "disadvantages"), ("pros", "cons"), ("rich", "poor"), ("men", "women"),
    ("boys", "girls"), ("husband", "wife"), ("summer", "winter"), ("morning", "evening"),
    ("yesterday", "tomorrow"), ("past", "future"), ("good", "bad"), ("easy", "hard"),
    ("love", "hate"), ("accept", "reject"), ("include", "exclude"), ("success", "failure"),
    ("early", "late"), ("young", "old"), ("strong", "weak"), ("safe", "dangerous"),
    ("heavy", "light"), ("long", "short"), ("big", "small"), ("large", "small"),
    ("happy", "sad"), ("day", "night"), ("top", "bottom"), ("front", "back"),
    ("increasing", "decreasing"), ("lend", "borrow"), ("teacher", "student"),
    ("employer", "employee"), ("parent", "child"), ("buyer", "seller"), ("win", "loss"),
]  # fmt: skip
_OPPOSITE = {a: b for a, b in _ANTONYMS} | {b: a for a, b in _ANTONYMS}
_UNITS = [
    ("km", "miles"), ("kilometers", "miles"), ("kg", "pounds"), ("celsius", "fahrenheit"),
    ("dollars", "euros"), ("usd", "eur"), ("gb", "mb"), ("hours", "minutes"), ("days", "weeks"),
    ("months", "years"), ("meters", "feet"), ("liters", "gallons"), ("seconds", "milliseconds"),
    ("inches", "centimeters"), ("rupees", "dollars"), ("bytes", "bits"),
]  # fmt: skip
_UNIT = {a: b for a, b in _UNITS} | {b: a for a, b in _UNITS}
_MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august",
           "september", "october", "november", "december"]  # fmt: skip
_DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
_QWORDS = ["what", "why", "how", "when", "where", "who"]
_AUX = re.compile(r"\b(is|are|was|were|can|could|do|does|did|should|would|will|has|have)\b", re.I)
_NEG = re.compile(r"\b(not|never|no|don't|doesn't|didn't|can't|cannot|isn't|aren't|won't)\b", re.I)
_NUM = re.compile(r"\b\d+(?:\.\d+)?\b")
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")


def _replace_word(text: str, table: dict[str, str], rng: random.Random) -> str | None:
    hits = [m for m in _WORD.finditer(text) if m.group(0).lower() in table]
    if not hits:
        return None
    m = rng.choice(hits)
    new = table[m.group(0).lower()]
    if m.group(0)[0].isupper():
        new = new.capitalize()
    return text[: m.start()] + new + text[m.end() :]


def antonym(text: str, rng: random.Random) -> str | None:
    return _replace_word(text, _OPPOSITE, rng)


def unit(text: str, rng: random.Random) -> str | None:
    return _replace_word(text, _UNIT, rng)


def number(text: str, rng: random.Random) -> str | None:
    hits = list(_NUM.finditer(text))
    if not hits:
        return None
    m = rng.choice(hits)
    old = float(m.group(0))
    new = old
    while new == old:
        new = rng.choice([old + 1, old - 1, old * 2, old + 10, old * 10, rng.randint(0, 100)])
    shown = f"{new:g}" if "." in m.group(0) else str(int(new))
    return text[: m.start()] + shown + text[m.end() :]


def am_pm(text: str, rng: random.Random) -> str | None:
    swapped = re.sub(
        r"\b(\d{1,2}(?::\d\d)?\s*)(am|pm|a\.m\.|p\.m\.)",
        lambda m: (
            m.group(1)
            + {"am": "pm", "pm": "am", "a.m.": "p.m.", "p.m.": "a.m."}[m.group(2).lower()]
        ),
        text,
        count=1,
        flags=re.I,
    )
    return swapped if swapped != text else None


def calendar(text: str, rng: random.Random) -> str | None:
    for names in (_MONTHS, _DAYS):
        table = {n: rng.choice([x for x in names if x != n]) for n in names}
        out = _replace_word(text, table, rng)
        if out is not None:
            return out
    years = list(re.finditer(r"\b(19|20)\d\d\b", text))
    if years:
        m = rng.choice(years)
        new = int(m.group(0)) + rng.choice([-10, -5, -2, -1, 1, 2, 5])
        return text[: m.start()] + str(new) + text[m.end() :]
    return None


def negation(text: str, rng: random.Random) -> str | None:
    m = _NEG.search(text)
    if m:  # remove it
        word = m.group(0).lower()
        back = {"don't": "do", "doesn't": "does", "didn't": "did", "can't": "can",
                "cannot": "can", "isn't": "is", "aren't": "are", "won't": "will",
                "never": "always", "no": "a", "not": ""}[word]  # fmt: skip
        return re.sub(r"\s+", " ", text[: m.start()] + back + text[m.end() :]).strip()
    m = _AUX.search(text)
    if m is None:
        return None
    return text[: m.end()] + " not" + text[m.end() :]


def _swap(text: str, a: tuple[int, int], b: tuple[int, int]) -> str:
    """`text` with the spans a and b (a before b) exchanged."""
    return text[: a[0]] + text[b[0] : b[1]] + text[a[1] : b[0]] + text[a[0] : a[1]] + text[b[1] :]


def swap_roles(text: str, rng: random.Random) -> str | None:
    """from A to B -> from B to A; A than B -> B than A; A vs B -> B vs A; A to B (converting)."""
    patterns = [
        r"\bfrom (\w+(?: \w+)?) to (\w+(?: \w+)?)",
        r"(\w+) (?:better|worse|faster|slower|bigger|smaller|more \w+|less \w+) than (\w+)",
        r"\b(\w+) (?:vs\.?|versus) (\w+)",
        r"\bconvert (\w+) (?:to|into) (\w+)",
        r"\b(\w+) to (\w+) translation",
    ]
    for pat in patterns:
        m = re.search(pat, text, re.I)
        if m and m.group(1).lower() != m.group(2).lower():
            return _swap(text, m.span(1), m.span(2))
    return None


def question_word(text: str, rng: random.Random) -> str | None:
    m = re.match(r"\s*(what|why|how|when|where|who)\b", text, re.I)
    if m is None:
        return None
    new = rng.choice([w for w in _QWORDS if w != m.group(1).lower()])
    if m.group(1)[0].isupper():
        new = new.capitalize()
    return text[: m.start(1)] + new + text[m.end(1) :]


def entity(pool: Sequence[str]) -> Rule:
    """Swap one capitalised word (not the first) for another from `pool` (names, places)."""

    def rule(text: str, rng: random.Random) -> str | None:
        hits = [m for m in _WORD.finditer(text) if m.start() > 0 and m.group(0)[0].isupper()]
        hits = [m for m in hits if m.group(0).lower() not in {"i", "i'm", "i've"}]
        if not hits or not pool:
            return None
        m = rng.choice(hits)
        new = rng.choice(pool)
        if new.lower() == m.group(0).lower():
            return None
        return text[: m.start()] + new + text[m.end() :]

    return rule


# --- positives: the answer stays the same --------------------------------------------------

_REWORDINGS = [
    (r"\bhow do i\b", ["how can I", "how should I", "what is the way to"]),
    (r"\bhow can i\b", ["how do I", "how would I", "what's the best way to"]),
    (r"\bhow to\b", ["how do I", "how can I", "how can one"]),
    (r"\bwhat is\b", ["what's", "what exactly is", "can you tell me what is"]),
    (r"\bwhat are\b", ["which are", "what exactly are"]),
    (r"\bwhich is\b", ["what is"]),
    (r"\bwhat (\w+) should\b", [r"which \1 should"]),
    (r"\bdo not\b", ["don't"]),
    (r"\bdon't\b", ["do not"]),
    (r"\bcannot\b", ["can't", "can not"]),
    (r"\bit is\b", ["it's"]),
    (r"\bis it possible to\b", ["can I", "can one"]),
    (r"\bbest way\b", ["easiest way", "right way"]),
    (r"\bexplain\b", ["describe", "tell me about"]),
]  # fmt: skip
_PREFIXES = ["Please tell me: ", "Quick question: ", "Can you tell me ", "I'd like to know ",
             "Hey, ", "I want to know "]  # fmt: skip


def reword(text: str, rng: random.Random) -> str | None:
    options = [(p, r) for p, r in _REWORDINGS if re.search(p, text, re.I)]
    if not options:
        return None
    pat, subs = rng.choice(options)
    return re.sub(pat, rng.choice(subs), text, count=1, flags=re.I)


def surface_form(text: str, rng: random.Random) -> str | None:
    choice = rng.randrange(4)
    if choice == 0:
        return text.lower().rstrip("?.! ")
    if choice == 1:
        return rng.choice(_PREFIXES) + text[0].lower() + text[1:]
    if choice == 2:
        return text.rstrip("?.! ") + ("?" if text.rstrip().endswith("?") else "") + " Thanks!"
    return re.sub(r"\s+", " ", text.replace(",", "")).strip()


def move_clause(text: str, rng: random.Random) -> str | None:
    """'how do I X in Y?' -> 'in Y, how do I X?' (a leading or trailing phrase moved)."""
    m = re.match(r"^(.*\w)\s+(in|on|for|with|using) ([\w .+#-]{2,30}?)([?.!]?)$", text.strip())
    if m is None or len(m.group(1).split()) < 3:
        return None
    head = m.group(1)
    return f"{m.group(2).capitalize()} {m.group(3)}, {head[0].lower()}{head[1:]}{m.group(4)}"


def swap_symmetric(text: str, rng: random.Random) -> str | None:
    """'between A and B' / 'A or B' / 'A and B' are symmetric: swapping keeps the answer."""
    m = re.search(r"\b(?:between )?(\w+) (and|or) (\w+)\b", text)
    if m is None or m.group(1).lower() in {"and", "or"} or m.group(1) == m.group(3):
        return None
    return _swap(text, m.span(1), m.span(3))


NEGATIVE: dict[str, Rule] = {
    "antonym": antonym,
    "unit": unit,
    "number": number,
    "am_pm": am_pm,
    "calendar": calendar,
    "negation": negation,
    "swap_roles": swap_roles,
    "question_word": question_word,
}
POSITIVE: dict[str, Rule] = {
    "reword": reword,
    "surface": surface_form,
    "move_clause": move_clause,
    "swap_symmetric": swap_symmetric,
}


def entity_pool(texts: Sequence[str]) -> list[str]:
    """Capitalised words seen mid-sentence at least 3 times: names, places, products."""
    counts: dict[str, int] = {}
    for t in texts:
        for m in _WORD.finditer(t):
            w = m.group(0)
            if m.start() > 0 and w[0].isupper() and len(w) > 2 and not w.isupper():
                counts[w] = counts.get(w, 0) + 1
    return sorted(w for w, c in counts.items() if c >= 3)


def generate(sources: Sequence[Pair], rng: random.Random, per_rule: int) -> list[tuple[Pair, str]]:
    """Up to `per_rule` pairs per rule: (text, rule(paraphrase of it)) from positive source
    pairs, so the model meets the edit on top of a real paraphrase, and (text, rule(text))
    for half of them. Returns (pair, rule name)."""
    positives = [p for p in sources if p.label == 1]
    texts = [t for p in sources for t in (p.text_a, p.text_b)]
    rules: list[tuple[str, Rule, int]] = [(n, r, 0) for n, r in NEGATIVE.items()]
    rules.append(("entity", entity(entity_pool(texts)), 0))
    rules += [(n, r, 1) for n, r in POSITIVE.items()]
    out: list[tuple[Pair, str]] = []
    for name, rule, label in rules:
        order = list(range(len(positives)))
        rng.shuffle(order)
        made = 0
        for i in order:
            if made >= per_rule:
                break
            p = positives[i]
            first, base = p.text_a, p.text_b if made % 2 == 0 else p.text_a
            if name == "am_pm" and _NUM.search(base) is None:
                # Few prompts name a time: give both sides the same one, then flip it.
                when = f" at {rng.randint(1, 12)}{rng.choice([' ', ''])}{rng.choice(['am', 'pm'])}"
                first = first.rstrip("?.! ") + when + "?"
                base = base.rstrip("?.! ") + when + "?"
            changed = rule(base, rng)
            if changed is None or changed.strip().lower() == base.strip().lower():
                continue
            out.append((Pair(first, changed, label), name))
            made += 1
    return out
