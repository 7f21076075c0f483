"""Reading routing.yaml: YAML, ``${VAR}`` interpolation, the Structs of ``router.config``, cross-checks.

``load_config`` reports *every* problem it finds, each with where it is
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
from typing import Any

import msgspec
import yaml

from router.config import (
    Cors,
    GlobalLimits,
    KeyHash,
    ModelSpec,
    Provider,
    QueueConfig,
    RoutingConfig,
    Task,
    Tenant,
)
from router.prompts import prompt_problems, spec_of
from router.request import msgspec_error_path

__all__ = ["ConfigError", "environment", "load_config", "parse_config"]


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


_TOP = ("version", "providers", "tasks", "limits", "on_store_error", "tenants", "admin_keys", "log_content", "cors",
        "aliases", "queue")


def _yaml(text: str) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "yaml"
        raise ConfigError([f"{where}: {getattr(e, 'problem', None) or e}"]) from None
    if not isinstance(raw, dict):
        raise ConfigError(["(top level): expected a mapping with providers and tasks"])
    return raw


def _globals(raw: dict[str, Any], problems: list[str], env: Mapping[str, str]) -> dict[str, Any]:
    """The top-level keys besides providers, tasks and tenants, checked."""
    problems += [f"{key}: unknown key" for key in raw if key not in _TOP]
    extras: dict[str, Any] = {}
    if "limits" in raw:
        extras["limits"] = _convert(raw["limits"], GlobalLimits, "limits", problems)
    if "cors" in raw:
        extras["cors"] = _convert(raw["cors"], Cors, "cors", problems)
    if "queue" in raw:
        queue = _convert(_walk(raw["queue"], env, "queue", problems), QueueConfig, "queue", problems)
        if queue is not None:
            extras["queue"] = queue
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
    if "admin_keys" in raw:
        admin = _convert(raw["admin_keys"], list[KeyHash], "admin_keys", problems)
        if admin is not None:
            extras["admin_keys"] = admin
    if "aliases" in raw:
        aliases = _convert(raw["aliases"], dict[str, str], "aliases", problems)
        if aliases is not None:
            extras["aliases"] = aliases
    return extras


def _check_aliases(aliases: dict[str, str], tasks: Mapping[str, Any], providers: Mapping[str, Provider],
                   problems: list[str]) -> None:
    """Each alias names a task or a ``provider/model``, and is not itself a task's name."""
    for name, to in aliases.items():
        pname, _, mname = to.partition("/")
        if name in tasks:
            problems.append(f"aliases.{name}: is also a task's name; the task would always win")
        elif to not in tasks and not (pname in providers and mname in providers[pname].models):
            problems.append(f"aliases.{name}: {to!r} is neither a task nor a provider/model")


def _mapping(raw: dict[str, Any], key: str, what: str, problems: list[str], required: bool = True) -> dict[str, Any]:
    value = raw.get(key) if required else (raw.get(key) or {})
    if not isinstance(value, dict) or (required and not value):
        problems.append(f"{key}: expected a {'non-empty ' if required else ''}mapping of {what}")
        return {}
    return value


def _provider(name: str, body: Any, env: Mapping[str, str], problems: list[str]) -> Provider | None:
    where = f"providers.{name}"
    if "/" in name:
        problems.append(f"{where}: a provider name must not contain '/'")
    unusable = None
    if isinstance(body, dict) and "_unusable_reason" in body:
        problems.append(f"{where}._unusable_reason: unknown key")
        return None
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
    p: Provider | None = _convert(body, Provider, where, problems)
    if p is None:
        return None
    if not p.base_url.startswith(("http://", "https://")):
        problems.append(f"{where}.base_url: must start with http:// or https://")
    if not p.models:
        problems.append(f"{where}.models: at least one model is needed")
    p.base_url = p.base_url.rstrip("/")
    p.unusable_reason = unusable
    return p


def _task(name: str, body: Any, env: Mapping[str, str], raw_providers: dict[str, Any],
          providers: dict[str, Provider], problems: list[str]) -> Task | None:
    where = f"tasks.{name}"
    t: Task | None = _convert(_walk(body, env, where, problems), Task, where, problems)
    chain = body.get("chain") if isinstance(body, dict) else None
    if isinstance(chain, list):  # checked even when another key of the task is wrong
        _check_chain(chain, where, raw_providers, providers, problems)
    if t is not None and t.experiment is not None:
        if not t.experiment.variants:
            problems.append(f"{where}.experiment.variants: at least one variant is needed")
        for vname, v in t.experiment.variants.items():
            _check_chain(v.chain, f"{where}.experiment.variants.{vname}", raw_providers, providers, problems)
    if t is not None:  # templates compile, schemas are JSON Schema, examples match them
        problems += prompt_problems(spec_of(t), where)[0]
        for vname, v in (t.experiment.variants.items() if t.experiment else ()):
            if v.system is not None or v.user is not None or v.examples is not None:
                vwhere = f"{where}.experiment.variants.{vname}"
                problems += [p for p in prompt_problems(spec_of(t, v), vwhere)[0]  # the task's schemas: reported once
                             if not p.startswith((f"{vwhere}.input_schema", f"{vwhere}.output_schema"))]
    if t is not None and t.shadow is not None:
        pname, _, mname = t.shadow.target.partition("/")
        if pname not in providers or mname not in providers[pname].models:
            problems.append(f"{where}.shadow.target: unknown target {t.shadow.target!r}")
    return t


def _tenants(raw_tenants: dict[str, Any], raw_tasks: dict[str, Any], problems: list[str],
             env: Mapping[str, str]) -> dict[str, Tenant]:
    tenants: dict[str, Tenant] = {}
    seen_keys: dict[str, str] = {}
    for name, body in raw_tenants.items():
        where = f"tenants.{name}"
        t: Tenant | None = _convert(_walk(body, env, where, problems), Tenant, where, problems)
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
    return tenants


def parse_config(text: str, env: Mapping[str, str] | None = None, source: str = "<memory>") -> RoutingConfig:
    """Parse routing.yaml text into a checked ``RoutingConfig``.

    ``env`` defaults to ``os.environ``. Raises ``ConfigError`` listing every problem found:
    YAML syntax (with line and column), unknown keys, wrong types, bad chains.
    """
    env = os.environ if env is None else env
    problems: list[str] = []
    raw = _yaml(text)
    extras = _globals(raw, problems, env)
    raw_providers = _mapping(raw, "providers", "provider name to provider", problems)
    providers = {str(n): p for n, body in raw_providers.items()
                 if (p := _provider(str(n), body, env, problems)) is not None}
    raw_tasks = _mapping(raw, "tasks", "task name to task", problems)
    tasks = {str(n): t for n, body in raw_tasks.items()
             if (t := _task(str(n), body, env, raw_providers, providers, problems)) is not None}
    tenants = _tenants(_mapping(raw, "tenants", "tenant name to tenant", problems, required=False), raw_tasks, problems,
                       env)
    if tenants:
        extras["tenants"] = tenants
    _check_aliases(extras.get("aliases", {}), raw_tasks, providers, problems)
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
