"""What preprocess computes and what it is called: its config, the keyed product names and
the products themselves, in memory (nothing here writes).

:func:`product_names` keys products by their parameters (docs/cube.md "Preprocess
products"); :func:`products` computes them lazily from a cube's ``enmap`` group;
:func:`stored_products` finds a cube's stored ones. :mod:`hyperkd.pipeline.features.preprocess`
stores them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
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


DEFAULT_CONFIG = PreprocessConfig()
"""The default parameters: their products get the plain names."""


def _short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


@dataclass(frozen=True)
class Products:
    """Names of one parameter set's variables (and patch-grid dims) in the ``enmap`` group."""

    teacher: str
    gabor: str
    wavelet: str
    patch_size: int

    @property
    def y(self) -> str:
        return f"y_p{self.patch_size}"

    @property
    def x(self) -> str:
        return f"x_p{self.patch_size}"

    @property
    def grid_mapping(self) -> str:
        return f"spatial_ref_p{self.patch_size}"

    @property
    def significance(self) -> tuple[str, str]:
        return (self.gabor, self.wavelet)


def _filter_bank(cfg: PreprocessConfig) -> str:
    """The significance parameters except the patch size (which keys the grid)."""
    params = json.loads(cfg.significance_params())
    params["significance"].pop("patch_size")
    return json.dumps(params, sort_keys=True)


def product_names(cfg: PreprocessConfig) -> Products:
    """Where ``cfg``'s products live: the default parameters get the plain names
    (``teacher_bands``, ``significance_gabor_p16``), others a short hash of what differs."""
    default = DEFAULT_CONFIG
    agg = cfg.aggregation_params()
    teacher = TEACHER_VAR if agg == default.aggregation_params() else f"{TEACHER_VAR}_{_short(agg)}"
    patch = cfg.significance.patch_size
    bank = _filter_bank(cfg)
    suffix = f"p{patch}" if bank == _filter_bank(default) else f"p{patch}_{_short(bank)}"
    gabor, wavelet = (f"{name}_{suffix}" for name in SIGNIFICANCE_VARS)
    return Products(teacher, gabor, wavelet, patch)


def _patch_coords(enmap: xr.Dataset, names: Products) -> dict[str, xr.DataArray]:
    """Patch-centre ``y_p<P>``/``x_p<P>`` (metres) and the patch grid's own grid mapping."""
    from hyperkd.pipeline.cube.layout import Grid

    grid = Grid.from_geozarr(enmap.attrs).patch_grid(names.patch_size)
    axis = {"units": "metre", "long_name": f"centre of a {names.patch_size} px patch"}
    return {
        names.y: xr.DataArray(
            grid.y,
            dims=names.y,
            attrs=axis | {"standard_name": "projection_y_coordinate", "axis": "Y"},
        ),
        names.x: xr.DataArray(
            grid.x,
            dims=names.x,
            attrs=axis | {"standard_name": "projection_x_coordinate", "axis": "X"},
        ),
        names.grid_mapping: xr.DataArray(np.int64(0), attrs=grid.spatial_ref_attrs()),
    }


def products(
    enmap: xr.Dataset,
    cfg: PreprocessConfig = PreprocessConfig(),
    *,
    teacher: xr.DataArray | None = None,
) -> xr.Dataset:
    """The teacher bands and both significance maps of every scene, lazily, on the patch grid.

    ``enmap``: the cube's ``enmap`` group as :func:`open_enmap` gives it (raw int16).
    ``teacher``: already computed teacher bands to start from (else aggregated here). Names
    are :func:`product_names`; nothing is written anywhere.
    """
    names = product_names(cfg)
    srf = srf_from_npz(cfg.srf_file) if cfg.srf_file is not None else None
    if teacher is None:
        teacher = teacher_bands(enmap["reflectance"], method=cfg.aggregation, srf=srf)
    teacher = teacher.assign_attrs(units="1")  # CF-decoded with scale_factor 1e-4: reflectance
    maps = significance_maps(
        teacher,
        enmap["valid"],
        cfg.significance,
        reflectance=enmap["reflectance"] if cfg.significance.input != "teacher" else None,
    ).rename({"py": names.y, "px": names.x})
    coords = _patch_coords(enmap, names)
    out = xr.Dataset({names.teacher: teacher})
    for old, new in zip(SIGNIFICANCE_VARS, names.significance, strict=True):
        var = (
            maps[old]
            .drop_vars([names.y, names.x])
            .assign_coords({k: coords[k] for k in (names.y, names.x)})
        )
        var.attrs |= {"grid_mapping": names.grid_mapping, "coordinates": names.grid_mapping}
        out[new] = var
    return out.assign_coords({names.grid_mapping: coords[names.grid_mapping]})


def stored_products(
    enmap: xr.Dataset, cfg: PreprocessConfig = PreprocessConfig()
) -> xr.Dataset | None:
    """``cfg``'s stored products when they hold every scene of ``enmap`` with ``cfg``'s
    parameters, else None. Cubes of layout 1 keep their one unkeyed set (``significance_gabor``
    on ``py``/``px``): it is used when its parameters are ``cfg``'s."""
    names = product_names(cfg)
    scenes = {str(s) for s in np.atleast_1d(enmap["scene_id"].values)}
    agg, sig = cfg.aggregation_params(), cfg.significance_params()
    wanted = {names.teacher: agg, names.gabor: sig, names.wavelet: sig}
    legacy = dict(zip(SIGNIFICANCE_VARS, names.significance, strict=True))
    if all(
        new not in enmap and old in enmap and enmap[old].attrs.get(PARAMS_ATTR) == sig
        for old, new in legacy.items()
    ):
        enmap = enmap.rename(legacy).rename_dims({"py": names.y, "px": names.x})
    for name, params in wanted.items():
        if name not in enmap or enmap[name].attrs.get(PARAMS_ATTR) != params:
            return None
        if not scenes <= set(enmap[name].attrs.get(SCENES_ATTR, [])):
            return None
    return enmap[list(wanted)]
