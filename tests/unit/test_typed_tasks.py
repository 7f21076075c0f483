"""Typed tasks: templates rendered from ``input``, input and output schemas, examples, versions,
typed output across a fallback chain, the cache, a live edit and an A/B of two prompts (in
process, on the emulator and a fake clock)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from router.loading import ConfigError, parse_config
from router.validate import warnings
from tests.unit._app import InProcess, app, sse
from tests.unit._local import settle

INVOICE = {"type": "object", "properties": {"vendor": {"type": "string"}, "total": {"type": "number"},
                                            "currency": {"enum": ["EUR", "USD"]}},
           "required": ["vendor", "total", "currency"], "additionalProperties": False}

YAML = """
version: 1
providers:
  glm:
    protocol: openai
    base_url: http://emulator/api/paas/v4
    api_key: k
    retry: {attempts: 1}
    models:
      glm-4.6: {context_window: 200000}
  claude:
    protocol: anthropic
    base_url: http://emulator
    api_key: k
    retry: {attempts: 1}
    models:
      claude-sonnet-5-5: {context_window: 200000}
tasks:
  extract_invoice:
    chain: [glm/glm-4.6, claude/claude-sonnet-5-5]
    limits: {rpm: 2}
    system: "You extract invoices for {{ company }}. Answer JSON only."
    user: "Invoice text:\\n{{ text }}"
    input_schema:
      type: object
      properties: {company: {type: string}, text: {type: string, minLength: 1}}
      required: [company, text]
    output_schema: %s
    examples:
      - input: {company: ACME, text: "Bill from Foo GmbH, 12.50 EUR"}
        output: {vendor: Foo GmbH, total: 12.5, currency: EUR}
  cached_extract:
    chain: [glm/glm-4.6]
    cache: {ttl: 60}
    user: "{{ text }}"
    input_schema: {type: object, properties: {text: {type: string}}, required: [text]}
    output_schema: {type: object, properties: {label: {enum: [spam, ham]}}, required: [label]}
  plain:
    chain: [glm/glm-4.6]
  prompts_ab:
    chain: [glm/glm-4.6]
    user: "{{ text }}"
    input_schema: {type: object, properties: {text: {type: string}}, required: [text]}
    experiment:
      sticky_by: metadata.user
      variants:
        terse: {chain: [glm/glm-4.6], weight: 1, system: "Be terse."}
        kind: {chain: [glm/glm-4.6], weight: 1, system: "Be kind."}
