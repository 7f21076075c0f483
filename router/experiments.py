"""A/B: sticky weighted assignment of requests to a task's variants, and their outcomes.

Assignment uses weighted rendezvous hashing: each variant scores ``-weight / ln(u)``, ``u`` a
uniform number in (0, 1) from SHA-256 of (task, variant, sticky value); the highest score wins.
Variant ``i`` wins with probability ``weight_i / sum(weights)``; a user keeps its variant while the
weights hold; when a weight changes, a user moves only if the change flips its winner, so as few
users as possible move. Requests without the sticky field are assigned at random by weight.

Outcomes (per variant, and per shadow target) are counters in the store, so every replica adds to
the same totals: requests, errors, fallbacks, latency and time-to-first-token histograms (ms
buckets), tokens, cost, feedback.
"""

from __future__ import annotations

import hashlib
import math
import random
from typing import Annotated, Any

import msgspec

from router.config import Experiment, Task
from router.errors import RouterError
from router.request import TaskRequest, decode_body
from router.stats import Mean, mean_ci, needed_per_arm, p_means, p_proportions, wilson
from router.stores import Store, StoreError

__all__ = ["BUCKETS_MS", "Feedback", "UnknownResponse", "UnknownTaskExperiment", "assign", "decode_feedback",
           "experiment_report", "percentile", "significance", "sticky_value", "summarize"]

BUCKETS_MS = (25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)  # upper bounds; then +inf


def sticky_value(req: TaskRequest, sticky_by: str) -> str | None:
    """The request's value of ``metadata.<key>``, or None."""
    key = sticky_by.removeprefix("metadata.")
    return (req.metadata or {}).get(key)


def _unit(task: str, variant: str, value: str) -> float:
    h = hashlib.sha256(f"{task}\x00{variant}\x00{value}".encode()).digest()
    return (int.from_bytes(h[:8], "big") + 0.5) / 2**64  # strictly inside (0, 1)


def assign(task: str, experiment: Experiment, req: TaskRequest, rng: random.Random | None = None) -> str:
    """The variant name for this request (sticky when the request carries ``sticky_by``)."""
    names = list(experiment.variants)
    weights = [experiment.variants[n].weight for n in names]
    value = sticky_value(req, experiment.sticky_by)
    if value is None:
        return (rng or random).choices(names, weights)[0]
    return max(names, key=lambda n: -experiment.variants[n].weight / math.log(_unit(task, n, value)))


def bucket_field(prefix: str, ms: float) -> str:
    """The histogram field a latency of ``ms`` milliseconds falls in."""
    for bound in BUCKETS_MS:
        if ms <= bound:
            return f"{prefix}_le_{bound}"
    return f"{prefix}_le_inf"


def percentile(stats: dict[str, float], prefix: str, p: float) -> float | None:
    """The upper bound (ms) of the bucket holding the ``p``-th percentile, from a histogram."""
    counts = [(b, stats.get(f"{prefix}_le_{b}", 0.0)) for b in BUCKETS_MS] + [(math.inf, stats.get(f"{prefix}_le_inf", 0.0))]
    total = sum(c for _, c in counts)
    if not total:
        return None
    seen = 0.0
    for bound, c in counts:
        seen += c
        if seen >= total * p / 100:
            return bound
    return math.inf


