"""Where an ingest's scenes run: local threads, or a dask distributed cluster.

``dask_address``: None for ``workers`` threads here, ``local`` for a LocalCluster of
``workers`` single-threaded processes, or ``[tcp|tls://]host:port`` for a running scheduler.
Checked before any work starts (:func:`check_dask_address`), so a malformed or silent address
is a one-line error.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from rasterio.errors import NotGeoreferencedWarning

CONNECT_TIMEOUT_S = 10.0
"""How long to wait for the dask scheduler at ``dask_address`` to answer."""
_ADDRESS = re.compile(r"(?:(?:tcp|tls)://)?(?:\[[0-9a-fA-F:]+\]|[\w.-]+):\d{1,5}")


def check_dask_address(address: str | None) -> None:
    """``ValueError`` (one line) unless ``address`` is None, ``local`` or ``[tcp|tls://]host:port``."""
    if address is None or address == "local" or _ADDRESS.fullmatch(address):
        return
    raise ValueError(
        f"dask address {address!r}: expected tcp://HOST:PORT (a dask scheduler) or 'local'"
    )


def default_workers() -> int:
    """Scenes loaded at once when not told: the cores, at most 8 (memory: one scene each)."""
    return max(1, min(8, os.cpu_count() or 1))


@contextlib.contextmanager
def quiet_warnings() -> Iterator[None]:
    """Silence the harmless warnings a scene's load raises (not thread-safe: set it around a
    pool's threads, not inside them)."""
    with warnings.catch_warnings():
        # As in the serial path (region._write_one): odc-stac's harmless identity warps.
        warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)
        warnings.filterwarnings("ignore", category=PendingDeprecationWarning, module=r"odc\.")
        yield


@dataclass(frozen=True)
class ScenePool:
    """Where scenes run: ``submit(fn, *args) -> future``, and ``width``, the scenes kept in
    flight at once."""

    submit: Callable[..., Any]
    width: int


@contextlib.contextmanager
def scene_pool(dask_address: str | None, workers: int | None = None) -> Iterator[ScenePool]:
    """``workers`` local threads, or the dask cluster at ``dask_address`` (``local``: a
    LocalCluster of ``workers`` processes). ``workers=None``: the cores here (at most 8), or,
    on a running cluster, its worker threads. ``ValueError`` (one line) when the address is
    malformed or does not answer within :data:`CONNECT_TIMEOUT_S`."""
    if dask_address is None:
        width = workers or default_workers()
        with quiet_warnings(), ThreadPoolExecutor(width, thread_name_prefix="ingest") as ex:
            yield ScenePool(lambda fn, *args: ex.submit(fn, *args, False, "threads"), width)
        return
    from distributed import Client, LocalCluster

    check_dask_address(dask_address)
    with contextlib.ExitStack() as stack:
        try:
            if dask_address == "local":
                workers = workers or default_workers()
                cluster = stack.enter_context(
                    LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=":0")
                )
                dask_address = cluster.scheduler_address
            # Not the default scheduler: dask inside this process keeps its own threads.
            client = stack.enter_context(
                Client(dask_address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
            )
        except OSError as exc:
            raise ValueError(f"cannot reach dask scheduler {dask_address}: {exc}") from None
        width = workers or max(1, sum(client.nthreads().values()))
        yield ScenePool(lambda fn, *args: client.submit(fn, *args, pure=False), width)
