"""Outputs never destroy what is not ours: one check, run by every command before it writes.

A command that writes an output ``out`` calls :func:`check_output` first. It raises
:class:`OutputError` (a ``ValueError``: one line, exit code 2 on the command line) and
touches nothing when

* ``out`` equals, contains or sits inside one of the command's inputs (``tiles --out`` set
  to the cube, or to the cube's parent folder);
* ``out`` exists and is not a folder (or a prefix on an object store);
* ``out`` holds something other than an output of the same kind: a non-empty folder without
  the kind's marker. Markers: a cube's and a tile store's root ``zarr.json`` attributes
  (``hyperkd:cube_version``, ``hyperkd:tiles_version`` or ``hyperkd:kind``); a training
  run's ``config.json`` (``kind``) or ``checkpoints/latest.json``.

Kinds that only add named files to a folder (``files``: evaluate, ablate, downstream, report)
accept any folder that is not a store of another kind, because they delete nothing.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Iterable, Mapping
from typing import Any

from hyperkd.pipeline.redaction import clean_href
from hyperkd.pipeline.store.location import LOCK_KEY, CubeStore

__all__ = ["KINDS", "OutputError", "check_output", "store_kind"]

KINDS = ("cube", "tiles", "embeddings", "student", "teacher", "files")
"""``student``/``teacher``: training run folders; ``files``: a folder of result files."""

_ZARR_KINDS = {
    "hyperkd:cube_version": "cube",
    "hyperkd:tiles_version": "tiles",
    "hyperkd:embeddings_version": "embeddings",
}


class OutputError(ValueError):
    """The output path holds something this command must not replace (nothing was touched)."""


def _key(url: str) -> tuple[str, str]:
    """``(protocol, normalised path)`` of a local path or fsspec URL, for containment tests."""
    text = str(url)
    if "://" not in text or text.startswith("file://"):
        path = os.path.realpath(os.path.abspath(os.path.expanduser(text.removeprefix("file://"))))
        return "file", path
    protocol, _, rest = text.partition("://")
    protocol = {"s3a": "s3", "gcs": "gs"}.get(protocol, protocol)
    return protocol, posixpath.normpath("/" + rest.split("?", 1)[0]).rstrip("/") or "/"


def _inside(inner: str, outer: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")


def _overlap(out: str, inputs: Iterable[str | None]) -> str | None:
    """The first input that ``out`` equals, contains or sits inside."""
    proto, path = _key(out)
    for inp in inputs:
        if not inp:
            continue
        p, q = _key(str(inp))
        if p == proto and (_inside(path, q) or _inside(q, path)):
            return str(inp)
    return None


def store_kind(store: CubeStore) -> str | None:
    """What ``store`` holds: a kind of :data:`KINDS`, ``"zarr"`` (a foreign Zarr store),
    ``"empty"`` (nothing, or an empty folder) or ``None`` (something else)."""
    # A writer's lock and atomic-write temporaries are ours: a folder holding only those is
    # a cube another writer is creating, or one a killed run left behind.
    names = [n for n in store.listdir() if n != LOCK_KEY and not _is_temp(n)]
    if not names:
        return "empty"
    if "zarr.json" in names:
        attrs = (store.read_json("zarr.json") or {}).get("attributes") or {}
        for key, kind in _ZARR_KINDS.items():
            if key in attrs:
                return kind
        kind = attrs.get("hyperkd:kind")
        return str(kind) if kind in ("cube", "tiles", "embeddings") else "zarr"
    if set(names) <= {"enmap", "hls"} and all(_half_created_group(store, n) for n in names):
        return "cube"  # a run killed before the cube's first commit; the next one starts over
    run = store.read_json("config.json") or {}
    if run.get("kind") in ("student", "teacher"):
        return str(run["kind"])
    if "checkpoints" in names and store.exists("checkpoints/latest.json"):
        return "run"  # started, not finished: either training kind may resume it
    if set(names) <= {"metrics.jsonl", "checkpoints"} and _is_training_log(store):
        return "run"  # killed before its first checkpoint: only the trainer's own files
    return None


def _is_training_log(store: CubeStore) -> bool:
    """Whether ``metrics.jsonl`` (if any) is the trainer's log: one JSON object with an
    integer ``step`` per line. A fresh start replaces that log, so a file of the same name
    that is not one must not pass for a killed run."""
    raw = store.read_bytes("metrics.jsonl")
    if raw is None:
        return True
    try:
        lines = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    return all(isinstance(r, dict) and isinstance(r.get("step"), int) for r in lines)


def _half_created_group(store: CubeStore, group: str) -> bool:
    """Whether ``group`` is a cube group our writer began (its own ``zarr.json`` says so, or
    it holds nothing but a torn write of it)."""
    doc = store.read_json(f"{group}/zarr.json")
    if doc is not None:
        return (doc.get("attributes") or {}).get("hyperkd:group") == group
    return all(_is_temp(n) for n in store.listdir(group))


def _is_temp(name: str) -> bool:
    """``CubeStore.write_atomic``'s temporary files: ``.<name>.<32 hex>.tmp``."""
    parts = name.split(".")
    return name.startswith(".") and name.endswith(".tmp") and len(parts[-2]) == 32


def check_output(
    out: str | os.PathLike[str],
    kind: str,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Refuse to write a ``kind`` output at ``out`` when that could destroy what is not ours.

    ``inputs``: everything the command reads (paths or URLs; ``None`` entries are skipped).
    Raises :class:`OutputError` with one line; returns when writing is safe.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown output kind {kind!r}; expected one of {KINDS}")
    text = os.fspath(out)
    name = clean_href(text)  # what messages show: no query strings, no user:password
    clash = _overlap(text, [None if i is None else os.fspath(i) for i in inputs])
    if clash is not None:
        raise OutputError(
            f"output {name} overlaps the input {clean_href(clash)} (equal, inside or containing it); "
            "choose an output outside every input"
        )
    store = CubeStore(text, storage_options)
    if store.is_local:
        if os.path.lexists(store.root) and not os.path.isdir(store.root):
            raise OutputError(f"output {name} exists and is not a folder; nothing was written")
        parent = os.path.dirname(store.root)
        while parent and not os.path.lexists(parent):
            parent = os.path.dirname(parent)
        if parent and not os.path.isdir(parent):
            raise OutputError(f"output {name}: {parent} is a file, not a folder (Not a directory)")
    elif store.fs.isfile(store.root):
        raise OutputError(f"output {name} is an object, not a prefix; nothing was written")
    if not store.exists():
        return
    found = store_kind(store)
    if found == "empty" or found == kind:
        return
    if kind in ("student", "teacher") and found == "run":
        return
    if kind == "files" and found is None:
        return  # files-only commands add their own named files and delete nothing
    what = {
        None: "files that are not a hyperkd output",
        "zarr": "a Zarr store that is not a hyperkd output",
        "run": "a training run",
    }.get(found, f"a {found} {'run' if found in ('student', 'teacher') else 'store'}")
    raise OutputError(
        f"output {name} holds {what}, not a {_describe(kind)}; refusing to write there "
        "(nothing was touched): choose a new or empty path"
    )


def _describe(kind: str) -> str:
    return {
        "cube": "cube",
        "tiles": "tile store",
        "embeddings": "embeddings store",
        "student": "student run",
        "teacher": "teacher run",
        "files": "results folder",
    }[kind]