def summarize(stats: dict[str, float]) -> dict[str, Any]:
    """One variant's (or shadow target's) counters as a report with its sample sizes."""
    n = stats.get("requests", 0.0)
    ok = n - stats.get("errors", 0.0)
    fb = stats.get("feedback_count", 0.0)
    return {
        "requests": int(n), "errors": int(stats.get("errors", 0)), "error_rate": round(stats.get("errors", 0) / n, 4) if n else None,
        "fallbacks": int(stats.get("fallbacks", 0)), "cached": int(stats.get("cached", 0)),
        "latency_ms": {"mean": round(stats.get("latency_ms_sum", 0) / n, 3) if n else None,
                       "p50_le": percentile(stats, "latency", 50), "p95_le": percentile(stats, "latency", 95)},
        "ttft_ms": {"samples": int(stats.get("ttft_n", 0)),
                    "mean": round(stats.get("ttft_ms_sum", 0) / stats["ttft_n"], 3) if stats.get("ttft_n") else None,
                    "p50_le": percentile(stats, "ttft", 50), "p95_le": percentile(stats, "ttft", 95)},
        "tokens": {"input": int(stats.get("input_tokens", 0)), "output": int(stats.get("output_tokens", 0)),
                   "mean_output": round(stats.get("output_tokens", 0) / ok, 2) if ok else None},
        "cost_usd": round(stats.get("cost_usd", 0.0), 8),
        "feedback": {"count": int(fb), "mean_score": round(stats.get("feedback_sum", 0) / fb, 4) if fb else None,
                     "labels": {k.removeprefix("label:"): int(v) for k, v in stats.items() if k.startswith("label:")}},
        "dropped": int(stats.get("dropped", 0)),
        "invalid_output": int(stats.get("invalid_output", 0)),
        "task_versions": {k.removeprefix("version:"): int(v) for k, v in stats.items() if k.startswith("version:")},
        "ci95": {name: (m.as_dict(6 if name == "cost_usd" else 3) if isinstance(m, Mean) else m)
                 for name, m in _measures(stats).items()},
    }


def _measures(stats: dict[str, float]) -> dict[str, Any]:
    """Each compared measure of one variant: the error rate's Wilson interval (and its counts),
    and the means (with intervals) of latency, TTFT, cost per answer and feedback score. A mean
    has an interval only when every sample it averages also has its square recorded (counters
    written before squares were kept give the mean alone)."""
    n = int(stats.get("requests", 0))
    errors = stats.get("errors", 0.0)
    lo, hi = wilson(errors, n)
    out: dict[str, Any] = {"error_rate": {"n": n, "errors": int(errors), "rate": round(errors / n, 4) if n else None,
                                          "ci95": [lo, hi] if n else None}}
    for name, count, total, sq, sq_n in (("latency_ms", "requests", "latency_ms_sum", "latency_ms_sq", "latency_sq_n"),
                                         ("ttft_ms", "ttft_n", "ttft_ms_sum", "ttft_ms_sq", "ttft_sq_n"),
                                         ("cost_usd", "cost_n", "cost_answer_usd", "cost_usd_sq", "cost_n"),
                                         ("feedback", "feedback_count", "feedback_sum", "feedback_sq", "feedback_sq_n")):
        k = stats.get(count, 0.0)
        complete = k > 0 and stats.get(sq_n, 0.0) == k
        m = mean_ci(k, stats.get(total, 0.0), stats.get(sq) if complete else None)
        if m is None and name == "cost_usd" and n:  # only counters from before: the mean over every request
            m = mean_ci(n, stats.get("cost_usd", 0.0), None)
        out[name] = m if m is not None else {"n": 0, "mean": None, "ci95": None}
    return out


_WORDS = {"error_rate": ("error rate", "higher", "lower"), "latency_ms": ("latency", "slower", "faster"),
          "ttft_ms": ("time to first token", "slower", "faster"), "cost_usd": ("cost per answer", "costlier", "cheaper"),
          "feedback": ("feedback score", "better rated", "worse rated")}


def _show(name: str, v: float) -> str:
    if name == "error_rate":
        return f"{v * 100:.1f}%"
    if name == "cost_usd":
        return f"${v:.6f}"
    if name == "feedback":
        return f"{v:.2f}"
    return f"{v:.0f} ms"


