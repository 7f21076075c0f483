"""Sticky weighted assignment: proportions, stickiness, and minimal movement on a weight change."""

from __future__ import annotations

import random

from router.config import Experiment, Variant
from router.experiments import assign, percentile, summarize
from router.request import Message, TaskRequest


def req(user: str | None) -> TaskRequest:
    return TaskRequest(task="t", messages=[Message(role="user", content="x")],
                       metadata={"user": user} if user is not None else None)


def exp(**weights: float) -> Experiment:
    return Experiment(variants={name: Variant(chain=["p/m"], weight=w) for name, w in weights.items()})


def test_split_follows_the_weights() -> None:
    e = exp(a=30, b=70)
    n = 20000
    share = sum(assign("t", e, req(f"u{i}")) == "a" for i in range(n)) / n
    assert abs(share - 0.30) < 0.015  # binomial sd 0.0032: over 4 sd of room


def test_sticky_and_random_without_the_field() -> None:
    e = exp(a=1, b=1, c=2)
    assert len({assign("t", e, req("alice")) for _ in range(50)}) == 1
    rng = random.Random(7)
    picks = [assign("t", e, req(None), rng) for _ in range(4000)]
    assert abs(picks.count("c") / 4000 - 0.5) < 0.04 and len(set(picks)) == 3


def test_a_weight_change_moves_few_users() -> None:
    before, after = exp(a=50, b=50), exp(a=60, b=40)
    users = [f"user-{i}" for i in range(20000)]
    moved = [u for u in users if assign("t", before, req(u)) != assign("t", after, req(u))]
    assert 0.08 < len(moved) / len(users) < 0.12  # the minimum possible is 10%
    assert all(assign("t", after, req(u)) == "a" for u in moved)  # only towards the grown variant
    added = exp(a=50, b=50, c=10)  # a new variant takes users only for itself
    assert all(assign("t", added, req(u)) in (assign("t", before, req(u)), "c") for u in users[:5000])


def test_histogram_percentiles_and_summary() -> None:
    stats = {"requests": 4, "errors": 1, "latency_ms_sum": 400, "latency_le_50": 2, "latency_le_250": 1,
             "latency_le_inf": 1, "output_tokens": 30, "cost_usd": 0.003, "feedback_count": 2, "feedback_sum": 1.5,
             "label:good": 2}
    assert percentile(stats, "latency", 50) == 50 and percentile(stats, "latency", 95) == float("inf")
    s = summarize(stats)
    assert s["error_rate"] == 0.25 and s["tokens"]["mean_output"] == 10 and s["feedback"]["mean_score"] == 0.75
    assert s["feedback"]["labels"] == {"good": 2} and s["latency_ms"]["mean"] == 100
