"""The training-ready tile store (Zarr v3): cut cube scenes into tiles, once, for streaming.

``write_tile_store`` takes per-scene datasets (the cube's ``enmap`` group for one time step,
raw int16) and writes the store described in ``docs/tiles.md``; ``build_tiles`` does the same
from a cube URL, running preprocess first when the cube lacks teacher bands or significance.

Writes are crash-safe: a local store is built in ``<out>.partial-<host>-<pid>-<hex>`` and
renamed into place (the next build removes what a killed one left); an fsspec store is
written in place with the root attributes (the completeness marker that ``verify_tiles`` and
the loader require) written last. Re-running with the same inputs and parameters is a no-op
(``params_hash`` in the root attributes).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr

from hyperkd.pipeline.redaction import clean_href
from hyperkd.pipeline.store.commit import commit, partial_path, sweep_killed_partials
from hyperkd.pipeline.store.guard import check_output
from hyperkd.pipeline.store.location import CubeStore
from hyperkd.pipeline.tiles.config import TileConfig
from hyperkd.pipeline.tiles.index import SPLITS, plan_tiles
from hyperkd.pipeline.tiles.labels import load_label
from hyperkd.pipeline.tiles.schema import TILES_VERSION
from hyperkd.pipeline.tiles.stac import publish_tiles
from hyperkd.pipeline.tiles.verify import open_store, verify_tiles
from hyperkd.pipeline.tiles.write import (
    Progress,
    band_selection,
    check_scene,
    create_arrays,
    root_attrs,
    scene_grid,
    scene_key,
    write_index,
    write_root,
    write_tiles,
)

__all__ = ["TileConfig", "TileSummary", "build_tiles", "verify_tiles", "write_tile_store"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TileSummary:
    """What a tile-store build produced."""

    out_url: str
    n_tiles: int
    splits: dict[str, int]
    dropped: dict[str, int] = field(default_factory=dict)
    """``invalid`` (below ``min_valid``) and ``leakage`` (touching another split)."""
    skipped: bool = False
    """True when an identical store already existed and nothing was written."""
    params_hash: str = ""
    seconds: float = 0.0


# -- the index ----------------------------------------------------------------------------


# -- writing ------------------------------------------------------------------------------


def _is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def _local_path(url: str) -> Path:
    return Path(url.removeprefix("file://"))


def _params_hash(cfg: TileConfig, source: str, labels: Mapping[str, str]) -> str:
    label_ids = {}
    for name, path in sorted(labels.items()):
        digest = (
            hashlib.sha256(Path(path).read_bytes()).hexdigest() if Path(path).is_file() else path
        )
        label_ids[name] = digest
    params = asdict(cfg)
    params.pop("allow_empty_splits")
    if cfg.train_stride is None:  # stores written before the option keep their hash
        params.pop("train_stride")
    blob = json.dumps([params, source, label_ids, TILES_VERSION], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _existing(
    out_url: str, storage_options: Mapping[str, Any] | None, params: str
) -> TileSummary | None:
    """The summary of an identical, complete store at ``out_url`` (logged: nothing to do),
    else None."""
    try:
        root = open_store(out_url, storage_options)
    except (FileNotFoundError, ValueError, zarr.errors.NodeTypeValidationError):
        return None
    attrs = dict(root.attrs)
    if attrs.get("params_hash") != params or verify_tiles(out_url, storage_options):
        return None
    n = int(root["student"].shape[0])
    done = TileSummary(out_url, n, dict(attrs["splits"]), dict(attrs["dropped"]), True, params)
    _log.info("tile store %s is up to date (%d tiles); nothing to do", clean_href(out_url), n)
    return done


def write_tile_store(
    scenes: Iterable[xr.Dataset],
    out_url: str,
    cfg: TileConfig = TileConfig(),
    *,
    labels: Mapping[str, str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    source_token: str | None = None,
    source_cubes: Sequence[str] = (),
    progress: Progress | None = None,
) -> TileSummary:
    """Cut ``scenes`` into a tile store at ``out_url`` (local path or fsspec URL).

    Each scene is one time step of a cube's ``enmap`` group, undecoded: ``reflectance (band,
    y, x)`` int16, ``valid (y, x)``, ``teacher_bands (band6, y, x)`` int16,
    ``significance_gabor``/``significance_wavelet (py, px)``, a ``spatial_ref`` grid mapping,
    and ``scene_id``/``time`` coordinates. All scenes share one grid. ``labels`` maps a
    label name to a raster path. ``source_token`` identifies the inputs for the no-op check
    (default: a dask token of the scenes).
    """
    import dask.base

    t_start = time.perf_counter()
    scenes = list(scenes)
    labels = dict(labels or {})
    keys, grid = _checked_scenes(scenes, cfg)
    # Before anything else touches the output: never replace what is not a tile store.
    check_output(out_url, "tiles", [*source_cubes, *labels.values()], storage_options)
    token = source_token if source_token is not None else dask.base.tokenize(*scenes)
    params = _params_hash(cfg, token, labels)
    done = _existing(out_url, storage_options, params)
    if done is not None:
        return done

    layers = [load_label(name, path, grid) for name, path in labels.items()]
    cols, dropped = plan_tiles(scenes, cfg)  # refuses a plan without tiles, train or val/test
    n = len(cols["y0"])
    bands = band_selection(scenes[0])

    target, write_url = _write_location(out_url)
    try:
        location = CubeStore(write_url, storage_options)
        root = _fresh_root(location, in_place=target is None)
        arrays = create_arrays(root, n, len(bands), cfg, layers)
        moments, cloud, significance = write_tiles(
            scenes, cols, arrays, layers, cfg, bands, progress
        )
        write_index(root, cols, keys, cloud, significance)
        splits = {s: int((cols["split"] == s).sum()) for s in SPLITS}
        attrs = root_attrs(
            cfg, scenes[0], bands, moments, layers, grid,
            source_cubes=source_cubes, splits=splits, dropped=dropped, params=params,
        )  # fmt: skip
        _complete(location, root, attrs, storage_options, in_place=target is None)
        publish_tiles(write_url, storage_options)  # local: inside the partial, renamed with it
        if target is not None:
            commit(Path(write_url), target, "tiles")
    except BaseException:
        if target is not None:
            shutil.rmtree(write_url, ignore_errors=True)
        raise
    seconds = time.perf_counter() - t_start
    return TileSummary(out_url, n, splits, dropped, False, params, seconds)


def _checked_scenes(scenes: list[xr.Dataset], cfg: TileConfig) -> tuple[list[Any], Any]:
    """Each scene's key, and the grid they share; refuses scenes the store cannot hold."""
    if not scenes:
        raise ValueError("no scenes to tile")
    keys = [scene_key(s, i) for i, s in enumerate(scenes)]
    for s, (sid, _) in zip(scenes, keys, strict=True):
        check_scene(s, cfg, sid)
    grid = scene_grid(scenes[0])
    if any(scene_grid(s) != grid for s in scenes[1:]):
        raise ValueError("scenes do not share one grid (CRS, transform and shape must match)")
    return keys, grid


