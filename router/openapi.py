"""OpenAPI 3.1 for every route (placeholder until the door schemas land)."""

from __future__ import annotations

from litestar.openapi import OpenAPIConfig

__all__ = ["openapi_config"]


def openapi_config() -> OpenAPIConfig:
    return OpenAPIConfig(title="llm-router", version="0.1.0", path="/schema")
