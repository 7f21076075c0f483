"""Check an edit before deploying it: a routing.yaml text's problems with their lines, its
warnings, and how its effective chains differ from the live config's. Reads nothing but the text
and the environment; writes nothing (the console never writes routing.yaml).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import msgspec
import yaml

from router.config import RoutingConfig, Task
from router.loading import ConfigError, parse_config
from router.policy import resolve
from router.prompts import task_version
from router.validate import warnings

__all__ = ["MAX_EDIT_BYTES", "chain_diff", "check_edit", "locate", "located"]

MAX_EDIT_BYTES = 512 * 1024
_LINE = re.compile(r"^line (\d+), column (\d+)")
_STEP = re.compile(r"\.?[^.\[]+|\[\d+\]")


def locate(text: str) -> dict[str, int]:
    """Each location of ``text`` (``tasks.x.chain[0]``, as ``ConfigError`` names them) -> its
    1-based line; {} when the text is not YAML."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    out: dict[str, int] = {}

    def walk(node: Any, path: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                here = f"{path}.{key.value}" if path else str(key.value)
                out.setdefault(here, key.start_mark.line + 1)
                walk(value, here)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                here = f"{path}[{i}]"
                out.setdefault(here, item.start_mark.line + 1)
                walk(item, here)

    if root is not None:
        walk(root, "")
    return out


def located(problems: list[str], text: str) -> list[dict[str, Any]]:
    """``location: message`` problems as ``{location, line, message}`` (line: of the location
    or its nearest enclosing key in ``text``; None when unknown)."""
    lines = locate(text)
    out = []
    for p in problems:
        where, sep, message = p.partition(": ")
        if not sep:
            where, message = "", p
        line: int | None = None
        m = _LINE.match(where)
        if m:
            line = int(m.group(1))
        else:
            steps = _STEP.findall(where)
            while steps and line is None:
                line = lines.get("".join(steps).lstrip("."))
                steps.pop()
        out.append({"location": where, "line": line, "message": message})
    return out


def _task_view(config: RoutingConfig, task: Task) -> dict[str, Any]:
    """What a task resolves to: its chain, variants, shadow and each target's effective policy."""
    targets = list(dict.fromkeys([*task.chain, *(t for v in (task.experiment.variants.values() if task.experiment else ())
                                                 for t in v.chain)]))
    policies = {}
    for t in targets:
        provider = config.providers.get(t.partition("/")[0])
        if provider is not None:
            policies[t] = msgspec.to_builtins(resolve(provider, task))
    return {"chain": list(task.chain),
            "variants": {n: {"chain": list(v.chain), "weight": v.weight}
                         for n, v in (task.experiment.variants.items() if task.experiment else ())},
            "shadow": msgspec.to_builtins(task.shadow) if task.shadow else None,
            "policies": policies, "task_version": task_version(task),
            "settings": {k: msgspec.to_builtins(getattr(task, k)) for k in
                         ("params", "cache", "limits", "budget", "midstream", "fallback_on")}}


def _flat(obj: Any, path: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{path}.{k}" if path else str(k)))
        return out
    return {path: obj}


def chain_diff(live: RoutingConfig, new: RoutingConfig) -> list[dict[str, Any]]:
    """Per task in either config: ``change`` (added, removed, changed, same), the live and new
    effective chains (with variants and shadow), and ``changes`` as ``what: old -> new`` lines
    (chain order, variants and weights, shadow, per-target policies, params, cache, limits,
    budget, and a changed prompt definition as a new ``task_version``)."""
    out: list[dict[str, Any]] = []
    for name in sorted(set(live.tasks) | set(new.tasks)):
        a = _task_view(live, live.tasks[name]) if name in live.tasks else None
        b = _task_view(new, new.tasks[name]) if name in new.tasks else None
        if a is None or b is None:
            out.append({"task": name, "change": "added" if a is None else "removed", "live": a, "new": b, "changes": []})
            continue
        fa, fb = _flat(a), _flat(b)
        changes = [f"{k}: {_show(fa.get(k))} -> {_show(fb.get(k))}" for k in sorted(set(fa) | set(fb))
                   if fa.get(k) != fb.get(k)]
        out.append({"task": name, "change": "changed" if changes else "same", "live": a, "new": b, "changes": changes})
    return out


def _show(v: Any) -> str:
    return "(none)" if v is None else msgspec.json.encode(v).decode()


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}")


def _redact(obj: dict[str, Any], values: Mapping[str, str]) -> dict[str, Any]:
    """``obj`` with every value of ``values`` (a variable's text -> ``${NAME}``) replaced."""
    return _redacted(obj, values)  # type: ignore[no-any-return]


def _redacted(obj: Any, values: Mapping[str, str]) -> Any:
    """``obj`` with every value of ``values`` (a variable's text -> ``${NAME}``) replaced."""
    if isinstance(obj, str):
        for secret, name in values.items():
            obj = obj.replace(secret, name)
        return obj
    if isinstance(obj, dict):
        return {k: _redacted(v, values) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_redacted(v, values) for v in obj]
    return obj


def check_edit(text: str, live: RoutingConfig, env: Mapping[str, str], live_text: str = "") -> dict[str, Any]:
    """``validate`` over an edited routing.yaml, without deploying it: ``valid``, ``problems``
    (``{location, line, message}``), ``warnings``, and ``diff`` (``chain_diff`` against ``live``)
    plus the providers added and removed. ``env`` resolves ``${VAR}`` as the live service would;
    the value (6 characters or more) of every variable the edit or the live file (``live_text``)
    names is shown as ``${VAR}`` wherever it would appear: a problem's message, a diffed setting."""
    names = {m.group(1) for m in _VAR.finditer(text + "\n" + live_text)}
    found_values = {env[n]: f"${{{n}}}" for n in names if len(env.get(n) or "") >= 6}
    values = dict(sorted(found_values.items(), key=lambda kv: -len(kv[0])))  # the longest first
    try:
        config = parse_config(text, env, source="<edit>")
    except ConfigError as e:
        return _redact({"valid": False, "problems": located(e.problems, text), "warnings": [], "diff": None}, values)
    found = warnings(config, text, env)
    return _redact({"valid": True, "problems": [], "warnings": located(found, text),
                    "version": config.digest, "live_version": live.digest,
                    "diff": {"tasks": chain_diff(live, config),
                             "providers": {"added": sorted(set(config.providers) - set(live.providers)),
                                           "removed": sorted(set(live.providers) - set(config.providers))}}}, values)
