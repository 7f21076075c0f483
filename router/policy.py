"""The effective per-target policy: resolved once per config, every field set.

routing.yaml's ``Timeouts``, ``Retry`` and ``Cooldown`` (``router.config``) are the config *as
written*: every field optional, a task's over its provider's over the defaults, field by field.
``resolve`` merges them into these types, which have no ``Optional``: consumers never write
``or 600``.
"""

from __future__ import annotations

import msgspec

from router.config import (
    DEFAULT_COOLDOWN,
    DEFAULT_RETRY,
    DEFAULT_TIMEOUTS,
    Cooldown,
    Provider,
    Retry,
    Task,
    Timeouts,
    overlay,
)

__all__ = ["EffectiveCooldown", "EffectiveRetry", "EffectiveTimeouts", "Policy", "resolve"]


class EffectiveTimeouts(msgspec.Struct, frozen=True):
    """Seconds: ``connect``, ``first_token`` (send -> first event), ``idle`` (gap between events),
    ``total`` (the whole upstream call)."""

    connect: float
    first_token: float
    idle: float
    total: float


class EffectiveRetry(msgspec.Struct, frozen=True):
    """``attempts`` per target (1 = no retry); seconds: ``initial_wait``, ``max_wait`` (one
    wait), ``max_total_wait`` (all waits of one request)."""

    attempts: int
    initial_wait: float
    max_wait: float
    max_total_wait: float


class EffectiveCooldown(msgspec.Struct, frozen=True):
    """Trip after ``failures`` retryable failures in a row within ``window`` seconds; skip the
    target ``duration`` seconds, times ``backoff`` per repeated trip, up to ``max_duration``."""

    failures: int
    window: float
    duration: float
    max_duration: float
    backoff: float = 1.0


class Policy(msgspec.Struct, frozen=True):
    """A target's effective timeouts, retry and cooldown within one task, and ``hedge_after``:
    seconds without a first event before the next target is started as well (None: no hedge)."""

    timeouts: EffectiveTimeouts
    retry: EffectiveRetry
    cooldown: EffectiveCooldown
    hedge_after: float | None = None


def _fields(struct: msgspec.Struct) -> list[object]:
    return [getattr(struct, f) for f in struct.__struct_fields__]


def resolve(provider: Provider, task: Task | None = None) -> Policy:
    """The policy of a target of ``provider`` within ``task`` (``None``: a pinned target, the
    provider's own): task over provider over defaults, field by field."""
    t: Timeouts = overlay(DEFAULT_TIMEOUTS, provider.timeouts, task.timeouts if task else None)
    r: Retry = overlay(DEFAULT_RETRY, provider.retry, task.retry if task else None)
    c: Cooldown = overlay(DEFAULT_COOLDOWN, provider.cooldown)
    hedge = (task.hedge if task is not None and task.hedge is not None else provider.hedge)
    return Policy(timeouts=EffectiveTimeouts(*_fields(t)), retry=EffectiveRetry(*_fields(r)),  # type: ignore[arg-type]
                  cooldown=EffectiveCooldown(*_fields(c)),  # type: ignore[arg-type]
                  hedge_after=hedge.after if hedge is not None else None)
