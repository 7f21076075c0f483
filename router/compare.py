"""Comparison runs: every task line on every target, with latency, TTFT, tokens, cost and output.

A task file is JSON lines, each a canonical request without ``task`` (``messages``, and optionally
``id``, ``tools``, ``max_tokens``, ``temperature``, ...), or naming a typed task of the config with
its ``input`` (``{"task": "extract_invoice", "input": {...}}``): its prompt is rendered from the
config's templates and every target is asked for its output schema, and each output is checked
against it. Bad lines are reported with their line numbers and skipped. Each (line, target, repeat) runs once, ``concurrency`` at a time, in-process
through the router's own adapters (``Router.call_one``: the target's timeouts and upstream quota)
or against a running router (``--url``: ``POST /v1/tasks`` with the target pinned, so the router's
limits apply). A rate-limited call waits as asked and tries again (up to 5 times).

Writes ``results.jsonl`` as results arrive (an interrupted run keeps what is done), then
``report.md`` (per target: success rate, schema-valid outputs, p50/p95 latency and TTFT, mean
tokens, total cost; per task line: whether the targets' outputs agree, field by field for typed
tasks; an error never counts as agreement) and ``chart.html`` (self-contained SVG bars of latency
and cost per target). With a judge (``judge_pairs``), every pair of targets' answers to a line is
scored against a rubric by a judge model, in both orders (A/B then B/A) so a judge that prefers a
position cancels out; the report gives each pair's win rate with its 95% Wilson interval.
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

from router.config import RoutingConfig
from router.errors import RouterError, UpstreamError
from router.events import Error, Event, fold
from router.output import output_problem, parsed_output
from router.plan import Planner
from router.request import (
    JsonSchemaFormat,
    Message,
    ResponseFormat,
    TaskRequest,
    check_request,
    msgspec_error_path,
)
from router.run import Run
from router.sse import SSEParser
from router.stats import wilson
from router.upstream import make_targets

__all__ = [
    "Job",
    "decode_judgements",
    "decode_results",
    "judge_pairs",
    "load_tasks",
    "render_chart",
    "render_jobs",
    "render_report",
    "run_compare",
    "sse_events",
    "summarize_results",
    "wilson",
]


class Job(msgspec.Struct):
    """One task line: its number, ``id``, the request as sent (a typed task's prompt rendered) and
    the typed task it names (None for a plain request)."""

    line: int
    id: str
    request: TaskRequest
    task: str | None = None


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
            task = obj.pop("task", None)
            obj.pop("stream", None)
            if "input" in obj and not isinstance(task, str):
                raise ValueError("a line with input names its typed task (\"task\")")
            req = msgspec.convert({"task": task if isinstance(task, str) else "compare", **obj}, TaskRequest)
            check_request(req)
            jobs.append(Job(line=n, id=rid, request=req, task=task if isinstance(task, str) else None))
        except json.JSONDecodeError as e:
            bad.append(f"line {n}: not JSON ({e.msg})")
        except msgspec.ValidationError as e:
            msg, where = msgspec_error_path(e)
            bad.append(f"line {n}: {where + ': ' if where else ''}{msg}")
        except (RouterError, ValueError) as e:
            bad.append(f"line {n}: {getattr(e, 'path', None) or ''}{': ' if getattr(e, 'path', None) else ''}{e}")
    return jobs, bad


def render_jobs(jobs: list[Job], config: RoutingConfig | None) -> tuple[list[Job], list[str]]:
    """Each job naming a typed task with its prompt rendered from ``config`` (input checked, the
    output schema as ``response_format``); lines naming a task that is not typed keep their
    messages. Returns the jobs that render and a message per line that does not (without a
    config, every line with ``input``)."""
    planner = Planner(config, make_targets(config.providers)) if config is not None else None
    out, bad = [], []
    for job in jobs:
        if planner is None:
            if job.request.input is not None:
                bad.append(f"line {job.line}: a typed task line needs the router's routing.yaml (--config)")
            else:
                out.append(job)
            continue
        if job.task is None or not planner.typed(job.task):
            if job.request.input is not None:
                bad.append(f"line {job.line}: task {job.task!r} is not a typed task of the config")
                continue
            out.append(job)
            continue
        try:
            rendered = planner.render(job.request)
        except RouterError as e:
            where = getattr(e, "path", None)
            bad.append(f"line {job.line}: {where + ': ' if where else ''}{e.message}")
            continue
        out.append(msgspec.structs.replace(job, request=rendered))
    return out, bad


async def _collect(events: AsyncIterator[Event], run: Run, fmt: ResponseFormat | None = None) -> dict[str, Any]:
    """One target's answer, from its events seen once by ``run`` and folded like any answer; with
    a structured ``fmt``, ``valid`` says whether it matched and ``json`` is the parsed output."""
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
        if fmt is not None and fmt.type != "text":
            problem = output_problem(answer.text, fmt)
            out.update(valid=problem is None, json=parsed_output(answer.text), invalid_reason=problem)
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
                    got = await _collect(call(target, job.request), Run(time.perf_counter, time.time_ns()),
                                         job.request.response_format)
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
    """The per-target aggregates of the report (``schema_valid``: valid / typed answers)."""
    out = {}
    for t in targets:
        mine = [r for r in rows if r["target"] == t]
        ok = [r for r in mine if not r.get("error")]
        typed = [r for r in ok if "valid" in r]
        lat = [r["latency_ms"] for r in ok]
        ttft = [r["ttft_ms"] for r in ok if r.get("ttft_ms") is not None]
        out[t] = {"runs": len(mine), "ok": len(ok), "success_rate": round(len(ok) / len(mine), 4) if mine else None,
                  "schema_valid": f"{sum(1 for r in typed if r['valid'])}/{len(typed)}" if typed else None,
                  "latency_p50_ms": _pct(lat, 50), "latency_p95_ms": _pct(lat, 95),
                  "ttft_p50_ms": _pct(ttft, 50), "ttft_p95_ms": _pct(ttft, 95),
                  "mean_input_tokens": round(statistics.fmean(r.get("input_tokens") or 0 for r in ok), 2) if ok else None,
                  "mean_output_tokens": round(statistics.fmean(r.get("output_tokens") or 0 for r in ok), 2) if ok else None,
                  "total_cost_usd": round(sum(r.get("cost_usd") or 0 for r in ok), 8)}
    return out


def _cell(v: Any) -> str:
    """A report cell: ``n/a`` for a value there is none of (never "None")."""
    return "n/a" if v is None else str(v)


def _verdict(first: dict[str, dict[str, Any] | None], targets: list[str]) -> tuple[str, str]:
    """(verdict, shown) of one task line's first answers: ``error`` when any target failed,
    ``invalid`` when a typed answer failed its schema, ``agree`` / ``differ`` (typed answers
    field by field, the others by normalized text)."""
    got = {t: r for t, r in first.items() if r is not None}
    if len(got) < len(targets) or any(r.get("error") for r in got.values()):
        shown = "; ".join(f"{t}: {'error: ' + r['error'] if r.get('error') else 'ok'}" for t, r in got.items())
        return "error", shown
    if any("valid" in r for r in got.values()):
        if not all(r.get("valid") for r in got.values()):
            return "invalid", "; ".join(f"{t}: {'valid' if r.get('valid') else 'invalid: ' + str(r.get('invalid_reason'))}"
                                         for t, r in got.items())
        values = [r.get("json") for r in got.values()]
        objects = [v for v in values if isinstance(v, dict)]
        if len(objects) < len(values):
            same = len({json.dumps(v, sort_keys=True) for v in values}) == 1
            return ("agree" if same else "differ"), "; ".join(f"{t}: {json.dumps(r.get('json'))[:60]}" for t, r in got.items())
        fields = list(dict.fromkeys(k for v in objects for k in v))
        differ = [k for k in fields if len({json.dumps(v.get(k), sort_keys=True) for v in objects}) > 1]
        shown = f"{len(fields) - len(differ)}/{len(fields)} fields agree" + (f"; differ: {', '.join(differ)}" if differ else "")
        return ("differ" if differ else "agree"), shown
    outs = {t: _norm(r.get("output") or json.dumps(r.get("tool_calls"))) for t, r in got.items()}
    verdict = "agree" if len(set(outs.values())) == 1 else "differ"
    return verdict, "; ".join(f"{t}: {o[:60]!r}" for t, o in outs.items())


class ResultRow(msgspec.Struct, omit_defaults=True):
    """One line of ``results.jsonl`` as ``run_compare`` writes it (unknown fields kept out)."""

    task_id: str
    target: str
    latency_ms: float
    line: int = 0
    repeat: int = 0
    error: str | None = None
    ttft_ms: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None
    output: str | None = None
    tool_calls: list[Any] | None = None
    finish_reason: str | None = None
    valid: bool | None = None
    json: Any = None
    invalid_reason: str | None = None


class JudgedPair(msgspec.Struct):
    a: str
    b: str
    judged: int
    a_wins: int
    b_wins: int
    ties: int
    a_win_rate: float | None
    ci95: tuple[float, float]
    judge_errors: int = 0


class Judgements(msgspec.Struct):
    """``judgements.json`` as ``judge_pairs`` writes it (the verdicts are not needed to show it)."""

    judge: str
    pairs: list[JudgedPair]
    rubric: str = ""


_row_decoder = msgspec.json.Decoder(ResultRow)


def decode_results(text: str) -> tuple[list[dict[str, Any]], list[str]]:
    """``results.jsonl`` text as rows (blank lines skipped); the second list names each line that
    is not a result (``line N: why``)."""
    rows, bad = [], []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(msgspec.to_builtins(_row_decoder.decode(line)))
        except msgspec.DecodeError as e:  # ValidationError included
            bad.append(f"line {i}: {e}")
    return rows, bad


def decode_judgements(obj: Any) -> dict[str, Any]:
    """``judgements.json`` (parsed) checked; raises ``msgspec.ValidationError`` naming the field."""
    return msgspec.to_builtins(msgspec.convert(obj, Judgements))  # type: ignore[no-any-return]


def summarize_results(rows: list[dict[str, Any]], judged: dict[str, Any] | None = None) -> dict[str, Any]:
    """A comparison run's results (``results.jsonl`` rows, ``judgements.json``) as the report's
    data, for the console: ``targets`` (in first-seen order), ``per_target`` (``per_target``),
    ``lines`` (each task line's verdict: agree, differ, invalid, error, and what was shown),
    ``runs`` and the judge's ``pairs`` when it ran."""
    targets = list(dict.fromkeys(r["target"] for r in rows))
    firsts: dict[tuple[Any, str], dict[str, Any]] = {}
    for r in rows:  # one pass: an upload of many lines must not take quadratic time
        if r.get("repeat", 0) == 0:
            firsts.setdefault((r["task_id"], r["target"]), r)
    lines = []
    for tid in dict.fromkeys(r["task_id"] for r in rows):
        verdict, shown = _verdict({t: firsts.get((tid, t)) for t in targets}, targets)
        lines.append({"task_id": tid, "verdict": verdict, "shown": shown})
    return {"runs": len(rows), "targets": targets, "per_target": per_target(rows, targets), "lines": lines,
            "judged": None if judged is None else {k: judged.get(k) for k in ("judge", "rubric", "pairs")}}


def render_report(rows: list[dict[str, Any]], targets: list[str], bad: list[str], interrupted: bool,
                  judged: dict[str, Any] | None = None) -> str:
    """``report.md`` (``judged``: ``judge_pairs``' result, when a judge ran)."""
    agg = per_target(rows, targets)
    lines = ["# Comparison report", ""]
    if interrupted:
        lines += ["**Interrupted**: the numbers cover the runs finished before the interruption.", ""]
    lines += [f"{len(rows)} runs over {len(targets)} targets.", "", "## Per target", "",
              ("| target | runs | success rate | schema-valid | latency p50 / p95 ms | TTFT p50 / p95 ms | "
               "mean tokens in / out | total cost USD |"),
              "|---|---|---|---|---|---|---|---|"]
    for t, a in agg.items():
        lines.append(f"| {t} | {a['runs']} | {_cell(a['success_rate'])} | {_cell(a['schema_valid'])} | "
                     f"{_cell(a['latency_p50_ms'])} / {_cell(a['latency_p95_ms'])} | "
                     f"{_cell(a['ttft_p50_ms'])} / {_cell(a['ttft_p95_ms'])} | "
                     f"{_cell(a['mean_input_tokens'])} / {_cell(a['mean_output_tokens'])} | {a['total_cost_usd']:.6f} |")
    lines += ["", "## Per task", "", "| task | outcome | outputs |", "|---|---|---|"]
    for tid in dict.fromkeys(r["task_id"] for r in rows):
        first = {t: next((r for r in rows if r["task_id"] == tid and r["target"] == t and r["repeat"] == 0), None)
                 for t in targets}
        verdict, shown = _verdict(first, targets)
        lines.append(f"| {tid} | {verdict} | {shown.replace('|', '/')} |")
    if judged is not None:
        lines += ["", f"## Judged by {judged['judge']}", "", f"Rubric: {judged['rubric']}", "",
                  ("Each pair of answers was judged twice, in both orders; a judge that favours a position "
                   "scores a tie. Win rate = (wins + ties / 2) / judged, with its 95% Wilson interval."), "",
                  "| A | B | judged | A wins | B wins | ties | A win rate (95% CI) | judge errors |",
                  "|---|---|---|---|---|---|---|---|"]
        for pair in judged["pairs"]:
            rate = pair["a_win_rate"]
            ci = f"{rate} ({pair['ci95'][0]}-{pair['ci95'][1]})" if rate is not None else "n/a"
            lines.append(f"| {pair['a']} | {pair['b']} | {pair['judged']} | {pair['a_wins']} | {pair['b_wins']} | "
                         f"{pair['ties']} | {ci} | {pair['judge_errors']} |")
    if bad:
        lines += ["", "## Skipped lines", ""] + [f"- {b}" for b in bad]
    return "\n".join(lines) + "\n"


DEFAULT_RUBRIC = "correct, complete, follows the request's instructions and format, and concise"
_VERDICT = ResponseFormat(type="json_schema", json_schema=JsonSchemaFormat(name="verdict", strict=True, schema={
    "type": "object", "properties": {"winner": {"enum": ["A", "B", "tie"]}, "reason": {"type": "string"}},
    "required": ["winner", "reason"], "additionalProperties": False}))


def _judge_request(judge: str, job: Job, rubric: str, first: str, second: str) -> TaskRequest:
    asked = "\n\n".join(f"[{m.role}] {m.text()}" for m in job.request.messages)
    return TaskRequest(task=judge, max_tokens=512, temperature=0, response_format=_VERDICT, messages=[
        Message(role="system", content="You compare two answers to the same request. Judge them against this "
                                       f"rubric: {rubric}. Answer with the winner (A, B or tie) and one sentence why."),
        Message(role="user", content=f"Request:\n{asked}\n\nAnswer A:\n{first}\n\nAnswer B:\n{second}")])


async def judge_pairs(jobs: list[Job], rows: list[dict[str, Any]], targets: list[str], judge: str, *,
                      call: Callable[[str, TaskRequest], AsyncIterator[Event]], rubric: str = DEFAULT_RUBRIC,
                      concurrency: int = 4) -> dict[str, Any]:
    """Judge every pair of targets' first answers to every line (both orders); lines where either
    answer failed are not judged. Returns ``{judge, rubric, pairs: [{a, b, judged, a_wins,
    b_wins, ties, a_win_rate, ci95, judge_errors}], verdicts: [...]}``."""
    sem = asyncio.Semaphore(concurrency)
    first = {(r["task_id"], r["target"]): r for r in rows if r["repeat"] == 0}

    async def ask(job: Job, a: str, b: str) -> str | None:
        async with sem:
            try:
                got = await _collect(call(judge, _judge_request(judge, job, rubric, a, b)),
                                     Run(time.perf_counter, time.time_ns()), _VERDICT)
            except (UpstreamError, _Failed, _Limited):
                return None
        return got["json"]["winner"] if got.get("valid") else None

    async def one(job: Job, ta: str, tb: str) -> dict[str, Any]:
        ra, rb = first.get((job.id, ta)), first.get((job.id, tb))
        if ra is None or rb is None or ra.get("error") or rb.get("error"):
            return {"task_id": job.id, "a": ta, "b": tb, "score": None, "skipped": "an answer failed"}
        text_a, text_b = ra.get("output") or json.dumps(ra.get("tool_calls")), rb.get("output") or json.dumps(rb.get("tool_calls"))
        v1, v2 = await asyncio.gather(ask(job, text_a, text_b), ask(job, text_b, text_a))
        if v1 is None or v2 is None:
            return {"task_id": job.id, "a": ta, "b": tb, "score": None, "orders": [v1, v2], "skipped": "judge error"}
        score = ({"A": 1.0, "tie": 0.5, "B": 0.0}[v1] + {"B": 1.0, "tie": 0.5, "A": 0.0}[v2]) / 2  # A's, both orders
        return {"task_id": job.id, "a": ta, "b": tb, "score": score, "orders": [v1, v2]}

    pairs = [(ta, tb) for i, ta in enumerate(targets) for tb in targets[i + 1:]]
    verdicts = await asyncio.gather(*(one(job, ta, tb) for job in jobs for ta, tb in pairs))
    out = []
    for ta, tb in pairs:
        mine = [v for v in verdicts if v["a"] == ta and v["b"] == tb]
        scored = [v["score"] for v in mine if v["score"] is not None]
        wins, losses = sum(1 for s in scored if s > 0.5), sum(1 for s in scored if s < 0.5)
        ties = len(scored) - wins - losses
        points = wins + ties / 2
        out.append({"a": ta, "b": tb, "judged": len(scored), "a_wins": wins, "b_wins": losses, "ties": ties,
                    "a_win_rate": round(points / len(scored), 4) if scored else None,
                    "ci95": wilson(points, len(scored)),
                    "judge_errors": sum(1 for v in mine if v.get("skipped") == "judge error")})
    return {"judge": judge, "rubric": rubric, "pairs": out, "verdicts": verdicts}


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
