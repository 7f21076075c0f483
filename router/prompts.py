"""Typed tasks: a task's prompt templates, input and output schemas, examples and version.

A task in routing.yaml may define ``system`` and ``user`` templates (Jinja2, rendered in its
``SandboxedEnvironment`` with ``StrictUndefined``: a template reads the request's ``input``
object's keys, or ``input`` itself, and can reach no Python attribute or function the sandbox
refuses), ``input_schema`` and ``output_schema`` (JSON Schema, checked with the ``jsonschema``
library) and ``examples`` (few-shot ``{input, output}`` pairs rendered as user / assistant turns).
A request to such a task posts ``input``; the prompt it sends is::

    system (rendered) , examples (user, assistant)* , user (rendered; without a ``user`` template
    the input as JSON) , the request's own messages

and with ``output_schema`` it asks every target for that schema (``response_format``
``json_schema``: each adapter in its own way) and the answer is validated against it.

``task_version`` is the content hash of the task's definition (12 hex digits of the SHA-256 of
its canonical JSON): any edit of its prompt, schemas, chain or params changes it.

Template engine: Jinja2 (https://jinja.palletsprojects.com/en/stable/sandbox/), chosen as the
well-kept, sandboxed engine the Python LLM tooling already uses (TensorZero's templates are
MiniJinja, the same language).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import jsonschema
import msgspec
import referencing
from jinja2 import (
    StrictUndefined,
    TemplateError,
    TemplateSyntaxError,
    UndefinedError,
    meta,
)
from jinja2.sandbox import SandboxedEnvironment

from router.config import Example, Task, Variant
from router.errors import RequestError
from router.request import (
    JsonSchemaFormat,
    Message,
    ResponseFormat,
    TaskRequest,
    check_schema,
)

__all__ = ["PromptSpec", "TaskPrompt", "compile_prompt", "prompt_problems", "spec_of", "task_version"]

_env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)
_NOTHING_REMOTE = referencing.Registry()  # no $ref is ever fetched


class PromptSpec(msgspec.Struct, frozen=True):
    """The prompt fields of a task or of an experiment variant over it."""

    system: str | None = None
    user: str | None = None
    examples: list[Example] | None = None
    input_schema: dict[str, Any] | None = None
    output_schema: dict[str, Any] | None = None


def task_version(definition: Task) -> str:
    """12 hex digits of the SHA-256 of the task's fields that are set (not at their defaults, so
    a field added to ``Task`` later changes no version), as canonical JSON (sorted keys)."""
    defaults = msgspec.to_builtins(Task(chain=[]))
    fields = {k: v for k, v in msgspec.to_builtins(definition).items() if k == "chain" or v != defaults.get(k)}
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def _json_path(error: jsonschema.ValidationError, root: str) -> str:
    """``root`` then the error's path (``input.customer.name``, ``input.items[2]``)."""
    out = root
    for step in error.absolute_path:
        out += f"[{step}]" if isinstance(step, int) else f".{step}"
    return out


def _validator(schema: dict[str, Any]) -> Any:
    return jsonschema.validators.validator_for(schema)(schema, registry=_NOTHING_REMOTE)


class TaskPrompt:
    """One task's (or variant's) compiled prompt. ``render(req)`` is the request as sent."""

    def __init__(self, task: str, spec: PromptSpec, accepts_input: bool | None = None) -> None:
        self.task, self.spec = task, spec
        self.system = _env.from_string(spec.system) if spec.system is not None else None
        self.user = _env.from_string(spec.user) if spec.user is not None else None
        self.input_validator = _validator(spec.input_schema) if spec.input_schema is not None else None
        self.response_format = ResponseFormat(type="json_schema", json_schema=JsonSchemaFormat(
            schema=spec.output_schema, name=_schema_name(task), strict=True)) if spec.output_schema is not None else None
        # whether requests bring an input: decided by the task (a variant's own prompt does not change it)
        self.templated = _typed(spec) if accepts_input is None else accepts_input
        self._examples = [m for ex in spec.examples or () for m in self._pair(ex)]

    def _pair(self, ex: Example) -> list[Message]:
        answer = ex.output if isinstance(ex.output, str) else json.dumps(ex.output, ensure_ascii=False)
        return [Message(role="user", content=self._user(ex.input)), Message(role="assistant", content=answer)]

    def _user(self, values: dict[str, Any]) -> str:
        if self.user is None:
            return json.dumps(values, ensure_ascii=False)
        return self.user.render({**values, "input": values})

    def check_input(self, value: Any) -> None:
        """Raise ``RequestError`` naming the JSON path (``input.customer.name``) and the rule
        (``type``, ``required``, ...) when ``value`` fails ``input_schema``."""
        if self.input_validator is None:
            return
        try:
            error = jsonschema.exceptions.best_match(self.input_validator.iter_errors(value))
        except referencing.exceptions.Unresolvable as e:
            raise RequestError(f"the task's input_schema has a $ref that does not resolve: {e.ref!r}", "input") from None
        if error is not None:
            raise RequestError(f"{error.message} (rule: {error.validator})", _json_path(error, "input"))

    def render(self, req: TaskRequest) -> TaskRequest:
        """The request with the rendered prompt before its own messages and the task's output
        schema as its ``response_format``. Raises ``RequestError`` (400, nothing sent): an input
        that fails ``input_schema``, a missing input the task needs, a template that reads a
        variable the input lacks, a request ``response_format`` beside the task's schema."""
        if req.input is None and self.spec.input_schema is not None:
            raise RequestError(f"task {self.task!r} takes an input object (its input_schema)", "input")
        if req.input is not None and not self.templated:
            raise RequestError(f"task {self.task!r} has no templates or input_schema; send messages", "input")
        values = req.input or {}
        self.check_input(values)
        messages: list[Message] = []
        try:
            if self.system is not None:
                messages.append(Message(role="system", content=self.system.render({**values, "input": values})))
            messages += self._examples
            if req.input is not None:
                messages.append(Message(role="user", content=self._user(values)))
        except UndefinedError as e:
            raise RequestError(f"the task's template needs it: {e.message}", "input") from None
        except Exception as e:  # noqa: BLE001 - the sandbox's SecurityError, and what an expression raises (1/0, "a" + 1)
            raise RequestError(f"the task's template failed on this input: {type(e).__name__}: {e}", "input") from None
        messages += req.messages
        if not messages:
            raise RequestError("messages must not be empty", "messages")
        fmt = req.response_format
        if self.response_format is not None:
            if fmt is not None and fmt != self.response_format:
                raise RequestError(f"task {self.task!r} fixes the output schema (its output_schema); "
                                   "leave response_format out", "response_format")
            fmt = self.response_format
        return msgspec.structs.replace(req, messages=messages, response_format=fmt, input=None)


