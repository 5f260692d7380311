"""``verify_tiles``: every way a tile store can break the contract in docs/tiles.md."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import zarr

from hyperkd.pipeline.store.integrity import deep_check
from hyperkd.pipeline.store.location import CubeStore
from hyperkd.pipeline.tiles.index import SPLITS, leaking_pairs
from hyperkd.pipeline.tiles.schema import (
    INDEX_COLUMNS,
    LABEL_DIMS,
    READABLE_VERSIONS,
    REQUIRED_ATTRS,
    TEACHER_BANDS,
    TILE_ARRAYS,
    sizes,
)

INDEX_DTYPES = {c.name: c.dtype for c in INDEX_COLUMNS}
_SPOT_CHECKS = 32


def open_store(url: str, storage_options: Mapping[str, Any] | None = None) -> zarr.Group:
    """The store's root group, read-only (local path or fsspec URL)."""
    return zarr.open_group(CubeStore(url, storage_options).zarr_store(read_only=True), mode="r")


def as_str(values: np.ndarray) -> np.ndarray:
    """A zarr string column (numpy ``StringDType``) as a plain ``<U`` array."""
    return np.array(values.tolist(), dtype=str)


def _dtype_name(arr: zarr.Array) -> str:
    kind = np.dtype(arr.dtype).kind if not str(arr.dtype).startswith("StringDType") else "T"
    return "str" if kind in "TUO" else str(np.dtype(arr.dtype))


def _check_array(
    root: zarr.Group, name: str, shape: tuple[int, ...], dtype: str, problems: list[str]
) -> zarr.Array | None:
    if name not in root:
        problems.append(f"array {name} is missing")
        return None
    arr = root[name]
    if not isinstance(arr, zarr.Array):
        problems.append(f"{name} is not an array")
        return None
    if tuple(arr.shape) != shape:
        problems.append(f"{name} has shape {tuple(arr.shape)}, expected {shape}")
    if _dtype_name(arr) != dtype:
        problems.append(f"{name} has dtype {_dtype_name(arr)}, expected {dtype}")
    if len(shape) > 1 and tuple(arr.chunks) != (1, *shape[1:]):
        problems.append(
            f"{name} has chunks {tuple(arr.chunks)}, expected one tile per chunk {(1, *shape[1:])}"
        )
    if len(shape) > 1 and arr.shards is not None and tuple(arr.shards[1:]) != shape[1:]:
        problems.append(f"{name} has shards {tuple(arr.shards)}, expected whole tiles per shard")
    return arr


def _finite_list(
    attrs: Mapping[str, Any], key: str, length: int, problems: list[str], positive: bool = False
) -> None:
    values = np.asarray(attrs.get(key, []), dtype=np.float64)
    if values.shape != (length,):
        problems.append(f"attribute {key} has {values.size} values, expected {length}")
    elif not np.all(np.isfinite(values)):
        problems.append(f"attribute {key} is not finite everywhere")
    elif positive and not np.all(values > 0):
        problems.append(f"attribute {key} has values <= 0")


def verify_tiles(
    url: str, storage_options: Mapping[str, Any] | None = None, *, deep: bool = False
) -> list[str]:
    """Every problem of the tile store at ``url``; an empty list when it meets the contract.

    Checks attributes, array shapes, dtypes and chunking, the index (ids, offsets on the
    stride grid, valid fractions, split names and counts), that no tiles of different splits
    touch, that statistics are finite, and spot-checks index columns against the arrays.
    ``deep``: also read every chunk of every array and report, by key, the absent ones and
    those that do not decode.
    """
    problems = _verify(url, storage_options)
    if deep and not any("cannot open" in p for p in problems):
        problems += _deep(url, storage_options)
    return problems


def _deep(url: str, storage_options: Mapping[str, Any] | None) -> list[str]:
    """Chunk problems of every array of the store (root and ``index/``)."""
    store = CubeStore(url, storage_options)
    root = open_store(url, storage_options)
    paths = [name for name, _ in root.arrays()]
    if "index" in root:
        paths += [f"index/{name}" for name, _ in root["index"].arrays()]  # type: ignore[union-attr]
    docs = {p: store.read_json(f"{p}/zarr.json") for p in paths}
    missing = [f"array {p} has no readable zarr.json" for p, d in docs.items() if d is None]
    return missing + deep_check(store, {p: d for p, d in docs.items() if d is not None})


