"""``llm-router compare`` in process: typed task lines rendered from the config, outputs checked
against the schema and compared field by field, errors never counted as agreement, the judge's
two orders, and ``--demo`` through the command line (the emulator in this process)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from router.cli import main
from router.compare import Job, judge_pairs, load_tasks, render_jobs, render_report, run_compare, wilson
from router.events import End, Event, Start, TextDelta, Usage
from router.loading import parse_config
from router.request import Message, TaskRequest
from tests.unit.test_typed_tasks import YAML

ROOT = Path(__file__).resolve().parents[2]


def answer(text: str) -> AsyncIterator[Event]:
    async def gen() -> AsyncIterator[Event]:
        yield Start(id="r", task="t", provider="p", model="m")
        yield TextDelta(text=text)
        yield Usage(input_tokens=10, output_tokens=5)
        yield End()

    return gen()


def test_typed_lines_render_check_and_compare_field_by_field(tmp_path: Path) -> None:
    lines = [{"id": "inv", "task": "extract_invoice", "input": {"company": "ACME", "text": "Bar Ltd, 99 USD"}},
             {"id": "bad", "task": "extract_invoice", "input": {"company": "ACME"}},
             {"id": "orphan", "input": {"a": 1}},
             {"id": "untyped", "task": "plain", "input": {"a": 1}},
             {"id": "plain", "messages": [{"role": "user", "content": "hi"}]}]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    jobs, bad = load_tasks(tmp_path / "t.jsonl")
    jobs, unrendered = render_jobs(jobs, parse_config(YAML, {}))
    assert [j.id for j in jobs] == ["inv", "plain"]
    assert bad == ['line 3: a line with input names its typed task ("task")']
    assert unrendered == ["line 2: input: 'text' is a required property (rule: required)",
                          "line 4: task 'plain' is not a typed task of the config"]
    sent: list[TaskRequest] = []
    outputs = {"a/x": '{"vendor": "Bar Ltd", "total": 99, "currency": "USD"}',
               "b/y": '{"vendor": "Bar", "total": 99, "currency": "USD"}'}

    def call(target: str, req: TaskRequest) -> AsyncIterator[Event]:
        sent.append(req)
        return answer(outputs[target] if req.response_format else "same")

    rows: list[dict[str, Any]] = []
    asyncio.run(run_compare(jobs, list(outputs), call=call, concurrency=2, repeat=1,
                            results_path=tmp_path / "r.jsonl", rows=rows))
    typed = [r for r in sent if r.response_format is not None]
    assert len(typed) == 2 and typed[0].messages[-1].content == "Invoice text:\nBar Ltd, 99 USD"
    inv = {r["target"]: r for r in rows if r["task_id"] == "inv"}
    assert all(r["valid"] for r in inv.values()) and inv["b/y"]["json"]["vendor"] == "Bar"
    report = render_report(rows, list(outputs), bad + unrendered, False)
    assert "| inv | differ | 2/3 fields agree; differ: vendor |" in report
    assert "| plain | agree |" in report
    assert "| a/x | 2 | 1.0 | 1/1 |" in report and "None" not in report


def test_errors_never_agree_and_empty_cells_say_n_a() -> None:
    rows = [{"task_id": "q", "line": 1, "target": t, "repeat": 0, "latency_ms": 1.0, "error": "connect_error",
             "ttft_ms": None, "input_tokens": None, "output_tokens": None, "cost_usd": None} for t in ("a/x", "b/y")]
    report = render_report(rows, ["a/x", "b/y"], [], False)
    assert "| q | error | a/x: error: connect_error; b/y: error: connect_error |" in report
    assert "None" not in report and "| a/x | 1 | 0.0 | n/a | n/a / n/a |" in report


@pytest.mark.parametrize(("judge_prefers", "a_wins", "b_wins", "ties"), [
    ("B-target", 0, 2, 0),   # a consistent judge: the second target wins in both orders
    ("position A", 0, 0, 2),  # a judge that always says "A": both orders cancel to a tie
])
def test_the_judge_is_asked_in_both_orders(judge_prefers: str, a_wins: int, b_wins: int, ties: int) -> None:
    jobs = [Job(line=n, id=f"q{n}", request=TaskRequest(task="compare", messages=[Message(role="user", content="?")]))
            for n in (1, 2)]
    rows = [{"task_id": j.id, "target": t, "repeat": 0, "output": f"answer of {t}"} for j in jobs for t in ("a/x", "b/y")]
    asked: list[str] = []

    def call(target: str, req: TaskRequest) -> AsyncIterator[Event]:
        prompt = req.messages[1].text()
        asked.append(prompt)
        first_is_b = prompt.index("answer of b/y") < prompt.index("answer of a/x")
        winner = "A" if judge_prefers == "position A" else ("A" if first_is_b else "B")
        return answer(json.dumps({"winner": winner, "reason": "because"}))

    judged = asyncio.run(judge_pairs(jobs, rows, ["a/x", "b/y"], "j/judge", call=call))
    (pair,) = judged["pairs"]
    assert (pair["a_wins"], pair["b_wins"], pair["ties"], pair["judged"]) == (a_wins, b_wins, ties, 2)
    assert len(asked) == 4  # two lines, both orders
    assert pair["ci95"] == wilson(a_wins + ties / 2, 2)


def test_compare_demo_runs_in_process_without_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("ZAI_API_KEY", "ANTHROPIC_API_KEY", "REDIS_URL"):
        monkeypatch.delenv(var, raising=False)
    lines = [{"id": "inv", "task": "extract_invoice", "input": {"company": "ACME", "text": "Bar Ltd: 99 USD"}},
             {"id": "ticket", "task": "classify_ticket", "input": {"subject": "refund", "body": "money back"}}]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["compare", "--demo", "--config", str(ROOT / "routing.yaml"), "--tasks",
                                  str(tmp_path / "t.jsonl"), "--targets", "glm/glm-4.6,claude/claude-sonnet-5-5",
                                  "--judge", "claude/claude-haiku-5-5", "--out", str(out)])
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and not any(x.get("error") for x in rows) and all(x["valid"] for x in rows)
    report = (out / "report.md").read_text()
    assert "| inv | agree | 6/6 fields agree |" in report and "connect_error" not in report
    assert "## Judged by claude/claude-haiku-5-5" in report and "None" not in report
    assert json.loads((out / "judgements.json").read_text())["pairs"][0]["judged"] == 2
