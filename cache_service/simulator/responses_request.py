"""Validation of a `POST /v1/responses` body, in OpenAI's wording (message, param and code).

The input is folded into a chat-style message list (instructions first, as a system message), so
the answer comes from the same machinery as a chat completion: `input="hi"` with
`instructions="Be brief."` gets the answer chat gives `[system: Be brief., user: hi]`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cache_service.simulator.answers import text_of
from cache_service.simulator.errors import BadRequest, is_int

MIN_OUTPUT_TOKENS = 16
_ROLES = ("user", "assistant", "system", "developer")
_INPUT_PARTS = ("input_text", "input_image", "input_file", "input_audio")
_OUTPUT_PARTS = ("output_text", "refusal")
_ITEM_TYPES = ("message", "function_call", "function_call_output")
_FORMATS = ("text", "json_object", "json_schema")
_VERBOSITY = ("low", "medium", "high")
_TRUNCATION = ("auto", "disabled")
_METADATA_MAX_PAIRS, _METADATA_MAX_KEY, _METADATA_MAX_VALUE = 16, 64, 512


@dataclass(frozen=True, slots=True)
class ResponsesRequest:
    model: str
    instructions: str | None
    messages: list[dict[str, Any]]
    """instructions and input as chat messages: what the answer is a function of."""
    max_output_tokens: int | None
    temperature: float
    top_p: float
    stream: bool
    obfuscate: bool
    tools: list[dict[str, Any]]
    """As echoed in the response (function tools with their defaults filled in)."""
    tool_choice: Any
    tool_mode: str | None
    """'required', a forced function name, or None to answer with a message."""
    text: dict[str, Any]
    metadata: dict[str, str]
    store: bool
    previous_response_id: str | None
    parallel_tool_calls: bool
    truncation: str
    user: str | None
    prompt_cache_key: str | None
    safety_identifier: str | None

    @property
    def function_tools(self) -> list[dict[str, Any]]:
        return [t for t in self.tools if t["type"] == "function"]


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _invalid_type(param: str, expected: str, value: Any) -> BadRequest:
    message = (
        f"Invalid type for '{param}': expected {expected}, but got {_json_type(value)} instead."
    )
    return BadRequest(message, param, "invalid_type")


def _invalid_value(param: str, value: Any, supported: tuple[str, ...]) -> BadRequest:
    quoted = [f"'{s}'" for s in supported]
    listed = ", ".join(quoted[:-1]) + f" and {quoted[-1]}" if len(quoted) > 1 else quoted[0]
    return BadRequest(
        f"Invalid value: '{value}'. Supported values are: {listed}.", param, "invalid_value"
    )


def _missing(param: str) -> BadRequest:
    return BadRequest(
        f"Missing required parameter: '{param}'.", param, "missing_required_parameter"
    )


def _typed(body: Mapping[str, Any], key: str, check: Callable[[Any], bool], expected: str) -> Any:
    value = body.get(key)
    if value is not None and not check(value):
        raise _invalid_type(key, expected, value)
    return value


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _bounded(body: Mapping[str, Any], key: str, high: float, default: float) -> float:
    value = _typed(body, key, _is_number, "a decimal")
    if value is None:
        return default
    if value < 0:
        raise BadRequest(
            f"Invalid '{key}': decimal below minimum value. Expected a value >= 0, "
            f"but got {value} instead.",
            key,
            "decimal_below_min_value",
        )
    if value > high:
        raise BadRequest(
            f"Invalid '{key}': decimal above maximum value. Expected a value <= {high:g}, "
            f"but got {value} instead.",
            key,
            "decimal_above_max_value",
        )
    return float(value)


# ---------------------------------------------------------------------------------------------
# input


def _content(content: Any, role: str, param: str) -> Any:
    """A message's content, with text parts in chat's shape so the digest matches chat's."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _invalid_type(param, "a string or an array of content parts", content)
    allowed = _OUTPUT_PARTS if role == "assistant" else _INPUT_PARTS
    parts: list[Any] = []
    for j, part in enumerate(content):
        where = f"{param}[{j}]"
        if not isinstance(part, dict):
            raise _invalid_type(where, "an object", part)
        kind = part.get("type")
        if kind not in allowed:
            raise _invalid_value(f"{where}.type", kind, allowed)
        key = "refusal" if kind == "refusal" else "text"
        if kind in ("input_text", "output_text", "refusal"):
            if not isinstance(part.get(key), str):
                raise _invalid_type(f"{where}.{key}", "a string", part.get(key))
            parts.append({"type": "text", "text": part[key]})
        else:
            parts.append(part)
    return parts


