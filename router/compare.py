"""Comparison runs: every task line on every target, with latency, TTFT, tokens, cost and output.

A task file is JSON lines, each a canonical request without ``task`` (``messages``, and optionally
``id``, ``tools``, ``max_tokens``, ``temperature``, ...). Bad lines are reported with their line
numbers and skipped. Each (line, target, repeat) runs once, ``concurrency`` at a time, in-process
through the router's own adapters (``Router.call_one``: the target's timeouts and upstream quota)
or against a running router (``--url``: ``POST /v1/tasks`` with the target pinned, so the router's
limits apply). A rate-limited call waits as asked and tries again (up to 5 times).

Writes ``results.jsonl`` as results arrive (an interrupted run keeps what is done), then
``report.md`` (per target: success rate, p50/p95 latency and TTFT, mean tokens, total cost; per
task line: whether the targets' outputs agree) and ``chart.html`` (self-contained SVG bars of
latency and cost per target).
"""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec

from router.errors import RouterError, UpstreamError
from router.events import Error, Event, fold
from router.request import TaskRequest, check_request, msgspec_error_path
from router.run import Run
from router.sse import SSEParser

__all__ = ["Job", "load_tasks", "render_chart", "render_report", "run_compare", "sse_events"]


class Job(msgspec.Struct):
    line: int
    id: str
    request: TaskRequest


def load_tasks(path: Path) -> tuple[list[Job], list[str]]:
    """The valid lines as jobs, and a message per bad line (``line N: ...``)."""
    jobs, bad = [], []
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
            if not isinstance(obj, dict):
                raise ValueError("a line must be a JSON object")  # noqa: TRY004 - reported per line, as every bad line is
            rid = str(obj.pop("id", f"line{n}"))
            obj.pop("task", None)
            obj.pop("stream", None)
            req = msgspec.convert({"task": "compare", **obj}, TaskRequest)
            check_request(req)
            jobs.append(Job(line=n, id=rid, request=req))
        except json.JSONDecodeError as e:
            bad.append(f"line {n}: not JSON ({e.msg})")
        except msgspec.ValidationError as e:
            msg, where = msgspec_error_path(e)
            bad.append(f"line {n}: {where + ': ' if where else ''}{msg}")
        except (RouterError, ValueError) as e:
            bad.append(f"line {n}: {getattr(e, 'path', None) or ''}{': ' if getattr(e, 'path', None) else ''}{e}")
    return jobs, bad


async def _collect(events: AsyncIterator[Event], run: Run) -> dict[str, Any]:
    """One target's answer, from its events seen once by ``run`` and folded like any answer."""
    seen: list[Event] = []
    error: str | None = None
    async for ev in events:
        run.see(ev)
        seen.append(ev)
        if isinstance(ev, Error):
            error = ev.code
    run.stop()
    u = run.usage
    out: dict[str, Any] = {"output": "", "reasoning": "", "tool_calls": [],
                           "ttft_ms": round(run.ttft * 1e3, 3) if run.ttft is not None else None,
                           "finish_reason": run.finish_reason,
                           "input_tokens": u.input_tokens if u else None, "output_tokens": u.output_tokens if u else None,
                           "cost_usd": u.cost_usd if u else None, "error": error}
    if run.ended and error is None:
        answer = fold(seen)
        out.update(output=answer.text, reasoning=answer.reasoning,
                   tool_calls=[{"name": t.function["name"], "arguments": t.function["arguments"]}
                               for t in answer.tool_calls])
    elif error is None:
        out["error"] = "incomplete"
    return out


def sse_events(client: Any, url: str, target: str, req: TaskRequest) -> AsyncIterator[Event]:
    """The router's own SSE for one pinned request, as events (``--url`` mode)."""
    body = msgspec.to_builtins(msgspec.structs.replace(req, task=target, stream=True))
    decoder = msgspec.json.Decoder(Event)

    async def gen() -> AsyncIterator[Event]:
        async with client.stream("POST", url.rstrip("/") + "/v1/tasks", json=body) as resp:
            if resp.status_code == 429:
                raise _Limited(float(resp.headers.get("retry-after", "1")))
            if resp.status_code >= 400:
                err = json.loads(await resp.aread()).get("error", {})
                raise _Failed(err.get("type", str(resp.status_code)))
            parser = SSEParser()
            async for chunk in resp.aiter_bytes():
                for _, data in parser.feed(chunk):
                    yield decoder.decode(data)

    return gen()


class _Limited(Exception):
    def __init__(self, wait: float) -> None:
        self.wait = wait


class _Failed(Exception):
    def __init__(self, code: str) -> None:
        self.code = code


async def run_compare(jobs: list[Job], targets: list[str], *, call: Callable[[str, TaskRequest], AsyncIterator[Event]],
                      concurrency: int, repeat: int, results_path: Path, rows: list[dict[str, Any]],
                      progress: Callable[[int], None] = lambda n: None) -> list[dict[str, Any]]:
    """Run every (job, target, repeat); append each result to ``rows`` and ``results_path`` as it
    arrives. Cancelling keeps the results written so far."""
    sem = asyncio.Semaphore(concurrency)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    out = results_path.open("w", encoding="utf-8")

    async def one(job: Job, target: str, k: int) -> None:
        async with sem:
            for _ in range(5):
                t0 = time.perf_counter()
                try:
                    got = await _collect(call(target, job.request), Run(time.perf_counter, time.time_ns()))
                except _Limited as e:
                    await asyncio.sleep(min(e.wait, 60))
                    continue
                except UpstreamError as e:
                    if e.code == "rate_limited":
                        await asyncio.sleep(min(e.retry_after or 1, 60))
                        continue
                    got = {"error": e.code}
                except _Failed as e:
                    got = {"error": e.code}
                break
            else:
                got = {"error": "rate_limited"}
            row = {"task_id": job.id, "line": job.line, "target": target, "repeat": k,
                   "latency_ms": round((time.perf_counter() - t0) * 1e3, 3), **got}
            rows.append(row)
            out.write(json.dumps(row) + "\n")
            out.flush()
            progress(1)

    try:
        await asyncio.gather(*(one(j, t, k) for j in jobs for t in targets for k in range(repeat)))
    finally:
        out.close()
    return rows


