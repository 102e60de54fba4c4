"""Scope, exact key and prompt derivation (cache_service/cache/keys.py), called directly."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from cache_service.cache.keys import build_keys

Q = "How do I reset my password?"


def chat(*messages: dict[str, Any], model: str = "gpt-4o-mini", **params: Any) -> dict[str, Any]:
    return {"model": model, "messages": list(messages), **params}


def user(content: Any, **extra: Any) -> dict[str, Any]:
    return {"role": "user", "content": content, **extra}


def base() -> dict[str, Any]:
    return chat(user(Q))


# ------------------------------------------------------------------ scope: what splits it


def keys_of(body: dict[str, Any], tenant: str = "t", **kw: Any) -> Any:
    return build_keys(body, tenant, **kw)


def test_same_request_same_keys() -> None:
    a, b = keys_of(base()), keys_of(base())
    assert a.scope == b.scope
    assert a.exact_key == b.exact_key
    assert a.prompt == Q
    assert a.model == "gpt-4o-mini"
    assert a.tenant == "t"
    assert a.semantic_ok is True


def test_tenant_changes_scope() -> None:
    assert keys_of(base(), "a").scope != keys_of(base(), "b").scope


def test_model_changes_scope() -> None:
    assert keys_of(chat(user(Q), model="gpt-4o")).scope != keys_of(base()).scope


@pytest.mark.parametrize("role", ["system", "developer"])
def test_system_and_developer_messages_change_scope(role: str) -> None:
    with_sys = chat({"role": role, "content": "Answer in French."}, user(Q))
    other_sys = chat({"role": role, "content": "Answer in German."}, user(Q))
    k = keys_of(with_sys)
    assert k.scope != keys_of(base()).scope
    assert k.scope != keys_of(other_sys).scope
    # The system prompt is scope, not prompt.
    assert k.prompt == Q
    assert k.semantic_ok is True


def test_system_role_and_developer_role_are_distinct() -> None:
    sys = chat({"role": "system", "content": "Be brief."}, user(Q))
    dev = chat({"role": "developer", "content": "Be brief."}, user(Q))
    assert keys_of(sys).scope != keys_of(dev).scope


TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]


@pytest.mark.parametrize(
    ("param", "value", "other"),
    [
        ("temperature", 0.0, 1.0),
        ("tools", TOOLS, [{"type": "function", "function": {"name": "other", "parameters": {}}}]),
        ("tool_choice", "required", "none"),
        ("response_format", {"type": "json_object"}, {"type": "text"}),
        ("seed", 1, 2),
        ("max_tokens", 16, 17),
        ("top_p", 0.5, 0.9),
        ("stop", ["\n"], ["END"]),
    ],
)
def test_answer_params_change_scope(param: str, value: Any, other: Any) -> None:
    plain = keys_of(base())
    with_value = keys_of(chat(user(Q), **{param: value}))
    with_other = keys_of(chat(user(Q), **{param: other}))
    assert len({plain.scope, with_value.scope, with_other.scope}) == 3
    # Only the scope moves: the prompt text is the same question.
    assert with_value.prompt == plain.prompt == Q


def test_none_valued_param_is_the_same_as_absent() -> None:
    assert keys_of(chat(user(Q), temperature=None)).scope == keys_of(base()).scope


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("stream", True),
        ("user", "end-user-42"),
        ("stream_options", {"include_usage": True}),
        ("metadata", {"trace": "abc"}),
        ("store", True),
        ("n", 1),
    ],
)
def test_delivery_params_do_not_change_scope_or_key(param: str, value: Any) -> None:
    plain = keys_of(base())
    k = keys_of(chat(user(Q), **{param: value}))
    assert k.scope == plain.scope
    assert k.exact_key == plain.exact_key


def test_earlier_turns_change_scope() -> None:
    history = chat(
        user("I use the mobile app."),
        {"role": "assistant", "content": "OK."},
        user(Q),
    )
    other_history = chat(
        user("I use the desktop app."),
        {"role": "assistant", "content": "OK."},
        user(Q),
    )
    h, o, plain = keys_of(history), keys_of(other_history), keys_of(base())
    assert len({h.scope, o.scope, plain.scope}) == 3
    assert h.prompt == Q
    assert h.semantic_ok is True


def test_api_flavour_changes_scope() -> None:
    openai = keys_of(base(), api="openai")
    anthropic = keys_of(base(), api="anthropic")
    lookup = keys_of(base(), api="lookup")
    assert len({openai.scope, anthropic.scope, lookup.scope}) == 3
    assert len({openai.exact_key, anthropic.exact_key, lookup.exact_key}) == 3


def test_anthropic_top_level_system_changes_scope() -> None:
    body = chat(user(Q), model="claude-3-5-haiku", max_tokens=200)
    none = keys_of(body, api="anthropic")
    brief = keys_of(body, api="anthropic", system="Be brief.")
    verbose = keys_of(body, api="anthropic", system="Be verbose.")
    blocks = keys_of(body, api="anthropic", system=[{"type": "text", "text": "Be brief."}])
    assert len({none.scope, brief.scope, verbose.scope, blocks.scope}) == 4
    assert brief.prompt == Q


def test_anthropic_stop_sequences_change_scope() -> None:
    body = chat(user(Q), model="claude-3-5-haiku", max_tokens=200)
    plain = keys_of(body, api="anthropic")
    stopped = keys_of({**body, "stop_sequences": ["\n"]}, api="anthropic")
    assert stopped.scope != plain.scope


# ------------------------------------------------------------------ exact key vs scope


def test_last_user_text_changes_exact_key_not_scope() -> None:
    a = keys_of(chat(user(Q)))
    b = keys_of(chat(user(Q[:-1] + "!")))  # one character differs
    assert a.scope == b.scope
    assert a.exact_key != b.exact_key
    assert b.prompt == Q[:-1] + "!"


def test_whitespace_difference_changes_exact_key() -> None:
    a = keys_of(chat(user(Q)))
    b = keys_of(chat(user(Q + " ")))
    assert a.scope == b.scope
    assert a.exact_key != b.exact_key


def test_last_user_name_changes_exact_key() -> None:
    a = keys_of(chat(user(Q)))
    b = keys_of(chat(user(Q, name="alice")))
    assert a.scope == b.scope
    assert a.exact_key != b.exact_key


def test_dict_key_order_does_not_matter() -> None:
    a = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "x"}, {"role": "user", "content": Q}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "n", "strict": True}},
        "temperature": 0.2,
    }
    b = {
        "temperature": 0.2,
        "response_format": {"json_schema": {"strict": True, "name": "n"}, "type": "json_schema"},
        "messages": [{"content": "x", "role": "system"}, {"content": Q, "role": "user"}],
        "model": "gpt-4o-mini",
    }
    ka, kb = keys_of(a), keys_of(b)
    assert ka.scope == kb.scope
    assert ka.exact_key == kb.exact_key


def test_build_keys_does_not_mutate_body() -> None:
    body = chat({"role": "system", "content": "s"}, user(Q), temperature=0.5)
    snapshot = copy.deepcopy(body)
    keys_of(body)
    assert body == snapshot


# ------------------------------------------------------------------ prompt and semantic_ok


def test_list_of_text_parts_is_joined_and_semantic() -> None:
    parts = [{"type": "text", "text": "How do I reset"}, {"type": "text", "text": "my password?"}]
    k = keys_of(chat(user(parts)))
    assert k.prompt == "How do I reset\nmy password?"
    assert k.semantic_ok is True


def test_input_text_parts_count_as_text() -> None:
    k = keys_of(chat(user([{"type": "input_text", "text": Q}])))
    assert k.prompt == Q
    assert k.semantic_ok is True


def test_text_parts_and_plain_string_have_different_exact_keys() -> None:
    # Same text, different wire content: the exact key is byte-for-byte on the content.
    s = keys_of(chat(user(Q)))
    p = keys_of(chat(user([{"type": "text", "text": Q}])))
    assert s.prompt == p.prompt
    assert s.scope == p.scope
    assert s.exact_key != p.exact_key


def test_image_part_disables_semantic_matching() -> None:
    parts: list[dict[str, Any]] = [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
    ]
    other_image = copy.deepcopy(parts)
    other_image[1]["image_url"]["url"] = "https://example.com/b.png"
    k, o = keys_of(chat(user(parts))), keys_of(chat(user(other_image)))
    assert k.semantic_ok is False
    assert k.prompt == "What is in this picture?"
    # Exact matching still tells the two images apart.
    assert k.scope == o.scope
    assert k.exact_key != o.exact_key


@pytest.mark.parametrize(
    "last",
    [
        {"role": "assistant", "content": "The answer is"},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
    ],
)
def test_conversation_not_ending_with_user_is_exact_only(last: dict[str, Any]) -> None:
    body = chat(user(Q), last)
    k = keys_of(body)
    assert k.semantic_ok is False
    assert k.prompt == ""
    assert isinstance(k.exact_key, str)
    assert len(k.exact_key) == 64
    # Deterministic, and the trailing message is part of what is matched.
    assert keys_of(copy.deepcopy(body)).exact_key == k.exact_key
    changed = chat(user(Q), {**last, "content": "something else"})
    assert keys_of(changed).exact_key != k.exact_key
    # Not the same entry as the bare question.
    assert k.exact_key != keys_of(base()).exact_key


def test_prompt_over_max_semantic_chars_is_exact_only() -> None:
    text = "word " * 40  # 200 characters
    assert len(text) == 200
    assert keys_of(chat(user(text)), max_semantic_chars=200).semantic_ok is True
    over = keys_of(chat(user(text)), max_semantic_chars=199)
    assert over.semantic_ok is False
    assert over.prompt == text
    assert keys_of(chat(user(text))).semantic_ok is True  # no limit given


@pytest.mark.parametrize("content", ["", "   ", "\n\t ", [], [{"type": "text", "text": "  "}]])
def test_empty_or_blank_prompt_is_not_semantic(content: Any) -> None:
    assert keys_of(chat(user(content))).semantic_ok is False


def test_none_content_is_not_semantic() -> None:
    assert keys_of(chat(user(None))).semantic_ok is False
