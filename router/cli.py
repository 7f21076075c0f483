"""The ``llm-router`` command: ``serve``, ``validate``, ``emulate``.

``serve`` runs the app under uvicorn (httptools + uvloop when installed). With ``--workers N`` it
supervises N worker processes, each with its own ``SO_REUSEPORT`` socket, and each builds its app
from the environment (``ROUTER_CONFIG``, ``LLM_ROUTER_DEMO_UPSTREAM``) through ``asgi_app``. ``--demo`` starts the upstream emulator in this process and points every
provider of the config at it, with a placeholder key, so the service runs with no API keys.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from typing import Any
from urllib.parse import urlsplit

import click

__all__ = ["asgi_app", "demo_config", "main"]

DEFAULT_CONFIG = "routing.yaml"
_DEMO_ENV = "LLM_ROUTER_DEMO_UPSTREAM"
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_CONFIG = {  # every line JSON (router.logs.JsonFormatter), uvicorn's own included
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "router.logs.JsonFormatter"}},
    "handlers": {"default": {"class": "router.logs.BatchingStreamHandler", "formatter": "json",
                             "stream": "ext://sys.stderr"}},
    "loggers": {
        "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
        "uvicorn.access": {"handlers": ["default"], "level": "WARNING", "propagate": False},
        "llm_router": {"handlers": ["default"], "level": "INFO", "propagate": False},
    },
    "root": {"handlers": ["default"], "level": "WARNING"},
}


def demo_config(config, upstream: str):  # type: ignore[no-untyped-def]
    """Point every provider of ``config`` at the emulator at ``upstream`` (keeping each base
    URL's path, so GLM paths stay GLM paths) and give unset keys a placeholder."""
    for p in config.providers.values():
        p.base_url = upstream + urlsplit(p.base_url).path.rstrip("/")
        if p.api_key is None:
            p.api_key, p.unusable_reason = "demo-key", None
    return config


def asgi_app():  # type: ignore[no-untyped-def]
    """App factory for uvicorn workers: config from ``ROUTER_CONFIG`` (watched and reloaded live);
    demo upstream from ``LLM_ROUTER_DEMO_UPSTREAM`` when set. Exits with the config's problems when
    invalid."""
    import logging.config

    from router.app import create_app
    from router.config import RoutingConfig
    from router.loading import ConfigError, load_config

    if not logging.getLogger("llm_router").handlers:  # run directly (not by `serve`): configure it here
        logging.config.dictConfig(LOG_CONFIG)
    path = os.environ.get("ROUTER_CONFIG", DEFAULT_CONFIG)
    upstream = os.environ.get(_DEMO_ENV)

    def load() -> RoutingConfig:
        config = load_config(path)
        return demo_config(config, upstream) if upstream else config

    try:
        config = load()
    except ConfigError as e:
        for p in e.problems:
            logging.getLogger("llm_router").error("%s: %s", path, p)
        raise SystemExit(1) from None
    notes = [f"config {path} (version {config.digest}); watching it for edits, SIGHUP reloads"]
    if upstream:
        notes.append(f"demo mode: every provider is the built-in upstream emulator at {upstream}; "
                     "no API key is used")
    app = create_app(config, notes=notes, load=load)
    settle_heap()
    return app


HTTP_PROTOCOL = "router.server:HeaderTimeoutProtocol"  # uvicorn's httptools protocol with a header read timeout

GC_THRESHOLD_0 = 10_000  # allocations between young collections (CPython's default: 700)


def settle_heap() -> None:
    """Tune the collector for a long-running server, once the app is built: collect, then
    ``gc.freeze()`` what startup made (modules, the app, the config; tens of thousands of objects
    that never die) so full collections stop rescanning it, and collect the young generation every
    10,000 net allocations instead of 700. Measured with ``bench/overhead.py --pin``: the collector
    took about 70 us of the router's CPU per request at c=64 with CPython's defaults (most of it
    full collections rescanning the startup heap), about 10 us after this.
    See https://docs.python.org/3/library/gc.html#gc.freeze."""
    import gc

    gc.collect()
    gc.freeze()
    _, g1, g2 = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD_0, g1, g2)


