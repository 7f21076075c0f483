"""routing.yaml: strict msgspec Structs, ``${VAR}`` interpolation, cross-checks.

Shape (DESIGN.md, "routing.yaml"): ``providers`` (protocol, base_url, api_key, models with
context_window and price in USD per 1M tokens) and ``tasks`` (chain of ``provider/model``, params).
Unknown keys are errors. ``load_config`` reports *every* problem it finds, each with where it is
(``tasks.quick_summary.chain[1]: unknown provider 'glmx'``), by raising ``ConfigError``.

``${VAR}`` and ``${VAR:-default}`` are substituted in string values from the environment. A
provider whose ``api_key`` names an unset variable does not stop loading: its targets are
*unusable*, with ``Provider.unusable_reason`` saying which variable is missing.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec
import yaml

from router.request import msgspec_error_path

__all__ = [
    "CachePolicy",
    "ConfigError",
    "Cooldown",
    "Cors",
    "Experiment",
    "GlobalLimits",
    "Limits",
    "ModelSpec",
    "Params",
    "Price",
    "Provider",
    "Retry",
    "RoutingConfig",
    "Shadow",
    "Task",
    "Tenant",
    "Timeouts",
    "Variant",
    "environment",
    "load_config",
    "overlay",
    "parse_config",
]


Seconds = Annotated[float, msgspec.Meta(gt=0)]
Wait = Annotated[float, msgspec.Meta(ge=0)]
Count = Annotated[int, msgspec.Meta(ge=1)]


class Price(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """USD per 1M tokens. ``cached_input``: prompt tokens read from the provider's cache, where it
    bills them differently (default: ``input``). Reasoning tokens are output tokens, as both
    providers bill them."""

    input: float
    output: float
    cached_input: float | None = None

    def cost(self, input_tokens: int, output_tokens: int, cached_tokens: int = 0) -> float:
        """USD for these tokens: uncached input at ``input``, cached input at ``cached_input``
        (else ``input``), output (reasoning included) at ``output``; prices are per 1M tokens."""
        cached = min(cached_tokens, input_tokens)
        cached_price = self.cached_input if self.cached_input is not None else self.input
        return round(((input_tokens - cached) * self.input + cached * cached_price
                      + output_tokens * self.output) / 1e6, 10)


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
    Source: Anthropic's extended/adaptive thinking docs.
    """

    context_window: Count
    price: Price | None = None
    thinking: Literal["budget", "adaptive"] = "budget"
    sampling: bool = True
    limits: Limits | None = None


