"""How a walk's failures are answered: the status when every target failed, which failures go
back to the caller at once, a spent quota's wait, and an answer that is not the structured output
asked for. Pure functions of the failures; ``router.chain`` calls them.
"""

from __future__ import annotations

from router.errors import (
    AllTargetsFailed,
    TargetUnusable,
    UpstreamError,
    UpstreamStreamError,
)
from router.events import AttemptRecord, Error
from router.output import output_problem
from router.plan import Plan
from router.request import ResponseFormat
from router.run import Run
from router.upstream import Target

__all__ = ["MAX_QUOTA_HOLD", "all_failed", "check_output", "error_event", "is_final", "quota_wait"]


def all_failed(attempts: list[AttemptRecord], errors: list[UpstreamError], plan: Plan | None = None) -> AllTargetsFailed:
    """The status by the nature of the failures: 400 when the prompt fits no target (skipped for
    its window, or the upstream said too long: Z.ai 1261 or 1210 about length, Anthropic
    ``prompt is too long``, OpenAI ``context_length_exceeded``), its message giving the estimate
    and the largest window; when every
    failure was a rate limit (upstream, or a quota here) or a cooldown, in any mix, 429 (503 when
    only cooldowns) with ``retry_after`` the earliest moment any target can serve again; 503 when
    no target could be called; 504 when every call timed out; else 502."""
    limited = [e for e in errors if e.code in ("rate_limited", "budget") or (e.upstream_status == 429 and e.retryable)
               or (e.quota and e.retry_after is not None)]
    cooling = [e for e in errors if e.code == "cooldown"]
    called = [e for e in errors if not isinstance(e, TargetUnusable)]
    status, retry_after = 502, None
    message = f"every target of the chain failed ({len(attempts)} tried)"
    if errors and all(e.code == "capability" for e in errors):
        status = 400
        message = "no target of the chain takes images or documents (vision: true in routing.yaml)"
    elif errors and all(e.context_overflow or e.code == "context_window" for e in errors):
        status = 400
        if plan is not None:
            widest = max(t.spec.context_window for t in plan.chain)
            message = (f"the prompt fits no target of the chain: about {plan.prompt_tokens} tokens (estimated) "
                       f"plus max_tokens {plan.params.max_tokens or 0}; the largest context window is {widest}")
    elif errors and len(limited) + len(cooling) == len(errors):
        status = 429 if limited else 503
        waits = [e.retry_after for e in (*limited, *cooling) if e.retry_after is not None]
        retry_after = min(waits) if waits else None
    elif not called:
        status = 503
    elif all(e.status == 504 for e in called):
        status = 504
    return AllTargetsFailed(message, attempts, status=status, retry_after=retry_after)


MAX_QUOTA_HOLD = 40 * 86400.0  # seconds: a reset further away than this is not believed


def quota_wait(e: UpstreamError, now: float) -> float | None:
    """Seconds until a spent quota resets (``e.reset_at`` from the body, else the Retry-After),
    when known and plausible (in the future, under 40 days)."""
    wait = e.reset_at - now if e.reset_at is not None else e.retry_after
    return wait if wait is not None and 0 < wait <= MAX_QUOTA_HOLD else None


def check_output(text: str, fmt: ResponseFormat | None, target: Target) -> None:
    """Raise ``invalid_output`` when an answer that ended does not match its ``response_format``."""
    problem = output_problem(text, fmt) if fmt is not None else None
    if problem is not None:
        raise UpstreamStreamError(f"{target.name}: the answer does not match the response_format: {problem}",
                                  code="invalid_output", retryable=False, provider=target.provider)


def is_final(error: UpstreamError, plan: Plan) -> bool:
    """A failure that goes back to the caller instead of to the next target: a content-filter
    refusal, unless the task routes around it (``fallback_on: [content_filter]``)."""
    return error.content_filter and "content_filter" not in plan.fallback_on


def error_event(failure: UpstreamError, target: Target, run: Run) -> Error:
    """The terminal ``Error`` event of a failure of ``target``."""
    return Error(code=failure.code, message=failure.message, retryable=failure.retryable,
                 provider=target.provider, attempts=run.attempts)
