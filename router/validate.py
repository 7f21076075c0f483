"""What ``llm-router validate`` says beyond errors: warnings an operator should see, and the
effective config with secrets redacted (``--show``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import msgspec

from router.config import RoutingConfig
from router.prompts import prompt_problems, spec_of

__all__ = ["redacted", "warnings"]

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")


def warnings(config: RoutingConfig, text: str, env: Mapping[str, str]) -> list[str]:
    """Environment variables referenced but unset (and without a default), template variables a
    typed task's input schema does not declare, models without a price, providers that do not stream upstream, chains whose targets all share one provider (no real fallback), and, when tenants exist,
    tasks no tenant may use."""
    out = []
    for m in _VAR.finditer(text):
        if not env.get(m.group(1)) and m.group(2) is None:
            out.append(f"environment variable {m.group(1)} is referenced but not set")
    for pname, p in config.providers.items():
        if not p.stream_upstream:
            out.append(f"providers.{pname}.stream_upstream: false; its non-streamed calls have no first-token "
                       "or idle timeout and no hedge, only timeouts.total")
        for mname, spec in p.models.items():
            if spec.price is None:
                out.append(f"providers.{pname}.models.{mname}: no price; its cost will be reported as 0")
    for tname, task in config.tasks.items():
        out += prompt_problems(spec_of(task), f"tasks.{tname}")[1]
        for vname, v in (task.experiment.variants.items() if task.experiment else ()):
            if v.system is not None or v.user is not None:
                vwhere = f"tasks.{tname}.experiment.variants.{vname}"
                own = tuple(f"{vwhere}.{k}:" for k in ("system", "user") if getattr(v, k) is not None)
                out += [w for w in prompt_problems(spec_of(task, v), vwhere)[1] if w.startswith(own)]
        providers = {t.partition("/")[0] for t in task.chain}
        if len(providers) == 1:
            out.append(f"tasks.{tname}.chain: every target is on provider {providers.pop()!r}; "
                       "an outage of that provider has no fallback")
    if config.tenants:
        reachable = set()
        for t in config.tenants.values():
            reachable |= set(config.tasks) if t.tasks is None else set(t.tasks)
        for tname in config.tasks:
            if tname not in reachable:
                out.append(f"tasks.{tname}: no tenant may use it")
        if not config.admin_keys:
            out.append("admin_keys: none, so /v1/routes is closed to everyone while tenants exist")
    return list(dict.fromkeys(out))


def redacted(config: RoutingConfig) -> dict[str, Any]:
    """The effective config as builtins, API keys shown only as set/unset, providers' extra
    header values hidden (they carry ``${VAR}`` secrets: tokens, org ids), tenants' key hashes
    counted, not listed."""
    out = msgspec.to_builtins(config)
    for name, p in out["providers"].items():
        p["api_key"] = "<set>" if config.providers[name].api_key else "<unset>"
        p["headers"] = {k: "<set>" for k in p.get("headers") or {}}
    for t in out.get("tenants", {}).values():
        t["keys"] = f"<{len(t['keys'])} key hash(es)>"
        if t.get("callback_secret"):
            t["callback_secret"] = "<set>"
    if out.get("queue", {}).get("callback_secret"):
        out["queue"]["callback_secret"] = "<set>"
    if out.get("admin_keys"):
        out["admin_keys"] = f"<{len(out['admin_keys'])} key hash(es)>"
    return out  # type: ignore[no-any-return]
