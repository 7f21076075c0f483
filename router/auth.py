"""Tenants and their API keys.

Keys are stored only as SHA-256 hashes (``sha256:<hex>``; ``llm-router hash-key`` prints one). A
request presents its key as ``Authorization: Bearer <key>`` or ``x-api-key: <key>`` (the Anthropic
door's header); its hash is looked up, so a key is never compared or logged in the clear. With no
tenants configured, authentication is off (the log says so at startup) and the caller is the
``X-Caller`` header or the client address.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from router.config import Limits, RoutingConfig
from router.errors import Forbidden, Unauthorized

__all__ = ["Authenticator", "hash_key"]


def hash_key(key: str) -> str:
    """``sha256:<64 hex digits>`` of an API key, as routing.yaml stores it."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def _presented(headers: Mapping[str, str]) -> str | None:
    auth = headers.get("authorization")
    if auth and auth[:7].lower() == "bearer " and auth[7:].strip():
        return auth[7:].strip()
    key = headers.get("x-api-key")
    return key.strip() if key and key.strip() else None


class Authenticator:
    """Resolves request headers to a tenant for one ``RoutingConfig``."""

    def __init__(self, config: RoutingConfig) -> None:
        self.enabled = bool(config.tenants)
        self._by_hash = {k: name for name, t in config.tenants.items() for k in t.keys}
        self._tasks = {name: set(t.tasks) if t.tasks is not None else None for name, t in config.tenants.items()}
        self._limits = {name: t.limits for name, t in config.tenants.items()}
        self._admin = set(config.admin_keys)

    def identify(self, headers: Mapping[str, str]) -> str | None:
        """The calling tenant; ``None`` when authentication is off. Raises ``Unauthorized`` (no
        key, or a key of no tenant)."""
        if not self.enabled:
            return None
        key = _presented(headers)
        if key is None:
            raise Unauthorized("an API key is required: Authorization: Bearer <key> or x-api-key")
        name = self._by_hash.get(hash_key(key))
        if name is None:
            raise Unauthorized("the API key is not valid")
        return name

    def allow(self, tenant: str | None, task: str) -> None:
        """Raises ``Forbidden`` when ``tenant`` may not use ``task``."""
        if tenant is None:
            return
        allowed = self._tasks[tenant]
        if allowed is not None and task not in allowed:
            raise Forbidden(f"tenant {tenant!r} may not use {task!r}; it may use: {', '.join(sorted(allowed))}")

    def limits(self, tenant: str) -> Limits | None:
        """The tenant's own RPM/TPM (``None``: the global per-caller default applies)."""
        return self._limits.get(tenant)

    def admin(self, headers: Mapping[str, str]) -> None:
        """Admin endpoints: open while authentication is off; else an admin key is needed.
        Raises ``Unauthorized`` or ``Forbidden``."""
        if not self.enabled:
            return
        key = _presented(headers)
        if key is None:
            raise Unauthorized("an admin API key is required")
        if hash_key(key) not in self._admin:
            raise Forbidden("this endpoint needs an admin key")
