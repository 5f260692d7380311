"""Reading a tile store's description: :class:`TileStoreInfo` from its root attributes.

Public reader API of the tile store (no torch): the trainer's dataset and other teams' readers
open stores through :func:`open_store`/:func:`read_store` and describe them with
:func:`read_info`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hyperkd.pipeline.store.location import CubeStore
from hyperkd.pipeline.tiles.verify import open_store


def read_store(url: str, storage_options: Mapping[str, Any] | None = None) -> Any:
    """A read-only zarr store on the tile store at ``url`` (local path or fsspec URL), for
    readers that open arrays themselves (zarr's async API, say)."""
    return CubeStore(url, storage_options).zarr_store(read_only=True)


_INFO_ATTRS = (
    "hyperkd:tiles_version",
    "tile_size",
    "patch_size",
    "student_mean",
    "student_std",
    "params_hash",
)


@dataclass(frozen=True)
class TileStoreInfo:
    """What a trainer needs to know about a tile store, from its root attributes."""

    n_tiles: int
    n_bands: int
    """C, the student bands in the store."""
    tile_size: int
    """T, pixels."""
    patch_size: int
    """P, pixels; significance maps are ``(T/P, T/P)``."""
    student_mean: tuple[float, ...]
    """Per band, reflectance x 10000, over the train tiles' valid pixels."""
    student_std: tuple[float, ...]
    band_wavelength: tuple[float, ...]
    """Centre wavelength per student band, nm."""
    teacher_bands: tuple[str, ...]
    teacher_mean: tuple[float, ...]
    """Prithvi constants, reflectance x 10000."""
    teacher_std: tuple[float, ...]
    labels: dict[str, dict[str, Any]]
    """Label name -> record (``dtype``, ``kind``, ``classes``...)."""
    splits: dict[str, int]
    """Split name -> tile count."""
    shard_tiles: int | None = None
    """Tiles per Zarr shard of ``student`` (``None`` when unsharded)."""


def read_info(url: str, storage_options: Mapping[str, Any] | None = None) -> TileStoreInfo:
    """The :class:`TileStoreInfo` of the store at ``url`` (local path or fsspec URL).

    Raises ``ValueError`` when the store is incomplete (a build that did not finish never
    gets its root attributes).
    """
    try:
        root = open_store(url, storage_options)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"no tile store at {url}") from exc
    attrs = dict(root.attrs)
    missing = [k for k in _INFO_ATTRS if k not in attrs]
    if missing or "student" not in root:
        raise ValueError(
            f"{url} is not a complete tile store (missing {', '.join(missing) or 'student'})"
        )
    student = root["student"]
    shards = getattr(student, "shards", None)
    return TileStoreInfo(
        n_tiles=int(student.shape[0]),
        n_bands=int(student.shape[1]),
        tile_size=int(attrs["tile_size"]),
        patch_size=int(attrs["patch_size"]),
        student_mean=tuple(float(v) for v in attrs["student_mean"]),
        student_std=tuple(float(v) for v in attrs["student_std"]),
        band_wavelength=tuple(float(v) for v in attrs.get("band_wavelength", ())),
        teacher_bands=tuple(attrs.get("teacher_bands", ())),
        teacher_mean=tuple(float(v) for v in attrs["teacher_mean"]),
        teacher_std=tuple(float(v) for v in attrs["teacher_std"]),
        labels={k: dict(v) for k, v in attrs.get("labels", {}).items()},
        splits={k: int(v) for k, v in attrs.get("splits", {}).items()},
        shard_tiles=int(shards[0]) if shards else None,
    )