""" % json.dumps(INVOICE)

INPUT = {"company": "ACME", "text": "Invoice 7 from Bar Ltd: 99 USD"}


def run(test: Any, yaml_text: str = YAML, **kw: Any) -> None:
    async def go() -> None:
        async with app(yaml_text, **kw) as a:
            await test(a)

    asyncio.run(go())


def script(spec: dict[str, Any]) -> list[dict[str, str]]:
    """A message appended after the rendered prompt that scripts the emulator."""
    return [{"role": "user", "content": "emulate: " + json.dumps(spec)}]


def test_the_prompt_is_rendered_from_input_with_examples_and_the_answer_carries_output_and_version() -> None:
    async def t(a: InProcess) -> None:
        r = await a.client.post("/v1/tasks", json={"task": "extract_invoice", "input": INPUT})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["output"] == {"vendor": "", "total": 0, "currency": "EUR"}  # the emulator's smallest valid answer
        assert json.loads(body["text"]) == body["output"]
        version = body["task_version"]
        assert len(version) == 12 and int(version, 16) >= 0
        sent = a.emulator.last["glm-4.6"]["body"]
        roles = [(m["role"], m["content"]) for m in sent["messages"]]
        assert roles[0][1].startswith("Answer with one JSON value only")  # the adapter's statement of the schema
        roles = roles[1:]
        assert roles[0][0] == "system" and roles[0][1].startswith("You extract invoices for ACME. Answer JSON only.")
        assert roles[1] == ("user", "Invoice text:\nBill from Foo GmbH, 12.50 EUR")  # the example, rendered
        assert roles[2] == ("assistant", '{"vendor": "Foo GmbH", "total": 12.5, "currency": "EUR"}')
        assert roles[3] == ("user", "Invoice text:\nInvoice 7 from Bar Ltd: 99 USD")
        assert sent["response_format"] == {"type": "json_object"}  # GLM: the schema is stated in the system prompt
        routes = (await a.client.get("/v1/routes")).json()["tasks"]
        assert routes["extract_invoice"]["task_version"] == version
        assert routes["extract_invoice"]["typed"]["templates"] == ["system", "user"]
        assert routes["plain"]["task_version"] and "typed" not in routes["plain"]

    run(t)


@pytest.mark.parametrize(("value", "path", "rule"), [
    ({"company": "ACME"}, "input", "required"),
    ({"company": "ACME", "text": ""}, "input.text", "minLength"),
    ({"company": 7, "text": "x"}, "input.company", "type"),
])
def test_input_that_fails_the_schema_is_a_400_naming_path_and_rule_with_nothing_sent_or_counted(
        value: dict[str, Any], path: str, rule: str) -> None:
    async def t(a: InProcess) -> None:
        r = await a.client.post("/v1/tasks", json={"task": "extract_invoice", "input": value})
        assert r.status_code == 400 and r.json()["error"]["path"] == path, r.text
        assert f"(rule: {rule})" in r.json()["error"]["message"]
        assert a.emulator.stats.get("glm-4.6", {}).get("requests", 0) == 0  # nothing upstream
        for _ in range(2):  # rpm 2: the refused requests took no slot
            ok = await a.client.post("/v1/tasks", json={"task": "extract_invoice", "input": INPUT})
            assert ok.status_code == 200, ok.text
        over = await a.client.post("/v1/tasks", json={"task": "extract_invoice", "input": INPUT})
        assert over.status_code == 429

    run(t)


def test_other_bad_typed_requests_are_400s() -> None:
    async def t(a: InProcess) -> None:
        missing = await a.client.post("/v1/tasks", json={"task": "extract_invoice", "messages": [{"role": "user", "content": "x"}]})
        assert missing.status_code == 400 and missing.json()["error"]["path"] == "input"
        untyped = await a.client.post("/v1/tasks", json={"task": "plain", "input": {"a": 1}})
        assert untyped.status_code == 400 and untyped.json()["error"]["path"] == "input"
        pinned = await a.client.post("/v1/tasks", json={"task": "glm/glm-4.6", "input": {"a": 1}})
        assert pinned.status_code == 400 and pinned.json()["error"]["path"] == "input"
        clash = await a.client.post("/v1/tasks", json={"task": "extract_invoice", "input": INPUT,
                                                       "response_format": {"type": "json_object"}})
        assert clash.status_code == 400 and clash.json()["error"]["path"] == "response_format"
        empty = await a.client.post("/v1/tasks", json={"task": "plain"})
        assert empty.status_code == 400 and empty.json()["error"]["path"] == "messages"

    run(t)


def test_an_invalid_answer_falls_back_to_a_valid_one_and_a_stream_ends_with_invalid_output() -> None:
    valid = '{"vendor": "Bar Ltd", "total": 99, "currency": "USD"}'
    spec = {"glm-4.6": {"text": '{"vendor": "Bar Ltd", "total": "99"}'}, "claude-sonnet-5-5": {"text": valid}}

    async def t(a: InProcess) -> None:
        r = await a.client.post("/v1/tasks", json={"task": "extract_invoice", "input": INPUT, "messages": script(spec)})
        body = r.json()
        assert r.status_code == 200 and body["provider"] == "claude", r.text
        assert body["output"] == {"vendor": "Bar Ltd", "total": 99, "currency": "USD"}
        assert [(x["target"], x["outcome"], x["code"]) for x in body["attempts"]][0] == ("glm/glm-4.6", "error", "invalid_output")
        sent = a.emulator.last["claude-sonnet-5-5"]["body"]
        assert sent["output_config"]["format"]["schema"] == INVOICE  # Claude is asked for the schema its own way
        s = await a.client.post("/v1/tasks", json={"task": "extract_invoice", "input": INPUT, "stream": True,
                                                   "messages": script({"*": {"text": '{"vendor": 1}'}})})
        events = sse(s.text)
        assert events[0]["type"] == "start" and events[0]["task_version"] == body["task_version"]
        assert events[-1]["type"] == "error" and events[-1]["code"] == "invalid_output"
        assert "end" not in [e["type"] for e in events]

    run(t)


def test_the_cache_keys_on_the_rendered_prompt_and_schema() -> None:
    async def t(a: InProcess) -> None:
        first = await a.client.post("/v1/tasks", json={"task": "cached_extract", "input": {"text": "win money"}})
        again = await a.client.post("/v1/tasks", json={"task": "cached_extract", "input": {"text": "win money"}})
        other = await a.client.post("/v1/tasks", json={"task": "cached_extract", "input": {"text": "lunch?"}})
        assert (first.json()["cached"], again.json()["cached"], other.json()["cached"]) == (False, True, False)
        assert again.json()["output"] == first.json()["output"] == {"label": "spam"}
        assert again.json()["task_version"] == first.json()["task_version"]
        assert a.emulator.stats["glm-4.6"]["requests"] == 2

    run(t)


def test_a_live_edit_changes_the_version_and_the_prompt() -> None:
    current = [YAML]

    async def t(a: InProcess) -> None:
        before = (await a.client.post("/v1/tasks", json={"task": "extract_invoice", "input": INPUT})).json()
        current[0] = YAML.replace("Answer JSON only.", "Answer with JSON and nothing else.")
        assert await a.app.state.live.reload("test edit")
        after = (await a.client.post("/v1/tasks", json={"task": "extract_invoice", "input": INPUT})).json()
        assert before["task_version"] != after["task_version"]
        assert a.emulator.last["glm-4.6"]["body"]["messages"][1]["content"].startswith(
            "You extract invoices for ACME. Answer with JSON and nothing else.")
        routes = (await a.client.get("/v1/routes")).json()["tasks"]
        assert routes["extract_invoice"]["task_version"] == after["task_version"]

    run(t, load=lambda: parse_config(current[0], {}))


def test_an_ab_of_two_prompts_on_one_model_records_outcomes_per_variant_with_the_version() -> None:
    async def t(a: InProcess) -> None:
        seen: dict[str, str] = {}
        for user in [f"u{i}" for i in range(12)]:
            r = (await a.client.post("/v1/tasks", json={"task": "prompts_ab", "input": {"text": "hi"},
                                                        "metadata": {"user": user}})).json()
            seen[r["variant"]] = a.emulator.last["glm-4.6"]["body"]["messages"][0]["content"]
        assert seen == {"terse": "Be terse.", "kind": "Be kind."}
        await settle(lambda: not a.app.state.live.router.tracker._tasks)  # outcomes are written in the background
        report = (await a.client.get("/v1/experiments/prompts_ab")).json()
        assert sum(v["requests"] for v in report["variants"].values()) == 12
        version = (await a.client.get("/v1/routes")).json()["tasks"]["prompts_ab"]["task_version"]
        for v in report["variants"].values():
            assert v["requests"] > 0 and v["task_versions"] == {version: v["requests"]}

    run(t)


def test_validate_reports_template_and_schema_errors_with_locations_and_undeclared_variables() -> None:
    bad = YAML.replace('user: "Invoice text:\\n{{ text }}"', 'user: "Invoice text:\\n{{ text }"') \
              .replace("minLength: 1", "minLength: -1") \
              .replace("total: 12.5, currency: EUR", "total: twelve, currency: EUR")
    with pytest.raises(ConfigError) as e:
        parse_config(bad, {})
    problems = e.value.problems
    assert any(p.startswith("tasks.extract_invoice.user: line 2: ") for p in problems), problems
    assert any(p.startswith("tasks.extract_invoice.input_schema: not a valid JSON Schema") for p in problems), problems
    variant = YAML.replace('system: "Be kind."', 'system: "{% if %}"')
    with pytest.raises(ConfigError) as v:
        parse_config(variant, {})
    assert [p for p in v.value.problems if p.startswith("tasks.prompts_ab.experiment.variants.kind.system: line 1")]
    example = YAML.replace("total: 12.5, currency: EUR", "total: twelve, currency: EUR")
    with pytest.raises(ConfigError) as x:
        parse_config(example, {})
    assert x.value.problems == ["tasks.extract_invoice.examples[0].output.total: 'twelve' is not of type 'number'"]
    undeclared = YAML.replace("{{ company }}", "{{ company }} in {{ country }}")
    found = warnings(parse_config(undeclared, {}), undeclared, {})
    assert "tasks.extract_invoice.system: uses 'country', which input_schema does not declare" in found


def test_claude_gets_the_schema_without_the_bounds_it_rejects_and_the_router_still_checks_them() -> None:
    yaml_text = YAML.replace("  plain:\n", """  scored:
    chain: [claude/claude-sonnet-5-5]
    user: "{{ text }}"
    input_schema: {type: object, properties: {text: {type: string}}, required: [text]}
    output_schema:
      type: object
      properties:
        minimum: {type: number, minimum: 0, maximum: 1}
        tags: {type: array, items: {type: string, maxLength: 5}, minItems: 2, maxItems: 4}
      required: [minimum, tags]
  plain:
