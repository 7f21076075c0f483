"""What the console shows of traffic: per-minute rollups and the recent requests, from the run record.

``ConsoleFeed.add(record, trace_id)`` reads one finished request's ``RequestRecord`` (the one
record; nothing here sees events) and adds it to

* the **minute rollup** ``console:m:<epoch minute>``: one counter hash per minute, fields
  ``<task>\\t<target>\\t<measure>`` (requests, errors, fallbacks away from the target, hedges,
  retries, cooldown trips, response-cache hits and misses, tokens, cost, prompt-cache savings, and
  latency/TTFT histograms over ``BOUNDS_MS``), kept ``MINUTE_TTL`` seconds;
* the **recent list** ``console:recent``: the newest ``RECENT_KEEP`` request summaries (id, task,
  variant, target, attempts, status, latency, TTFT, tokens, cost, trace id; prompt and output only
  when the config's ``log_content`` is on).

Both go through telemetry's write-behind buffer (``router.ledger.WriteBehind``), so every replica
on one Redis adds to the same rollups and list at no store round trip per request.
``traffic`` and ``recent`` read them back.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

import msgspec

from router.ledger import WriteBehind
from router.run import RequestRecord
from router.stats import hist_percentile
from router.stores import Store

__all__ = ["BOUNDS_MS", "MINUTE_TTL", "RECENT_KEEP", "ConsoleFeed", "RecentRequest", "recent", "traffic"]

BOUNDS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 60000, 120000, 300000)
MINUTE_TTL = 6 * 3600 + 300  # seconds a minute's rollup is kept (the console's longest window: 6 h)
RECENT_KEEP = 500
MAX_MINUTES = 360
_RECENT = "console:recent"
_COUNTS = ("requests", "errors", "fallbacks_from", "hedges", "hedges_won", "retries", "trips", "cache_hits",
           "cache_misses", "input_tokens", "output_tokens", "cost_usd", "savings_usd", "latency_ms_sum",
           "ttft_n", "ttft_ms_sum")


class RecentRequest(msgspec.Struct, omit_defaults=True):
    """One request's summary for the console: ``at`` epoch seconds; ms; tokens; USD.
    ``attempts``: ``target:outcome[:code]`` in order. ``trace_id``: 32 hex digits when the request
    was traced (its spans, or the caller's ``traceparent``)."""

    id: str
    at: float
    task: str
    caller: str
    status: int
    outcome: str
    latency_ms: float
    variant: str | None = None
    target: str | None = None
    attempts: list[str] = []
    error: str | None = None
    ttft_ms: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    stream: bool = False
    fallbacks: int = 0
    hedge: str | None = None
    cache: str | None = None
    trace_id: str | None = None
    prompt: str | None = None
    output: str | None = None


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(RecentRequest).decode


def _bucket(ms: float) -> int:
    return bisect_left(BOUNDS_MS, ms)  # the first bound >= ms; len(BOUNDS_MS): the overflow


def minute_key(minute: int) -> str:
    """The rollup of one epoch minute (``int(epoch_seconds // 60)``)."""
    return f"console:m:{minute}"


class ConsoleFeed:
    """Adds finished requests to the rollups and the recent list, through ``batch``."""

    def __init__(self, batch: WriteBehind) -> None:
        self.batch = batch
        self._keys: dict[tuple[str, str], _Keys] = {}

    def add(self, rec: RequestRecord, trace_id: str | None = None) -> None:
        """One finished request (see the module docstring for what is kept); about 5 us."""
        target = f"{rec.provider}/{rec.model}" if rec.provider else "none"
        k = self._keys.get((rec.task, target))
        if k is None:
            if len(self._keys) > 10_000:  # names come from the config; bound it all the same
                self._keys.clear()
            k = self._keys[(rec.task, target)] = _Keys(f"{rec.task}\t{target}\t")
        lat = rec.duration * 1e3
        f = self.batch.counters(minute_key(rec.start_ns // 60_000_000_000), MINUTE_TTL)  # added to in place
        get = f.get
        f[k.requests] = get(k.requests, 0.0) + 1
        f[k.latency_ms_sum] = get(k.latency_ms_sum, 0.0) + lat
        name = k.lat[_bucket(lat)]
        f[name] = get(name, 0.0) + 1
        if rec.outcome == "error":
            f[k.errors] = get(k.errors, 0.0) + 1
        if rec.ttft is not None:
            ttft = rec.ttft * 1e3
            f[k.ttft_n] = get(k.ttft_n, 0.0) + 1
            f[k.ttft_ms_sum] = get(k.ttft_ms_sum, 0.0) + ttft
            name = k.ttft[_bucket(ttft)]
            f[name] = get(name, 0.0) + 1
        if rec.retries:
            f[k.retries] = get(k.retries, 0.0) + rec.retries
        if rec.hedge:
            f[k.hedges] = get(k.hedges, 0.0) + 1
            if rec.hedge == "won":
                f[k.hedges_won] = get(k.hedges_won, 0.0) + 1
        if rec.cache:
            name = k.cache_hits if rec.cache == "hit" else k.cache_misses
            f[name] = get(name, 0.0) + 1
        if rec.input_tokens or rec.output_tokens:
            f[k.input_tokens] = get(k.input_tokens, 0.0) + rec.input_tokens
            f[k.output_tokens] = get(k.output_tokens, 0.0) + rec.output_tokens
        if rec.cost_usd:
            f[k.cost_usd] = get(k.cost_usd, 0.0) + rec.cost_usd
        if rec.cache_savings_usd:
            f[k.savings_usd] = get(k.savings_usd, 0.0) + rec.cache_savings_usd
        for away, _to, _why in rec.fallbacks:
            name = f"{rec.task}\t{away}\tfallbacks_from"
            f[name] = get(name, 0.0) + 1
        for tripped in rec.cooldown_trips:
            name = f"{rec.task}\t{tripped}\ttrips"
            f[name] = get(name, 0.0) + 1
        self.batch.push(_RECENT, _encode(RecentRequest(
            id=rec.request_id, at=round(rec.start_ns / 1e9, 3), task=rec.task, caller=rec.caller, status=rec.status,
            outcome=rec.outcome, latency_ms=round(lat, 3), variant=rec.variant,
            target=target if rec.provider else None,
            attempts=[f"{a.target}:{a.outcome}{':' + a.code if a.code else ''}" for a in rec.attempts],
            error=rec.error_code, ttft_ms=round(rec.ttft * 1e3, 3) if rec.ttft is not None else None,
            input_tokens=rec.input_tokens, output_tokens=rec.output_tokens, cost_usd=round(rec.cost_usd, 8),
            stream=rec.stream, fallbacks=len(rec.fallbacks), hedge=rec.hedge, cache=rec.cache, trace_id=trace_id,
            prompt=rec.prompt, output=rec.output)), RECENT_KEEP)


class _Keys:
    """The rollup's field names of one (task, target), made once."""

    __slots__ = ("cache_hits", "cache_misses", "cost_usd", "errors", "hedges", "hedges_won", "input_tokens", "lat",
                 "latency_ms_sum", "output_tokens", "requests", "retries", "savings_usd", "ttft", "ttft_ms_sum", "ttft_n")

    def __init__(self, p: str) -> None:
        self.requests, self.errors, self.retries = p + "requests", p + "errors", p + "retries"
        self.latency_ms_sum, self.ttft_n, self.ttft_ms_sum = p + "latency_ms_sum", p + "ttft_n", p + "ttft_ms_sum"
        self.hedges, self.hedges_won = p + "hedges", p + "hedges_won"
        self.cache_hits, self.cache_misses = p + "cache_hits", p + "cache_misses"
        self.input_tokens, self.output_tokens = p + "input_tokens", p + "output_tokens"
        self.cost_usd, self.savings_usd = p + "cost_usd", p + "savings_usd"
        self.lat = [f"{p}lat{i}" for i in range(len(BOUNDS_MS) + 1)]
        self.ttft = [f"{p}ttft{i}" for i in range(len(BOUNDS_MS) + 1)]


async def recent(store: Store, n: int = RECENT_KEEP) -> list[RecentRequest]:
    """The newest ``n`` request summaries, newest first (every replica's; an entry this version
    cannot read, from another version during a rolling deploy, is skipped). Raises ``StoreError``."""
    out = []
    for raw in await store.log_get(_RECENT, n):
        try:
            out.append(_decode(raw))
        except msgspec.DecodeError:
            continue
    return out


def _row(counts: dict[str, float]) -> dict[str, Any]:
    """One (task, target)'s sums over a window, with its rates and percentiles (ms)."""
    n = counts.get("requests", 0.0)
    lat = [counts.get(f"lat{i}", 0.0) for i in range(len(BOUNDS_MS) + 1)]
    ttft = [counts.get(f"ttft{i}", 0.0) for i in range(len(BOUNDS_MS) + 1)]
    looked = counts.get("cache_hits", 0.0) + counts.get("cache_misses", 0.0)

    def pct(h: list[float], q: float) -> float | None:
        v = hist_percentile(h, BOUNDS_MS, q)
        return None if v is None else round(v, 1)

    return {**{k: (round(counts.get(k, 0.0), 8) if k.endswith("_usd") else int(counts.get(k, 0.0))) for k in _COUNTS
               if not k.endswith("_sum")},
            "error_rate": round(counts.get("errors", 0.0) / n, 4) if n else None,
            "latency_p50_ms": pct(lat, 50), "latency_p95_ms": pct(lat, 95),
            "ttft_p50_ms": pct(ttft, 50), "ttft_p95_ms": pct(ttft, 95),
            "cache_hit_rate": round(counts.get("cache_hits", 0.0) / looked, 4) if looked else None}


async def traffic(store: Store, now: float, minutes: int = 60) -> dict[str, Any]:
    """The last ``minutes`` (1-360) of traffic, summed over every replica: ``minutes`` (epoch
    seconds of each minute), ``series`` per task (requests, errors, fallbacks, cost, response-cache
    hit rate and p50/p95 latency and TTFT per minute), ``rows`` per (task, target) over the whole window, and
    ``total``. Raises ``StoreError``."""
    minutes = max(1, min(MAX_MINUTES, minutes))
    last = int(now // 60)
    span = list(range(last - minutes + 1, last + 1))
    hashes = await store.stats_get_many([minute_key(m) for m in span])
    window: dict[tuple[str, str], dict[str, float]] = {}
    per_task: dict[str, list[dict[str, float]]] = {}
    for i, h in enumerate(hashes):
        for field, v in h.items():
            task, target, measure = field.split("\t", 2)
            w = window.setdefault((task, target), {})
            w[measure] = w.get(measure, 0.0) + v
            cells = per_task.setdefault(task, [{} for _ in span])
            cells[i][measure] = cells[i].get(measure, 0.0) + v
    series: dict[str, dict[str, list[float | None]]] = {}
    for task, cells in per_task.items():
        rows = [_row(c) for c in cells]
        series[task] = {k: [r[k] for r in rows] for k in ("requests", "errors", "fallbacks_from", "hedges", "cost_usd",
                                                          "cache_hit_rate",
                                                          "latency_p50_ms", "latency_p95_ms", "ttft_p50_ms",
                                                          "ttft_p95_ms")}
    total: dict[str, float] = {}
    for w in window.values():
        for k, v in w.items():
            total[k] = total.get(k, 0.0) + v
    return {"minutes": [m * 60 for m in span], "series": series,
            "rows": [{"task": t, "target": g, **_row(w)} for (t, g), w in sorted(window.items())],
            "total": _row(total)}
