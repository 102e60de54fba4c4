"""What to reserve for a request before its answer (and real usage) is known."""

from __future__ import annotations


def estimate_request_tokens(
    prompt_tokens: int, max_tokens: int | None, default_completion: int = 256
) -> int:
    """Tokens to reserve before the answer is known: the prompt plus the completion cap.

    With ``max_tokens`` given the estimate is an upper bound, so the tpm and tpd guarantees
    hold for actual tokens; without it ``default_completion`` is a guess and long answers
    overrun.
    """
    completion = default_completion if max_tokens is None else max_tokens
    return max(0, prompt_tokens) + max(0, completion)
