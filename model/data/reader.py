"""Concurrent chunk reads from a tile store, through zarr's public async API.

Why not ``arr[j]`` from a thread pool: every synchronous zarr read is a round trip through
zarr's single I/O loop that costs ~0.36 ms of Python even for a 256-byte chunk, so threads
issuing them queue behind each other (benchmarks/RESULTS.md). Here all chunk reads of a batch
are coroutines on one event loop: their decompression runs in the loop's worker threads (Blosc
and zstd release the GIL) and overlaps across tiles, each tile is handed to a decode thread as
soon as its arrays have arrived, and on object storage many GETs are in flight at once.

The loop runs in its own daemon thread, as zarr's does, so a dataset can also be read from code
that already runs an event loop (a notebook). Loop, thread, decode pool and store handles
belong to one process and are rebuilt lazily after a fork; store handles are opened on that
loop, so an async filesystem (s3fs) binds its session to the loop that uses it.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import zarr.api.asynchronous as zarr_async

from hyperkd.pipeline.redaction import clean_href
from hyperkd.pipeline.store.integrity import StrictStore
from hyperkd.pipeline.tiles import read_store

__all__ = ["TileReader"]

_T = TypeVar("_T")


class TileReader:
    """Reads the arrays ``names`` of tile ``j`` (one chunk each) from the store at ``url``.

    ``threads`` threads run :meth:`read_batch`'s ``fill`` callbacks (int16 -> float32
    normalisation and the like); decompression runs on the event loop's own worker threads.
    The object pickles without its per-process state, so it can travel to spawned workers.
    """

    def __init__(
        self,
        url: str,
        names: Sequence[str],
        storage_options: Mapping[str, Any] | None,
        threads: Callable[[], int],
    ) -> None:
        self.url = url
        self.names = tuple(names)
        self.storage_options = dict(storage_options) if storage_options else None
        self._threads = threads
        self._pid: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._arrays: dict[str, Any] = {}
        self._ahead: tuple[tuple[int, ...], list[asyncio.Task[Any]]] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_pid=None, _loop=None, _pool=None, _arrays={}, _ahead=None)
        return state

    def _start(self) -> asyncio.AbstractEventLoop:
        """This process's loop (started, and the store opened on it, on first use)."""
        if self._loop is not None and self._pid == os.getpid():
            return self._loop
        # A forked child inherits the parent's objects but none of its threads: start afresh.
        loop = asyncio.new_event_loop()
        threading.Thread(target=_serve, args=(loop,), name="tile-io", daemon=True).start()
        self._loop, self._pid, self._ahead = loop, os.getpid(), None
        self._pool = ThreadPoolExecutor(self._threads(), thread_name_prefix="tile-decode")
        # Threads outlive nothing: a dataset that is garbage-collected stops its loop.
        weakref.finalize(self, _stop, loop, self._pool)
        try:
            self._arrays = self._submit(self._open())
        except BaseException:  # e.g. the store is gone: no half-started reader stays behind
            _stop(loop, self._pool)
            self._loop = None
            raise
        return loop

    def _submit(self, coro: Coroutine[Any, Any, _T]) -> _T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run ``coro`` on this process's loop and return its result (or raise its error)."""
        try:
            self._start()
        except BaseException:
            coro.close()  # never started: close it, so nothing warns it was never awaited
            raise
        return self._submit(coro)

    async def _open(self) -> dict[str, Any]:
        # This runs on the loop's thread, and fsspec caches filesystem instances per thread,
        # so an async filesystem made here is not the one zarr's own loop already uses.
        # An absent chunk raises instead of reading as fill values (nodata marked valid).
        strict = StrictStore(read_store(self.url, self.storage_options), clean_href(self.url))
        group = await zarr_async.open_group(store=strict, mode="r")
        missing = [name for name in self.names if not await group.contains(name)]
        if missing:
            raise ValueError(f"tile store {clean_href(self.url)} has no array {missing}")
        return {name: await group.getitem(name) for name in self.names}

    async def read(self, j: int, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """The arrays ``names`` (default: all) of tile ``j`` (stored dtype, ``shape[1:]``
        each), read concurrently."""
        names = self.names if names is None else tuple(names)
        values = await asyncio.gather(*(self._arrays[k].getitem(j) for k in names))
        return dict(zip(names, values, strict=True))

    def read_batch(
        self,
        read: Callable[[int], Awaitable[dict[str, np.ndarray]]],
        positions: Sequence[int],
        fill: Callable[[int, dict[str, np.ndarray]], None],
        then: Sequence[int] = (),
    ) -> None:
        """``fill(slot, await read(positions[slot]))`` for every slot, concurrently.

        ``fill`` runs on the decode threads as each tile arrives. At most twice as many tiles
        as decode threads (and at least 4) are being read at once, which bounds the raw tiles
        held in memory. The first error cancels the rest of the batch and is raised here.

        ``then``: the positions of the batch that will be asked for next. Their reads start
        as this batch is done and go on after this call returns, while the caller uses the
        batch; a next call for exactly those positions takes them over, any other call
        cancels them. Their errors surface in the call that takes them over.
        """
        self._start()
        pool, limit = self._pool, max(4, 2 * self._threads())
        pending, self._ahead = self._ahead, None

        async def batch() -> list[asyncio.Task[dict[str, np.ndarray]]]:
            loop, gate = asyncio.get_running_loop(), asyncio.Semaphore(limit)
            ready = pending[1] if pending and pending[0] == tuple(positions) else None
            if pending and ready is None:
                for task in pending[1]:
                    task.cancel()

            async def gated_read(position: int) -> dict[str, np.ndarray]:
                async with gate:
                    return await read(position)

            async def one(slot: int) -> None:
                if ready is not None:  # read ahead by the previous call, outside the gate
                    raw = await ready[slot]
                    await loop.run_in_executor(pool, fill, slot, raw)
                    return
                async with gate:
                    raw = await read(positions[slot])
                    await loop.run_in_executor(pool, fill, slot, raw)

            async with asyncio.TaskGroup() as group:
                for slot in range(len(positions)):
                    group.create_task(one(slot))
            # Started once this batch is done, so they run while the caller uses it instead
            # of competing with its decoding for the cores.
            ahead = [loop.create_task(gated_read(p)) for p in then]
            for task in ahead:
                task.add_done_callback(_retrieve)
            return ahead

        try:
            ahead = self._submit(batch())
        except BaseExceptionGroup as errors:
            raise _first(errors) from None
        if then:
            self._ahead = (tuple(then), ahead)


def _serve(loop: asyncio.AbstractEventLoop) -> None:
    """The I/O thread: run ``loop`` until :func:`_stop`, then close it."""
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


def _stop(loop: asyncio.AbstractEventLoop, pool: ThreadPoolExecutor) -> None:
    pool.shutdown(wait=False)
    if not loop.is_closed():
        loop.call_soon_threadsafe(loop.stop)


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a read-ahead's error as seen: the batch that takes the read over re-raises it,
    and one that nobody takes over (the loop stopped) has nobody to tell."""
    if not task.cancelled():
        task.exception()


def _first(errors: BaseExceptionGroup) -> BaseException:
    """The first leaf error of a (possibly nested) exception group."""
    first = errors.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first