@click.group()
def main() -> None:
    """llm-router: route LLM tasks to GLM and Claude over their real wire protocols."""


@main.command()
@click.option("--config", "config_path", envvar="ROUTER_CONFIG", default=DEFAULT_CONFIG,
              show_default=True, help="routing.yaml path (env ROUTER_CONFIG)")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64))
@click.option("--demo", is_flag=True, help="serve every provider from the built-in emulator")
def serve(config_path: str, host: str, port: int, workers: int, demo: bool) -> None:
    """Run the router service."""
    import logging.config
    import tempfile

    import uvicorn

    from router.loading import ConfigError, load_config
    from router.server import DrainingServer
    from router.settings import Settings

    logging.config.dictConfig(LOG_CONFIG)
    try:
        load_config(config_path)  # fail fast, with every problem, before any worker starts
    except ConfigError as e:
        for p in e.problems:
            click.echo(f"{config_path}: {p}", err=True)
        sys.exit(1)
    os.environ["ROUTER_CONFIG"] = config_path
    if demo:
        from router.emulator import start_in_thread

        url, _ = start_in_thread()
        os.environ[_DEMO_ENV] = url
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # /metrics sums the workers
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="llm-router-metrics-")
    if workers > 1 and hasattr(socket, "SO_REUSEPORT"):
        sys.exit(_supervise(host, port, workers))
    settings = Settings.from_env()
    if workers > 1:  # no SO_REUSEPORT: uvicorn's own supervisor
        uvicorn.run("router.cli:asgi_app", factory=True, host=host, port=port, workers=workers, log_config=LOG_CONFIG,
                    access_log=False, timeout_graceful_shutdown=int(settings.drain_timeout), http=HTTP_PROTOCOL)
        return
    config = uvicorn.Config("router.cli:asgi_app", factory=True, host=host, port=port, log_config=LOG_CONFIG,
                            access_log=False, timeout_graceful_shutdown=int(settings.drain_timeout), http=HTTP_PROTOCOL)
    DrainingServer(config, settings.drain_grace).run()


def _worker(host: str, port: int) -> None:
    """One worker: its own SO_REUSEPORT socket, so the kernel spreads connections over the workers
    (with one shared socket, keep-alive connections can all land on one worker: seen as one worker
    at 100% CPU while the other idled, under the peer benchmark's load)."""
    import uvicorn

    from router.server import DrainingServer
    from router.settings import Settings

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    settings = Settings.from_env()
    config = uvicorn.Config("router.cli:asgi_app", factory=True, log_config=LOG_CONFIG, access_log=False,
                            timeout_graceful_shutdown=int(settings.drain_timeout), http=HTTP_PROTOCOL)
    DrainingServer(config, settings.drain_grace).run(sockets=[sock])


def _supervise(host: str, port: int, workers: int) -> int:
    """Run ``workers`` worker processes, restart one that dies, and forward SIGINT/SIGTERM (stop)
    and SIGHUP (every worker reloads routing.yaml live) to all of them. Returns the exit status."""
    import multiprocessing
    import signal
    import time

    from router.settings import Settings

    ctx = multiprocessing.get_context("spawn")
    log = logging.getLogger("llm_router")
    procs = [ctx.Process(target=_worker, args=(host, port), name=f"llm-router-worker-{i}") for i in range(workers)]
    for p in procs:
        p.start()
    stopping = False

    def forward(sig: int, _frame: object) -> None:
        nonlocal stopping
        stopping = stopping or sig != signal.SIGHUP
        for p in procs:
            if p.pid is not None and p.is_alive():
                os.kill(p.pid, sig)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    log.info("serving on http://%s:%s with %d workers (SO_REUSEPORT)", host, port, workers)
    while not stopping:
        time.sleep(0.2)
        for i, p in enumerate(procs):
            if not p.is_alive() and not stopping:
                log.error("worker %s exited with %s; starting a new one", p.name, p.exitcode)
                procs[i] = ctx.Process(target=_worker, args=(host, port), name=p.name)
                procs[i].start()
    settings = Settings.from_env()
    deadline = time.monotonic() + settings.drain_grace + settings.drain_timeout + 5  # the workers drain first
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
    return 0


