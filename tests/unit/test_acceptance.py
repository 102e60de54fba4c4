from __future__ import annotations

import dataclasses

import pytest

from cache_service.cache.guards import AcceptConfig, accept

DEFAULT = AcceptConfig()
HIGH = 0.97  # above every threshold: only the guards decide


def _reason(a: str, b: str, config: AcceptConfig = DEFAULT, sim: float = HIGH) -> str:
    return accept(a, b, sim, config).reason


def test_below_threshold_misses() -> None:
    d = accept(
        "How do I learn Python?", "How can I learn Python?", DEFAULT.threshold - 0.01, DEFAULT
    )
    assert not d.accepted
    assert d.reason == "below_threshold"


def test_plain_paraphrase_is_served() -> None:
    d = accept("How many legs does a spider have?", "How many legs do spiders have?", HIGH, DEFAULT)
    assert d.accepted
    assert d.reason == "ok"


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Can a 19 year old date a 17 year old?", "Can a 19 year old date a 16 year old?"),
        ("When was Awareness Week in 2013?", "When was Awareness Week in 2012?"),
        ("What is the weather like in March?", "What is the weather like in May?"),
        ("Convert 5 km to miles", "Convert 50 km to miles"),
    ],
)
def test_numbers_and_dates_must_match(a: str, b: str) -> None:
    assert _reason(a, b) == "numbers_differ"


def test_number_words_equal_digits() -> None:
    assert (
        _reason(
            "I have two cats, what should I feed them?", "I have 2 cats, what should I feed them?"
        )
        == "ok"
    )


def test_quoted_strings_must_match() -> None:
    assert (
        _reason('What does "carpe diem" mean?', 'What does "memento mori" mean?') == "quoted_differ"
    )
    assert _reason('What does "carpe diem" mean?', 'What is the meaning of "carpe diem"?') == "ok"


def test_negation_mismatch_refused() -> None:
    assert (
        _reason("Why is my code not compiling?", "Why is my code compiling?") == "negation_mismatch"
    )
    assert _reason(
        "Can I eat eggs without cholesterol worries?", "Can I eat eggs with cholesterol worries?"
    ) == ("negation_mismatch")


def test_negation_spelled_differently_still_matches() -> None:
    assert _reason("Why doesn't my code compile?", "Why does my code not compile?") == "ok"


def test_question_word_mismatch_refused() -> None:
    assert (
        _reason("Why do deer make sounds?", "How do deer make sounds?") == "question_word_differs"
    )
    assert _reason("Where was Cinderella's father?", "Who is Cinderella's father?") == (
        "question_word_differs"
    )


def test_how_and_what_phrasings_are_interchangeable() -> None:
    assert _reason("How do I save my marriage?", "What is the way to save my marriage?") == "ok"


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("cheap flights from Boston to Denver", "cheap flights from Denver to Boston"),
        ("Does Google own YouTube?", "Does YouTube own Google?"),
        (
            "How do employees at Zynga feel about the acquisition of NaturalMotion?",
            "How do employees at NaturalMotion feel about the acquisition of Zynga?",
        ),
    ],
)
def test_role_swap_refused(a: str, b: str) -> None:
    assert _reason(a, b) == "word_order_differs"


def test_moving_a_clause_is_not_a_role_swap() -> None:
    assert _reason("How do I sort a list in Python?", "In Python, how do I sort a list?") == "ok"


def test_heavily_reworded_paraphrase_not_checked_for_order() -> None:
    a = "The cache_dir parameter is used to specify the directory to cache data."
    b = "The parameter cache_dir is employed to designate the directory to store cached data."
    assert _reason(a, b) == "ok"


def test_unmatched_word_cap_is_opt_in() -> None:
    a, b = "What are good books on machine learning?", "Which books teach deep machine learning?"
    strict = dataclasses.replace(DEFAULT, max_unmatched_words=0, check_question_word=False)
    assert _reason(
        "What type of government does Spain have?",
        "What type of government does Colombia have?",
        strict,
    ) == ("content_words_differ")
    assert _reason("Where can I buy cheap shoes?", "Where can I buy cheap shoe?", strict) == "ok"
    assert accept(a, b, HIGH, DEFAULT).reason != "content_words_differ"


def test_short_prompt_band_is_opt_in() -> None:
    cfg = dataclasses.replace(DEFAULT, short_threshold=0.95)
    assert _reason("Python tutorial", "Python tutorials", cfg, sim=0.93) == "short_below_threshold"
    assert _reason("Python tutorial", "Python tutorials", cfg, sim=0.96) == "ok"


def test_guards_can_be_switched_off() -> None:
    off = dataclasses.replace(
        DEFAULT,
        check_numbers=False,
        check_quoted=False,
        check_negation=False,
        check_question_word=False,
        check_word_order=False,
    )
    assert (
        _reason(
            "Can a 19 year old date a 17 year old?", "Can a 19 year old date a 16 year old?", off
        )
        == "ok"
    )
    assert (
        _reason("cheap flights from Boston to Denver", "cheap flights from Denver to Boston", off)
        == "ok"
    )


def test_decision_is_symmetric_for_guards() -> None:
    pairs = [
        ("Why is my code not compiling?", "Why is my code compiling?"),
        ("cheap flights from Boston to Denver", "cheap flights from Denver to Boston"),
        ("How do I sort a list in Python?", "In Python, how do I sort a list?"),
    ]
    for a, b in pairs:
        assert accept(a, b, HIGH, DEFAULT) == accept(b, a, HIGH, DEFAULT)
