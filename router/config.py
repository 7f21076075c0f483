"""routing.yaml as written: strict msgspec Structs (unknown keys are errors), optional fields.

Shape (DESIGN.md, "routing.yaml"): ``providers`` (protocol, base_url, api_key, models with
context_window and price in USD per 1M tokens) and ``tasks`` (chain of ``provider/model``, params).
Reading, interpolating and cross-checking the file is ``router.loading``; the effective per-target
policy, with every field resolved, is ``router.policy``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

__all__ = [
    "Budget",
    "CachePolicy",
    "Cooldown",
    "Cors",
    "Example",
    "Experiment",
    "GlobalLimits",
    "Limits",
    "ModelSpec",
    "Params",
    "Price",
    "Provider",
    "QueueConfig",
    "Retry",
    "RoutingConfig",
    "Shadow",
    "Task",
    "Tenant",
    "Timeouts",
    "Variant",
    "overlay",
]


Seconds = Annotated[float, msgspec.Meta(gt=0)]
Wait = Annotated[float, msgspec.Meta(ge=0)]
Count = Annotated[int, msgspec.Meta(ge=1)]


class Price(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """USD per 1M tokens. ``cached_input``: prompt tokens read from the provider's cache
    (Anthropic cache reads: 0.1x input; Z.ai GLM-4.6: $0.11 vs $0.60); ``cache_write``: prompt
    tokens written to it (Anthropic 5-minute entries: 1.25x input), ``cache_write_1h`` for
    1-hour entries (2x input). Each defaults to ``input`` (``cache_write_1h`` to
    ``cache_write``). Reasoning tokens are output tokens, as both providers bill them. Sources:
    https://docs.claude.com/en/docs/build-with-claude/prompt-caching (pricing),
    https://docs.z.ai/guides/overview/pricing."""

    input: float
    output: float
    cached_input: float | None = None
    cache_write: float | None = None
    cache_write_1h: float | None = None

    def cost(self, input_tokens: int, output_tokens: int, cached_tokens: int = 0, cache_write_tokens: int = 0,
             cache_write_1h_tokens: int = 0) -> float:
        """USD for these tokens, each class at its price: ``input_tokens`` is the whole prompt, of
        which ``cached_tokens`` were read from the cache and ``cache_write_tokens`` written to it
        (``cache_write_1h_tokens`` of those as 1-hour entries); output (reasoning included) at
        ``output``. Prices are per 1M tokens."""
        cached = min(cached_tokens, input_tokens)
        written = min(cache_write_tokens, input_tokens - cached)
        long = min(cache_write_1h_tokens, written)
        read_price = self.cached_input if self.cached_input is not None else self.input
        write_price = self.cache_write if self.cache_write is not None else self.input
        long_price = self.cache_write_1h if self.cache_write_1h is not None else write_price
        return round(((input_tokens - cached - written) * self.input + cached * read_price
                      + (written - long) * write_price + long * long_price + output_tokens * self.output) / 1e6, 10)

    def savings(self, cached_tokens: int) -> float:
        """USD the cache saved: ``cached_tokens`` at ``input`` minus at ``cached_input``."""
        read_price = self.cached_input if self.cached_input is not None else self.input
        return round(cached_tokens * (self.input - read_price) / 1e6, 10)


