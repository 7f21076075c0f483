"""The upstream emulator: both providers' wire protocols, scripted per request.

``create_emulator(fixtures)`` is the ASGI app; ``run(host, port, fixtures)`` serves it in the
foreground (``llm-router emulate``); ``start_in_thread(...)`` serves it in a background thread of
this process (``llm-router serve --demo``, tests) and returns its base URL.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import uvicorn

from router.emulator.app import Emulator, create_emulator

__all__ = ["Emulator", "create_emulator", "free_port", "run", "start_in_thread"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _config(app: Emulator, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                          lifespan="off", timeout_keep_alive=30)


def run(host: str, port: int, fixtures: str | Path | None = None) -> None:
    """Serve the emulator until interrupted."""
    uvicorn.Server(_config(create_emulator(fixtures), host, port)).run()


def start_in_thread(host: str = "127.0.0.1", port: int = 0,
                    fixtures: str | Path | None = None) -> tuple[str, uvicorn.Server]:
    """Serve a new emulator from a daemon thread; returns (base URL, server). Set
    ``server.should_exit = True`` to stop it. Raises ``RuntimeError`` if it does not start in 10 s."""
    port = port or free_port(host)
    server = uvicorn.Server(_config(create_emulator(fixtures), host, port))
    thread = threading.Thread(target=server.run, name="llm-router-emulator", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the emulator did not start on {host}:{port}")
        time.sleep(0.01)
    return f"http://{host}:{port}", server
