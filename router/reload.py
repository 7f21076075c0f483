"""Live routing.yaml: the current ``Router``, swapped whole when a valid edit arrives.

``LiveConfig`` watches the config's directory (watchfiles; routing.yaml, ``.env`` and
``.env.local``) and reloads on a change or on ``reload()`` (SIGHUP). A valid edit builds a new
``Router`` and swaps it in one assignment: a request in flight keeps the router it started with
and finishes on that config. Circuit and limit state live in the store, which every router shares,
so they survive a reload wherever the target still exists. An invalid edit (YAML, schema,
cross-references) changes nothing: the last good config keeps serving, and its problems are logged
with their locations and kept in ``rejected`` for ``/readyz`` and ``/v1/routes``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from router.config import ConfigError, RoutingConfig

__all__ = ["LiveConfig"]

log = logging.getLogger("llm_router")
_WATCHED = ("routing.yaml", ".env", ".env.local")


class LiveConfig:
    """``router``: the current ``Router``. ``load()`` reads and checks the config (raises
    ``ConfigError``); ``build(config)`` makes a router for it. ``debounce`` in milliseconds."""

    def __init__(self, path: str, load: Callable[[], RoutingConfig], build: Callable[[RoutingConfig], Any],
                 router: Any, debounce: int = 150) -> None:
        self.path = os.path.abspath(path)
        self.load, self.build = load, build
        self.router = router
        self.loaded_at = time.time()
        self.rejected: dict[str, Any] | None = None
        self.debounce = debounce
        self._lock = asyncio.Lock()

    def status(self) -> dict[str, Any]:
        """The active version (content hash, source, load time) and the last rejected edit."""
        cfg = self.router.config
        return {"version": cfg.digest, "source": cfg.source, "loaded_at": self.loaded_at,
                "rejected": self.rejected}

    async def reload(self, reason: str, force: bool = False) -> bool:
        """Load the file now; True when the router now serves it (or already did). ``force``
        rebuilds even when routing.yaml's text is unchanged (a ``.env`` edit changes keys)."""
        async with self._lock:
            try:
                config = self.load()
            except ConfigError as e:
                self.rejected = {"at": time.time(), "reason": reason, "errors": e.problems}
                for p in e.problems:
                    log.error("config reload (%s) rejected, keeping version %s: %s: %s", reason,
                              self.router.config.digest, self.path, p)
                return False
            self.rejected = None
            if config.digest == self.router.config.digest and not force:
                return True
            self.router = self.build(config)
            self.loaded_at = time.time()
            log.warning("config reloaded (%s): version %s", reason, config.digest)
            return True

    async def watch(self, stop: asyncio.Event) -> None:
        """Reload on every change to the watched files until ``stop`` is set."""
        from watchfiles import awatch

        here = os.path.dirname(self.path)
        names = {os.path.basename(self.path), *_WATCHED[1:]}
        async for changes in awatch(here, stop_event=stop, debounce=self.debounce, step=50,
                                    recursive=False):
            changed = {os.path.basename(p) for _, p in changes} & names
            if changed:
                await self.reload("file changed", force=bool(changed - {os.path.basename(self.path)}))