class Timeouts(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Seconds. ``first_token``: from sending to the first event; ``idle``: the longest gap between
    chunks; ``total``: the whole upstream call."""

    connect: Seconds | None = None
    first_token: Seconds | None = None
    idle: Seconds | None = None
    total: Seconds | None = None


DEFAULT_TIMEOUTS = Timeouts(connect=5, first_token=60, idle=30, total=600)


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
    seconds the target is skipped for ``duration`` seconds, doubled on each repeated trip up to
    ``max_duration``; then one probe request is let through (half-open)."""

    failures: Count | None = None
    window: Seconds | None = None
    duration: Seconds | None = None
    max_duration: Seconds | None = None


DEFAULT_COOLDOWN = Cooldown(failures=3, window=30, duration=30, max_duration=300)


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
    unusable_reason: str | None = msgspec.field(default=None, name="_unusable_reason")


class Params(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, frozen=True):
    """Generation defaults for a task; a request's own value wins."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] | None = None
    thinking: bool | None = None


class Variant(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One arm of an experiment: its own ``chain`` (falls back like any chain), ``params`` over the
    task's, and a relative ``weight``."""

    chain: list[str]
    weight: Annotated[float, msgspec.Meta(gt=0)]
    params: Params | None = None


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
    """

    chain: list[str]
    params: Params = Params()
    timeouts: Timeouts | None = None
    retry: Retry | None = None
    midstream: Literal["error", "restart"] = "error"
    limits: Limits | None = None
    cache: CachePolicy | None = None
    experiment: Experiment | None = None
    shadow: Shadow | None = None


KeyHash = Annotated[str, msgspec.Meta(pattern=r"^sha256:[0-9a-f]{64}$")]


class Tenant(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A calling service: its API keys as SHA-256 hashes (``llm-router hash-key`` prints one), the
    tasks it may use (``None``: every task) and its own RPM/TPM (instead of ``limits.per_caller``)."""

    keys: list[KeyHash]
    tasks: list[str] | None = None
    limits: Limits | None = None


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
    (off by default). ``cors``: cross-origin access (off when absent)."""

    providers: dict[str, Provider]
    tasks: dict[str, Task]
    version: int = 1
    limits: GlobalLimits = GlobalLimits()
    on_store_error: Literal["allow", "deny"] = "allow"
    tenants: dict[str, Tenant] = {}
    admin_keys: list[str] = []
    log_content: bool = False
    cors: Cors | None = None
    source: str = msgspec.field(default="<memory>", name="_source")
    digest: str = msgspec.field(default="", name="_digest")

    def model(self, target: str) -> tuple[str, Provider, str, ModelSpec]:
        """Resolve ``provider/model`` to (provider name, Provider, model name, ModelSpec)."""
        pname, _, mname = target.partition("/")
        p = self.providers[pname]
        return pname, p, mname, p.models[mname]


class ConfigError(Exception):
    """routing.yaml is unusable. ``problems`` lists each as ``location: what is wrong``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Unset(Exception):
    def __init__(self, var: str) -> None:
        self.var = var


def _interpolate(value: str, env: Mapping[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        var, default = m.group(1), m.group(2)
        got = env.get(var)
        if got:
            return got
        if default is not None:
            return default
        raise _Unset(var)

    return _VAR_RE.sub(sub, value)


def _walk(obj: Any, env: Mapping[str, str], where: str, problems: list[str]) -> Any:
    """Interpolate every string; an unset variable outside an api_key is a problem."""
    if isinstance(obj, dict):
        return {k: _walk(v, env, f"{where}.{k}" if where else str(k), problems) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_walk(v, env, f"{where}[{i}]", problems) for i, v in enumerate(obj)]
    if isinstance(obj, str) and "${" in obj:
        try:
            return _interpolate(obj, env)
        except _Unset as u:
            if where.endswith(".api_key"):
                raise
            problems.append(f"{where}: environment variable {u.var} is not set")
            return obj
    return obj


def _convert(obj: Any, typ: type, where: str, problems: list[str]) -> Any:
    try:
        return msgspec.convert(obj, typ)
    except msgspec.ValidationError as e:
        msg, path = msgspec_error_path(e)
        loc = where + ("." + path if path and not path.startswith("[") else (path or ""))
        problems.append(f"{loc}: {msg}")
        return None


def _check_chain(chain: list[Any], where: str, raw_providers: dict[str, Any],
                 providers: dict[str, Provider], problems: list[str]) -> None:
    if not chain:
        problems.append(f"{where}.chain: must name at least one target")
    for i, target in enumerate(chain):
        pname, sep, mname = str(target).partition("/")
        if not isinstance(target, str) or not sep or not pname or not mname:
            problems.append(f"{where}.chain[{i}]: {target!r} is not provider/model")
        elif pname not in raw_providers:
            problems.append(f"{where}.chain[{i}]: unknown provider {pname!r}")
        elif pname in providers and mname not in providers[pname].models:
            problems.append(f"{where}.chain[{i}]: provider {pname!r} has no model {mname!r}")
    if len(set(map(str, chain))) != len(chain):
        problems.append(f"{where}.chain: a target appears twice")


def parse_config(text: str, env: Mapping[str, str] | None = None, source: str = "<memory>") -> RoutingConfig:
    """Parse routing.yaml text into a checked ``RoutingConfig``.

    ``env`` defaults to ``os.environ``. Raises ``ConfigError`` listing every problem found:
    YAML syntax (with line and column), unknown keys, wrong types, bad chains.
    """
    env = os.environ if env is None else env
    problems: list[str] = []
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "yaml"
        raise ConfigError([f"{where}: {getattr(e, 'problem', None) or e}"]) from None
    if not isinstance(raw, dict):
        raise ConfigError(["(top level): expected a mapping with providers and tasks"])
    for key in raw:
        if key not in ("version", "providers", "tasks", "limits", "on_store_error", "tenants", "admin_keys",
                       "log_content", "cors"):
            problems.append(f"{key}: unknown key")
    extras: dict[str, Any] = {}
    if "limits" in raw:
        extras["limits"] = _convert(raw["limits"], GlobalLimits, "limits", problems)
    if "cors" in raw:
        extras["cors"] = _convert(raw["cors"], Cors, "cors", problems)
    if "log_content" in raw:
        if not isinstance(raw["log_content"], bool):
            problems.append("log_content: expected true or false")
        else:
            extras["log_content"] = raw["log_content"]
    if "on_store_error" in raw:
        if raw["on_store_error"] not in ("allow", "deny"):
            problems.append(f"on_store_error: expected allow or deny, got {raw['on_store_error']!r}")
        else:
            extras["on_store_error"] = raw["on_store_error"]
    if raw.get("version", 1) != 1:
        problems.append(f"version: unsupported version {raw.get('version')!r}; expected 1")

    providers: dict[str, Provider] = {}
    raw_providers = raw.get("providers")
    if not isinstance(raw_providers, dict) or not raw_providers:
        problems.append("providers: expected a non-empty mapping of provider name to provider")
        raw_providers = {}
    for name, body in raw_providers.items():
        where = f"providers.{name}"
        if "/" in str(name):
            problems.append(f"{where}: a provider name must not contain '/'")
        unusable = None
        if isinstance(body, dict) and "_unusable_reason" in body:
            problems.append(f"{where}._unusable_reason: unknown key")
            continue
        if isinstance(body, dict) and isinstance(body.get("api_key"), str):
            try:
                body = {**body, "api_key": _interpolate(body["api_key"], env)}
            except _Unset as u:
                body = {**body, "api_key": None}
                unusable = f"api_key: environment variable {u.var} is not set"
        body = _walk(body, env, where, problems)
        if isinstance(body, dict) and isinstance(body.get("models"), dict):
            # one by one, so a problem names its model (msgspec says `models[...]`)
            body = {**body, "models": {m: spec for m, spec in body["models"].items()
                                       if _convert(spec, ModelSpec, f"{where}.models.{m}", problems)}}
        p = _convert(body, Provider, where, problems)
        if p is None:
            continue
        if not p.base_url.startswith(("http://", "https://")):
            problems.append(f"{where}.base_url: must start with http:// or https://")
        if not p.models:
            problems.append(f"{where}.models: at least one model is needed")
        p.base_url = p.base_url.rstrip("/")
        p.unusable_reason = unusable
        providers[str(name)] = p

    tasks: dict[str, Task] = {}
    raw_tasks = raw.get("tasks")
    if not isinstance(raw_tasks, dict) or not raw_tasks:
        problems.append("tasks: expected a non-empty mapping of task name to task")
        raw_tasks = {}
    for name, body in raw_tasks.items():
        where = f"tasks.{name}"
        t = _convert(_walk(body, env, where, problems), Task, where, problems)
        chain = body.get("chain") if isinstance(body, dict) else None
        if isinstance(chain, list):  # checked even when another key of the task is wrong
            _check_chain(chain, where, raw_providers, providers, problems)
        if t is not None and t.experiment is not None:
            if not t.experiment.variants:
                problems.append(f"{where}.experiment.variants: at least one variant is needed")
            for vname, v in t.experiment.variants.items():
                _check_chain(v.chain, f"{where}.experiment.variants.{vname}", raw_providers, providers, problems)
        if t is not None and t.shadow is not None:
            pname, _, mname = t.shadow.target.partition("/")
            if pname not in providers or mname not in providers[pname].models:
                problems.append(f"{where}.shadow.target: unknown target {t.shadow.target!r}")
        if t is not None:
            tasks[str(name)] = t
    tenants: dict[str, Tenant] = {}
    raw_tenants = raw.get("tenants") or {}
    if not isinstance(raw_tenants, dict):
        problems.append("tenants: expected a mapping of tenant name to tenant")
        raw_tenants = {}
    seen_keys: dict[str, str] = {}
    for name, body in raw_tenants.items():
        where = f"tenants.{name}"
        t = _convert(body, Tenant, where, problems)
        if t is None:
            continue
        for i, task in enumerate(t.tasks or ()):
            if task not in raw_tasks:
                problems.append(f"{where}.tasks[{i}]: unknown task {task!r}")
        for i, k in enumerate(t.keys):
            if k in seen_keys:
                problems.append(f"{where}.keys[{i}]: the same key is also tenant {seen_keys[k]!r}'s")
            seen_keys[k] = str(name)
        tenants[str(name)] = t
    if tenants:
        extras["tenants"] = tenants
    if "admin_keys" in raw:
        admin = _convert(raw["admin_keys"], list[KeyHash], "admin_keys", problems)
        if admin is not None:
            extras["admin_keys"] = admin
    if problems:
        raise ConfigError(problems)
    return RoutingConfig(providers=providers, tasks=tasks, source=source,
                         digest=hashlib.sha256(text.encode()).hexdigest()[:16], **extras)


def environment(config_path: str) -> dict[str, str]:
    """The variables ``${VAR}`` reads: ``.env`` beside the config, then ``.env.local`` over it
    (the layering Z.ai's GLM integration guide uses), then the process environment over both."""
    from dotenv import dotenv_values

    here = os.path.dirname(os.path.abspath(config_path))
    env: dict[str, str] = {}
    for name in (".env", ".env.local"):
        env.update({k: v for k, v in dotenv_values(os.path.join(here, name)).items() if v is not None})
    env.update(os.environ)
    return env


def load_config(path: str, env: Mapping[str, str] | None = None) -> RoutingConfig:
    """Read and parse routing.yaml at ``path``; raises ``ConfigError`` (unreadable file included).
    ``env`` defaults to ``environment(path)`` (process environment over ``.env.local`` over ``.env``)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError([f"{path}: cannot read: {e.strerror}"]) from None
    return parse_config(text, environment(path) if env is None else env, source=path)
