"""One adapter per upstream wire protocol; translation only (see ``providers.base``).

Adding a provider protocol is one new module and one line in ``ADAPTERS``.
"""

from __future__ import annotations

from providers.anthropic import AnthropicAdapter
from providers.base import Adapter, Call, StreamDecoder, WireRequest
from providers.openai import OpenAIAdapter

__all__ = ["ADAPTERS", "Adapter", "Call", "StreamDecoder", "WireRequest", "adapter_for"]

ADAPTERS: dict[str, Adapter] = {
    "openai": OpenAIAdapter(),
    "anthropic": AnthropicAdapter(),
}


def adapter_for(protocol: str) -> Adapter:
    """The adapter for a routing.yaml ``protocol``; raises ``KeyError`` for an unknown one."""
    return ADAPTERS[protocol]