class Budget(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Spend limits in USD per UTC day and per UTC month, kept in the store (every replica shares
    them). ``alert_at``: the fraction of a budget whose crossing is logged as a warning."""

    daily_usd: Annotated[float, msgspec.Meta(gt=0)] | None = None
    monthly_usd: Annotated[float, msgspec.Meta(gt=0)] | None = None
    alert_at: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.8


class Limits(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Requests per minute and tokens per minute (prompt + completion)."""

    rpm: Count | None = None
    tpm: Count | None = None


class CachePolicy(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Response cache of a task: ``ttl`` seconds; entries over ``max_bytes`` (encoded) are not
    stored; an identical request waits up to ``coalesce_wait`` seconds for one in flight."""

    ttl: Seconds
    max_bytes: Count = 1024 * 1024
    coalesce_wait: Wait = 30.0


class ModelSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``context_window`` in tokens; ``price`` in USD per 1M tokens (missing = unpriced, cost 0).

    ``limits``: this model's upstream quota (shared by every replica). ``thinking``: how the model
    is asked to think: ``budget`` (Anthropic ``type: enabled`` with
    ``budget_tokens``: Claude 4.5 and earlier) or ``adaptive`` (``type: adaptive``: Claude 4.6 and
    later; Opus 4.7+ and the 5.x models reject ``budget`` with a 400). ``sampling: false`` for
    models that reject temperature/top_p (Claude 5.x); the request's values are then not sent.
    Source: Anthropic's extended/adaptive thinking docs. For GLM: ``thinking: always`` for models
    that always think (GLM-5.2 and later, per Z.ai): they are never sent ``thinking: {type:
    disabled}`` (Z.ai answers 1210); ``tool_stream: true`` (GLM-4.6 and later) asks for tool-call
    arguments as they are generated when streaming with tools (without it they arrive whole at the
    end, and a long call can trip the idle timeout). Source: Z.ai's chat-completion reference
    (https://docs.z.ai/api-reference/llm/chat-completion), tests/fixtures/wire/QUIRKS.md.
    ``vision: true``: the model takes images and documents; a request that carries one skips the
    targets without it (reason ``capability``).
    """

    context_window: Count
    price: Price | None = None
    thinking: Literal["budget", "adaptive", "always"] = "budget"
    sampling: bool = True
    tool_stream: bool = False
    vision: bool = False
    limits: Limits | None = None


class Timeouts(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Seconds. ``first_token``: from sending to the first event; ``idle``: the longest gap between
    chunks; ``total``: the whole upstream call."""

    connect: Seconds | None = None
    first_token: Seconds | None = None
    idle: Seconds | None = None
    total: Seconds | None = None


DEFAULT_TIMEOUTS = Timeouts(connect=5, first_token=60, idle=30, total=600)


class Hedge(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Hedged first token: when the target being tried has produced no first event ``after``
    seconds from its first send, the next usable target of the chain is started as well; the
    first of the two to produce an event serves and the other call is cancelled. At most one
    hedge per request; off unless set (on a provider, or a task, which wins)."""

    after: Seconds


class Retry(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Retries of one target. ``attempts``: tries per target (1 = no retry). Seconds:
    ``initial_wait`` (first backoff, doubled per retry, plus jitter), ``max_wait`` (cap on one wait;
    a longer Retry-After moves to the next target instead), ``max_total_wait`` (cap on all waits of
    one request, across its targets)."""

    attempts: Count | None = None
    initial_wait: Wait | None = None
    max_wait: Wait | None = None
    max_total_wait: Wait | None = None


DEFAULT_RETRY = Retry(attempts=3, initial_wait=0.5, max_wait=10, max_total_wait=30)


class Cooldown(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Circuit breaker per target: after ``failures`` retryable failures in a row within ``window``
    seconds (a success in between starts the count again) the target is skipped for ``duration``
    seconds; then one probe request is let through (half-open). A failed probe re-opens it for
    ``duration`` times ``backoff`` per repeated trip (``backoff`` 1, the default: no growth), at
    most ``max_duration``."""

    failures: Count | None = None
    window: Seconds | None = None
    duration: Seconds | None = None
    max_duration: Seconds | None = None
    backoff: Annotated[float, msgspec.Meta(ge=1)] | None = None


DEFAULT_COOLDOWN = Cooldown(failures=3, window=30, duration=30, max_duration=300, backoff=1.0)


def overlay(*layers: Any) -> Any:
    """Merge Structs of one type: later layers' non-``None`` fields win (defaults first)."""
    base = layers[0]
    values = {f: getattr(base, f) for f in base.__struct_fields__}
    for layer in layers[1:]:
        if layer is None:
            continue
        for f in layer.__struct_fields__:
            v = getattr(layer, f)
            if v is not None:
                values[f] = v
    return type(base)(**values)


class Provider(msgspec.Struct, forbid_unknown_fields=True):
    """One upstream endpoint speaking one wire protocol.

    ``protocol``: ``openai`` (POST {base_url}/chat/completions) or ``anthropic``
    (POST {base_url}/v1/messages). ``api_key``: after interpolation; ``None`` when its variable
    is unset (then ``unusable_reason`` says so). ``headers``: extra request headers. ``limits``:
    the provider's upstream quota, shared by every replica (a target over it is skipped).
    ``queue_share``: the fraction (0..1] of each of those quotas (the provider's and its
    models') that queued async work may use, paced evenly, so a backlog never starves
    interactive callers.
    ``stream_upstream``: the router asks this provider for a stream also for a non-streamed
    caller (and folds it), so ``first_token``, ``idle`` and hedging protect both; ``false``
    sends non-streamed calls as such, bounded by ``timeouts.total`` alone.
    """

    protocol: Literal["openai", "anthropic"]
    base_url: str
    models: dict[str, ModelSpec]
    api_key: str | None = None
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    timeouts: Timeouts | None = None
    retry: Retry | None = None
    cooldown: Cooldown | None = None
    limits: Limits | None = None
    hedge: Hedge | None = None
    stream_upstream: bool = True
    queue_share: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.5
    budget: Budget | None = None
    unusable_reason: str | None = msgspec.field(default=None, name="_unusable_reason")


class Params(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, frozen=True):
    """Generation defaults for a task; a request's own value wins."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] | None = None
    thinking: bool | None = None


class Example(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One few-shot pair of a typed task: ``input`` (an object, as a request's) and the
    ``output`` it should give (an object under ``output_schema``, else text)."""

    input: dict[str, Any]
    output: Any


class Variant(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One arm of an experiment: its own ``chain`` (falls back like any chain), ``params`` over the
    task's, a relative ``weight``, and optionally its own prompt: ``system``, ``user`` and
    ``examples`` over the task's (an A/B of two prompts on one model)."""

    chain: list[str]
    weight: Annotated[float, msgspec.Meta(gt=0)]
    params: Params | None = None
    system: str | None = None
    user: str | None = None
    examples: list[Example] | None = None


class Experiment(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Weighted variants of a task. ``sticky_by``: the request field (``metadata.<key>``) whose
    value keeps a caller on one variant; requests without it are assigned at random."""

    variants: dict[str, Variant]
    sticky_by: Annotated[str, msgspec.Meta(pattern=r"^metadata\.[A-Za-z0-9_.-]+$")] = "metadata.user"


class Shadow(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Mirror a ``sample`` fraction (0..1) of the task's requests to ``target`` in the background."""

    target: str
    sample: Annotated[float, msgspec.Meta(ge=0, le=1)]
    max_in_flight: Count = 16


class Task(msgspec.Struct, forbid_unknown_fields=True):
    """A task type: ``chain`` of ``provider/model`` targets tried in order, and ``params``.

    ``timeouts``/``retry`` override the providers' fields one by one. ``midstream``: what a stream
    does when its target fails after output began: ``error`` (end with an error event) or
    ``restart`` (a ``fallback`` event, then the next target from the start). ``limits``: per
    caller, for this task (on top of the global per-caller limits). ``cache``: opt-in response cache.
    ``experiment``: weighted variants, each with its own chain. ``shadow``: background mirror traffic.
    ``fallback_on``: failures routed around that otherwise go back to the caller:
    ``content_filter`` (a provider's content filter refused the request; by default the caller
    gets that refusal, a 400, rather than the next provider's answer). ``hedge``: over the
    providers' own ``hedge``.

    ``cache_prompt``: mark the system prompt and the tools as a prompt-cache breakpoint (Anthropic
    ``cache_control``; GLM caches by itself). ``budget``: USD per day/month for the task.

    Typed tasks (``router.prompts``): ``system`` and ``user`` are Jinja2 templates over the
    request's ``input`` object, ``input_schema`` checks that input (a 400 naming the JSON path
    when it fails), ``output_schema`` is asked of every target and checked on the answer (an
    invalid answer is the target's failure, ``invalid_output``), ``examples`` are few-shot pairs.
    """

    chain: list[str]
    params: Params = Params()
    system: str | None = None
    user: str | None = None
    input_schema: dict[str, Any] | None = None
    output_schema: dict[str, Any] | None = None
    examples: list[Example] | None = None
    timeouts: Timeouts | None = None
    retry: Retry | None = None
    midstream: Literal["error", "restart"] = "error"
    limits: Limits | None = None
    cache: CachePolicy | None = None
    experiment: Experiment | None = None
    shadow: Shadow | None = None
    fallback_on: list[Literal["content_filter"]] = []
    hedge: Hedge | None = None
    budget: Budget | None = None
    cache_prompt: bool = False


KeyHash = Annotated[str, msgspec.Meta(pattern=r"^sha256:[0-9a-f]{64}$")]


class Tenant(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A calling service: its API keys as SHA-256 hashes (``llm-router hash-key`` prints one), the
    tasks it may use (``None``: every task), its own RPM/TPM (instead of ``limits.per_caller``)
    and ``callback_secret``, the key that signs its async tasks' callbacks (``${VAR}``)."""

    keys: list[KeyHash]
    tasks: list[str] | None = None
    limits: Limits | None = None
    callback_secret: str | None = None
    budget: Budget | None = None


class QueueConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Async tasks and batches (``router.queue``). ``workers``: tasks one replica runs at once (0:
    an API-only replica that queues but never runs). Seconds: ``visibility_timeout`` (a task
    whose worker stopped renewing its claim this long ago is run again by another replica),
    ``result_ttl`` (how long a task, its answer and a batch are kept), ``callback_max_age`` (how
    long a failing callback is retried). ``callback_secret``: signs callbacks of callers that are
    not tenants (``${VAR}``)."""

    workers: Annotated[int, msgspec.Meta(ge=0, le=1024)] = 8
    visibility_timeout: Seconds = 60.0
    result_ttl: Seconds = 86400.0
    callback_max_age: Seconds = 86400.0
    callback_secret: str | None = None


class GlobalLimits(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``per_caller``: the default RPM/TPM of every caller, across tasks."""

    per_caller: Limits | None = None


class Cors(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Cross-origin access for browser front ends: ``allow_origins`` (``["*"]`` for any),
    ``allow_headers`` the request headers a page may send, ``allow_credentials`` whether
    cookies/auth may ride along, ``max_age`` seconds a browser may cache a preflight answer."""

    allow_origins: list[str]
    allow_headers: list[str] = msgspec.field(default_factory=lambda: ["*"])
    allow_credentials: bool = False
    max_age: Annotated[int, msgspec.Meta(ge=0)] = 600


class RoutingConfig(msgspec.Struct, forbid_unknown_fields=True):
    """The whole file. ``version`` is 1. ``source`` / ``digest`` say where it came from.
    ``on_store_error``: when the store (Redis) fails, ``allow`` requests past the limits or
    ``deny`` them (429). ``tenants`` turn authentication on; ``admin_keys`` (SHA-256 hashes) open
    the admin endpoints then. ``log_content``: put prompts and outputs in the request log lines
    (off by default). ``cors``: cross-origin access (off when absent). ``aliases``: names clients
    already send as ``model`` (``gpt-4o-mini``, ``claude-3-5-haiku-latest``) -> a task or a
    ``provider/model``."""

    providers: dict[str, Provider]
    tasks: dict[str, Task]
    version: int = 1
    limits: GlobalLimits = GlobalLimits()
    on_store_error: Literal["allow", "deny"] = "allow"
    tenants: dict[str, Tenant] = {}
    admin_keys: list[str] = []
    log_content: bool = False
    cors: Cors | None = None
    aliases: dict[str, str] = {}
    queue: QueueConfig = QueueConfig()
    source: str = msgspec.field(default="<memory>", name="_source")
    digest: str = msgspec.field(default="", name="_digest")

    def model(self, target: str) -> tuple[str, Provider, str, ModelSpec]:
        """Resolve ``provider/model`` to (provider name, Provider, model name, ModelSpec)."""
        pname, _, mname = target.partition("/")
        p = self.providers[pname]
        return pname, p, mname, p.models[mname]