""")

    async def t(a: InProcess) -> None:
        r = await a.client.post("/v1/tasks", json={"task": "scored", "input": {"text": "x"}, "messages": script(
            {"*": {"text": '{"minimum": 7, "tags": ["a", "b"]}'}})})
        assert r.status_code == 502 and "invalid_output" in r.text  # 7 > maximum: caught by the router
        sent = a.emulator.last["claude-sonnet-5-5"]["body"]["output_config"]["format"]["schema"]
        assert sent == {"type": "object", "required": ["minimum", "tags"], "properties": {
            "minimum": {"type": "number"}, "tags": {"type": "array", "items": {"type": "string"}}}}

    run(t, yaml_text)


def test_templates_that_cannot_compile_or_render_are_config_errors_and_failures_on_input_are_400s() -> None:
    for bad, where in ((YAML.replace("{{ company }}", "{{ company|nosuchfilter }}"), "tasks.extract_invoice.system: "),
                       (YAML.replace("{company: ACME, text:", "{text:"), "tasks.extract_invoice.examples"),
                       (YAML.replace('"type": "number"}', '"type": "number"}, "x": {"$ref": "#/$defs/nope"}'),
                        "tasks.extract_invoice.output_schema: $ref")):
        with pytest.raises(ConfigError) as e:
            parse_config(bad, {})
        assert any(p.startswith(where) for p in e.value.problems), e.value.problems
    divide = YAML.replace('user: "{{ text }}"\n    input_schema: {type: object, properties: {text: {type: string}}, required: [text]}\n    output_schema: {type: object, properties: {label:',
                          'user: "{{ 100 / n }}"\n    input_schema: {type: object, properties: {n: {type: number}}, required: [n]}\n    output_schema: {type: object, properties: {label:')

    async def t(a: InProcess) -> None:
        r = await a.client.post("/v1/tasks", json={"task": "cached_extract", "input": {"n": 0}})
        assert r.status_code == 400 and r.json()["error"]["path"] == "input" and "ZeroDivisionError" in r.text

    run(t, divide)