@main.command()
@click.argument("path", default=DEFAULT_CONFIG, envvar="ROUTER_CONFIG")
@click.option("--show", is_flag=True, help="print the effective config (secrets redacted)")
def validate(path: str, show: bool) -> None:
    """Check routing.yaml: exit 0 when valid (warnings printed), 1 with every problem and its
    location."""
    import msgspec

    from router.loading import ConfigError, environment, load_config
    from router.validate import redacted, warnings

    try:
        config = load_config(path)
    except ConfigError as e:
        for p in e.problems:
            click.echo(f"{path}: {p}", err=True)
        click.echo(f"{path}: {len(e.problems)} problem(s)", err=True)
        sys.exit(1)
    with open(path, encoding="utf-8") as f:
        found = warnings(config, f.read(), environment(path))
    for w in found:
        click.echo(f"{path}: warning: {w}", err=True)
    if show:
        click.echo(msgspec.json.format(msgspec.json.encode(redacted(config)), indent=2).decode())
    click.echo(f"{path}: ok ({len(config.tasks)} tasks, {len(config.providers)} providers, "
               f"{len(found)} warning(s))", err=show)


@main.command("hash-key")
@click.argument("key", required=False)
def hash_key_cmd(key: str | None) -> None:
    """Print the sha256:... form of an API key for routing.yaml's tenants (reads stdin when no
    KEY is given, so the key stays out of the shell history)."""
    from router.auth import hash_key

    if key is None:
        key = sys.stdin.readline().strip()
    if not key:
        click.echo("no key given", err=True)
        sys.exit(1)
    click.echo(hash_key(key))


async def _compare_over_http(url: str, run: Any) -> None:
    """``compare --url``: every call goes to a running router's ``/v1/tasks``."""
    import httpx

    from router.compare import sse_events

    async with httpx.AsyncClient(timeout=httpx.Timeout(600, connect=10)) as client:
        await run(call=lambda t, r: sse_events(client, url, t, r))


async def _compare_in_process(config: Any, demo: bool, run: Any) -> None:
    """``compare`` without ``--url``: a router of this process calls each target once per line;
    with ``demo``, every provider is the emulator, in this process (no socket, no key)."""
    from router.engine import Router
    from router.settings import Settings
    from router.stores import MemoryStore, store_for
    from router.transport import AiohttpTransport, Transport

    transports: dict[str, Transport]
    if demo:
        from router.emulator import create_emulator
        from router.inproc import ASGITransport

        shared = ASGITransport(create_emulator())
        transports = dict.fromkeys(config.providers, shared)
        store: Any = MemoryStore()
    else:
        transports = {p: AiohttpTransport() for p in config.providers}
        store = store_for(Settings.from_env())
    try:
        await run(call=Router(config, transports, store=store).call_one)
    finally:
        for t in set(transports.values()):
            await t.aclose()
        await store.close()


@main.command()
@click.option("--tasks", "tasks_file", required=True, type=click.Path(exists=True, dir_okay=False),
              help="JSON lines: a request without task (messages, and optionally id, max_tokens, ...), "
                   "or a typed task's {task, input}")
@click.option("--targets", required=True, help="comma-separated provider/model targets")
@click.option("--concurrency", default=4, show_default=True, type=click.IntRange(1, 256))
@click.option("--repeat", default=1, show_default=True, type=click.IntRange(1, 1000))
@click.option("--out", "out_dir", default="compare-out", show_default=True, type=click.Path(file_okay=False))
@click.option("--url", default=None, help="a running router to call instead of calling in-process")
@click.option("--config", "config_path", envvar="ROUTER_CONFIG", default=DEFAULT_CONFIG, show_default=True)
@click.option("--demo", is_flag=True, help="every provider is the built-in emulator, in this process (no keys)")
@click.option("--judge", default=None, metavar="PROVIDER/MODEL",
              help="score every pair of targets' answers with this model, in both orders")
