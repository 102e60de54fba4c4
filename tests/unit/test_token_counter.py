"""The token counter behind quota estimates counts real tokens: the bundled tokenizer file is
configured for the embedder (padding to 128, truncation), which counting must not inherit."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cache_service.backends.embedder import load_token_counter


@pytest.fixture(scope="module")
def count() -> Callable[[str], int]:
    return load_token_counter()


def test_short_prompt_counts_its_own_tokens(count: Callable[[str], int]) -> None:
    assert count("hello world") == 2
    assert count("") == 0
    assert count("hello world hello world") == 2 * count("hello world")


def test_long_text_is_not_capped_at_the_model_window(count: Callable[[str], int]) -> None:
    # One word piece per word: 1000 words are 1000 tokens, past both the 128 the file pads
    # and truncates to and MiniLM's 256/512 windows.
    assert count("word " * 1000) == 1000
    assert count("word " * 1000 + "and more") == 1002


def test_a_long_prompt_counts_the_same_in_slices(count: Callable[[str], int]) -> None:
    # Counted in 64 KiB slices cut at spaces: the total matches word by word.
    words = ["alpha", "beta,", "gamma!", "delta-epsilon", "zeta"]
    text = " ".join(words[i % len(words)] for i in range(60_000))
    assert len(text) > 5 * 64 * 1024
    assert count(text) == 9 * 60_000 // 5  # alpha 1, beta , 2, gamma ! 2, delta - epsilon 3, zeta 1
