"""llm-router: routes LLM tasks to GLM and Claude backends as one normalized event stream.

Modules: ``config`` (routing.yaml), ``request`` (the canonical request), ``events`` (the unified
event schema), ``errors`` (the error tree), ``upstream`` (one upstream call), ``engine`` (task ->
chain -> events), ``app`` (the HTTP service), ``emulator`` (the upstream emulator), ``cli``.
Importing this package does no work.
"""

__version__ = "0.1.0"