def significance(variants: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """Each variant against the first (the baseline, in config order), measure by measure: both
    values, the two-sided p-value (pooled z for the error rate, Welch for means), whether the
    difference is significant at 95%, the samples per variant that would detect a difference of
    the size seen (power 0.8), and one plain sentence saying so. Each test stands alone: no
    correction for testing five measures, nor for looking again as samples arrive (a result
    that comes and goes is not a result)."""
    names = list(variants)
    if len(names) < 2:
        return []
    base = names[0]
    mb = _measures(variants[base])
    out = []
    for other in names[1:]:
        mo = _measures(variants[other])
        for name, (label, up, down) in _WORDS.items():
            a, b = mo[name], mb[name]
            if name == "error_rate":
                na, nb = a["n"], b["n"]
                if not na or not nb:
                    continue
                va, vb = a["errors"] / na, b["errors"] / nb
                p = p_proportions(a["errors"], na, b["errors"], nb)
                pooled = (a["errors"] + b["errors"]) / (na + nb)
                need = needed_per_arm(va - vb, pooled * (1 - pooled), pooled * (1 - pooled))
            else:
                if not isinstance(a, Mean) or not isinstance(b, Mean):
                    continue
                na, nb, va, vb = a.n, b.n, a.mean, b.mean
                p = p_means(a, b)
                need = needed_per_arm(va - vb, a.sd ** 2, b.sd ** 2) if a.sd is not None and b.sd is not None else None
            sig = p is not None and p < 0.05
            direction = up if va > vb else down
            if p is None:
                sentence = (f"{label}: {other} {_show(name, va)} vs {base} {_show(name, vb)}; not testable yet: fewer than "
                            f"2 samples with their spread recorded (n = {na} / {nb})")
            elif sig:
                sentence = (f"{label}: {other} is {direction} than {base} ({_show(name, va)} vs {_show(name, vb)}); "
                            f"significant at 95% (p = {p:.3g}, n = {na} / {nb})")
            else:
                more = (f"; about {need} per variant would detect a difference this size" if need and need > max(na, nb)
                        else "")
                sentence = (f"{label}: {other} {_show(name, va)} vs {base} {_show(name, vb)}; no significant difference "
                            f"at n = {na} / {nb} (p = {p:.3g}){more}")
            out.append({"measure": name, "variant": other, "baseline": base, "value": va, "baseline_value": vb,
                        "n": na, "baseline_n": nb, "p": None if p is None else round(p, 6), "significant": sig,
                        "needed_per_variant": need, "statement": sentence})
    return out


class Feedback(msgspec.Struct, forbid_unknown_fields=True):
    """``POST /v1/feedback``: the response ``id``, a ``score`` and an optional short ``label``."""

    id: str
    score: float
    label: Annotated[str, msgspec.Meta(max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")] | None = None


class UnknownResponse(RouterError):
    """Feedback for a response id the router does not know (or no longer: 7 days)."""

    status = 404
    type = "not_found_error"

    def __init__(self, rid: str) -> None:
        super().__init__(f"no answer with id {rid!r} is known (ids are kept 7 days, for tasks with an experiment or shadow)")


class UnknownTaskExperiment(RouterError):
    """The task has no experiment and no shadow."""

    status = 404
    type = "not_found_error"

    def __init__(self, task: str, known: list[str]) -> None:
        super().__init__(f"task {task!r} has no experiment or shadow; tasks that do: {', '.join(sorted(known)) or 'none'}")


_feedback_decoder = msgspec.json.Decoder(Feedback)


def decode_feedback(body: bytes) -> Feedback:
    """Raises ``RequestError`` naming the field (or ``PayloadTooLarge`` over 64 KiB)."""
    return decode_body(body, _feedback_decoder, 64 * 1024)  # type: ignore[no-any-return]


async def experiment_report(store: Store, name: str, task: Task) -> dict[str, Any]:
    """The outcomes of ``task``'s variants and shadow, with the recent shadow comparisons."""
    out: dict[str, Any] = {"task": name}
    try:
        if task.experiment is not None:
            out["sticky_by"] = task.experiment.sticky_by
            raw = dict(zip(task.experiment.variants, await store.stats_get_many(
                [f"exp:{name}:{v}" for v in task.experiment.variants]), strict=True))
            out["variants"] = {v: {"weight": spec.weight, "chain": spec.chain, **summarize(raw[v])}
                               for v, spec in task.experiment.variants.items()}
            out["significance"] = significance(raw)
        else:
            out["variants"] = {"primary": {"chain": task.chain, **summarize(await store.stats_get(f"exp:{name}:primary"))}}
        if task.shadow is not None:
            out["shadow"] = {"target": task.shadow.target, "sample": task.shadow.sample,
                             **summarize(await store.stats_get(f"exp:{name}:shadow:{task.shadow.target}")),
                             "recent": [msgspec.json.decode(x) for x in await store.log_get(f"exp:{name}:shadow_log", 20)]}
    except StoreError:
        out["store"] = "unreachable: outcomes are unavailable until it answers"
    return out
