"""Each door's answer and error bodies as typed Structs: what the doors encode, and what the
OpenAPI document (``router.openapi``) describes, from one definition.

Wire facts: OpenAI's chat completion object and error envelope
(https://platform.openai.com/docs/api-reference/chat/object,
https://platform.openai.com/docs/guides/error-codes); Anthropic's Messages response and error
shape (https://docs.anthropic.com/en/api/messages, https://docs.anthropic.com/en/api/errors);
FastAPI's ``{"detail": ...}`` error body for ``/api/chat``. Fields marked as ours are
extensions: ``reasoning_content`` (GLM's), ``reasoning_signature``/``reasoning_redacted`` (Claude
thinking carried through), ``cost_usd`` and the ``router`` block (who answered, every attempt).
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from router.events import AttemptRecord, ToolCallOut

__all__ = [
    "AnthropicError", "AnthropicErrorBody", "AnthropicUsage", "ChatBackendError", "ChatCompletion",
    "CompletionChoice", "CompletionMessage", "CompletionUsage", "MessageResponse", "NativeError",
    "NativeErrorBody", "OpenAIError", "OpenAIErrorBody", "RedactedThinkingBlock", "ResponseObject", "RouterInfo", "TextBlock",
    "ThinkingBlock", "ToolUseBlock",
]


class CompletionMessage(msgspec.Struct, omit_defaults=True):
    """The assistant message: ``content`` is null when only tool calls came."""

    role: Literal["assistant"]
    content: str | None
    reasoning_content: str | None = None
    reasoning_signature: str | None = None
    reasoning_redacted: list[str] | None = None
    tool_calls: list[ToolCallOut] | None = None


class CompletionChoice(msgspec.Struct):
    index: int
    message: CompletionMessage
    finish_reason: str
    logprobs: None = None


class CachedTokens(msgspec.Struct):
    cached_tokens: int = 0


class ReasoningTokens(msgspec.Struct):
    reasoning_tokens: int = 0


class CompletionUsage(msgspec.Struct):
    """Tokens (``prompt_tokens`` includes the cached part) and our ``cost_usd`` (USD)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: CachedTokens
    completion_tokens_details: ReasoningTokens
    cost_usd: float


class RouterInfo(msgspec.Struct):
    """Ours: the provider and model that answered, whether from the cache, every attempt, and
    the task that routed it."""

    provider: str
    model: str
    cached: bool
    attempts: list[AttemptRecord]
    task: str = ""


class ChatCompletion(msgspec.Struct):
    """``POST /v1/chat/completions`` (and ``/api/chat`` with ``stream: false``) answer."""

    id: str
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage
    router: RouterInfo
    object: Literal["chat.completion"] = "chat.completion"
    system_fingerprint: None = None


class OpenAIError(msgspec.Struct, omit_defaults=True):
    """``param`` names the offending field (a path such as ``messages[0].content``)."""

    message: str
    type: str
    param: str | None
    code: str | None
    attempts: list[AttemptRecord] | None = None


class OpenAIErrorBody(msgspec.Struct):
    error: OpenAIError


class TextBlock(msgspec.Struct, tag="text", tag_field="type"):
    text: str


class ThinkingBlock(msgspec.Struct, tag="thinking", tag_field="type"):
    thinking: str
    signature: str


class RedactedThinkingBlock(msgspec.Struct, tag="redacted_thinking", tag_field="type"):
    data: str


class ToolUseBlock(msgspec.Struct, tag="tool_use", tag_field="type"):
    id: str
    name: str
    input: dict[str, Any]


class AnthropicUsage(msgspec.Struct):
    """``input_tokens`` excludes the part read from the prompt cache (``cache_read_input_tokens``)."""

    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cost_usd: float = 0.0  # the router's: what this answer cost (routing.yaml prices)


class MessageResponse(msgspec.Struct):
    """``POST /v1/messages`` answer."""

    id: str
    model: str
    content: list[ThinkingBlock | RedactedThinkingBlock | TextBlock | ToolUseBlock]
    stop_reason: str
    usage: AnthropicUsage
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    stop_sequence: None = None


class AnthropicError(msgspec.Struct):
    """``message`` begins with the offending field's path when there is one."""

    type: str
    message: str


class AnthropicErrorBody(msgspec.Struct):
    error: AnthropicError
    type: Literal["error"] = "error"


class NativeError(msgspec.Struct, omit_defaults=True):
    """DESIGN.md's error: ``path`` names the offending field; ``attempts`` how each target failed;
    ``code`` and ``provider``: an upstream's error code (``"1301"``) and who sent it, when the
    answer is one upstream's failure (a content-filter refusal, a failure after the answer began)."""

    type: str
    message: str
    path: str | None = None
    attempts: list[AttemptRecord] | None = None
    code: str | None = None
    provider: str | None = None


class NativeErrorBody(msgspec.Struct):
    error: NativeError


class ResponseObject(msgspec.Struct):
    """The OpenAI Responses API's ``response`` object, as ``POST /v1/responses`` answers it:
    ``output`` items are ``reasoning`` (``summary``), ``message`` (``output_text`` parts) and
    ``function_call`` (``call_id``, ``name``, ``arguments``); ``status`` ``completed``,
    ``incomplete`` (``incomplete_details.reason``) or ``failed`` (``error``)."""

    id: str
    created_at: int
    status: str
    model: str
    output: list[dict[str, Any]]
    object: str = "response"
    usage: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    incomplete_details: dict[str, Any] | None = None
    instructions: str | None = None
    parallel_tool_calls: bool = True
    tool_choice: str = "auto"
    tools: list[dict[str, Any]] = []


class ChatBackendError(msgspec.Struct):
    """FastAPI's error body; ``detail`` begins with the offending field's path when there is one."""

    detail: str
