"""Small records that tasks pass to each other: URLs, ids and fingerprints, never arrays.

Prefect hashes task inputs for its cache keys, so a record carries exactly what makes the
downstream result different: when a cube gains scenes, its record changes, and the tiles,
training and evaluation that depend on it run again; nothing else does.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from hyperkd.defaults import optimizer_setting


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (sorted keys), for content-addressed paths."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def optimizer_key(optimizer: str) -> list[str]:
    """The optimizer's part of a run's fingerprint: none for AdamW, so the folders of runs
    trained before the choice existed keep their names."""
    return list(optimizer_setting(optimizer).values())


def teacher_fingerprint(
    tiles: str,
    preset: str,
    steps: int,
    batch_size: int,
    seed: int,
    lr: float | None,
    optimizer: str,
) -> str:
    """A pretrained teacher's fingerprint: its folder's name and its record's key."""
    return fingerprint(tiles, preset, steps, batch_size, seed, lr, *optimizer_key(optimizer))


@dataclass(frozen=True)
class SceneRef:
    """One scene to ingest: its STAC item (as a dict) and where it came from."""

    id: str
    group: str
    """``enmap`` or ``hls``."""
    datetime: str
    source: str
    """The source name or catalog URL it was found in."""
    item: dict[str, Any] = field(repr=False, compare=False, hash=False)
    paired_enmap: str = ""
    cloud_cover: float | None = None


@dataclass(frozen=True)
class IngestRecord:
    """A cube after an ingest: its URL and the scenes it holds."""

    cube: str
    scenes: tuple[str, ...]
    written: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    failed: tuple[tuple[str, str], ...] = ()
    """``(scene id, reason)`` for every scene that failed."""

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cube, sorted(self.scenes))


@dataclass(frozen=True)
class TileRecord:
    """A tile store: URL, size per split, and the fingerprint of what built it."""

    url: str
    n_tiles: int
    splits: dict[str, int]
    fingerprint: str


@dataclass(frozen=True)
class RunRecord:
    """A training or evaluation output folder and the fingerprint of its inputs."""

    kind: str
    path: str
    fingerprint: str
    metrics: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
