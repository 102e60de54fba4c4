"""A deterministic fake of the OpenAI and Anthropic APIs, for tests, demos and benchmarks.

Answers are a pure function of (model, messages, seed), so a cache in front of it can be checked
for correctness (a hit must equal what the upstream would have said) and the upstream's own
request counter tells exactly how many calls the cache let through. It serves
``/v1/chat/completions``, ``/v1/responses`` (OpenAI's Responses API), ``/v1/messages``
(Anthropic's Messages API) and ``/v1/models``, each streamed or not.

Fault injection lives on the simulator itself, because the sidecar in front of it forwards only
the standard headers:

* ``POST /_sim/faults`` ``{"faults": ["429", "500", "slow", ...], "retry_after": 2,
  "slow_s": 0.2, "timeout_s": 1, "hang_s": 30, "drip_s": 0.5}`` appends to a FIFO queue;
  every completion request (``/v1/chat/completions``, ``/v1/responses`` and
  ``/v1/messages``) pops one.
* ``X-Sim-Fault: <fault>`` on a single request does the same for direct tests; it wins over
  the queue and leaves the queue untouched.

A fault is ``ok`` (no fault, to leave a gap in the queue), ``401``, ``429``, ``500``, ``503``,
``slow``, ``timeout``, ``drop``, ``reset``, ``hang``, ``drip``, ``garbage`` or ``gzip``;
``429``, ``slow``, ``timeout``, ``hang`` and ``drip`` take an optional ``:<seconds>`` suffix
(``"slow:0.2"``) that overrides the request-wide value. ``reset`` closes the connection without
an answer (uvicorn: a status line, then the connection dies; in-process, httpx's ASGI transport
raises ``delivery.SimulatedReset``, an ``httpx.RemoteProtocolError``). ``hang`` accepts and
never answers (sleeps ``hang_s``, default an hour, then resets). ``drip`` sends the answer, or
its stream, a few bytes per ``drip_s`` (default 1 s). ``garbage`` is a 200 whose body is
``{"nope": 1}``, no answer of any API, streamed or not. ``gzip`` is the valid answer
gzip-encoded with ``content-encoding: gzip`` (a stream is flushed event by event). ``drop`` ends a
streamed answer after a few chunks with no ``finish_reason`` and no ``[DONE]`` (on
``/v1/messages``: no ``message_delta`` and no ``message_stop``; on ``/v1/responses``: no
``*.done`` event and no ``response.completed``); on a non-streamed request it is a 500, because
an ASGI app cannot portably cut a body short.

``GET /_sim/stats``, ``POST /_sim/reset`` (counters, queue and runtime config back to how the
app was created) and ``POST /_sim/config`` (change latency and friends at runtime) complete the
control API.

Modules: ``app`` (the application, the control API), ``state`` (config, counters, faults),
``errors`` (error shapes, shared checks), ``delivery`` (drip, gzip, reset), ``answers`` (the
deterministic answer), ``stream`` (SSE framing and pacing), ``openai_chat``, ``responses``
with ``responses_request``, and ``anthropic`` (one per API).
"""