def _check_xarray(url: str, storage_options: Mapping[str, Any] | None, attrs: Any) -> list[str]:
    """Layout 2: plain ``xr.open_zarr`` opens the store without a warning (dimension names,
    consolidated metadata) and sees every array; the CRS is WKT2, like the cube's."""
    import warnings

    import pyproj
    import xarray as xr

    problems = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = xr.open_zarr(CubeStore(url, storage_options).zarr_store(read_only=True))
        except Exception as exc:  # any failure to open is a finding
            return [f"xarray.open_zarr fails: {type(exc).__name__}: {exc}"]
    problems += [f"xarray.open_zarr warns: {w.message}" for w in caught]
    for a in TILE_ARRAYS:
        if a.name in ds and tuple(ds[a.name].dims) != a.dims:
            problems.append(f"{a.name} has dims {ds[a.name].dims} in xarray, expected {a.dims}")
    try:
        pyproj.CRS.from_wkt(str(attrs["crs"]))
    except pyproj.exceptions.CRSError as exc:
        problems.append(f"attribute crs does not parse: {exc}")
    if not str(attrs["crs"]).startswith(
        ("PROJCRS", "GEOGCRS", "GEODCRS", "COMPOUNDCRS", "BOUNDCRS")
    ):
        problems.append("attribute crs is not WKT2 (the cube's proj:wkt2 is)")
    return problems


def _verify(url: str, storage_options: Mapping[str, Any] | None) -> list[str]:
    try:
        root = open_store(url, storage_options)
    except Exception as exc:  # any failure to open is a finding, not a crash
        return [f"cannot open tile store {url}: {type(exc).__name__}: {exc}"]
    attrs = dict(root.attrs)
    problems = [f"root attribute {k} is missing" for k in REQUIRED_ATTRS if k not in attrs]
    if problems:
        return [*problems, "store is incomplete (root attributes are written last)"]
    version = attrs["hyperkd:tiles_version"]
    if version not in READABLE_VERSIONS:
        problems.append(f"unknown tiles version {version}")
    T, P = int(attrs["tile_size"]), int(attrs["patch_size"])
    if T % P:
        problems.append(f"tile size {T} is not a multiple of patch size {P}")
        return problems
    if "student" not in root:
        return [*problems, "array student is missing"]
    n, C = int(root["student"].shape[0]), len(attrs["band_wavelength"])
    checked = _check_arrays(root, attrs, sizes(n, C, T, P), problems)
    _check_band_attrs(attrs, C, problems)
    if version in READABLE_VERSIONS and version >= 2:
        problems += _check_xarray(url, storage_options, attrs)
    index = {
        k: _check_array(root, f"index/{k}", (n,), d, problems) for k, d in INDEX_DTYPES.items()
    }
    if any(a is None for a in index.values()):
        return problems
    col = {k: np.asarray(a[:]) for k, a in index.items()}  # type: ignore[index]
    _check_index(col, attrs, n, problems)
    if checked["valid"] is not None and checked["significance_gabor"] is not None and n:
        _spot_check(checked["valid"], checked["significance_gabor"], col, n, problems)
    return problems


def _check_arrays(root: Any, attrs: dict[str, Any], dim_sizes: dict[str, int],
                  problems: list[str]) -> dict[str, Any]:  # fmt: skip
    """Every schema and label array with its shape and dtype; the handles (None if unusable)."""
    arrays = {a.name: (a.shape(dim_sizes), a.dtype) for a in TILE_ARRAYS}
    for name, record in attrs["labels"].items():
        arrays[f"label_{name}"] = (
            tuple(dim_sizes[d] for d in LABEL_DIMS),
            str(record.get("dtype")),
        )
    checked = {
        k: _check_array(root, k, shape, dtype, problems) for k, (shape, dtype) in arrays.items()
    }
    extra = sorted(k for k in root.array_keys() if k.startswith("label_") and k not in arrays)
    problems += [f"array {k} is not listed in the labels attribute" for k in extra]
    return checked


