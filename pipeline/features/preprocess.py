"""Preprocess a cube: teacher bands and significance maps, computed with dask and stored.

Preprocess is the only step that writes them: ``preprocess_cube(url, cfg)`` adds to the cube's
``enmap`` group (docs/cube.md "Preprocess products"), keyed by the parameters, so products of
several parameter sets live side by side:

- ``teacher_bands (time, teacher_band, y, x)`` int16 reflectance x 10000 (CF-decoded: units
  ``1``), nodata -9999 (:func:`hyperkd.pipeline.features.aggregate.teacher_bands`); another
  aggregation is stored as ``teacher_bands_<hash>``;
- ``significance_gabor_p<P>``/``significance_wavelet_p<P> (time, y_p<P>, x_p<P>)`` float32 on
  the patch grid of patch size ``P`` (:func:`hyperkd.pipeline.features.significance.significance_maps`),
  with patch-centre coordinates ``y_p<P>``/``x_p<P>`` and their own grid mapping
  ``spatial_ref_p<P>`` (cells of ``P`` pixels); another filter bank adds ``_<hash>`` to the
  names. They are computed from the *stored* teacher bands, so the 224-band read happens once.

Readers never write: :func:`~hyperkd.pipeline.features.products.products` computes the same
variables in memory (``hyperkd tiles`` uses it on a cube that lacks them), and
:func:`~hyperkd.pipeline.features.products.stored_products` finds them in a cube.

Idempotent: each variable records its parameters (``hyperkd:preprocess``, JSON) and the scenes
it holds (``hyperkd:preprocessed_scenes``). A rerun with the same parameters skips the done
scenes (their stored values are carried over) and computes only new ones. Writes go through
:func:`hyperkd.pipeline.cube.io.write_variables` (under the cube lock, committed by
re-consolidating), so readers never see a half-written variable.

Schedulers: dask's threaded scheduler (default), the synchronous one, a ``LocalCluster``
(``scheduler="local"``) or a running cluster (``dask_address="tcp://..."``); same result.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import xarray as xr

from hyperkd.pipeline.features.products import (
    DEFAULT_CONFIG,
    PARAMS_ATTR,
    SCENES_ATTR,
    PreprocessConfig,
    Products,
    product_names,
    products,
    stored_products,
)


@dataclass(frozen=True)
class PreprocessSummary:
    """What a run did."""

    scenes: tuple[str, ...]
    teacher_computed: tuple[str, ...]
    significance_computed: tuple[str, ...]
    variables: tuple[str, ...]
    seconds: float
    scheduler: str

    @property
    def skipped(self) -> bool:
        """True when every scene was already done with the same parameters."""
        return not self.teacher_computed and not self.significance_computed


def open_enmap(url: str, storage_options: Mapping[str, Any] | None = None) -> xr.Dataset:
    """The committed ``enmap`` group, lazily (dask, on-disk chunks), values NOT CF-decoded.

    Raw int16 keeps the teacher bands' rounding exact and reads half the bytes of float32.
    """
    from hyperkd.pipeline.store.location import CubeStore

    store = CubeStore(url, storage_options)
    doc = store.read_json("zarr.json")
    if doc is None or "hyperkd:cube_version" not in doc.get("attributes", {}):
        raise FileNotFoundError(f"no hyperkd cube at {store.url}")
    return xr.open_zarr(
        store.zarr_store(read_only=True),
        group="enmap",
        consolidated=True,
        # Whole spectra per task: one shard read per scene and tile (layout 2), not one task
        # per 16-band chunk; other dims keep the stored chunking.
        chunks={"band": -1},
        mask_and_scale=False,
        decode_coords="all",
    )


def _done(
    ds: xr.Dataset, names: tuple[str, ...], params: str, like: Mapping[str, xr.DataArray]
) -> set[str]:
    """Scenes already stored in all ``names`` with ``params`` and the same array layout."""
    done: set[str] | None = None
    for name in names:
        if name not in ds or ds[name].attrs.get(PARAMS_ATTR) != params:
            return set()
        old, new = ds[name], like[name]
        if old.dims != new.dims or old.shape != new.shape:
            return set()
        scenes = set(ds[name].attrs.get(SCENES_ATTR, []))
        done = scenes if done is None else done & scenes
    return done or set()


def _merge(
    ds: xr.Dataset, fresh: xr.DataArray, name: str, scene_ids: list[str], done: set[str]
) -> xr.DataArray:
    """Per scene: the stored value if done, else the fresh (lazy) one."""
    if not done:
        return fresh
    import dask.array as da

    parts = [
        ds[name].isel(time=[i]) if s in done else fresh.isel(time=[i])
        for i, s in enumerate(scene_ids)
    ]
    merged = da.concatenate([da.asarray(p.data).astype(fresh.dtype) for p in parts], axis=0)
    return fresh.copy(data=merged)


def _write(
    url: str,
    so: Mapping[str, Any] | None,
    arrays: dict[str, xr.DataArray],
    params: str,
    scenes: list[str],
) -> list[str]:
    from hyperkd.pipeline.cube import write_variables

    out = xr.Dataset()
    for name, arr in arrays.items():
        keep = set(arr.dims) | {arr.attrs.get("grid_mapping")}
        arr = arr.drop_vars([c for c in arr.coords if c not in keep])
        arr.attrs = {**arr.attrs, PARAMS_ATTR: params, SCENES_ATTR: list(scenes)}
        out[name] = arr
    return write_variables(url, "enmap", out, so)


@contextmanager
def dask_scheduler(cfg: PreprocessConfig) -> Iterator[str]:
    """Make ``cfg``'s scheduler the default for dask inside the block; yields its name.

    A distributed client (address or LocalCluster) is closed, with its cluster, on exit.
    """
    import dask

    if cfg.dask_address is None and cfg.scheduler != "local":
        with dask.config.set(scheduler=cfg.scheduler):
            yield cfg.scheduler
        return
    import distributed

    cluster = None
    try:
        if cfg.dask_address is not None:
            client = distributed.Client(
                cfg.dask_address, timeout=f"{cfg.connect_timeout_s}s", set_as_default=True
            )
            name = "distributed"
        else:
            cluster = distributed.LocalCluster(
                n_workers=cfg.local_workers,
                threads_per_worker=1,
                processes=cfg.local_processes,
                dashboard_address=None,
            )
            client = distributed.Client(cluster, set_as_default=True)
            name = "local"
    except OSError as exc:
        if cluster is not None:
            cluster.close()
        raise ValueError(f"cannot reach dask scheduler {cfg.dask_address}: {exc}") from None
    try:
        with client.as_current():
            yield name
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def preprocess_cube(
    cube_url: str,
    cfg: PreprocessConfig = DEFAULT_CONFIG,
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> PreprocessSummary:
    """Compute and store teacher bands and significance maps for every EnMAP scene of a cube
    (the names are :func:`product_names` of ``cfg``; other parameter sets are left alone)."""
    start = time.perf_counter()
    agg_params, sig_params = cfg.aggregation_params(), cfg.significance_params()
    names = product_names(cfg)
    enmap = open_enmap(cube_url, storage_options)
    scene_ids = [str(s) for s in enmap["scene_id"].values]
    written: list[str] = []
    with dask_scheduler(cfg) as scheduler:
        if not scene_ids:
            return PreprocessSummary((), (), (), (), time.perf_counter() - start, scheduler)
        fresh = products(enmap, cfg)[names.teacher]
        done = _done(enmap, (names.teacher,), agg_params, {names.teacher: fresh})
        teacher_todo = tuple(s for s in scene_ids if s not in done)
        if teacher_todo:
            merged = _merge(enmap, fresh, names.teacher, scene_ids, done)
            written += _write(
                cube_url, storage_options, {names.teacher: merged}, agg_params, scene_ids
            )
            enmap = open_enmap(cube_url, storage_options)
        # Significance from the stored teacher bands: a 6-band read instead of 224 bands.
        maps = products(enmap, cfg, teacher=enmap[names.teacher])
        like = {n: maps[n] for n in names.significance}
        # Scenes whose teacher bands were just recomputed need new maps too.
        done = _done(enmap, names.significance, sig_params, like) - set(teacher_todo)
        sig_todo = tuple(s for s in scene_ids if s not in done)
        if sig_todo:
            merged_maps = {
                n: _merge(enmap, maps[n], n, scene_ids, done) for n in names.significance
            }
            # Both maps come from one fused filter pass; computing them together (they are
            # small: one value per patch) runs that pass once instead of once per variable.
            merged_maps = dict(xr.Dataset(merged_maps).compute().data_vars)
            written += _write(cube_url, storage_options, merged_maps, sig_params, scene_ids)
    return PreprocessSummary(
        scenes=tuple(scene_ids),
        teacher_computed=teacher_todo,
        significance_computed=sig_todo,
        variables=tuple(written),
        seconds=time.perf_counter() - start,
        scheduler=scheduler,
    )


def summary_dict(summary: PreprocessSummary) -> dict[str, Any]:
    """The summary as plain JSON-able data (for CLI output and flow results)."""
    return asdict(summary) | {"skipped": summary.skipped, "n_scenes": len(summary.scenes)}


__all__ = [
    "PARAMS_ATTR",
    "SCENES_ATTR",
    "PreprocessConfig",
    "PreprocessSummary",
    "Products",
    "dask_scheduler",
    "open_enmap",
    "preprocess_cube",
    "product_names",
    "products",
    "stored_products",
    "summary_dict",
]
