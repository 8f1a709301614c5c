"""The models a node serves: which are loaded, which may be, and when they go.

Every model the node knows (those loaded at start, and ``models_available``) has one
:class:`ModelEntry`, found by its served name or an alias. An entry moves
``unloaded -> loading -> loaded -> unloading -> unloaded``; requests run only on a loaded
one and hold it (``in_flight``) until they finish, streams included.

- Loading runs ``engine.load`` in a worker thread; loads are serialised (one lock), so the
  memory budget is checked against settled sizes. Requests for other models go on.
- ``memory_budget`` (bytes, 0 = unlimited): a load that would pass it first evicts the
  least recently used loaded model that is idle (nothing in flight) and not pinned; when
  nothing can go, :class:`~inferno.core.errors.Overloaded` (503 + Retry-After).
- ``keep_alive`` (seconds): -1 pinned (never evicted, never swept), 0 unloaded as soon as
  its last request ends, otherwise unloaded by one periodic sweep once idle that long.
- Unloading marks the entry first (no new request starts on it), waits for the requests
  in flight to finish, then ``await engine.close()``. An engine is built anew by the
  factory for each load: the contract allows one ``load`` per engine.
- Each alias belongs to one entry at a time (the first that claims it). :meth:`deploy` is
  the hot swap: it loads a new version beside the old one, moves the old one's aliases to
  it in one step (the requests after that land on the new version; those in flight finish
  on the old one), then unloads the old one.

The factory is given by whoever builds the node (``wiring``): the backend never names
concrete engines or the model store.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from inferno.backend.engines.base import AnyEngine, EngineStats, ModelInfo
from inferno.core.errors import (
    EngineError,
    InfernoError,
    InvalidRequest,
    ModelNotFound,
    NotReady,
    Overloaded,
)

log = logging.getLogger("inferno.backend.models")

EngineFactory = Callable[[str], AnyEngine]
EntryState = Literal["unloaded", "loading", "loaded", "unloading"]
PINNED = -1.0


@dataclass(eq=False)
class ModelEntry:
    ref: str
    info: ModelInfo
    engine: AnyEngine | None
    keep_alive: float
    size: int = 0
    state: EntryState = "unloaded"
    in_flight: int = 0
    waiting: int = 0  # requests waiting for this model to load: it must not go meanwhile
    last_used: float = 0.0  # time.monotonic()
    last_used_wall: float = 0.0  # time.time(), for people
    loads: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None  # the load or unload under way
    aliases: list[str] = field(default_factory=list)  # the names this entry owns now

    @property
    def name(self) -> str:
        return self.info.id

    @property
    def names(self) -> tuple[str, ...]:
        return (self.info.id, *self.aliases)

    @property
    def pinned(self) -> bool:
        return self.keep_alive < 0

    def expires_at(self) -> float | None:
        if self.state != "loaded" or self.pinned or self.in_flight:
            return None
        return self.last_used_wall + self.keep_alive

    def row(self) -> dict[str, Any]:
        """One ``GET /v1/models/ps`` row."""
        return {
            "name": self.name,
            "model": self.ref,
            "aliases": list(self.aliases),
            "status": self.state,
            "size": self.size,
            "keep_alive": None if self.pinned else self.keep_alive,
            "pinned": self.pinned,
            "expires_at": self.expires_at(),
            "in_flight": self.in_flight,
            "last_used": self.last_used_wall or None,
        }


def file_size(path: str) -> int:
    """The model file's size: the memory estimate for file-backed engines (else 0)."""
    try:
        return os.path.getsize(path) if os.path.isfile(path) else 0
    except OSError:
        return 0


