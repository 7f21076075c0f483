"""The adapter interface: what every wire protocol module provides. Translation only.

An adapter turns a ``Call`` (the canonical request with the task's params applied) into an HTTP
request, and turns what the upstream sends back into unified events (``router.events``):

* ``encode(call, base_url, api_key, headers) -> WireRequest``
* ``stream_decoder() -> StreamDecoder``: fed one SSE message at a time (``feed(event, data)``),
  returns the events it completes; ``finish()`` at end of body returns the last events, or raises
  ``UpstreamStreamError`` when the provider's terminator never came (a cut stream is never ``end``).
* ``decode_response(body) -> list[Event]``: a non-streaming JSON answer as the *same* events a
  stream of it would give, so both paths fold into one answer the same way.
* ``decode_error(status, headers, body) -> UpstreamError``: an HTTP error body, classified.

Adapters never retry, rate-limit, cache or fall back; they do not emit ``start``, ``fallback`` or
``error`` events (failures are raised) and leave ``Usage.cost_usd`` at 0 for the router to price.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple, Protocol

import msgspec

from router.errors import UpstreamError
from router.events import Event
from router.request import Message, ResponseFormat, Tool, ToolChoice

__all__ = ["Adapter", "Call", "StreamDecoder", "WireRequest"]


class Call(msgspec.Struct, kw_only=True):
    """One upstream call: the model to ask and the request with the task's params applied.

    ``max_tokens`` in tokens (``None``: the adapter's protocol default); ``thinking``: ``None``
    leaves the provider's default. ``thinking_style`` (``budget``/``adaptive``) and ``sampling``
    (whether temperature/top_p may be sent) are the target model's, from routing.yaml.
    ``tool_stream``: the model streams tool arguments when asked (GLM). ``anthropic_beta``: the
    caller's ``anthropic-beta`` header values, for Anthropic-protocol upstreams.
    ``response_format``: the answer's form, sent in each protocol's own way. ``seed`` and the
    penalties are OpenAI-protocol parameters, ``top_k`` an Anthropic one.
    """

    model: str
    messages: list[Message]
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] | None = None
    thinking: bool | None = None
    stream: bool = False
    thinking_style: str = "budget"
    sampling: bool = True
    tool_stream: bool = False
    anthropic_beta: list[str] | None = None
    clear_thinking: bool | None = None
    response_format: ResponseFormat | None = None
    seed: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    top_k: int | None = None


class WireRequest(NamedTuple):
    """An encoded HTTP request: absolute ``url``, ``headers`` (secrets included: never log them),
    and the JSON ``body`` bytes. Always ``POST``."""

    url: str
    headers: dict[str, str]
    body: bytes


class StreamDecoder(Protocol):
    """Stateful decoder of one upstream stream. ``prompt_tokens``: the prompt's (uncached) input
    tokens once the stream reported them ahead of its answer (Anthropic's ``message_start``), else
    None."""

    prompt_tokens: int | None

    def feed(self, event: str, data: str) -> list[Event]:
        """One SSE message (``event`` is ``""`` when the message had no ``event:`` line)."""
        ...

    def finish(self) -> list[Event]:
        """End of body. Raises ``UpstreamStreamError`` when the stream was not complete."""
        ...


class Adapter(Protocol):
    """One wire protocol. Instances are stateless and shared."""

    protocol: str

    def encode(self, call: Call, base_url: str, api_key: str | None,
               headers: Mapping[str, str]) -> WireRequest: ...

    def stream_decoder(self) -> StreamDecoder: ...

    def unsent(self, base_url: str) -> tuple[str, ...]:
        """Canonical request parameters this endpoint takes no value for (the router drops them
        and logs it once per target)."""
        ...

    def decode_response(self, body: bytes) -> list[Event]: ...

    def encode_count(self, call: Call, base_url: str, api_key: str | None,
                     headers: Mapping[str, str]) -> WireRequest | None:
        """``call``'s prompt as the endpoint's token-count request, or None when the endpoint
        has no such API (the router estimates)."""
        ...

    def decode_count(self, body: bytes) -> int | None:
        """The input tokens of a token-count answer (None when the body has no count)."""
        ...

    def decode_error(self, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamError: ...