def _check_band_attrs(attrs: dict[str, Any], bands: int, problems: list[str]) -> None:
    """The per-band lists (FWHM, normalisation) are finite and as long as their bands."""
    if attrs["band_fwhm"]:
        _finite_list(attrs, "band_fwhm", bands, problems)
    _finite_list(attrs, "student_mean", bands, problems)
    _finite_list(attrs, "student_std", bands, problems, positive=True)
    n_teacher = len(TEACHER_BANDS)
    _finite_list(attrs, "teacher_mean", n_teacher, problems)
    _finite_list(attrs, "teacher_std", n_teacher, problems, positive=True)
    if list(attrs["teacher_bands"]) != list(TEACHER_BANDS):
        problems.append(f"teacher_bands are {attrs['teacher_bands']}, expected {TEACHER_BANDS}")


def _check_index(col: dict[str, np.ndarray], attrs: dict[str, Any], n: int,
                 problems: list[str]) -> None:  # fmt: skip
    """Ids, offsets on their grids and inside the cube, valid fractions, split names and
    counts, and no two splits at one place or touching (leakage)."""
    T, stride = int(attrs["tile_size"]), int(attrs["stride"])
    if not np.array_equal(col["tile_id"], np.arange(n)):
        problems.append("index/tile_id is not 0..n-1")
    h, w = (int(v) for v in attrs["grid_shape"])
    y0, x0 = col["y0"].astype(np.int64), col["x0"].astype(np.int64)
    split = as_str(col["split"])
    train_stride = int(attrs.get("train_stride", stride))
    if train_stride <= 0 or stride % train_stride:
        problems.append(f"train stride {train_stride} does not divide the stride {stride}")
        train_stride = stride
    step = np.where(split == "train", train_stride, stride)
    if np.any(y0 % step) or np.any(x0 % step):
        problems.append(
            f"tile offsets are not on the stride-{stride} grid (train-stride {train_stride})"
        )
    if np.any(y0 < 0) or np.any(x0 < 0) or np.any(y0 + T > h) or np.any(x0 + T > w):
        problems.append("tile offsets reach outside the cube grid")
    vf = col["valid_fraction"]
    if np.any(vf < float(attrs["min_valid"])) or np.any(vf > 1):
        problems.append(f"valid_fraction outside [{attrs['min_valid']}, 1]")
    unknown = sorted(set(split.tolist()) - set(SPLITS))
    if unknown:
        problems.append(f"unknown split names {unknown}")
    counts = {s: int((split == s).sum()) for s in SPLITS}
    if counts != {s: int(attrs["splits"].get(s, 0)) for s in SPLITS}:
        problems.append(f"split counts {counts} differ from the splits attribute {attrs['splits']}")
    places, first = np.unique(np.stack([y0, x0], axis=1), axis=0, return_index=True)
    for i in range(len(places)):
        same = (y0 == places[i, 0]) & (x0 == places[i, 1])
        if len(set(split[same].tolist())) > 1:
            problems.append(f"tiles at y0={places[i, 0]} x0={places[i, 1]} are in several splits")
    leaks = leaking_pairs(places, split[first], T)
    if leaks:
        i, j = leaks[0]
        problems.append(
            f"{len(leaks)} pairs of tiles in different splits touch, e.g. {split[first][i]} at "
            f"{tuple(places[i])} and {split[first][j]} at {tuple(places[j])}"
        )


def _spot_check(valid: Any, gabor: Any, col: dict[str, np.ndarray], n: int,
                problems: list[str]) -> None:  # fmt: skip
    """The index's valid fraction and significance agree with the stored arrays (spread tiles)."""
    vf = col["valid_fraction"]
    for t in np.unique(np.linspace(0, n - 1, min(n, _SPOT_CHECKS)).astype(int)):
        frac = float(np.mean(valid[int(t)]))
        if not np.isclose(frac, vf[t], atol=1e-6):
            problems.append(f"tile {t}: index valid_fraction {vf[t]} != stored valid mask {frac}")
        sig = float(np.nanmean(gabor[int(t)]))
        if not np.isclose(sig, col["significance"][t], rtol=1e-4, atol=1e-6):
            problems.append(
                f"tile {t}: index significance {col['significance'][t]} != mean Gabor map {sig}"
            )