class LoadedModels:
    def __init__(
        self,
        factory: EngineFactory,
        start: list[str],
        available: list[str],
        *,
        keep_alive: float,
        memory_budget: int = 0,
        sweep_interval: float = 1.0,
        first: AnyEngine | None = None,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self._factory = factory
        self._keep_alive = keep_alive
        self._budget = memory_budget
        self._sweep_interval = sweep_interval
        self._on_change = on_change
        self._lock = asyncio.Lock()
        self._sweeper: asyncio.Task[None] | None = None
        self._retired = EngineStats(0, 0, 0, 0, 0)
        self.entries: list[ModelEntry] = []
        self._by_name: dict[str, ModelEntry] = {}
        seen: set[str] = set()
        for i, ref in enumerate([*start, *available]):
            if ref in seen:
                continue
            seen.add(ref)
            engine = first if i == 0 and first is not None else factory(ref)
            self._add(ref, engine, PINNED if i < len(start) else keep_alive)
        self._start = [e for e in self.entries if e.ref in start]

    def _add(self, ref: str, engine: AnyEngine, keep_alive: float) -> ModelEntry:
        entry = ModelEntry(ref, engine.info, engine, keep_alive=keep_alive,
                           size=file_size(engine.info.path))
        entry.aliases = [a for a in engine.info.aliases if a not in self._by_name]
        entry.idle.set()
        self.entries.append(entry)
        for name in (ref, *entry.names):
            self._by_name.setdefault(name, entry)
        return entry

    def add(self, ref: str) -> ModelEntry:
        """The entry of ``ref``, made known (not loaded) when it was not: a model pulled
        into the store after the node started can be loaded without a restart."""
        entry = self._by_name.get(ref)
        if entry is not None:
            return entry
        try:
            engine = self._factory(ref)
        except InfernoError as exc:
            raise ModelNotFound(f"This node cannot serve '{ref}': {exc.message}",
                                param="model") from exc
        entry = self._add(ref, engine, self._keep_alive)
        self._on_change()
        return entry

    # -- lookups -----------------------------------------------------------------------

    def find(self, name: str, *, refs: bool = False) -> ModelEntry:
        """The entry a served name or alias (or, with ``refs``, a configured ref) names."""
        entry = self._by_name.get(name)
        if entry is not None and not refs and name not in entry.names:
            entry = None
        if entry is None:
            raise ModelNotFound(f"The model '{name}' does not exist on this node.", param="model")
        return entry

    def loaded(self) -> list[ModelEntry]:
        return [e for e in self.entries if e.state == "loaded"]

    def names(self) -> list[str]:
        """Every name a request may use here, loaded or not (what the node registers)."""
        return [n for e in self.entries for n in e.names]

    def stats(self) -> EngineStats:
        """The loaded engines' stats added up; counters keep what unloaded engines did."""
        live = [
            e.engine.stats()
            for e in self.entries
            if e.engine is not None and e.state in ("loaded", "unloading")
        ]
        r = self._retired
        return EngineStats(
            active=sum(x.active for x in live),
            queued=sum(x.queued for x in live),
            capacity=max(1, sum(x.capacity for x in live)),
            tokens_generated=r.tokens_generated + sum(x.tokens_generated for x in live),
            prompt_tokens=r.prompt_tokens + sum(x.prompt_tokens for x in live),
            prompt_tokens_reused=r.prompt_tokens_reused + sum(x.prompt_tokens_reused for x in live),
            prompt_tokens_computed=r.prompt_tokens_computed
            + sum(x.prompt_tokens_computed for x in live),
        )

    def _retire(self, engine: AnyEngine) -> None:
        x, r = engine.stats(), self._retired
        self._retired = EngineStats(
            0,
            0,
            0,
            r.tokens_generated + x.tokens_generated,
            r.prompt_tokens + x.prompt_tokens,
            r.prompt_tokens_reused + x.prompt_tokens_reused,
            r.prompt_tokens_computed + x.prompt_tokens_computed,
        )

    def used_bytes(self) -> int:
        return sum(e.size for e in self.entries if e.state != "unloaded")

    @property
    def first(self) -> ModelEntry:
        return self.entries[0]

    # -- life cycle --------------------------------------------------------------------

    async def start(self) -> None:
        for entry in self._start:
            await self.load(entry.ref, keep_alive=PINNED)
        self._sweeper = asyncio.create_task(self._sweep(), name="model-sweep")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        for entry in self.entries:
            if entry.state in ("loaded", "loading") and entry.engine is not None:
                if entry.task is not None:
                    await asyncio.gather(entry.task, return_exceptions=True)
                if entry.engine is not None:
                    await entry.engine.close()
                entry.state = "unloaded"

    # -- requests ----------------------------------------------------------------------

    async def acquire(self, name: str, *, wait: float) -> ModelEntry:
        """The loaded entry for ``name``, held until :meth:`release`; loads it if needed,
        waiting at most ``wait`` seconds."""
        entry = self.find(name)
        if entry.state != "loaded":
            entry.waiting += 1
            try:
                async with asyncio.timeout(wait):
                    await self.load(name)  # waits out an unload under way, then loads
            except TimeoutError:
                raise NotReady(
                    f"The model '{name}' is still loading; retry shortly.", retry_after=5
                ) from None
            finally:
                entry.waiting -= 1
        entry.in_flight += 1
        entry.idle.clear()
        self._touch(entry)
        return entry

    def release(self, entry: ModelEntry) -> None:
        entry.in_flight -= 1
        self._touch(entry)
        if entry.in_flight == 0:
            entry.idle.set()
            if entry.keep_alive == 0 and entry.state == "loaded" and not entry.waiting:
                self._begin_unload(entry)

    @staticmethod
    def _touch(entry: ModelEntry) -> None:
        entry.last_used = time.monotonic()
        entry.last_used_wall = time.time()

    # -- load / unload -----------------------------------------------------------------

    async def load(self, name: str, *, keep_alive: float | None = None) -> ModelEntry:
        entry = self.find(name, refs=True)
        if keep_alive is not None:
            entry.keep_alive = keep_alive
        while entry.state != "loaded":
            async with self._lock:  # one budget decision at a time
                if entry.state == "unloaded":
                    await self._make_room(entry)
                    entry.state = "loading"
                    entry.task = asyncio.create_task(self._load(entry), name=f"load-{entry.ref}")
                task = entry.task
            if task is not None:  # our load, another's (joined), or an unload to wait out
                await asyncio.shield(task)
        self._touch(entry)
        return entry

    async def _make_room(self, entry: ModelEntry) -> None:
        if not self._budget:
            return
        need = entry.size
        if need > self._budget:
            raise Overloaded(
                f"The model '{entry.name}' ({need} bytes) is larger than this "
                f"node's memory budget ({self._budget} bytes).",
                retry_after=None,
            )
        while self.used_bytes() + need > self._budget:
            victims = [
                e
                for e in self.entries
                if e.state == "loaded"
                and e.in_flight == e.waiting == 0
                and not e.pinned
                and e is not entry
            ]
            if not victims:
                raise Overloaded(
                    f"No memory for the model '{entry.name}': every loaded model is in use "
                    "or pinned; retry later.",
                    retry_after=5,
                )
            victim = min(victims, key=lambda e: e.last_used)
            log.info("evicting %s (least recently used) to load %s", victim.name, entry.name)
            await self._unload(victim)

    async def _load(self, entry: ModelEntry) -> None:
        try:
            engine = entry.engine if entry.engine is not None else self._factory(entry.ref)
            entry.engine = engine
            await asyncio.to_thread(engine.load)
        except InfernoError:
            self._failed(entry)
            raise
        except Exception as exc:  # the engine's own (llama.cpp, onnxruntime): one boundary
            self._failed(entry)
            raise EngineError(f"Loading the model '{entry.name}' failed: {exc}") from exc
        except BaseException:
            self._failed(entry)
            raise
        entry.task = None
        entry.info = engine.info
        entry.size = file_size(engine.info.path) or entry.size
        entry.state = "loaded"
        entry.loads += 1
        self._touch(entry)
        log.info("model %s loaded (%d bytes)", entry.name, entry.size)
        self._on_change()

    @staticmethod
    def _failed(entry: ModelEntry) -> None:
        entry.state = "unloaded"
        entry.engine = None
        entry.task = None

    async def unload(self, name: str) -> bool:
        """Unload ``name`` after its requests finish; False when it was not loaded."""
        entry = self.find(name, refs=True)
        if entry.state == "loading" and entry.task is not None:
            await asyncio.shield(entry.task)
        if entry.state == "unloading" and entry.task is not None:
            await asyncio.shield(entry.task)
            return True
        if entry.state != "loaded":
            return False
        await self._unload(entry)
        return True

    async def deploy(self, new_ref: str, replace: str) -> tuple[ModelEntry, ModelEntry]:
        """Hot swap: serve ``new_ref`` under ``replace``'s names, then unload ``replace``.

        No request fails on the way: the old version keeps serving until the new one is
        loaded; the names move in one synchronous step (nothing can run between the removal
        and the addition); the old version unloads only once its last request has ended.
        """
        old = self.find(replace, refs=True)
        new = self.add(new_ref)
        if new is old:
            raise InvalidRequest("'model' and 'replace' name the same model.", param="replace")
        new.keep_alive = old.keep_alive
        await self.load(new_ref)
        moved = [a for a in old.aliases if a not in new.names]
        old.aliases = []
        new.aliases.extend(moved)
        for name in moved:
            self._by_name[name] = new
        # Pinned at start means "serve this": the replaced version may now go (and only
        # load again when asked for by its own name).
        old.keep_alive = self._keep_alive
        log.info("deployed %s in place of %s (names moved: %s)", new.ref, old.ref,
                 ", ".join(moved) or "none")
        self._on_change()
        if old.state == "loaded":
            await self._unload(old)
        return new, old

    def _begin_unload(self, entry: ModelEntry) -> None:
        entry.state = "unloading"
        entry.task = asyncio.create_task(self._finish_unload(entry), name=f"unload-{entry.ref}")

    async def _unload(self, entry: ModelEntry) -> None:
        self._begin_unload(entry)
        assert entry.task is not None
        await asyncio.shield(entry.task)

    async def _finish_unload(self, entry: ModelEntry) -> None:
        try:
            await entry.idle.wait()
            engine, entry.engine = entry.engine, None
            if engine is not None:
                self._retire(engine)
                await engine.close()
            log.info("model %s unloaded", entry.name)
        finally:
            entry.state = "unloaded"
            entry.task = None
            self._on_change()

    async def _sweep(self) -> None:
        """One periodic pass unloads idle models past their keep_alive."""
        while True:
            await asyncio.sleep(self._sweep_interval)
            now = time.monotonic()
            for entry in self.entries:
                if (
                    entry.state == "loaded"
                    and not entry.pinned
                    and entry.in_flight == entry.waiting == 0
                    and now - entry.last_used >= entry.keep_alive
                ):
                    self._begin_unload(entry)
