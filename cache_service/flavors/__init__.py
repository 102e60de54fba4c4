"""The wire formats the proxy speaks, one module each, and the registry routes read.

`base.py` says what a format must provide; `openai_chat.py`, `anthropic.py` and
`openai_responses.py` provide it. Adding a format: a module, a schema in `api/schemas.py`,
and a line in `FLAVORS`.
"""

from __future__ import annotations

from cache_service.flavors.anthropic import AnthropicMessages
from cache_service.flavors.base import Flavor
from cache_service.flavors.openai_chat import OpenAIChat
from cache_service.flavors.openai_responses import OpenAIResponses

OPENAI_CHAT = OpenAIChat()
ANTHROPIC = AnthropicMessages()
RESPONSES = OpenAIResponses()

FLAVORS: tuple[Flavor, ...] = (OPENAI_CHAT, ANTHROPIC, RESPONSES)

# The format of the sidecar's own answers (cache API, admin, relayed calls' errors).
DEFAULT: Flavor = OPENAI_CHAT


def for_route(path: str | None) -> Flavor:
    """The format a route speaks, by the route's declared path (never the request's URL)."""
    return next((f for f in FLAVORS if f.route == path), DEFAULT)
