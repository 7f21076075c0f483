"""Structured outputs: is an answer's text what its ``response_format`` asked for?

``output_problem(text, fmt)`` parses the answer's text as JSON and, for a ``json_schema``
format, validates it with the ``jsonschema`` library (the validator the schema's ``$schema``
names, Draft 2020-12 by default). The chain walk calls it when the committed target's answer ends,
before ``end`` leaves: a mismatch is that target's failure, ``invalid_output``.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import jsonschema
import msgspec
import referencing

from router.request import ResponseFormat

_NOTHING_REMOTE = referencing.Registry()  # an empty registry: no $ref is ever fetched

__all__ = ["output_problem", "parsed_output"]


def _strip_fence(text: str) -> str:
    """The text without a surrounding Markdown code fence (models add one despite being told)."""
    t = text.strip()
    if t.startswith("```") and t.endswith("```"):
        t = t[3:-3]
        t = t[t.find("\n") + 1:] if "\n" in t else t
    return t.strip()


def parsed_output(text: str) -> Any:
    """The answer's JSON (a surrounding code fence stripped), or None when it is not JSON."""
    try:
        return json.loads(_strip_fence(text))
    except ValueError:
        return None


@functools.lru_cache(maxsize=512)
def _validator(canonical: bytes) -> Any:
    """The validator of the schema whose canonical JSON is ``canonical``, made once (validators
    are reusable; the 512 most recent schemas are kept)."""
    schema = msgspec.json.decode(canonical)
    return jsonschema.validators.validator_for(schema)(schema, registry=_NOTHING_REMOTE)


def output_problem(text: str, fmt: ResponseFormat) -> str | None:
    """Why ``text`` does not match ``fmt`` (one sentence naming the JSON path), or None."""
    try:
        value: Any = json.loads(_strip_fence(text))
    except ValueError:
        return "the answer is not JSON"
    if fmt.type == "json_object" and not isinstance(value, dict):
        return "the answer is not a JSON object"
    if fmt.type == "json_schema" and fmt.json_schema is not None:
        validator = _validator(msgspec.json.encode(fmt.json_schema.schema, order="sorted"))
        try:
            error = jsonschema.exceptions.best_match(validator.iter_errors(value))
        except referencing.exceptions.Unresolvable as e:
            return f"the schema's $ref {e.ref!r} cannot be resolved"
        if error is not None:
            where = error.json_path if error.path else "$"
            return f"at {where}: {error.message}"
    return None
