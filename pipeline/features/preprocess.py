"""Preprocess a cube: teacher bands and significance maps, computed with dask and stored.

``preprocess_cube(url, cfg)`` adds to the cube's ``enmap`` group (docs/cube.md):

- ``teacher_bands (time, teacher_band, y, x)`` int16 reflectance x 10000, nodata -9999
  (:func:`hyperkd.pipeline.features.aggregate.teacher_bands`);
- ``significance_gabor``/``significance_wavelet (time, py, px)`` float32
  (:func:`hyperkd.pipeline.features.significance.significance_maps`), computed from the *stored* teacher
  bands, so the expensive 224-band read happens once.

Idempotent: each variable records its parameters (``hyperkd:preprocess``, JSON) and the scenes
it holds (``hyperkd:preprocessed_scenes``). A rerun with the same parameters skips the done
scenes (their stored values are carried over) and computes only new ones; other parameters
recompute everything. Writes go through :func:`hyperkd.pipeline.cube.io.write_variables` (under the
cube lock, committed by re-consolidating), so readers never see a half-written variable.

Schedulers: dask's threaded scheduler (default), the synchronous one, a ``LocalCluster``
(``scheduler="local"``) or a running cluster (``dask_address="tcp://..."``); same result.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import xarray as xr

from hyperkd.pipeline.features.aggregate import srf_from_npz, teacher_bands
from hyperkd.pipeline.features.significance import SignificanceConfig, significance_maps

PARAMS_ATTR = "hyperkd:preprocess"
SCENES_ATTR = "hyperkd:preprocessed_scenes"
TEACHER_VAR = "teacher_bands"
SIGNIFICANCE_VARS = ("significance_gabor", "significance_wavelet")
Scheduler = Literal["threads", "synchronous", "local"]


@dataclass(frozen=True)
class PreprocessConfig:
    """What to compute (recorded in attrs) and where to run it (not recorded)."""

    aggregation: Literal["mean", "srf"] = "mean"
    srf_file: str | None = None
    """Tabulated teacher responses (EnMAP-Box ``.npz``/``.srf``) for ``aggregation="srf"``;
    None = Gaussian responses over the catalog ranges."""
    significance: SignificanceConfig = field(default_factory=SignificanceConfig)
    scheduler: Scheduler = "threads"
    dask_address: str | None = None
    """A running dask scheduler (``tcp://host:port``); wins over ``scheduler``."""
    connect_timeout_s: float = 30.0
    """How long to wait for ``dask_address`` to answer."""
    local_workers: int = 2
    local_processes: bool = False
    """``scheduler="local"``: worker processes (True) or threads in this process (False)."""

    def __post_init__(self) -> None:
        if self.aggregation not in ("mean", "srf"):
            raise ValueError(f"unknown aggregation {self.aggregation!r}: choose 'mean' or 'srf'")
        if self.srf_file is not None and self.aggregation != "srf":
            raise ValueError("srf_file is only used with aggregation='srf'")
        if self.scheduler not in ("threads", "synchronous", "local"):
            raise ValueError(
                f"unknown scheduler {self.scheduler!r}: choose threads, synchronous or local"
            )
        if self.local_workers < 1:
            raise ValueError("local_workers must be >= 1")

    def aggregation_params(self) -> str:
        """JSON of everything the teacher bands depend on (the SRF file by content hash)."""
        srf = None
        if self.srf_file is not None:
            path = Path(self.srf_file)
            if not path.is_file():
                raise ValueError(f"SRF file not found: {self.srf_file}")
            srf = {"name": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
        return json.dumps({"aggregation": self.aggregation, "srf": srf}, sort_keys=True)

    def significance_params(self) -> str:
        """JSON of everything the significance maps depend on (including the teacher bands)."""
        sig = json.loads(self.significance.to_attrs())
        return json.dumps(
            {"teacher": json.loads(self.aggregation_params()), "significance": sig}, sort_keys=True
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
        chunks={},
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
    from hyperkd.pipeline.cube.io import write_variables

    out = xr.Dataset()
    for name, arr in arrays.items():
        arr = arr.drop_vars([c for c in arr.coords if c not in arr.dims])
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
    cfg: PreprocessConfig = PreprocessConfig(),
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> PreprocessSummary:
    """Compute and store teacher bands and significance maps for every EnMAP scene of a cube."""
    start = time.perf_counter()
    agg_params, sig_params = cfg.aggregation_params(), cfg.significance_params()
    srf = srf_from_npz(cfg.srf_file) if cfg.srf_file is not None else None
    enmap = open_enmap(cube_url, storage_options)
    scene_ids = [str(s) for s in enmap["scene_id"].values]
    written: list[str] = []
    with dask_scheduler(cfg) as scheduler:
        if not scene_ids:
            return PreprocessSummary((), (), (), (), time.perf_counter() - start, scheduler)
        fresh = teacher_bands(enmap["reflectance"], method=cfg.aggregation, srf=srf)
        done = _done(enmap, (TEACHER_VAR,), agg_params, {TEACHER_VAR: fresh})
        teacher_todo = tuple(s for s in scene_ids if s not in done)
        if teacher_todo:
            merged = _merge(enmap, fresh, TEACHER_VAR, scene_ids, done)
            written += _write(
                cube_url, storage_options, {TEACHER_VAR: merged}, agg_params, scene_ids
            )
            enmap = open_enmap(cube_url, storage_options)
        # Significance from the stored teacher bands: a 6-band read instead of 224 bands.
        maps = significance_maps(
            enmap[TEACHER_VAR],
            enmap["valid"],
            cfg.significance,
            reflectance=enmap["reflectance"] if cfg.significance.input != "teacher" else None,
        )
        like = {n: maps[n] for n in SIGNIFICANCE_VARS}
        # Scenes whose teacher bands were just recomputed need new maps too.
        done = _done(enmap, SIGNIFICANCE_VARS, sig_params, like) - set(teacher_todo)
        sig_todo = tuple(s for s in scene_ids if s not in done)
        if sig_todo:
            merged_maps = {n: _merge(enmap, maps[n], n, scene_ids, done) for n in SIGNIFICANCE_VARS}
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
    "PreprocessConfig",
    "PreprocessSummary",
    "dask_scheduler",
    "open_enmap",
    "preprocess_cube",
    "summary_dict",
]
