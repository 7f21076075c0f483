"""The router's one error tree.

Every error the service raises or reports is a ``RouterError``; each knows its HTTP status,
its error ``type`` (the JSON ``error.type``), and whether trying again could help::

    RouterError                      500 internal_error
    ├── RequestError                 400 invalid_request_error   (``path`` names the field)
    │   └── PayloadTooLarge          413 request_too_large
    ├── Unauthorized                 401 authentication_error    (no key, or an unknown one)
    ├── Forbidden                    403 permission_error        (the tenant may not use this)
    ├── UnknownTask                  404 not_found_error         (message lists the known tasks)
    ├── RateLimited                  429 rate_limit_error        (the caller is over a limit)
    ├── UpstreamError                502 upstream_error          (one failed call to one target)
    │   ├── UpstreamHTTPError            an HTTP error status and its decoded body
    │   ├── UpstreamConnectError         could not connect / connection reset before a byte
    │   ├── UpstreamTimeout          504 a connect, first-token, idle or total timeout
    │   ├── UpstreamStreamError          a stream cut, malformed, or ended by an error event
    │   └── TargetUnusable           503 not callable at all (e.g. its API key is unset)
    └── AllTargetsFailed             502/503/504/429 by the nature of the failures

Lower-level errors (aiohttp's) are converted to these in exactly one place:
``router.transport``. Errors are facts once raised: nothing adds to them on the way up (the retry
policy returns its retries beside the error, in ``router.retry.Tried``). Provider adapters build ``UpstreamHTTPError``/``UpstreamStreamError``
from the provider's own error bodies; they decide ``retryable`` from the provider's codes.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AllTargetsFailed",
    "Forbidden",
    "PayloadTooLarge",
    "RateLimited",
    "RequestError",
    "RouterError",
    "TargetUnusable",
    "Unauthorized",
    "UnknownTask",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamHTTPError",
    "UpstreamStreamError",
    "UpstreamTimeout",
]


class RouterError(Exception):
    """Base of every router error.

    Attributes: ``status`` (HTTP status to answer with), ``type`` (the JSON ``error.type``),
    ``retryable`` (whether the same call could succeed if tried again), ``message``.
    """

    status: int = 500
    type: str = "internal_error"
    retryable: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_body(self) -> dict[str, Any]:
        """The JSON error body of DESIGN.md: ``{"error": {"type", "message", ...}}``."""
        return {"error": {"type": self.type, "message": self.message}}


class RequestError(RouterError):
    """Bad input. ``path`` names the offending field (``messages[2].tool_call_id``)."""

    status = 400
    type = "invalid_request_error"

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path

    def to_body(self) -> dict[str, Any]:
        body = super().to_body()
        if self.path is not None:
            body["error"]["path"] = self.path
        return body


class PayloadTooLarge(RequestError):
    """The request body is over the configured limit (bytes)."""

    status = 413
    type = "request_too_large"


class RequestTimeout(RouterError):
    """The caller did not send its request (headers or body) within the read timeout."""

    status = 408
    type = "request_timeout"


class Unauthorized(RouterError):
    """No API key, or one that matches no tenant (the key itself is never echoed)."""

    status = 401
    type = "authentication_error"


class Forbidden(RouterError):
    """The tenant may not use this task, or this endpoint needs an admin key."""

    status = 403
    type = "permission_error"


class UnknownTask(RouterError):
    """Neither a task, an alias, a ``provider/model`` nor a model id of routing.yaml; the message
    lists what ``model`` / ``task`` may name."""

    status = 404
    type = "not_found_error"

    def __init__(self, task: str, known: list[str], aliases: list[str] | None = None,
                 models: list[str] | None = None) -> None:
        text = f"unknown task or model {task!r}; tasks: {', '.join(sorted(known)) or 'none'}"
        if aliases:
            text += f"; aliases: {', '.join(sorted(aliases))}"
        if models:
            text += f"; models (or provider/model): {', '.join(sorted(models))}"
        super().__init__(text)
        self.task = task
        self.path = "task"

    def to_body(self) -> dict[str, Any]:
        body = super().to_body()
        body["error"]["path"] = "task"
        return body


class RateLimited(RouterError):
    """The caller is over one of its limits. ``retry_after``: seconds until the request would fit;
    ``headers``: the ``X-RateLimit-*`` headers to send with the 429."""

    status = 429
    type = "rate_limit_error"
    retryable = True

    def __init__(self, message: str, *, retry_after: float, headers: dict[str, str], never: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.headers = headers
        self.never = never  # the request alone is over the limit: it will never fit


class BudgetExceeded(RateLimited):
    """A tenant or task spent its budget: 429 with ``type: budget_exceeded``; ``retry_after`` is
    the seconds until the exhausted period (UTC day or month) ends."""

    type = "budget_exceeded"


class UpstreamError(RouterError):
    """One call to one target failed.

    ``provider``: the provider name from routing.yaml; ``code``: the provider's error code or type
    (``"1113"``, ``"overloaded_error"``), or a router code (``"connect_error"``,
    ``"stream_truncated"``); ``upstream_status``: the HTTP status the upstream sent (0 if none);
    ``retry_after``: seconds the upstream asked us to wait, if it said; ``context_overflow``: the
    prompt was too long for this target (another target with a larger window may succeed);
    ``content_filter``: the provider's content filter rejected the request (Z.ai 1301, OpenAI
    ``content_policy_violation``): answered to the caller as a 400, not routed around unless the
    task opts in; ``quota``: the account's balance, plan or usage window at this provider is
    spent (not retried; the target cools down until ``reset_at``, epoch seconds, when the
    provider said, or for ``retry_after`` seconds). The message is ours, never the upstream body
    verbatim.
    """

    status = 502
    type = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        code: str,
        retryable: bool,
        provider: str = "",
        upstream_status: int = 0,
        retry_after: float | None = None,
        context_overflow: bool = False,
        content_filter: bool = False,
        quota: bool = False,
        reset_at: float | None = None,
    ) -> None:
        super().__init__(message)
        self.quota, self.reset_at = quota, reset_at
        if content_filter:
            self.status, self.type = 400, "content_filter"
        self.content_filter = content_filter
        self.code = code
        self.retryable = retryable
        self.provider = provider
        self.upstream_status = upstream_status
        self.retry_after = retry_after
        self.context_overflow = context_overflow


    def to_body(self) -> dict[str, Any]:
        body = super().to_body()
        body["error"]["code"] = self.code
        if self.provider:
            body["error"]["provider"] = self.provider
        return body


class UpstreamHTTPError(UpstreamError):
    """The upstream answered with an HTTP error status (body decoded by the adapter)."""


class UpstreamConnectError(UpstreamError):
    """No connection, or the connection was reset before the first byte (retryable)."""


class UpstreamTimeout(UpstreamError):
    """A connect, time-to-first-token, idle or total timeout expired."""

    status = 504
    type = "upstream_timeout"


class UpstreamStreamError(UpstreamError):
    """The stream broke after HTTP 200: cut without its terminator, a malformed chunk, or an
    in-stream error event (Anthropic ``event: error``, GLM ``finish_reason: network_error``)."""


class TargetUnusable(UpstreamError):
    """The target cannot be called at all (its API key variable is unset)."""

    status = 503
    type = "target_unusable"


class AllTargetsFailed(RouterError):
    """Every target of the chain failed; ``attempts`` says how each one did.

    The status follows the failures: 429 when every target was rate-limited (``retry_after`` is
    then the shortest wait asked), 504 when every failure was a timeout, 503 when no target was
    usable, else 502.
    """

    type = "all_targets_failed"

    def __init__(self, message: str, attempts: list[Any], status: int = 502,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.status = status
        self.retry_after = retry_after

    def to_body(self) -> dict[str, Any]:
        import msgspec

        body = super().to_body()
        body["error"]["attempts"] = msgspec.to_builtins(self.attempts)
        return body