@click.option("--rubric", default=None, help="what the judge weighs (default: correct, complete, follows "
                                             "the instructions and format, concise)")
def compare(tasks_file: str, targets: str, concurrency: int, repeat: int, out_dir: str, url: str | None,
            config_path: str, demo: bool, judge: str | None, rubric: str | None) -> None:
    """Run every task line on every target; write results.jsonl, report.md and chart.html."""
    import asyncio
    from pathlib import Path

    from router.compare import (
        DEFAULT_RUBRIC,
        judge_pairs,
        load_tasks,
        render_chart,
        render_jobs,
        render_report,
        run_compare,
    )
    from router.loading import ConfigError, load_config

    logging.basicConfig(level=logging.WARNING, format=_LOG_FORMAT)
    if demo and url:
        raise click.UsageError("--demo runs in process; it cannot be combined with --url")
    config = None
    if not url or os.path.exists(config_path):  # --url needs the config only to render typed task lines
        try:
            config = load_config(config_path)
        except ConfigError as e:
            raise click.ClickException("; ".join(e.problems)) from None
    if demo:
        config = demo_config(config, "http://emulator")
    names = [t.strip() for t in targets.split(",") if t.strip()]
    if config is not None and not url:
        unknown = [t for t in [*names, *([judge] if judge else [])] if t.partition("/")[0] not in config.providers
                   or t.partition("/")[2] not in config.providers[t.partition("/")[0]].models]
        if unknown:
            raise click.ClickException(f"unknown targets: {', '.join(unknown)}")
    jobs, bad = load_tasks(Path(tasks_file))
    jobs, unrendered = render_jobs(jobs, config)
    bad = sorted([*bad, *unrendered], key=lambda b: int(b.split(":")[0].removeprefix("line ")))
    for b in bad:
        click.echo(f"{tasks_file}: {b} (skipped)", err=True)
    out = Path(out_dir)
    rows: list[dict] = []  # type: ignore[type-arg]
    judged: dict | None = None  # type: ignore[type-arg]

    async def main_async() -> None:
        nonlocal judged

        async def everything(call: Any) -> None:
            nonlocal judged
            with click.progressbar(length=len(jobs) * len(names) * repeat, label="comparing", file=sys.stderr) as bar:
                await run_compare(jobs, names, call=call, concurrency=concurrency, repeat=repeat,
                                  results_path=out / "results.jsonl", rows=rows, progress=bar.update)
            if judge:
                judged = await judge_pairs(jobs, rows, names, judge, call=call, rubric=rubric or DEFAULT_RUBRIC,
                                           concurrency=concurrency)

        await (_compare_over_http(url, everything) if url else _compare_in_process(config, demo, everything))

    interrupted = False
    try:
        asyncio.run(main_async())
    except KeyboardInterrupt:
        interrupted = True
        click.echo("interrupted: writing the report of the runs finished so far", err=True)
    out.mkdir(parents=True, exist_ok=True)
    if judged is not None:
        (out / "judgements.json").write_text(json.dumps(judged, indent=1))
    (out / "report.md").write_text(render_report(rows, names, bad, interrupted, judged))
    (out / "chart.html").write_text(render_chart(rows, names))
    click.echo(f"{len(rows)} runs: {out / 'results.jsonl'}, {out / 'report.md'}, {out / 'chart.html'}"
               + (f", {out / 'judgements.json'}" if judged is not None else ""))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8090, show_default=True, type=int)
@click.option("--fixtures", type=click.Path(file_okay=False), default=None,
              help="directory that `replay` may read recorded bodies from")
def emulate(host: str, port: int, fixtures: str | None) -> None:
    """Serve the upstream emulator (OpenAI/GLM and Anthropic wire protocols)."""
    from router.emulator import run

    click.echo(f"emulator on http://{host}:{port}", err=True)
    run(host, port, fixtures)
