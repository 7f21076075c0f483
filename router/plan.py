"""Task -> plan: the chain of targets a request will walk, with their effective policies.

``Planner(config, targets)`` is built once per config. ``plan(req)`` resolves the request's name:
a task; an alias from routing.yaml's ``aliases`` (to a task or a target); a pinned
``provider/model`` (a one-target chain with its provider's policy, no task params or cache); or a
bare model id (``glm-4.6``: every provider's target of that id, in config order, as the chain, each
with its provider's policy). Then it picks the experiment variant, renders a typed task's prompt
(``router.prompts``: the variant's templates over the task's; the request as sent is
``Plan.request``), merges the params (the request's own over the variant's over the task's) and
estimates the tokens for limits and context-window skips.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from router.config import CachePolicy, Params, RoutingConfig, Shadow, overlay
from router.errors import RequestError, UnknownTask
from router.experiments import assign
from router.limits import DEFAULT_MAX_TOKENS_ESTIMATE
from router.policy import Policy, resolve
from router.prompts import TaskPrompt, compile_prompt, spec_of, task_version
from router.request import CacheControl, TaskRequest
from router.upstream import Target

__all__ = ["Plan", "Planner", "estimate_prompt_tokens"]

class Plan(msgspec.Struct, kw_only=True):
    """What a request will do: its ``task``, the ordered ``chain`` with each target's ``policies``
    (by target name), merged ``params``, the ``midstream`` failure mode, the ``cache`` policy, the
    token estimates (``prompt_tokens``; ``estimate`` = prompt + ``max_tokens`` or 4096), the
    experiment ``variant`` and ``shadow``, whether A/B outcomes are recorded (``tracked``), the
    failures the task routes around besides the usual (``fallback_on``), the ``request`` as sent
    (a typed task's prompt rendered) and the task definition's ``task_version``."""

    task: str
    request: TaskRequest
    chain: list[Target]
    policies: Mapping[str, Policy]
    params: Params
    midstream: str = "error"
    cache: CachePolicy | None = None
    prompt_tokens: int = 0
    estimate: int = 0
    variant: str | None = None
    shadow: Shadow | None = None
    tracked: bool = False
    fallback_on: frozenset[str] = frozenset()
    task_version: str | None = None
    background: bool = False  # an async task's run: provider quotas within their queue_share, paced
    estimate_usd: float = 0.0  # the most this request may cost on its chain (prompt estimate + max_tokens), for budgets
    cache_key: str | None = None  # the cache key, once computed (``Router.admit``)


def estimate_prompt_tokens(req: TaskRequest) -> int:
    """A tokenizer-free estimate of the prompt: characters / 4, plus 4 per message. It errs low
    for English prose and for code-heavy or CJK text, so a target it lets through may still answer
    prompt-too-long; that error moves on to a target with a larger window."""
    chars = 0
    for m in req.messages:
        chars += len(m.text()) + sum(len(tc.function.arguments) + len(tc.function.name)
                                     for tc in m.tool_calls or ())
    if req.tools:
        chars += len(msgspec.json.encode(req.tools))
    return chars // 4 + 4 * len(req.messages)


def _cache_prompt(req: TaskRequest) -> TaskRequest:
    """``req`` with its last system message and its last tool marked as cache breakpoints
    (a task's ``cache_prompt: true``), unless the caller placed breakpoints of its own."""
    if any(m.cache_control for m in req.messages) or any(t.cache_control for t in req.tools or ()):
        return req
    messages = list(req.messages)
    systems = [i for i, m in enumerate(messages) if m.role == "system"]
    if systems:
        messages[systems[-1]] = msgspec.structs.replace(messages[systems[-1]], cache_control=CacheControl())
    tools = list(req.tools) if req.tools else None
    if tools:
        tools[-1] = msgspec.structs.replace(tools[-1], cache_control=CacheControl())
    return msgspec.structs.replace(req, messages=messages, tools=tools)


def _merge(req: TaskRequest, params: Params) -> Params:
    return Params(
        max_tokens=req.max_tokens if req.max_tokens is not None else params.max_tokens,
        temperature=req.temperature if req.temperature is not None else params.temperature,
        top_p=req.top_p if req.top_p is not None else params.top_p,
        stop=req.stop if req.stop is not None else params.stop,
        thinking=req.thinking if req.thinking is not None else params.thinking,
    )


class _TaskPlan(msgspec.Struct, frozen=True):
    chain: list[Target]
    policies: dict[str, Policy]
    params: Params
    midstream: str
    cache: CachePolicy | None
    fallback_on: frozenset[str] = frozenset()
    prompts: dict[str | None, TaskPrompt | None] = {}  # by variant (None: the task's own)
    version: str | None = None


class Planner:
    """Plans for one config. ``targets``: every ``provider/model`` (``make_targets``)."""

    def __init__(self, config: RoutingConfig, targets: Mapping[str, Target]) -> None:
        self.config, self.targets = config, targets
        self._plans: dict[str, _TaskPlan] = {}
        for name, task in config.tasks.items():
            variants = [t for v in (task.experiment.variants.values() if task.experiment else ()) for t in v.chain]
            policies = {t: resolve(config.providers[targets[t].provider], task)
                        for t in dict.fromkeys([*task.chain, *variants])}
            own = compile_prompt(name, spec_of(task))
            typed = own is not None and own.templated
            prompts: dict[str | None, TaskPrompt | None] = {None: own}
            for vname, v in (task.experiment.variants.items() if task.experiment else ()):
                prompts[vname] = compile_prompt(name, spec_of(task, v), accepts_input=typed)
            self._plans[name] = _TaskPlan([targets[t] for t in task.chain], policies, task.params,
                                          task.midstream, task.cache, frozenset(task.fallback_on),
                                          prompts, task_version(task))
        for name, target in targets.items():  # a pinned target is a one-target chain of its own
            self._plans.setdefault(name, _TaskPlan([target], {name: resolve(config.providers[target.provider])},
                                                   Params(), "error", None))
        by_model: dict[str, list[Target]] = {}
        for target in targets.values():  # a bare model id: every provider serving it, in config order
            by_model.setdefault(target.model, []).append(target)
        self.models = sorted(by_model)
        for model, chain in by_model.items():
            if model not in self._plans:
                self._plans[model] = _TaskPlan(chain, {t.name: resolve(config.providers[t.provider]) for t in chain},
                                               Params(), "error", None)
        self._names = {**{m: m for m in by_model}, **{n: n for n in self._plans}, **config.aliases,
                       **{t: t for t in config.tasks}}

    def resolve(self, name: str) -> str | None:
        """What a request's ``task`` / ``model`` names: a task, a target or a model id (aliases
        followed); None when nothing."""
        return self._names.get(name)

    def version(self, task: str) -> str | None:
        """The ``task_version`` of a task (None for a target or model id)."""
        found = self._plans.get(task)
        return found.version if found is not None else None

    def typed(self, task: str) -> bool:
        """Whether the task takes an ``input`` (it has templates, examples or an input schema)."""
        found = self._plans.get(task)
        own = found.prompts.get(None) if found is not None else None
        return own is not None and own.templated

    def render(self, req: TaskRequest) -> TaskRequest:
        """``req`` with its task's own prompt rendered (no experiment variant: what ``compare``
        sends every target). Raises ``UnknownTask`` and ``RequestError`` as ``plan`` does."""
        name = self._names.get(req.task)
        found = self._plans.get(name) if name is not None else None
        if found is None:
            raise UnknownTask(req.task, list(self.config.tasks), list(self.config.aliases), self.models)
        own = found.prompts.get(None)
        if own is not None:
            return own.render(req)
        if req.input is not None:
            raise RequestError(f"{name!r} is not a typed task (no templates or input_schema); send messages", "input")
        return req

    def policy(self, task: str, target: str) -> Policy:
        """The effective policy of ``target`` within ``task`` (raises ``KeyError``)."""
        return self._plans[task].policies[target]

    def plan(self, req: TaskRequest) -> Plan:
        """The plan of ``req``; raises ``UnknownTask`` (404) listing the known tasks."""
        name = self._names.get(req.task)
        found = self._plans.get(name) if name is not None else None
        if found is None or name is None:
            raise UnknownTask(req.task, list(self.config.tasks), list(self.config.aliases), self.models)
        chain, params = found.chain, found.params
        task = self.config.tasks.get(name)
        variant = None
        if task is not None and task.experiment is not None:
            variant = assign(name, task.experiment, req)
            v = task.experiment.variants[variant]
            chain = [self.targets[t] for t in v.chain]
            if v.params is not None:
                params = overlay(params, v.params)
        prompt_of = found.prompts.get(variant)
        if prompt_of is not None:
            req = prompt_of.render(req)
        elif req.input is not None:
            raise RequestError(f"{name!r} is not a typed task (no templates or input_schema); send messages", "input")
        if task is not None and task.cache_prompt:
            req = _cache_prompt(req)
        merged = _merge(req, params)
        prompt = estimate_prompt_tokens(req)
        shadow = task.shadow if task is not None else None
        out_tokens = merged.max_tokens or DEFAULT_MAX_TOKENS_ESTIMATE
        cost = max((t.spec.price.cost(prompt, out_tokens) for t in chain if t.spec.price is not None), default=0.0)
        return Plan(task=name, request=req, task_version=found.version, estimate_usd=cost, chain=chain, policies=found.policies, params=merged, midstream=found.midstream,
                    cache=found.cache, prompt_tokens=prompt,
                    estimate=prompt + (merged.max_tokens or DEFAULT_MAX_TOKENS_ESTIMATE), variant=variant,
                    shadow=shadow, tracked=task is not None and (task.experiment is not None or shadow is not None),
                    fallback_on=found.fallback_on)