def _pct(xs: list[float], p: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return round(s[min(len(s) - 1, round((len(s) - 1) * p / 100))], 3)


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def per_target(rows: list[dict[str, Any]], targets: list[str]) -> dict[str, dict[str, Any]]:
    """The per-target aggregates of the report."""
    out = {}
    for t in targets:
        mine = [r for r in rows if r["target"] == t]
        ok = [r for r in mine if not r.get("error")]
        lat = [r["latency_ms"] for r in ok]
        ttft = [r["ttft_ms"] for r in ok if r.get("ttft_ms") is not None]
        out[t] = {"runs": len(mine), "ok": len(ok), "success_rate": round(len(ok) / len(mine), 4) if mine else None,
                  "latency_p50_ms": _pct(lat, 50), "latency_p95_ms": _pct(lat, 95),
                  "ttft_p50_ms": _pct(ttft, 50), "ttft_p95_ms": _pct(ttft, 95),
                  "mean_input_tokens": round(statistics.fmean(r["input_tokens"] for r in ok), 2) if ok else None,
                  "mean_output_tokens": round(statistics.fmean(r["output_tokens"] for r in ok), 2) if ok else None,
                  "total_cost_usd": round(sum(r.get("cost_usd") or 0 for r in ok), 8)}
    return out


def render_report(rows: list[dict[str, Any]], targets: list[str], bad: list[str], interrupted: bool) -> str:
    """``report.md``."""
    agg = per_target(rows, targets)
    lines = ["# Comparison report", ""]
    if interrupted:
        lines += ["**Interrupted**: the numbers cover the runs finished before the interruption.", ""]
    lines += [f"{len(rows)} runs over {len(targets)} targets.", "", "## Per target", "",
              "| target | runs | success rate | latency p50 / p95 ms | TTFT p50 / p95 ms | mean tokens in / out | total cost USD |",
              "|---|---|---|---|---|---|---|"]
    for t, a in agg.items():
        lines.append(f"| {t} | {a['runs']} | {a['success_rate']} | {a['latency_p50_ms']} / {a['latency_p95_ms']} | "
                     f"{a['ttft_p50_ms']} / {a['ttft_p95_ms']} | {a['mean_input_tokens']} / {a['mean_output_tokens']} | "
                     f"{a['total_cost_usd']:.6f} |")
    lines += ["", "## Per task", "", "| task | outcome | outputs |", "|---|---|---|"]
    for tid in dict.fromkeys(r["task_id"] for r in rows):
        first = {t: next((r for r in rows if r["task_id"] == tid and r["target"] == t and r["repeat"] == 0), None)
                 for t in targets}
        outs = {t: (r.get("error") and f"error: {r['error']}") or _norm(r.get("output") or json.dumps(r.get("tool_calls")))
                for t, r in first.items() if r is not None}
        verdict = "agree" if len(set(outs.values())) == 1 and len(outs) == len(targets) else "differ"
        shown = "; ".join(f"{t}: {o[:60]!r}" for t, o in outs.items())
        lines.append(f"| {tid} | {verdict} | {shown} |")
    if bad:
        lines += ["", "## Skipped lines", ""] + [f"- {b}" for b in bad]
    return "\n".join(lines) + "\n"


def render_chart(rows: list[dict[str, Any]], targets: list[str]) -> str:
    """``chart.html``: two SVG bar charts (latency p50 and total cost per target), no scripts."""
    agg = per_target(rows, targets)

    def bars(title: str, key: str, unit: str) -> str:
        vals = [(t, agg[t][key] or 0) for t in targets]
        top = max((v for _, v in vals), default=0) or 1
        h = 30 * len(vals) + 40
        out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="640" height="{h}" role="img" aria-label="{title}">',
               f'<text x="0" y="16" font-size="14" font-family="sans-serif">{title}</text>']
        for i, (t, v) in enumerate(vals):
            y = 30 + 30 * i
            w = int(380 * v / top)
            out.append(f'<text x="0" y="{y + 15}" font-size="12" font-family="sans-serif">{t}</text>')
            out.append(f'<rect x="220" y="{y}" width="{w}" height="20" fill="#4a78c2"><title>{v} {unit}</title></rect>')
            out.append(f'<text x="{225 + w}" y="{y + 15}" font-size="12" font-family="sans-serif">{v} {unit}</text>')
        return "\n".join(out) + "\n</svg>"

    return ("<!doctype html><meta charset=utf-8><title>llm-router comparison</title>\n<body>\n"
            + bars("Latency p50 per target", "latency_p50_ms", "ms") + "\n<br>\n"
            + bars("Total cost per target", "total_cost_usd", "USD") + "\n</body>\n")
