"""The one pass over the data that fills a tile store: read tiles, write arrays, gather stats."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr
import zarr

from hyperkd.pipeline.cube.layout import Grid
from hyperkd.pipeline.redaction import clean_href
from hyperkd.pipeline.sensors import prithvi_preset
from hyperkd.pipeline.store.integrity import WRITE_EVERY_CHUNK
from hyperkd.pipeline.store.location import CubeStore
from hyperkd.pipeline.tiles.labels import LabelLayer
from hyperkd.pipeline.tiles.schema import (
    INDEX_COLUMNS,
    LABEL_DIMS,
    STUDENT_NODATA,
    TEACHER_BANDS,
    TEACHER_NODATA,
    TILE_ARRAYS,
    TILES_VERSION,
    sizes,
)
from hyperkd.pipeline.tiles.stats import BandMoments

Progress = Callable[[int, int], None]


# -- scenes -------------------------------------------------------------------------------


def scene_grid(scene: xr.Dataset) -> Grid:
    import rioxarray  # noqa: F401  (registers the .rio accessor)

    # The reflectance's grid mapping: the patch-grid maps carry their own.
    refl = scene.get("reflectance", scene)
    crs = refl.rio.crs
    if crs is None:
        raise ValueError("scene has no CRS (expected a spatial_ref grid mapping)")
    # WKT2 as pyproj writes it, like the cube's proj:wkt2 (rasterio would give WKT1); from the
    # grid mapping's own WKT when it has one, so nothing is lost on the way.
    import pyproj

    mapping = refl.coords.get(refl.rio.grid_mapping)
    source = mapping.attrs.get("crs_wkt") if mapping is not None else None
    wkt = pyproj.CRS.from_user_input(source or crs.to_wkt()).to_wkt()
    t = tuple(float(v) for v in tuple(refl.rio.transform(recalc=False))[:6])
    shape = (int(scene.sizes["y"]), int(scene.sizes["x"]))
    return Grid(wkt, t, shape)  # type: ignore[arg-type]


def scene_key(scene: xr.Dataset, i: int) -> tuple[str, np.datetime64]:
    sid = (
        np.asarray(scene.coords["scene_id"].values).item()
        if "scene_id" in scene.coords
        else scene.attrs.get("scene_id", f"scene{i}")
    )
    t = scene.coords["time"].values if "time" in scene.coords else np.datetime64("NaT")
    return str(sid), np.datetime64(t, "ns")


def check_scene(scene: xr.Dataset, cfg: Any, name: str) -> None:
    need = ["reflectance", "valid", "teacher_bands", "significance_gabor", "significance_wavelet"]
    missing = [v for v in need if v not in scene]
    if missing:
        raise ValueError(f"scene {name}: missing {', '.join(missing)} (run preprocess first)")
    if scene["reflectance"].dtype != np.int16:
        raise ValueError(
            f"scene {name}: reflectance must be raw int16, got {scene['reflectance'].dtype}"
        )
    h, w = scene.sizes["y"], scene.sizes["x"]
    floor = (h // cfg.patch_size, w // cfg.patch_size)
    ceil = (-(-h // cfg.patch_size), -(-w // cfg.patch_size))
    for var in ("significance_gabor", "significance_wavelet"):
        shape = tuple(scene[var].shape[-2:])
        if shape not in (floor, ceil):
            raise ValueError(
                f"scene {name}: {var} is {shape}, expected {ceil} for patch size {cfg.patch_size}"
            )


def band_selection(scene: xr.Dataset) -> np.ndarray:
    if "valid_band" in scene.coords or "valid_band" in scene:
        return np.flatnonzero(np.asarray(scene["valid_band"].values, dtype=bool))
    return np.arange(scene.sizes["band"])


def band_coord(scene: xr.Dataset, name: str, bands: np.ndarray) -> list[float]:
    if name not in scene.coords and name not in scene:
        return []
    return [float(v) for v in np.asarray(scene[name].values, dtype=np.float64)[bands]]


def create_arrays(
    root: zarr.Group, n: int, c: int, cfg: Any, labels: Sequence[LabelLayer]
) -> dict[str, zarr.Array]:
    """The per-tile arrays of :data:`~hyperkd.pipeline.tiles.schema.TILE_ARRAYS` plus one per
    label, one tile per chunk (``cfg.shard`` tiles per shard), named dims for xarray."""
    dim_sizes = sizes(n, c, cfg.tile_size, cfg.patch_size)
    # Blosc LZ4 with byte shuffle: on real EnMAP tiles it compresses better than zstd-3 (1.47x
    # vs 1.36x) and decodes 1.9x faster, and decoding is the floor of the training loader
    # (benchmarks/RESULTS.md).
    codec = zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
    spec: dict[str, tuple[tuple[str, ...], Any, Any, dict[str, Any]]] = {
        a.name: (a.dims, np.dtype(a.dtype), np.nan if a.nodata == "NaN" else a.nodata, _attrs(a))
        for a in TILE_ARRAYS
    }
    for layer in labels:
        fill = 0 if layer.kind == "classes" else np.nan
        spec[f"label_{layer.name}"] = (LABEL_DIMS, layer.data.dtype, fill, {})
    arrays = {}
    for name, (dims, dtype, fill, attrs) in spec.items():
        shape = tuple(dim_sizes[d] for d in dims)
        arrays[name] = root.create_array(
            name,
            shape=shape,
            chunks=(1, *shape[1:]),
            shards=(cfg.shard, *shape[1:]) if cfg.shard else None,
            dtype=dtype,
            fill_value=fill,
            compressors=codec,
            dimension_names=dims,
            attributes=attrs,
            config=WRITE_EVERY_CHUNK,  # an absent chunk is then always damage
        )
    return arrays


def _attrs(a: Any) -> dict[str, Any]:
    attrs = {"long_name": a.content.split(" (")[0]}
    return attrs | ({"units": a.units} if a.units else {})


def _read_batch(
    scenes: Sequence[xr.Dataset],
    cols: dict[str, np.ndarray],
    rows: range,
    cfg: Any,
    bands: np.ndarray,
) -> list[tuple[np.ndarray, ...]]:
    """Read the tiles ``rows`` of the plan: one dask compute for the whole batch."""
    import dask

    T, P = cfg.tile_size, cfg.patch_size
    lazy = []
    for r in rows:
        s = scenes[int(cols["scene_i"][r])]
        y, x = int(cols["y0"][r]), int(cols["x0"][r])
        win = {"y": slice(y, y + T), "x": slice(x, x + T)}
        pwin = {s["significance_gabor"].dims[-2]: slice(y // P, (y + T) // P)}
        pwin[s["significance_gabor"].dims[-1]] = slice(x // P, (x + T) // P)
        parts = [
            s["reflectance"].isel(band=bands, **win),
            s["teacher_bands"].isel(**win),
            s["significance_gabor"].isel(**pwin),
            s["significance_wavelet"].isel(**pwin),
            s["valid"].isel(**win),
        ]
        if "cloud" in s:
            parts.append(s["cloud"].isel(**win))
        lazy.append(parts)
    computed = dask.compute(*lazy)
    return [tuple(np.asarray(p.values) for p in parts) for parts in computed]


def _teacher_nodata(scene: xr.Dataset) -> int:
    attrs = scene["teacher_bands"].attrs | scene["teacher_bands"].encoding
    fill = attrs.get("_FillValue", TEACHER_NODATA)
    return int(fill) if fill is not None else TEACHER_NODATA


def write_tiles(
    scenes: Sequence[xr.Dataset],
    cols: dict[str, np.ndarray],
    arrays: Mapping[str, zarr.Array],
    labels: Sequence[LabelLayer],
    cfg: Any,
    bands: np.ndarray,
    progress: Progress | None,
) -> tuple[BandMoments, np.ndarray, np.ndarray]:
    """The one pass over the data: write every tile, gather train statistics."""
    n, T = len(cols["y0"]), cfg.tile_size
    moments = BandMoments(len(bands))
    cloud = np.zeros(n, dtype=np.float32)
    significance = np.zeros(n, dtype=np.float32)
    step = cfg.shard * max(1, cfg.batch_tiles // cfg.shard) if cfg.shard else cfg.batch_tiles
    teacher_fill = [_teacher_nodata(s) for s in scenes]
    for start in range(0, n, step):
        rows = range(start, min(n, start + step))
        tiles = _read_batch(scenes, cols, rows, cfg, bands)
        batch: dict[str, list[np.ndarray]] = {k: [] for k in arrays}
        for r, parts in zip(rows, tiles, strict=True):
            student, teacher, gabor, wavelet, valid = parts[:5]
            has_data = (student != STUDENT_NODATA).any(axis=0)
            # The cube's valid already excludes nodata; re-check so the store never pairs a
            # valid pixel with a nodata value whatever the source.
            valid = valid.astype(bool) & (student != STUDENT_NODATA).all(axis=0)
            fill = teacher_fill[int(cols["scene_i"][r])]
            if fill != TEACHER_NODATA:
                teacher = np.where(teacher == fill, TEACHER_NODATA, teacher)
            cloud_px = parts[5].astype(bool) if len(parts) > 5 else has_data & ~valid
            cloud[r] = cloud_px.mean()
            cols["valid_fraction"][r] = valid.mean()
            significance[r] = np.nanmean(gabor)
            if cols["split"][r] == "train":
                moments.update(student[:, valid])
            batch["student"].append(student)
            batch["teacher"].append(teacher.astype(np.int16))
            batch["significance_gabor"].append(gabor.astype(np.float32))
            batch["significance_wavelet"].append(wavelet.astype(np.float32))
            batch["valid"].append(valid)
            y, x = int(cols["y0"][r]), int(cols["x0"][r])
            for layer in labels:
                batch[f"label_{layer.name}"].append(layer.data[y : y + T, x : x + T])
        for name, tiles_of in batch.items():
            arrays[name][rows.start : rows.stop] = np.stack(tiles_of)
        if progress is not None:
            progress(rows.stop, n)
    return moments, cloud, significance


def write_index(
    root: zarr.Group,
    cols: dict[str, np.ndarray],
    keys: Sequence[tuple[str, np.datetime64]],
    cloud: np.ndarray,
    significance: np.ndarray,
) -> None:
    n = len(cols["y0"])
    scene_of = cols["scene_i"]
    columns: dict[str, np.ndarray] = {
        "tile_id": np.arange(n, dtype=np.int64),
        "scene": np.array([keys[i][0] for i in scene_of], dtype=str),
        "time": np.array([keys[i][1] for i in scene_of], dtype="datetime64[ns]"),
        "y0": cols["y0"],
        "x0": cols["x0"],
        "valid_fraction": cols["valid_fraction"].astype(np.float32),
        "cloud_fraction": cloud,
        "significance": significance,
        "split": np.asarray(cols["split"], dtype=str),
    }
    assert list(columns) == [c.name for c in INDEX_COLUMNS]
    for name, values in columns.items():
        dtype: Any = str if values.dtype.kind == "U" else values.dtype
        arr = root.create_array(
            f"index/{name}", shape=(n,), chunks=(max(n, 1),), dtype=dtype,
            dimension_names=("tile",), config=WRITE_EVERY_CHUNK,
        )  # fmt: skip
        arr[:] = values


def write_root(location: CubeStore, attrs: Mapping[str, Any]) -> None:
    """Write the root ``zarr.json`` in ONE write: ``attrs`` plus the consolidated metadata of
    every array and group below (read back as zarr wrote them), so ``xr.open_zarr`` opens the
    store with one read and no warning, and a store without its attributes stays incomplete."""
    nodes: dict[str, Any] = {}
    pending = [""]
    while pending:
        prefix = pending.pop()
        for name in location.listdir(prefix):
            path = f"{prefix}/{name}" if prefix else name
            doc = location.read_json(f"{path}/zarr.json")
            if doc is None:
                continue  # not a zarr node (a STAC document, say)
            if doc.get("node_type") == "group":
                empty = {"kind": "inline", "must_understand": False, "metadata": {}}
                doc = doc | {"consolidated_metadata": empty}
                pending.append(path)
            nodes[path] = doc
    location.write_json(
        "zarr.json",
        {
            "attributes": dict(attrs),
            "zarr_format": 3,
            "consolidated_metadata": {
                "kind": "inline",
                "must_understand": False,
                "metadata": dict(sorted(nodes.items())),
            },
            "node_type": "group",
        },
    )


def root_attrs(
    cfg: Any,
    scene: xr.Dataset,
    bands: np.ndarray,
    moments: BandMoments,
    layers: Sequence[LabelLayer],
    grid: Grid,
    *,
    source_cubes: Sequence[str],
    splits: Mapping[str, int],
    dropped: Mapping[str, int],
    params: str,
) -> dict[str, Any]:
    """The store's root attributes (:data:`~hyperkd.pipeline.tiles.schema.ROOT_ATTRS`) but
    its kind; ``scene``: any of the tiled scenes (they share bands and grid)."""
    preset = prithvi_preset(cfg.teacher_preset)
    return {
        "hyperkd:tiles_version": TILES_VERSION,
        "tile_size": cfg.tile_size,
        "patch_size": cfg.patch_size,
        "stride": cfg.step,
        "train_stride": cfg.train_step,
        "min_valid": cfg.min_valid,
        "split_block_px": cfg.block_px,
        "split_fractions": list(cfg.split_fractions),
        "band_wavelength": band_coord(scene, "wavelength", bands),
        "band_fwhm": band_coord(scene, "fwhm", bands),
        "student_mean": moments.mean.tolist(),
        "student_std": moments.std().tolist(),
        "student_nodata": STUDENT_NODATA,
        "teacher_bands": list(TEACHER_BANDS),
        "teacher_mean": list(preset.mean),
        "teacher_std": list(preset.std),
        "teacher_preset": preset.name,
        "teacher_nodata": TEACHER_NODATA,
        "labels": {layer.name: layer.attrs for layer in layers},
        "crs": grid.crs,
        "transform": list(grid.transform),
        "grid_shape": list(grid.shape),
        "source_cubes": [clean_href(u) for u in source_cubes],
        "splits": splits,
        "dropped": dropped,
        "params_hash": params,
    }