def _write_location(out_url: str) -> tuple[Path | None, str]:
    """Where the build writes: ``(target, write_url)``. A local store is built in a fresh
    partial beside ``target`` (after sweeping what killed builds left there) and renamed into
    place; an fsspec store is written in place (``target`` None, ``write_url`` is ``out_url``)."""
    if not _is_local(out_url):
        return None, out_url
    target = _local_path(out_url)
    sweep_killed_partials(target)
    return target, str(partial_path(target))


def _fresh_root(location: CubeStore, *, in_place: bool) -> zarr.Group:
    """An empty store's root group, marked as a tile store before anything else is written."""
    if in_place:
        # The root document goes first, so a half-deleted old store never verifies.
        if location.exists("zarr.json"):
            location.fs.rm(location.path("zarr.json"))  # s3fs 0.4 lacks rm_file
        location.delete_tree()
    # The kind marker goes first, so an interrupted in-place (fsspec) build is still
    # recognised as a tile store, and replaced, by the next build.
    return zarr.open_group(location.zarr_store(), mode="w", attributes={"hyperkd:kind": "tiles"})


def _complete(
    location: CubeStore,
    root: zarr.Group,
    attrs: Mapping[str, Any],
    storage_options: Mapping[str, Any] | None,
    *,
    in_place: bool,
) -> None:
    """Write the root attributes, the completeness marker, and check the finished store;
    ValueError (and, in place, the marker taken away again) when it fails ``verify_tiles``."""
    # Root attributes last, with the consolidated metadata in the same write: until they
    # exist the store fails verify_tiles and read_info.
    write_root(location, {"hyperkd:kind": "tiles", **attrs})
    problems = verify_tiles(location.url, storage_options)
    if problems:
        if in_place:  # take the completeness marker away again
            root.attrs.update({"hyperkd:tiles_version": None})
        raise ValueError(f"the new tile store fails verify_tiles: {'; '.join(problems[:3])}")


