"""Build a local store beside its target and rename it into place, crash-safe.

A build writes ``<target>.partial-<host>-<pid>-<hex>`` and renames it over the target when
done, so a reader never sees a half-written store. A build that is killed outright (SIGKILL,
power loss) cannot clean up after itself; the owner's host and pid in the name let the next
build on the same host remove such leftovers without touching a build that is still running.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import socket
import uuid
from pathlib import Path

from hyperkd.pipeline.store.guard import OutputError, store_kind
from hyperkd.pipeline.store.location import CubeStore, pid_alive

__all__ = ["commit", "partial_path", "sweep_killed_partials"]

_log = logging.getLogger(__name__)


def partial_path(target: Path) -> Path:
    """Where this process builds ``target``: a fresh sibling named after host and pid."""
    return target.with_name(
        f"{target.name}.partial-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    )


def sweep_killed_partials(target: Path) -> list[Path]:
    """Remove the partial builds of ``target`` whose process on this host is gone.

    Partial builds from other hosts, from live processes, or named the old way (without host
    and pid) are left alone. Returns what was removed.
    """
    removed = []
    host = socket.gethostname()
    for path in target.parent.glob(f"{glob.escape(target.name)}.partial-*"):
        owner = path.name[len(f"{target.name}.partial-") :].rsplit("-", 2)
        if len(owner) != 3 or owner[0] != host or not owner[1].isdigit():
            continue
        if pid_alive(int(owner[1])):
            continue
        shutil.rmtree(path, ignore_errors=True)
        _log.info("removed %s, left behind by a killed build", path.name)
        removed.append(path)
    return removed


def commit(partial: Path, target: Path, kind: str) -> None:
    """Rename the finished ``partial`` over ``target`` (the old store, if any, goes last).

    ``target`` is replaced only when it holds a store of the same ``kind`` (or an empty
    folder); anything else raises :class:`~hyperkd.pipeline.store.guard.OutputError` and
    stays in place. Checked here again, at the last moment, as well as before the build.
    """
    old = None
    if os.path.lexists(target):
        found = store_kind(CubeStore(str(target))) if target.is_dir() else None
        if found not in (kind, "empty"):
            raise OutputError(
                f"output {target} holds something other than a {kind} store; it was not "
                "replaced (choose a new or empty path)"
            )
        old = target.with_name(f"{target.name}.old-{uuid.uuid4().hex[:8]}")
        target.rename(old)
    partial.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
