"""The canonical request: what ``POST /v1/tasks`` accepts and what every adapter encodes.

Messages follow the OpenAI chat shape (roles system/user/assistant/tool, assistant ``tool_calls``,
tool ``tool_call_id``), which is also the Z.ai GLM shape
(https://docs.z.ai/api-reference/llm/chat-completion). Adapters translate it to their wire.
Unknown fields are rejected so a caller's typo (``max_token``) is an error, not silently ignored.
"""

from __future__ import annotations

import functools
import re
from typing import Annotated, Any, Literal

import msgspec

from router.errors import PayloadTooLarge, RequestError

__all__ = [
    "CacheControl",
    "FileData",
    "FilePart",
    "FunctionCall",
    "ImagePart",
    "ImageURL",
    "JsonSchemaFormat",
    "Message",
    "Part",
    "ResponseFormat",
    "TaskRequest",
    "TextPart",
    "Tool",
    "ToolCall",
    "ToolFunction",
    "decode_body",
    "decode_task_request",
]


class CacheControl(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A prompt-cache breakpoint (Anthropic's ``cache_control``): the prompt up to and including
    the part it is on is cached, for ``ttl`` ``5m`` (the default) or ``1h``
    (https://docs.claude.com/en/docs/build-with-claude/prompt-caching). Sent to Anthropic
    upstreams; GLM caches on its own (no breakpoints), so there it is not sent."""

    type: Literal["ephemeral"] = "ephemeral"
    ttl: Literal["5m", "1h"] | None = None


class TextPart(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, tag="text", tag_field="type"):
    """One text part of a multi-part ``content`` (OpenAI ``{"type": "text", "text": ...}``),
    optionally a cache breakpoint."""

    text: str
    cache_control: CacheControl | None = None


class ImageURL(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """``url``: an ``http(s)://`` URL or a ``data:<media type>;base64,...`` URL; ``detail``
    (OpenAI's ``low``/``high``/``auto``) is passed to upstreams that take it."""

    url: str
    detail: str | None = None


class ImagePart(msgspec.Struct, forbid_unknown_fields=True, tag="image_url", tag_field="type"):
    """An image (OpenAI ``{"type": "image_url", "image_url": {"url"}}``); only targets whose
    model says ``vision: true`` are tried for a request that carries one."""

    image_url: ImageURL


class FileData(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """``file_data``: a ``data:application/pdf;base64,...`` URL; ``filename`` optional."""

    file_data: str
    filename: str | None = None


class FilePart(msgspec.Struct, forbid_unknown_fields=True, tag="file", tag_field="type"):
    """A document (OpenAI ``{"type": "file", "file": {"file_data"}}``, Anthropic ``document``)."""

    file: FileData


Part = TextPart | ImagePart | FilePart


class FunctionCall(msgspec.Struct, forbid_unknown_fields=True):
    """``name`` and ``arguments`` (the JSON text of the arguments object)."""

    name: str
    arguments: str = "{}"


class ToolCall(msgspec.Struct, forbid_unknown_fields=True):
    """An assistant's tool call; ``id`` is opaque and echoed by the tool result."""

    id: str
    function: FunctionCall
    type: Literal["function"] = "function"
    index: int | None = None


class Message(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One chat message.

    ``content``: a string or parts: text, images and documents (``None`` allowed on assistant
    messages with tool calls).
    ``reasoning`` / ``reasoning_signature``: an assistant's earlier reasoning and the provider's
    signature for it (Anthropic thinking), sent back so multi-turn thinking conversations verify;
    ``reasoning_redacted``: Anthropic ``redacted_thinking`` blocks' opaque data, sent back unchanged.
    """

    role: Literal["system", "user", "assistant", "tool"]
    content: str | list[Part] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    reasoning: str | None = None
    reasoning_signature: str | None = None
    reasoning_redacted: list[str] | None = None
    cache_control: CacheControl | None = None  # a breakpoint after this message's content

    def text(self) -> str:
        """The content as one string (parts joined with no separator; ``None`` as ``""``)."""
        c = self.content
        if c is None:
            return ""
        if isinstance(c, str):
            return c
        return "".join(p.text for p in c if type(p) is TextPart)

    def media(self) -> list[ImagePart | FilePart]:
        """The content's images and documents, in order."""
        c = self.content
        return [] if c is None or isinstance(c, str) else [p for p in c if type(p) is not TextPart]  # type: ignore[misc]


class ToolFunction(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A callable function: ``parameters`` is its JSON Schema; ``strict``: the arguments must
    match it exactly (OpenAI's strict function calling, Anthropic's strict tool use), passed to
    the upstreams that take it."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] = msgspec.field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None


class Tool(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A tool the model may call (OpenAI shape); ``cache_control``: a cache breakpoint after the
    tool definitions up to this one."""

    function: ToolFunction
    type: Literal["function"] = "function"
    cache_control: CacheControl | None = None


class ToolChoiceFunction(msgspec.Struct, forbid_unknown_fields=True):
    name: str


class ToolChoiceNamed(msgspec.Struct, forbid_unknown_fields=True):
    """Force one tool: ``{"type": "function", "function": {"name": ...}}``."""

    function: ToolChoiceFunction
    type: Literal["function"] = "function"


ToolChoice = Literal["auto", "none", "required"] | ToolChoiceNamed


class JsonSchemaFormat(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A named JSON Schema the answer must match (OpenAI's ``json_schema`` shape)."""

    schema: dict[str, Any]
    name: str = "output"
    description: str | None = None
    strict: bool | None = None


class ResponseFormat(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """The answer's form: ``text`` (the default), ``json_object`` (any JSON object) or
    ``json_schema`` (``json_schema.schema``). The router checks the final answer against it;
    an answer that does not match is the target's failure (``invalid_output``)."""

    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JsonSchemaFormat | None = None


class TaskRequest(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """The body of ``POST /v1/tasks``.

    Generation parameters left ``None`` take the task's ``params`` from routing.yaml.
    ``max_tokens`` in tokens; ``temperature``/``top_p`` as the providers define them.
    ``response_format``: the answer's form (structured output, checked by the router).
    ``seed``, ``frequency_penalty``, ``presence_penalty`` go to OpenAI-protocol upstreams,
    ``top_k`` to Anthropic ones; each is dropped (and logged once per target) where the protocol
    has no such parameter. ``anthropic_beta``: beta flags for Anthropic upstreams (the
    Anthropic door fills it from the caller's ``anthropic-beta`` header). ``clear_thinking``:
    GLM's preserved-thinking switch (false: the model keeps earlier turns' reasoning), passed to
    Z.ai in ``thinking``. ``input``: the object a typed task's templates render (its
    ``input_schema`` checks it); ``messages`` may then be empty, and are appended after the
    rendered prompt. ``mode: async`` queues the request (``202``; ``router.worker``) with an
    optional ``priority``, ``callback_url`` (the result is POSTed there, signed) and
    ``idempotency_key`` (a repeated key returns the first task).
    """

    task: str
    messages: list[Message] = msgspec.field(default_factory=list)
    input: dict[str, Any] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] | None = None
    thinking: bool | None = None
    stream: bool = False
    metadata: dict[str, str] | None = None
    response_format: ResponseFormat | None = None
    seed: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    top_k: int | None = None
    anthropic_beta: list[str] | None = None
    clear_thinking: bool | None = None
    mode: Literal["sync", "async"] = "sync"
    priority: Literal["high", "normal", "low"] | None = None
    callback_url: str | None = None
    idempotency_key: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None


_decoder = msgspec.json.Decoder(TaskRequest)
_json_decode = msgspec.json.Decoder().decode
_PATH_RE = re.compile(r" - at `\$\.?(.*)`$")


_BETA = re.compile(r"[A-Za-z0-9._-]{1,100}")
_FIELD_RE = re.compile(r"(?:missing required|unknown) field `([^`]+)`")


def msgspec_error_path(err: msgspec.DecodeError) -> tuple[str, str | None]:
    """Split a msgspec error message into (message, path) with ``$.a[0].b`` as ``a[0].b``; a
    missing or unknown field is named at the end of the path."""
    text = str(err)
    m = _PATH_RE.search(text)
    msg, path = (text[: m.start()], m.group(1) or None) if m else (text, None)
    f = _FIELD_RE.search(msg)
    if f:
        path = f"{path}.{f.group(1)}" if path else f.group(1)
    return msg, path


NESTING_REPORTED = 64  # containers deep: where a too-deeply nested body's offending field is named


def nested_path(body: bytes, depth: int = NESTING_REPORTED) -> str | None:
    """The path (``tools[0].function.parameters.a[0]...``: its first six steps) at which
    ``body``'s JSON first nests ``depth`` containers deep, or None. A byte scan for the error path only (never on the hot
    path): it tracks strings, object keys and array indices, nothing else."""
    stack: list[list[Any]] = []  # [kind, key or index]
    i, n = 0, len(body)
    last_string: str | None = None
    while i < n:
        c = body[i]
        if c == 0x22:  # a string: skip it, remembering it as a possible key
            j = i + 1
            while j < n and body[j] != 0x22:
                j += 2 if body[j] == 0x5C else 1
            last_string = body[i + 1:j].decode("utf-8", "replace")
            i = j + 1
            continue
        if c in (0x7B, 0x5B):  # { [
            stack.append(["{" if c == 0x7B else "[", None if c == 0x7B else 0])
            if len(stack) >= depth:
                break
        elif c in (0x7D, 0x5D) and stack:
            stack.pop()
        elif c == 0x3A and stack and stack[-1][0] == "{":  # the key just read
            stack[-1][1] = last_string
        elif c == 0x2C and stack and stack[-1][0] == "[":
            stack[-1][1] += 1
        i += 1
    else:
        return None
    parts = [("." if n else "") + str(where) if kind == "{" else f"[{where}]"
             for n, (kind, where) in enumerate(stack[:-1])]
    return "".join(parts[:6]) + ("..." if len(parts) > 6 else "") or None


def decode_body(body: bytes, decoder: msgspec.json.Decoder[Any], max_bytes: int) -> Any:
    """Decode a JSON request body with ``decoder``. Raises ``PayloadTooLarge`` (over
    ``max_bytes``) or ``RequestError`` (malformed JSON; JSON nested past the decoder's depth limit;
    wrong types; each with ``path`` naming the field where it can)."""
    if len(body) > max_bytes:
        raise PayloadTooLarge(f"request body is {len(body)} bytes; the limit is {max_bytes}")
    try:
        return decoder.decode(body)
    except RecursionError:
        raise RequestError("JSON nested too deeply", nested_path(body)) from None
    except msgspec.ValidationError as e:
        msg, path = msgspec_error_path(e)
        raise RequestError(msg, path) from None
    except msgspec.DecodeError as e:
        raise RequestError(f"malformed JSON: {e}") from None


def decode_task_request(body: bytes, max_bytes: int) -> TaskRequest:
    """Decode and check a ``POST /v1/tasks`` body.

    Raises ``PayloadTooLarge`` (over ``max_bytes``) or ``RequestError`` with ``path`` naming the
    field: malformed JSON, wrong types, unknown fields, empty ``messages`` without an ``input``, a ``tool`` message
    whose ``tool_call_id`` matches no earlier assistant tool call, out-of-range numbers.
    """
    req: TaskRequest = decode_body(body, _decoder, max_bytes)
    check_request(req)
    return req


def check_schema(schema: dict[str, Any], path: str) -> None:
    """Raise ``RequestError`` at ``path`` when ``schema`` is not a valid JSON Schema (the
    ``jsonschema`` library's metaschema check) or has a ``$ref`` that is remote or points to
    nothing. The check is pure, so its verdict is remembered per schema (its canonical JSON; the
    512 most recent): clients send the same few schemas again and again, and the metaschema walk
    costs about 2 ms a time."""
    problem = _schema_problem(msgspec.json.encode(schema, order="sorted"))
    if problem is not None:
        raise RequestError(problem, path)


@functools.lru_cache(maxsize=512)
def _schema_problem(canonical: bytes) -> str | None:
    """What is wrong with the schema whose canonical JSON is ``canonical``, or None."""
    import jsonschema
    import referencing
    import referencing.jsonschema

    schema = msgspec.json.decode(canonical)
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        return f"not a valid JSON Schema: {e.message}"
    remote = _remote_ref(schema)
    if remote is not None:  # nothing is fetched on a caller's behalf
        return f"only local $ref (\"#...\") is allowed, got {remote!r}"
    resource = referencing.Resource.from_contents(schema, default_specification=referencing.jsonschema.DRAFT202012)
    resolver = referencing.Registry().resolver_with_root(resource)
    for ref in _local_refs(schema):
        try:
            resolver.lookup(ref)
        except referencing.exceptions.Unresolvable:
            return f"$ref {ref!r} points to nothing in the schema"
    return None


def _local_refs(node: Any) -> list[str]:
    """Every ``$ref`` in ``node`` (all local, once ``_remote_ref`` found none)."""
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in _local_refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _local_refs(v)]
    return []


def _remote_ref(node: Any) -> str | None:
    """The first ``$ref`` in ``node`` that does not point inside the schema itself."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and not ref.startswith("#"):
            return ref
        return next((r for v in node.values() if (r := _remote_ref(v)) is not None), None)
    if isinstance(node, list):
        return next((r for v in node if (r := _remote_ref(v)) is not None), None)
    return None


def check_request(req: TaskRequest) -> None:
    """Semantic checks a schema cannot express; raises ``RequestError`` naming the field."""
    if not req.messages and req.input is None:
        raise RequestError("messages must not be empty (or send input, for a typed task)", "messages")
    if req.max_tokens is not None and req.max_tokens < 1:
        raise RequestError("max_tokens must be at least 1", "max_tokens")
    if req.temperature is not None and not 0 <= req.temperature <= 2:
        raise RequestError("temperature must be between 0 and 2", "temperature")
    if req.top_p is not None and not 0 <= req.top_p <= 1:
        raise RequestError("top_p must be between 0 and 1", "top_p")
    for name in ("frequency_penalty", "presence_penalty"):
        v = getattr(req, name)
        if v is not None and not -2 <= v <= 2:
            raise RequestError(f"{name} must be between -2 and 2", name)
    if req.top_k is not None and req.top_k < 1:
        raise RequestError("top_k must be at least 1", "top_k")
    for k, flag in enumerate(req.anthropic_beta or ()):
        if not _BETA.fullmatch(flag):
            raise RequestError("a beta flag is letters, digits, '.', '_' or '-'", f"anthropic_beta[{k}]")
    rf = req.response_format
    if rf is not None and rf.type == "json_schema" and rf.json_schema is None:
        raise RequestError("a json_schema response_format needs json_schema.schema", "response_format.json_schema")
    if rf is not None and rf.json_schema is not None:
        check_schema(rf.json_schema.schema, "response_format.json_schema.schema")
    seen: set[str] = set()
    for i, m in enumerate(req.messages):
        for j, part in enumerate(m.content if isinstance(m.content, list) else ()):
            if type(part) is ImagePart and not part.image_url.url.startswith(("http://", "https://", "data:image/")):
                raise RequestError("an image is an http(s) URL or a data:image/...;base64 URL",
                                   f"messages[{i}].content[{j}].image_url.url")
            if type(part) is FilePart and not part.file.file_data.startswith("data:"):
                raise RequestError("a file is a data: URL (base64)", f"messages[{i}].content[{j}].file.file_data")
        if m.role == "assistant" and m.tool_calls:
            for j, tc in enumerate(m.tool_calls):
                try:
                    args = _json_decode(tc.function.arguments or "{}")
                except msgspec.DecodeError:
                    args = None
                if not isinstance(args, dict):
                    raise RequestError("tool call arguments must be the JSON text of an object",
                                       f"messages[{i}].tool_calls[{j}].function.arguments")
                seen.add(tc.id)
        elif m.role == "tool":
            if not m.tool_call_id:
                raise RequestError("a tool message needs tool_call_id", f"messages[{i}].tool_call_id")
            if m.tool_call_id not in seen:
                raise RequestError(
                    f"tool_call_id {m.tool_call_id!r} matches no earlier assistant tool call",
                    f"messages[{i}].tool_call_id",
                )
        if m.tool_calls and m.role != "assistant":
            raise RequestError("only assistant messages carry tool_calls", f"messages[{i}].tool_calls")
    if req.tool_choice is not None and not isinstance(req.tool_choice, str):
        names = {t.function.name for t in req.tools or ()}
        if req.tool_choice.function.name not in names:
            raise RequestError("tool_choice names a tool that is not in tools", "tool_choice.function.name")