def _schema_name(task: str) -> str:
    """A ``json_schema.name`` for OpenAI-compatible upstreams (letters, digits, ``_``, ``-``)."""
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in task)[:64] or "output"


def _typed(spec: PromptSpec) -> bool:
    """Whether a task takes an ``input``: it has a template, examples or an input schema."""
    return spec.system is not None or spec.user is not None or bool(spec.examples) or spec.input_schema is not None


def compile_prompt(task: str, spec: PromptSpec, accepts_input: bool | None = None) -> TaskPrompt | None:
    """The compiled prompt, or None when it defines none of the prompt fields. ``accepts_input``:
    the task's own answer (for a variant's prompt over a task's)."""
    if spec == PromptSpec():
        return None
    return TaskPrompt(task, spec, accepts_input)


def _template_problem(text: str, where: str) -> tuple[str | None, set[str]]:
    try:
        ast = _env.parse(text)
        _env.from_string(text)  # compiles: unknown filters and tests are found here
    except TemplateSyntaxError as e:
        return f"{where}: line {e.lineno}: {e.message}", set()
    except TemplateError as e:
        return f"{where}: {e.message}", set()
    return None, meta.find_undeclared_variables(ast)


def prompt_problems(spec: PromptSpec, where: str) -> tuple[list[str], list[str]]:
    """(problems, warnings) of a task's prompt fields, each ``location: what``: a template that
    does not compile (its line), a schema that is not JSON Schema, an example that fails the
    schemas; warnings for template variables the input schema does not declare."""
    problems: list[str] = []
    warnings: list[str] = []
    for name, schema in (("input_schema", spec.input_schema), ("output_schema", spec.output_schema)):
        if schema is not None:
            try:
                check_schema(schema, f"{where}.{name}")
            except RequestError as e:
                problems.append(f"{e.path}: {e.message}")
    declared = set((spec.input_schema or {}).get("properties") or {}) | {"input"}
    for name in ("system", "user"):
        text = getattr(spec, name)
        if text is None:
            continue
        problem, used = _template_problem(text, f"{where}.{name}")
        if problem is not None:
            problems.append(problem)
        for var in sorted(used - declared):
            warnings.append(f"{where}.{name}: uses {var!r}, which input_schema does not declare"
                            if spec.input_schema is not None else
                            f"{where}.{name}: uses {var!r}, but the task has no input_schema declaring it")
    if problems:
        return problems, warnings
    try:
        rendered = TaskPrompt("check", spec)  # every example through the templates, as requests will be
        del rendered
    except Exception as e:  # noqa: BLE001 - reported as the config's problem, with where
        problems.append(f"{where}.examples: an example does not render through the templates: {type(e).__name__}: {e}")
    for i, ex in enumerate(spec.examples or ()):
        for name, schema, value in (("input", spec.input_schema, ex.input), ("output", spec.output_schema, ex.output)):
            if schema is None:
                continue
            error = jsonschema.exceptions.best_match(_validator(schema).iter_errors(value))
            if error is not None:
                problems.append(f"{_json_path(error, f'{where}.examples[{i}].{name}')}: {error.message}")
    return problems, warnings


def spec_of(task: Task, variant: Variant | None = None) -> PromptSpec:
    """The prompt fields of ``task``, with ``variant``'s ``system``/``user``/``examples`` (those
    it sets) over them."""
    spec = PromptSpec(system=task.system, user=task.user, examples=task.examples,
                      input_schema=task.input_schema, output_schema=task.output_schema)
    if variant is None:
        return spec
    over = {k: v for k in ("system", "user", "examples") if (v := getattr(variant, k)) is not None}
    return msgspec.structs.replace(spec, **over) if over else spec
