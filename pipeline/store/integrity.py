"""Chunk integrity: every chunk of a store is present and decodes.

Zarr v3 reads a missing chunk as the array's fill value, silently: a deleted ``student``
chunk would reach the trainer as a tile of nodata marked valid. Our writers therefore write
every chunk, including those that hold only the fill value (``write_empty_chunks``), and so
an absent chunk is always damage. Two tools follow from that:

* :class:`StrictStore` wraps a zarr store for readers: reading an absent chunk raises
  :class:`MissingChunkError` instead of returning fill values. It costs one Python call per
  chunk read (the loader stays at its decode floor, benchmarks/RESULTS.md).
* :func:`deep_check` reads every chunk of the arrays of a store, and reports the absent and
  the undecodable ones by key (``verify_cube --deep``, ``verify_tiles --deep``).
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Iterable, Mapping
from typing import Any

from zarr.abc.store import ByteRequest
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import WrapperStore

from hyperkd.pipeline.store.location import CubeStore

__all__ = ["WRITE_EVERY_CHUNK", "MissingChunkError", "StrictStore", "chunk_keys", "deep_check"]

WRITE_EVERY_CHUNK = {"write_empty_chunks": True}
"""The zarr array config of our writers: a chunk of fill values is written too."""


class MissingChunkError(ValueError):
    """A chunk the array's shape promises is absent from the store (deleted or never written)."""


def is_chunk_key(key: str) -> bool:
    """Whether ``key`` names a chunk (default v3 encoding: ``<array>/c/<i>/<j>...``)."""
    parts = key.split("/")
    if "c" not in parts:
        return False
    i = len(parts) - 1 - parts[::-1].index("c")
    return i < len(parts) - 1 and all(p.isdigit() for p in parts[i + 1 :])


class StrictStore(WrapperStore[Any]):
    """A zarr store on which reading an absent chunk raises :class:`MissingChunkError`.

    ``label`` names the store in the error (a URL without credentials).
    """

    def __init__(self, store: Any, label: str = "") -> None:
        super().__init__(store)
        self.label = label

    def _with_store(self, store: Any) -> StrictStore:
        return type(self)(store, self.label)

    def _missing(self, key: str) -> MissingChunkError:
        where = f" of {self.label}" if self.label else ""
        return MissingChunkError(
            f"chunk {key}{where} is missing (run `hyperkd verify --deep` on the store)"
        )

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        value = await self._store.get(key, prototype, byte_range)
        if value is None and is_chunk_key(key):
            raise self._missing(key)
        return value

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        key_ranges = list(key_ranges)
        values = await self._store.get_partial_values(prototype, key_ranges)
        for (key, _), value in zip(key_ranges, values, strict=True):
            if value is None and is_chunk_key(key):
                raise self._missing(key)
        return values


def _grid(doc: Mapping[str, Any]) -> tuple[int, ...]:
    """Chunks (shards, for a sharded array) per axis of the array described by ``doc``."""
    shape = doc["shape"]
    chunk = doc["chunk_grid"]["configuration"]["chunk_shape"]
    return tuple(-(-int(s) // int(c)) if s else 0 for s, c in zip(shape, chunk, strict=True))


def _chunks(path: str, doc: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Chunk (or shard) key -> chunk grid index, for every chunk of the array ``path``."""
    encoding = doc.get("chunk_key_encoding") or {"name": "default"}
    default = encoding.get("name", "default") == "default"
    sep = (encoding.get("configuration") or {}).get("separator", "/" if default else ".")
    keys = {}
    for index in itertools.product(*(range(n) for n in _grid(doc))):
        parts = ["c", *map(str, index)] if default else [*map(str, index)] or ["0"]
        tail = sep.join(parts)
        keys[f"{path}/{tail}" if path else tail] = index
    return keys


def chunk_keys(path: str, doc: Mapping[str, Any]) -> list[str]:
    """Every chunk (or shard) key the array ``path`` with metadata ``doc`` should have."""
    return list(_chunks(path, doc))


def _listing(store: CubeStore) -> set[str]:
    """Every object key under the store, relative to its root."""
    store.invalidate()
    if store.is_local:
        found = set()
        for folder, _, files in os.walk(store.root):
            rel = os.path.relpath(folder, store.root)
            found |= {f if rel == "." else f"{rel}/{f}".replace(os.sep, "/") for f in files}
        return found
    root = store.root.rstrip("/") + "/"
    return {k[len(root) :] for k in store.fs.find(store.root) if k.startswith(root)}


def deep_check(store: CubeStore, arrays: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Problems of the chunks of ``arrays`` (path -> zarr.json document) in ``store``.

    Lists the store once, reports each absent chunk key, then decodes every present chunk
    and reports each that fails, by key and error. Empty when every chunk is sound.
    """
    present = _listing(store)
    problems: list[str] = []
    zstore = store.zarr_store(read_only=True)
    for path, doc in sorted(arrays.items()):
        keys = _chunks(path, doc)
        problems += [f"chunk {k} is missing" for k in keys if k not in present]
        there = {k: index for k, index in keys.items() if k in present}
        problems += _decode_all(zstore, path, doc, there)
    return problems


def _decode_all(
    zstore: Any, path: str, doc: Mapping[str, Any], keys: Mapping[str, tuple[int, ...]]
) -> list[str]:
    """Decode the chunks ``keys`` of one array; the failures, by key."""
    from zarr.core.array import Array, AsyncArray
    from zarr.core.metadata.v3 import ArrayV3Metadata
    from zarr.core.sync import sync
    from zarr.storage import StorePath

    arr = Array(AsyncArray(ArrayV3Metadata.from_dict(dict(doc)), StorePath(zstore, path)))
    chunk = doc["chunk_grid"]["configuration"]["chunk_shape"]

    async def one(key: str) -> str | None:
        index = keys[key]
        sel = tuple(slice(i * c, (i + 1) * c) for i, c in zip(index, chunk, strict=True))
        try:
            await arr._async_array.getitem(sel)
        except Exception as exc:  # any failure to decode is a finding
            return f"chunk {key} does not decode: {type(exc).__name__}: {exc}"
        return None

    async def run() -> list[str | None]:
        gate = asyncio.Semaphore(16)

        async def gated(key: str) -> str | None:
            async with gate:
                return await one(key)

        return list(await asyncio.gather(*(gated(k) for k in keys)))

    return [p for p in sync(run()) if p is not None]
