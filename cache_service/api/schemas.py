"""Wire schemas: the minimum we must understand of a request. Unknown fields are kept and
forwarded untouched, since upstream APIs grow faster than any proxy.

Every field the sidecar itself reads (the flavours' `canonical`, the cache API) is strict:
`stream: "false"` or `max_tokens: 5.0` is refused rather than coerced, since the body is
forwarded as it came and the upstream would read it otherwise than we did."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
)

from cache_service.protocols import MAX_TOKENS

Tokens = Annotated[StrictInt, Field(ge=1, le=MAX_TOKENS)]
TokenCount = Annotated[StrictInt, Field(ge=0, le=MAX_TOKENS)]
Content = StrictStr | list[dict[str, Any]]
# Numbers only (an int is a number; "0.5" and true are not): the scope is built from the
# parsed value while the body goes upstream as sent, so a coerced string would share a
# scope with the number and be refused upstream.
Temperature = Annotated[StrictFloat, Field(ge=0, le=2)]
TopP = Annotated[StrictFloat, Field(ge=0, le=1)]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Content | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: StrictBool | None = None


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=256)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: StrictBool | None = None
    n: Annotated[StrictInt, Field(ge=1, le=128)] | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    max_tokens: Tokens | None = None
    max_completion_tokens: Tokens | None = None
    stream_options: StreamOptions | None = None


class AnthropicMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["user", "assistant"]
    content: Content


class AnthropicRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=256)
    messages: list[AnthropicMessage] = Field(min_length=1)
    max_tokens: Tokens
    system: Content | None = None
    stream: StrictBool | None = None


class ResponsesRequest(BaseModel):
    """OpenAI's Responses API: `input` is one string or a list of items (messages with
    text parts, function calls and their outputs...), `instructions` the system prompt."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=256)
    input: Content = Field(min_length=1)
    instructions: StrictStr | None = None
    stream: StrictBool | None = None
    max_output_tokens: Tokens | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None


class _CacheKeyed(BaseModel):
    """A cache-API request names its prompt either as chat messages or as one string, plus
    whatever else belongs to its scope (system prompt in the messages, sampling params)."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=256)
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    prompt: str | None = Field(None, min_length=1)
    namespace: str | None = Field(None, min_length=1, max_length=256)


class LookupRequest(_CacheKeyed):
    threshold: float | None = None


class StoreRequest(_CacheKeyed):
    response: JsonValue
    ttl: float | None = Field(None, gt=0)
    """Seconds; capped by the operator's max_ttl_s."""
    prompt_tokens: TokenCount = 0
    completion_tokens: TokenCount = 0