def _input_item(item: Any, param: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise _invalid_type(param, "an input item object", item)
    kind = item.get("type", "message")
    if kind not in _ITEM_TYPES:
        raise _invalid_value(f"{param}.type", kind, _ITEM_TYPES)
    if kind == "message":
        role = item.get("role")
        if role is None:
            raise _missing(f"{param}.role")
        if role not in _ROLES:
            raise _invalid_value(f"{param}.role", role, _ROLES)
        if "content" not in item:
            raise _missing(f"{param}.content")
        return {"role": role, "content": _content(item["content"], role, f"{param}.content")}
    for key in ("call_id", "name", "arguments") if kind == "function_call" else ("call_id",):
        if key not in item:
            raise _missing(f"{param}.{key}")
        if not isinstance(item[key], str):
            raise _invalid_type(f"{param}.{key}", "a string", item[key])
    if kind == "function_call":
        function = {"name": item["name"], "arguments": item["arguments"]}
        call = {"id": item["call_id"], "type": "function", "function": function}
        return {"role": "assistant", "content": None, "tool_calls": [call]}
    output = item.get("output")
    if not isinstance(output, str | list):
        raise _invalid_type(f"{param}.output", "a string or an array", output)
    return {"role": "tool", "tool_call_id": item["call_id"], "content": output}


def _input_messages(value: Any) -> list[dict[str, Any]]:
    if value is None:
        raise _missing("input")
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise _invalid_type("input", "a string or an array of input items", value)
    if not value:
        raise BadRequest(
            "Invalid 'input': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            "input",
            "empty_array",
        )
    return [_input_item(item, f"input[{i}]") for i, item in enumerate(value)]


# ---------------------------------------------------------------------------------------------
# tools, text, metadata


def _tools(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    tools = _typed(body, "tools", lambda v: isinstance(v, list), "an array") or []
    echoed: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        param = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise _invalid_type(param, "an object", tool)
        if not isinstance(tool.get("type"), str):
            raise _missing(f"{param}.type")
        if tool["type"] != "function":
            echoed.append(tool)  # a hosted tool: accepted, never called
            continue
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            raise _missing(f"{param}.name")
        if tool.get("parameters") is not None and not isinstance(tool["parameters"], dict):
            raise _invalid_type(f"{param}.parameters", "an object", tool["parameters"])
        echoed.append({"description": None, "parameters": None, "strict": True, **tool})
    return echoed


def _tool_mode(choice: Any, tools: list[dict[str, Any]]) -> str | None:
    names = [t["name"] for t in tools if t["type"] == "function"]
    if choice is None or choice in ("auto", "none"):
        return None
    if choice == "required":
        if not tools:
            raise BadRequest(
                "Tool choice 'required' must be specified with 'tools' parameter.", "tool_choice"
            )
        return "required" if names else None
    if isinstance(choice, dict) and isinstance(choice.get("type"), str):
        if choice["type"] != "function":
            return None  # a hosted tool or an allowed-tools list: answered with a message
        if choice.get("name") not in names:
            raise BadRequest(
                f"Tool choice '{choice.get('name')}' not found in 'tools' parameter.",
                "tool_choice",
            )
        name: str = choice["name"]
        return name
    raise _invalid_value("tool_choice", choice, ("none", "auto", "required"))


def _text(body: Mapping[str, Any], messages: list[dict[str, Any]]) -> dict[str, Any]:
    text = _typed(body, "text", lambda v: isinstance(v, dict), "an object") or {}
    fmt = text.get("format")
    if fmt is None:
        fmt = {"type": "text"}
    if not isinstance(fmt, dict):
        raise _invalid_type("text.format", "an object", fmt)
    if fmt.get("type") not in _FORMATS:
        raise _invalid_value("text.format.type", fmt.get("type"), _FORMATS)
    if fmt["type"] == "json_schema":
        if not isinstance(fmt.get("name"), str):
            raise _missing("text.format.name")
        if not isinstance(fmt.get("schema"), dict):
            raise _missing("text.format.schema")
        fmt = {"description": None, "strict": False, **fmt}
    if fmt["type"] == "json_object" and not any(
        "json" in text_of(m.get("content")).lower() for m in messages
    ):
        raise BadRequest(
            "Response input messages must contain the word 'json' in some form to use "
            "'text.format' of type 'json_object'.",
            "input",
        )
    verbosity = text.get("verbosity") or "medium"
    if verbosity not in _VERBOSITY:
        raise _invalid_value("text.verbosity", verbosity, _VERBOSITY)
    return {"format": fmt, "verbosity": verbosity}


def _metadata(body: Mapping[str, Any]) -> dict[str, str]:
    metadata = _typed(body, "metadata", lambda v: isinstance(v, dict), "an object") or {}
    if len(metadata) > _METADATA_MAX_PAIRS:
        raise BadRequest(
            f"Invalid 'metadata': too many properties. Expected an object with at most "
            f"{_METADATA_MAX_PAIRS} properties, but got an object with {len(metadata)} "
            "properties instead.",
            "metadata",
            "object_above_max_properties",
        )
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise _invalid_type(f"metadata.{key}", "a string", value)
        for what, size, limit in (
            ("key", len(key), _METADATA_MAX_KEY),
            ("value", len(value), _METADATA_MAX_VALUE),
        ):
            if size > limit:
                raise BadRequest(
                    f"Invalid 'metadata.{key}': {what} too long. Expected a {what} with "
                    f"maximum length {limit}, but got a {what} with length {size} instead.",
                    f"metadata.{key}",
                    "string_above_max_length",
                )
    return dict(metadata)


# ---------------------------------------------------------------------------------------------
# The whole body


def validate_responses(body: Mapping[str, Any]) -> ResponsesRequest:
    model = body.get("model")
    if model is None or model == "":
        raise _missing("model")
    if not isinstance(model, str):
        raise _invalid_type("model", "a string", model)
    instructions = _typed(body, "instructions", _is_str, "a string")
    messages = _input_messages(body.get("input"))
    if instructions:
        messages = [{"role": "system", "content": instructions}, *messages]
    max_output_tokens = _typed(body, "max_output_tokens", is_int, "an integer")
    if max_output_tokens is not None and max_output_tokens < MIN_OUTPUT_TOKENS:
        raise BadRequest(
            f"Invalid 'max_output_tokens': integer below minimum value. Expected a value >= "
            f"{MIN_OUTPUT_TOKENS}, but got {max_output_tokens} instead.",
            "max_output_tokens",
            "integer_below_min_value",
        )
    stream = bool(_typed(body, "stream", _is_bool, "a boolean"))
    options = _typed(body, "stream_options", lambda v: isinstance(v, dict), "an object")
    if options is not None and not stream:
        raise BadRequest(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "stream_options",
        )
    obfuscate = (options or {}).get("include_obfuscation")
    if obfuscate is not None and not isinstance(obfuscate, bool):
        raise _invalid_type("stream_options.include_obfuscation", "a boolean", obfuscate)
    truncation = body.get("truncation") or "disabled"
    if truncation not in _TRUNCATION:
        raise _invalid_value("truncation", truncation, _TRUNCATION)
    tools = _tools(body)
    tool_choice = body.get("tool_choice")
    tool_mode = _tool_mode(tool_choice, tools)
    parallel = _typed(body, "parallel_tool_calls", _is_bool, "a boolean")
    store = _typed(body, "store", _is_bool, "a boolean")
    return ResponsesRequest(
        model=model,
        instructions=instructions,
        messages=messages,
        max_output_tokens=max_output_tokens,
        temperature=_bounded(body, "temperature", 2, 1.0),
        top_p=_bounded(body, "top_p", 1, 1.0),
        stream=stream,
        obfuscate=obfuscate is not False,
        tools=tools,
        tool_choice="auto" if tool_choice is None else tool_choice,
        tool_mode=tool_mode,
        text=_text(body, messages),
        metadata=_metadata(body),
        store=store is not False,
        previous_response_id=_typed(body, "previous_response_id", _is_str, "a string"),
        parallel_tool_calls=parallel is not False,
        truncation=truncation,
        user=_typed(body, "user", _is_str, "a string"),
        prompt_cache_key=_typed(body, "prompt_cache_key", _is_str, "a string"),
        safety_identifier=_typed(body, "safety_identifier", _is_str, "a string"),
    )