def _scenes_with_products(enmap: xr.Dataset, pcfg: Any) -> list[xr.Dataset]:
    """The cube's scenes with teacher bands and significance maps under the names the tile
    writer reads: the cube's stored ones when it has them for ``pcfg``, else computed here, in
    memory (the cube is only read)."""
    from hyperkd.pipeline.features.products import product_names, products, stored_products

    names = product_names(pcfg)
    found = stored_products(enmap, pcfg)
    if found is None:
        _log.info(
            "cube lacks teacher bands or significance maps for patch size %d; computing them "
            "for the tile store (run `hyperkd preprocess` to store them in the cube)",
            names.patch_size,
        )
        stored = enmap.get(names.teacher)
        scenes = {str(s) for s in np.atleast_1d(enmap["scene_id"].values)}
        reuse = stored is not None and scenes <= set(
            stored.attrs.get("hyperkd:preprocessed_scenes", [])
        )
        found = products(enmap, pcfg, teacher=stored if reuse else None)
        sig = list(names.significance)
        found = found.assign({k: v for k, v in found[sig].compute().data_vars.items()})
    rename = {names.teacher: "teacher_bands", names.gabor: "significance_gabor"}
    rename[names.wavelet] = "significance_wavelet"
    keep = ["reflectance", "valid", *(c for c in ("cloud",) if c in enmap)]
    # The patch grid keeps its own dims; the writer cuts maps by their last two dims.
    merged = enmap[keep].assign({new: found[old] for old, new in rename.items()})
    merged = merged.drop_vars(names.grid_mapping, errors="ignore")  # one grid mapping: the cube's
    return [merged.isel(time=t) for t in range(enmap.sizes["time"])]


def build_tiles(
    cube_url: str,
    out_url: str,
    cfg: TileConfig = TileConfig(),
    *,
    labels: Mapping[str, str] | None = None,
    dask_address: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
) -> TileSummary:
    """Tile every EnMAP scene of the cube at ``cube_url`` into a store at ``out_url``.

    Reads the cube only: when it lacks teacher bands or significance maps for
    ``cfg.patch_size`` (default preprocess parameters), they are computed in memory on the same
    dask scheduler and go into the tile store; the cube is never written. ``dask_address``: a
    running scheduler (``tcp://...``), ``"local"`` for a LocalCluster, or ``None`` for dask's
    threads. ``storage_options`` serve both the cube and the output URL.
    """
    from dataclasses import replace

    from hyperkd.pipeline.features.preprocess import PreprocessConfig, dask_scheduler, open_enmap
    from hyperkd.pipeline.features.significance import SignificanceConfig

    check_output(out_url, "tiles", [cube_url, *(labels or {}).values()], storage_options)
    sig = replace(SignificanceConfig(), patch_size=cfg.patch_size)
    local = dask_address == "local"
    pcfg = PreprocessConfig(
        significance=sig,
        scheduler="local" if local else "threads",
        dask_address=None if local else dask_address,
    )
    enmap = open_enmap(cube_url, storage_options)
    if enmap.sizes.get("time", 0) == 0:
        raise ValueError(f"cube {clean_href(cube_url)} holds no EnMAP scene to tile")
    # The cube's root document (consolidated metadata, scene records, preprocess parameters)
    # identifies the inputs: a new scene or a re-run preprocess changes it.
    root_doc = CubeStore(cube_url, storage_options).read_bytes("zarr.json") or b""
    token = hashlib.sha256(root_doc).hexdigest()
    small = [c for c in ("scene_id", "valid_band", "wavelength", "fwhm") if c in enmap.coords]
    enmap = enmap.assign_coords({c: enmap[c].load() for c in small})
    with dask_scheduler(pcfg):
        scenes = _scenes_with_products(enmap, pcfg)
        return write_tile_store(
            scenes,
            out_url,
            cfg,
            labels=labels,
            storage_options=storage_options,
            source_token=token,
            source_cubes=[cube_url],
            progress=progress,
        )
