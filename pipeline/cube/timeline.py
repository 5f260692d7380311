"""A group's time axis: where a scene goes, and how the axis is rebuilt without losing a scene.

The axis is sorted by ``(time, scene id)``. A scene newer than the newest is appended (the
plain commit protocol of :mod:`hyperkd.pipeline.cube.io`). Any other insert, and the
replacement of a product by its reprocessed successor, is an :class:`Edit` of the slots from
the insert point on (docs/cube.md "Backfills and reprocessing"):

1. the new scene's chunks are written at a *staged* slot beyond every committed one;
2. a commit hides the slots from ``keep`` on (shapes shrink to ``keep``) and records the edit
   in the root's ``hyperkd:pending``: readers see a sorted prefix, never a half-moved slot;
3. slot copies ``(src, dst)`` run in an order where no source is overwritten before it is
   copied; the number done is kept in ``.hyperkd.progress`` after each one, so a resumed
   writer never copies an already-overwritten source again;
4. the final commit shows the whole axis and drops ``hyperkd:pending``.

A writer killed anywhere in 2-4 leaves a readable cube (the prefix); the next writer rolls
the edit forward before anything else (:meth:`CubeWriter.reconcile`).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hyperkd.pipeline.cube.layout import encode_time

__all__ = ["Edit", "copy_slot", "insert_index", "order_key", "plan_edit"]

PROGRESS = ".hyperkd.progress"
"""Small JSON beside the root: ``{"edit": <edit id>, "done": <copies done>}``."""


def order_key(record: Mapping[str, Any]) -> tuple[int, str]:
    """The axis order of a scene record: acquisition time (µs), then id."""
    return encode_time(record["datetime"]), str(record["id"])


def insert_index(records: Sequence[Mapping[str, Any]], key: tuple[int, str]) -> int:
    """Where a scene with ``key`` goes among ``records`` (sorted by :func:`order_key`)."""
    return bisect.bisect_left([order_key(r) for r in records], key)


@dataclass(frozen=True)
class Edit:
    """One rebuild of a group's slots ``[keep, length)``.

    ``moves``: slot copies ``(src, dst)`` in a safe order; ``staged``: the slot holding the
    new scene's chunks; ``length``: the axis length afterwards.
    """

    keep: int
    moves: tuple[tuple[int, int], ...]
    staged: int
    length: int

    def as_json(self) -> dict[str, Any]:
        return {"keep": self.keep, "moves": [list(m) for m in self.moves],
                "staged": self.staged, "length": self.length}  # fmt: skip

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Edit:
        moves = tuple((int(a), int(b)) for a, b in doc["moves"])
        return cls(int(doc["keep"]), moves, int(doc["staged"]), int(doc["length"]))


def plan_edit(n: int, index: int, removed: int | None = None) -> Edit:
    """Insert a scene at ``index`` of the ``n`` committed slots, after removing slot ``removed``.

    ``index`` counts positions after the removal. The staged slot lies beyond both the old and
    the new axis, so no copy overwrites it before it is read.
    """
    slots: list[int] = [s for s in range(n) if s != removed]
    if not 0 <= index <= len(slots):
        raise ValueError(f"insert index {index} outside 0..{len(slots)}")
    staged = max(n, len(slots) + 1)
    final = [*slots[:index], staged, *slots[index:]]
    keep = next((i for i, s in enumerate(final) if s != i), len(final))
    pending = [(src, dst) for dst, src in enumerate(final) if src != dst]
    ordered: list[tuple[int, int]] = []
    while pending:
        sources = {src for src, _ in pending}
        # A copy may run once no other pending copy still reads its destination.
        ready = next((m for m in pending if m[1] not in sources - {m[0]}), None)
        if ready is None:
            raise AssertionError(f"slot copies form a cycle: {pending}")
        ordered.append(ready)
        pending.remove(ready)
    return Edit(keep, tuple(ordered), staged, len(final))


def copy_slot(array: Any, src: int, dst: int) -> None:
    """``array[dst] = array[src]`` along the time axis, one stored shard (or chunk) at a time."""
    block = tuple((getattr(array, "shards", None) or array.chunks)[1:])
    shape = tuple(array.shape[1:])
    if not shape:
        array[dst] = array[src]
        return
    for start in itertools.product(*(range(0, s, b) for s, b in zip(shape, block, strict=True))):
        region = tuple(slice(i, i + b) for i, b in zip(start, block, strict=True))
        array[(dst, *region)] = array[(src, *region)]
