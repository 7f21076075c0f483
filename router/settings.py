"""The process environment, read once: ``Settings.from_env()`` -> ``create_app(config, settings)``.

Nothing else in the service reads ``os.environ`` for its own behaviour (routing.yaml's ``${VAR}``
interpolation reads the variables the config names; OpenTelemetry's SDK reads its own ``OTEL_*``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import msgspec

__all__ = ["DEFAULT_MAX_BODY_BYTES", "Settings"]

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """``redis_url`` (``REDIS_URL``; None: in-memory stores), ``redis_prefix`` (``REDIS_PREFIX``,
    key prefix), ``redis_timeout`` (seconds per store call, ``REDIS_TIMEOUT_MS`` / 1000),
    ``max_connections`` (per provider per worker, ``LLM_ROUTER_MAX_CONNECTIONS``: every open
    stream holds one, and a request beyond the cap waits up to its connect timeout),
    ``telemetry`` (``LLM_ROUTER_TELEMETRY=off`` turns the per-request record off), ``max_body_bytes``
    (``LLM_ROUTER_MAX_BODY_BYTES``: larger request bodies get 413, an ``Expect: 100-continue``
    request at once), ``read_timeout`` (seconds, ``LLM_ROUTER_READ_TIMEOUT``: a request's headers,
    and then its body, must arrive within it, else 408), ``drain_grace`` (seconds,
    ``LLM_ROUTER_DRAIN_GRACE``, default 5: after SIGTERM, ``/readyz`` answers 503 this long while
    everything is still served, so a load balancer stops sending first) and ``drain_timeout``
    (seconds, ``LLM_ROUTER_DRAIN_TIMEOUT``, default 30: then in-flight requests and streams get
    this long to finish). The console (``/ui``): ``reports_dir`` (``LLM_ROUTER_REPORTS_DIR``: the
    directory whose ``compare`` output directories it may open by name; None: upload only) and
    ``trace_url`` (``LLM_ROUTER_TRACE_URL``: a link template with ``{trace_id}``, e.g. Jaeger's
    ``http://jaeger:16686/trace/{trace_id}``; None: trace ids are shown, not linked)."""

    redis_url: str | None = None
    redis_prefix: str = "llmr"
    redis_timeout: float = 0.05
    max_connections: int = 10_000
    telemetry: bool = True
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    read_timeout: float = 30.0
    drain_grace: float = 5.0
    drain_timeout: float = 30.0
    reports_dir: str | None = None
    trace_url: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the variables above from ``env`` (default ``os.environ``); raises ``ValueError``
        naming a variable that is not a number."""
        e = os.environ if env is None else env

        def number(name: str, default: float) -> float:
            raw = e.get(name)
            try:
                return float(raw) if raw else default
            except ValueError:
                raise ValueError(f"{name} must be a number, got {raw!r}") from None

        return cls(redis_url=e.get("REDIS_URL") or None, redis_prefix=e.get("REDIS_PREFIX") or "llmr",
                   redis_timeout=number("REDIS_TIMEOUT_MS", 50) / 1000,
                   max_connections=int(number("LLM_ROUTER_MAX_CONNECTIONS", 10_000)),
                   telemetry=e.get("LLM_ROUTER_TELEMETRY") != "off",
                   max_body_bytes=int(number("LLM_ROUTER_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES)),
                   read_timeout=number("LLM_ROUTER_READ_TIMEOUT", 30),
                   drain_grace=number("LLM_ROUTER_DRAIN_GRACE", 5), drain_timeout=number("LLM_ROUTER_DRAIN_TIMEOUT", 30),
                   reports_dir=e.get("LLM_ROUTER_REPORTS_DIR") or None, trace_url=e.get("LLM_ROUTER_TRACE_URL") or None)
