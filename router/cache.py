"""The response cache: complete answers, stored as their normalized events and replayed as such.

Opt-in per task (``cache: {ttl, max_bytes, coalesce_wait}``). The key is a SHA-256 of what decides
the answer: the chain (target names and their thinking/sampling settings, so a routing change
misses), the messages, tools, tool_choice and every generation parameter after the task's defaults
are applied. Only an answer that ended with ``end`` is stored, msgpack-encoded and whole (one SET),
and only when it fits in ``max_bytes``. A hit replays the same events (reasoning signatures and tool
calls included), for streaming and non-streaming requests alike, with ``cached: true`` and a cost
of 0. Identical requests in flight at once are coalesced: one calls upstream, the others wait up to
``coalesce_wait`` seconds for its answer (in-process through a future, across replicas through a
store lock and polling), then go upstream themselves. Store failures never fail a request: the
cache is bypassed.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing

import msgspec

from router.clock import Clock, LoopClock
from router.config import CachePolicy, Params
from router.events import End, Event, Start, Usage
from router.request import TaskRequest
from router.run import Run
from router.stores import Store, StoreError
from router.stores.base import Write, write
from router.upstream import Target

__all__ = ["CacheEntry", "ResponseCache", "cache_key"]

_POLL = 0.025  # seconds between cache reads while another replica computes the answer


class CacheEntry(msgspec.Struct):
    """A stored answer: who gave it, when (epoch seconds), and its events after ``start``."""

    provider: str
    model: str
    created_at: float
    events: list[Event]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(CacheEntry)
_key_encoder = msgspec.json.Encoder(order="sorted")


def cache_key(chain: list[Target], req: TaskRequest, params: Params) -> str:
    """The hex SHA-256 of the canonical JSON of everything that decides the answer."""
    material = (
        [(t.name, t.spec.thinking, t.spec.sampling) for t in chain],
        req.messages, req.tools, req.tool_choice, params, req.response_format,
        req.seed, req.frequency_penalty, req.presence_penalty, req.top_k, req.clear_thinking, req.anthropic_beta,
    )
    return hashlib.sha256(_key_encoder.encode(material)).hexdigest()


class ResponseCache:
    """Cache reads, writes and coalescing over a ``Store``, on ``clock`` (entries are stamped
    with its wall time; polling for another replica's answer waits on it)."""

    def __init__(self, store: Store, clock: Clock | None = None) -> None:
        self.store = store
        self.clock: Clock = clock or LoopClock()
        self._inflight: dict[str, asyncio.Future[CacheEntry | None]] = {}

    @staticmethod
    def _decode(raw: bytes | None) -> CacheEntry | None:
        if raw is None:
            return None
        try:
            return _decoder.decode(raw)
        except msgspec.DecodeError:  # corrupt: treated as absent
            return None

    async def get(self, key: str) -> CacheEntry | None:
        """The entry for ``key``, or None (also when the store fails or the entry is corrupt)."""
        try:
            return self._decode(await self.store.cache_get(key))
        except StoreError:
            return None

    async def lookup(self, key: str, wait: float,
                     looked: tuple[bytes | None, bool] | None = None) -> tuple[CacheEntry | None, bool]:
        """The entry for ``key`` (``(entry, False)``), or, on a miss, whether this request leads:
        ``(None, True)`` means call upstream and then ``finish``. A miss with an identical request
        in flight (in this process or another replica) waits up to ``wait`` seconds for its answer,
        and leads as soon as the leader gives up its lock without one; after ``wait`` it goes
        upstream without leading (``(None, False)`` with no entry: call upstream, ``put`` the
        answer, release nothing). One store round trip for a hit or a led miss (the lookup and the
        lock are one script; none when ``looked``, that script's answer from the request's
        admission, is given)."""
        if looked is not None:
            raw, locked = looked
        else:
            try:
                raw, locked = await self.store.cache_get_or_lock(key, wait)
            except StoreError:
                return None, await self._lead(key, wait, locked=True)  # no coordination without the store
        entry = self._decode(raw)
        if entry is not None:
            return entry, False
        if raw is not None:  # a corrupt entry: lead, and overwrite it
            return None, await self._lead(key, wait)
        if locked:
            return None, await self._lead(key, wait, locked=True)
        return await self._join(key, wait)

    async def _join(self, key: str, wait: float) -> tuple[CacheEntry | None, bool]:
        fut = self._inflight.get(key)
        if fut is not None:  # same process: wait on the leader's future, up to ``wait`` on the clock
            entry = await self._wait_for(fut, wait)
            return entry, entry is None and await self._lead(key, wait)
        # another replica leads: poll for its answer, or for its lock's release without one (it
        # failed, was cut or its caller left): then this request leads at once
        deadline = self.clock.now() + wait
        while self.clock.now() < deadline:
            await self.clock.sleep(_POLL)
            try:
                raw, locked = await self.store.cache_get_or_lock(key, wait)
            except StoreError:
                return None, False  # no coordination without the store: go upstream, hold nothing
            entry = self._decode(raw)
            if entry is not None:
                return entry, False
            if locked:
                return None, await self._lead(key, wait, locked=True)
        return None, False  # waited long enough: go upstream without the lock (the leader still holds it)

    async def _wait_for(self, fut: asyncio.Future[CacheEntry | None], wait: float) -> CacheEntry | None:
        """The leader's entry, or None when ``wait`` seconds pass first (the leader goes on)."""
        timer = asyncio.ensure_future(self.clock.sleep(wait))
        try:
            await asyncio.wait((fut, timer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
        return fut.result() if fut.done() and not fut.cancelled() else None

    async def _lead(self, key: str, wait: float, locked: bool = False) -> bool:
        got = locked
        if not got:
            try:
                got = await self.store.lock(key, wait)
            except StoreError:
                got = True  # no coordination without the store: go upstream
        if got and key not in self._inflight:
            self._inflight[key] = asyncio.get_running_loop().create_future()
        return got

    async def finish(self, key: str, entry: CacheEntry | None, ttl: float, max_bytes: int) -> bool:
        """The leader's end: store ``entry`` if it is whole (ends with ``End``) and fits
        ``max_bytes`` and release the lock (one write for both, with the request's other writes
        at its end when a ``Settlement`` is open), and hand the entry to requests of this process
        waiting on it. ``entry`` None: nothing to store (the lock is released at once). True if
        stored, or to be stored with the request's other writes."""
        raw = None
        if entry is not None and entry.events and isinstance(entry.events[-1], End):
            raw = _encoder.encode(entry)
            if len(raw) > max_bytes:
                raw = None
        if raw is None:
            try:
                await self.store.unlock(key)  # at once: a follower elsewhere may lead now
            except StoreError:
                pass
            self._hand_over(key, None)
            return False
        fut = self._inflight.get(key)
        if fut is not None and not fut.done():
            fut.set_result(entry)  # this process's followers need not wait for the write
        try:  # with the request's other end-of-request writes; followers here keep the entry meanwhile
            await write(self.store, [Write("cache_set_unlock", (key, raw, ttl))], after=lambda: self._hand_over(key, entry))
        except StoreError:
            return False
        return True

    def _hand_over(self, key: str, entry: CacheEntry | None) -> None:
        """The leader is done with ``key``: its waiters in this process get ``entry``."""
        fut = self._inflight.pop(key, None)
        if fut is not None and not fut.done():
            fut.set_result(entry)

    async def put(self, key: str, entry: CacheEntry, ttl: float, max_bytes: int) -> bool:
        """Store ``entry`` whole if it ends with ``End`` and fits ``max_bytes``; True if stored
        (for a writer that holds no lock)."""
        if not entry.events or not isinstance(entry.events[-1], End):
            return False
        raw = _encoder.encode(entry)
        if len(raw) > max_bytes:
            return False
        try:
            await self.store.cache_set(key, raw, ttl)
        except StoreError:
            return False
        return True


    async def serve(self, key: str, policy: CachePolicy, produce: Callable[[], AsyncGenerator[Event, None]], run: Run,
                    *, store: bool, start: Callable[[CacheEntry], list[Event]],
                    looked: tuple[bytes | None, bool] | None = None) -> AsyncGenerator[Event, None]:
        """Serve ``key``: a hit replays ``start(entry)``; a miss leads (``produce()`` is called,
        and an answer that ended whole is written, from ``run.answer_events()``, unless ``store``
        is false) or follows an identical request in flight and replays its answer. Never raises
        ``StoreError``; a leader that fails or is cancelled releases its lock. ``looked``: the
        lookup's answer already asked (with the admission)."""
        entry, lead = await self.lookup(key, policy.coalesce_wait, looked)
        if entry is not None:
            for ev in start(entry):
                yield ev
            return
        try:
            async with aclosing(produce()) as events:
                async for ev in events:
                    yield ev
            done = CacheEntry(provider=run.provider, model=run.model, created_at=self.clock.wall(),
                              events=run.answer_events()) if store and run.ended else None
            if lead:
                await self.finish(key, done, policy.ttl, policy.max_bytes)
                lead = False
            elif done is not None:
                await self.put(key, done, policy.ttl, policy.max_bytes)
        finally:
            if lead:
                await self.finish(key, None, policy.ttl, policy.max_bytes)


def replay(entry: CacheEntry, request_id: str, task: str, variant: str | None = None,
           task_version: str | None = None) -> list[Event]:
    """A cached answer as a fresh event sequence: ``start`` (cached) then the stored events,
    with usage at no cost."""
    out: list[Event] = [Start(id=request_id, task=task, provider=entry.provider, model=entry.model,
                              attempt=0, cached=True, variant=variant, task_version=task_version)]
    for ev in entry.events:
        if isinstance(ev, Usage):
            ev = msgspec.structs.replace(ev, cost_usd=0.0)
        out.append(ev)
    return out
