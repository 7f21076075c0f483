"""Live routing.yaml: the current ``Router``, swapped whole when a valid edit arrives.

``LiveConfig`` watches the config's directory (watchfiles; routing.yaml, ``.env`` and
``.env.local``) and reloads on a change or on ``reload()`` (SIGHUP). A valid edit builds a new
``Router`` and swaps it in one assignment: a request in flight keeps the router it started with
and finishes on that config. Circuit and limit state live in the store, which every router shares,
so they survive a reload wherever the target still exists. An invalid edit (YAML, schema,
cross-references) changes nothing: the last good config keeps serving, and its problems are logged
with their locations and kept in ``rejected`` (``problems``: each with its line) for ``/readyz``,
``/v1/routes`` and the console.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from router.config import RoutingConfig
from router.console.check import located
from router.loading import ConfigError

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
        self._seen = self._signature()

    def status(self) -> dict[str, Any]:
        """The active version (content hash, source, load time) and the last rejected edit."""
        cfg = self.router.config
        return {"version": cfg.digest, "source": cfg.source, "loaded_at": self.loaded_at,
                "rejected": self.rejected}

    async def reload(self, reason: str, force: bool = False) -> bool:
        """Load the file now; True when the router now serves it (or already did). ``force``
        rebuilds even when routing.yaml's text is unchanged (a ``.env`` edit changes keys)."""
        async with self._lock:
            self._seen = self._signature()
            try:
                config = self.load()
            except ConfigError as e:
                self.rejected = {"at": time.time(), "reason": reason, "errors": e.problems,
                                 "problems": located(e.problems, self._text())}
                for p in e.problems:
                    log.error("config reload (%s) rejected, keeping version %s: %s: %s", reason,
                              self.router.config.digest, self.path, p)
                return False
            if config.digest == self.router.config.digest and not force:
                self.rejected = None
                return True
            try:
                built = self.build(config)
            except Exception as e:  # a bug the checks missed: keep serving the last good config
                log.exception("config reload (%s) rejected, keeping version %s", reason, self.router.config.digest)
                self.rejected = {"at": time.time(), "reason": reason, "errors": [f"(building the router): {e}"]}
                return False
            self.rejected = None
            self.router = built
            self.loaded_at = time.time()
            log.warning("config reloaded (%s): version %s", reason, config.digest)
            return True

    def _text(self) -> str:
        """routing.yaml's text now ("" when unreadable): where a rejected edit's problems are."""
        try:
            with open(self.path, encoding="utf-8") as f:
                return f.read()
        except OSError:
            return ""

    def _signature(self) -> tuple[tuple[int, int], ...]:
        out = []
        for name in (os.path.basename(self.path), *_WATCHED[1:]):
            try:
                st = os.stat(os.path.join(os.path.dirname(self.path), name))
                out.append((st.st_mtime_ns, st.st_size))
            except OSError:
                out.append((0, 0))
        return tuple(out)

    async def check_files(self, reason: str) -> None:
        """Reload when a watched file's size or modification time changed (``os.stat`` follows
        symlinks, so a Kubernetes ConfigMap's atomic ``..data`` swap counts as a change)."""
        sig = self._signature()
        if sig == self._seen:
            return
        env_changed = sig[1:] != self._seen[1:]  # .env or .env.local: keys may differ, text not
        await self.reload(reason, force=env_changed)

    async def watch(self, stop: asyncio.Event, poll: float = 1.0) -> None:
        """Reload on every change to the watched files until ``stop`` is set: inotify (watchfiles)
        for speed, and a stat poll every ``poll`` seconds for what inotify misses (an edit made
        while the watcher was starting, mounts that deliver no events)."""
        from watchfiles import awatch

        async def polling() -> None:
            while not stop.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), poll)
                await self.check_files("file changed (poll)")

        await self.reload("startup check")  # an edit between loading and watching is not lost
        poller = asyncio.create_task(polling())
        try:
            here = os.path.dirname(self.path)
            names = {os.path.basename(self.path), *_WATCHED[1:]}
            logging.getLogger("watchfiles").setLevel(logging.WARNING)
            async for _ in awatch(here, stop_event=stop, debounce=self.debounce, step=50, recursive=False,
                                  watch_filter=lambda _change, path: os.path.basename(path) in names):
                await self.check_files("file changed")
        except Exception as e:  # noqa: BLE001 - no inotify here (limits, mounts): the poll alone keeps watching
            log.warning("config watcher unavailable (%s: %s); polling %s every %s s", type(e).__name__, e,
                        self.path, poll)
            await poller
        finally:
            poller.cancel()
