"""Write a synthetic region to disk as EnMAP L2A + HLS v2.0 products with a static STAC catalog.

Layout of ``out_dir`` (all STAC hrefs relative, so the folder can be moved)::

    catalog.json
    ENMAP_HSI_L2A/collection.json
    ENMAP_HSI_L2A/<item id>/<item id>.json, <item id>-SPECTRAL_IMAGE_COG.TIF, ...-QL_QUALITY_*_COG.TIF
    HLSL30_2.0/collection.json, HLSL30_2.0/<granule>/<granule>.json, <granule>.<B02..B07|Fmask>.tif
    HLSS30_2.0/...                                   (<granule>.<B02,B03,B04,B8A,B11,B12|Fmask>.tif)
    truth/landcover.tif, truth/crop_type.tif, truth/soc.tif      (EnMAP grid)
    hyperkd-demo.json                                 (manifest; marks the folder as ours)

Images are DEFLATE-compressed COGs written by GDAL's COG driver (overviews on the single-band
layers only).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from hyperkd.pipeline.sensors import enmap_table, hls_sensor
from hyperkd.pipeline.synthetic.factory import (
    LANDCOVER_CLASSES,
    RegionSpec,
    enmap_reflectance,
    hls_reflectance,
    make_surface,
)
from hyperkd.pipeline.synthetic.layout import CLOUD_THRESHOLD, cloud_fields, is_cloudy
from hyperkd.pipeline.synthetic.stac import build_catalog, enmap_item, hls_item

MANIFEST = "hyperkd-demo.json"
MANIFEST_KIND = "hyperkd demo-data"
COG_MIME = "image/tiff; application=geotiff; profile=cloud-optimized"
HLS_WAVELENGTH_UM = {
    "blue": 0.48,
    "green": 0.56,
    "red": 0.655,
    "nir_narrow": 0.865,
    "swir1": 1.61,
    "swir2": 2.2,
}


@dataclass(frozen=True)
class RegionManifest:
    """What :func:`write_region` made. Paths are absolute."""

    root: Path
    catalog: Path
    enmap_items: tuple[Path, ...]
    hls_items: tuple[Path, ...]
    truth: Mapping[str, Path]
    crs_epsg: int
    enmap_transform: tuple[float, ...]
    """GDAL-style affine (a, b, c, d, e, f) of the EnMAP grid."""
    enmap_shape: tuple[int, int]
    hls_transform: tuple[float, ...]
    hls_shape: tuple[int, int]
    n_bands: int

    def summary(self) -> str:
        """A few lines for humans."""
        mb = sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file()) / 2**20
        h, w = self.enmap_shape
        return "\n".join(
            [
                f"demo region written to {self.root} ({mb:.1f} MiB)",
                f"  grid: EPSG:{self.crs_epsg}, EnMAP {h}x{w} px at 30 m, HLS {self.hls_shape[0]}x"
                f"{self.hls_shape[1]} px (shifted grid)",
                f"  EnMAP L2A scenes: {len(self.enmap_items)} ({self.n_bands} bands each)",
                f"  HLS scenes: {len(self.hls_items)} (L30 + S30)",
                f"  truth: {', '.join(sorted(self.truth))}",
                f"  STAC catalog: {self.catalog}",
            ]
        )


def write_geotiff(
    path: Path,
    data: np.ndarray,
    *,
    crs_epsg: int,
    transform: Any,
    nodata: float | None,
    scales: Sequence[float] | None = None,
    descriptions: Sequence[str] | None = None,
    band_tags: Sequence[Mapping[str, str]] | None = None,
    tags: Mapping[str, str] | None = None,
) -> None:
    """Write ``data`` ``(band, y, x)`` as a Cloud Optimized GeoTIFF (GDAL COG driver, DEFLATE).

    Single-band files get internal overviews; the 224-band spectral image gets none (224
    averaged overview bands would triple the write time; readers fall back to full resolution).
    Pixel-interleaved like GDAL's COG driver writes it, so one tile read returns all bands.
    """
    from rasterio.io import MemoryFile
    from rasterio.shutil import copy as rio_copy

    count, h, w = data.shape
    profile = dict(
        driver="GTiff", width=w, height=h, count=count, dtype=data.dtype.name, crs=f"EPSG:{crs_epsg}",
        transform=transform, nodata=nodata,
    )  # fmt: skip
    with MemoryFile() as staging:
        with staging.open(**profile) as ds:
            ds.write(data)
            if scales is not None:
                ds.scales = tuple(scales)
                ds.offsets = (0.0,) * count
            for i in range(count):
                if descriptions is not None:
                    ds.set_band_description(i + 1, descriptions[i])
                if band_tags is not None:
                    ds.update_tags(i + 1, **band_tags[i])
            ds.update_tags(AREA_OR_POINT="Area", **(tags or {}))
        with staging.open() as src:
            rio_copy(
                src, path, driver="COG", blocksize=256 if max(h, w) > 256 else 128,
                compress="deflate", predictor="FLOATING_POINT" if data.dtype.kind == "f" else "YES",
                overviews="AUTO" if count == 1 else "NONE",
                overview_resampling="NEAREST" if data.dtype == np.uint8 else "AVERAGE",
                num_threads="ALL_CPUS",
            )  # fmt: skip


def _enmap_id(spec: RegionSpec, t: int) -> tuple[str, datetime, datetime]:
    start = spec.enmap_dates[t]
    proc = (start + timedelta(days=2)).replace(hour=16, minute=56, second=14)
    datatake = (1867 + 7919 * spec.seed + 37 * t) % 10**10
    version = spec.processor_version.replace(".", "")
    item_id = f"ENMAP01-____L2A-DT{datatake:010d}_{start:%Y%m%dT%H%M%S}Z_001_V{version}_{proc:%Y%m%dT%H%M%S}Z"
    return item_id, start, proc


def _write_enmap(root: Path, spec: RegionSpec, surface: Any, t: int) -> dict[str, Any]:
    table = enmap_table()
    bands = spec.enmap_bands
    item_id, start, proc = _enmap_id(spec, t)
    folder = root / "ENMAP_HSI_L2A" / item_id
    folder.mkdir(parents=True)
    dn = enmap_reflectance(surface, t, bands)
    n = spec.size_px
    files = {
        key: folder / f"{item_id}-{suffix}"
        for key, suffix in table.file_suffixes.items()
        if key != "metadata"
    }
    band_tags = [
        {"wavelength": f"{b.center_nm:g}", "fwhm": f"{b.fwhm_nm:g}", "bbl": "0" if i in bands.nodata_bands else "1",
         "wavelength_units": "Nanometers"}
        for i, b in enumerate(bands.bands)
    ]  # fmt: skip
    write_geotiff(
        files["image"], dn, crs_epsg=spec.crs_epsg, transform=spec.enmap_transform, nodata=bands.nodata,
        scales=bands.gain, descriptions=[f"band {i + 1} ({b.center_nm:g} Nanometers)" for i, b in enumerate(bands.bands)],
        band_tags=band_tags, tags={"start_time": f"{start:%Y-%m-%dT%H:%M:%S}"},
    )  # fmt: skip
    opacity, cirrus, shadow = cloud_fields(
        spec.seed, spec.cloud_cover, (n, n), (1, t), is_cloudy("enmap", t)
    )
    water = surface._crop_to_enmap(surface.water_fraction()) > 0.5
    layers = {
        "quality_cloud": opacity > CLOUD_THRESHOLD,
        "quality_cloud_shadow": shadow > 0.2,
        "quality_haze": (opacity > 0.08) & (opacity <= 0.35),
        "quality_cirrus": np.digitize(cirrus, [0.02, 0.05, 0.09]),
        "quality_snow": np.zeros((n, n), bool),
        "quality_classes": np.where(water, 2, 1),
    }
    for key, arr in layers.items():
        write_geotiff(
            files[key], arr.astype(np.uint8)[None], crs_epsg=spec.crs_epsg, transform=spec.enmap_transform,
            nodata=3 if key == "quality_classes" else None,
        )  # fmt: skip
    cover = {
        k: float(layers[k].mean()) * 100
        for k in ("quality_cloud", "quality_cloud_shadow", "quality_haze")
    }
    cover["quality_cirrus"] = float((layers["quality_cirrus"] > 0).mean()) * 100
    return enmap_item(
        spec, item_id, start, proc, files, bands, cover, water_percent=float(water.mean()) * 100
    )


def _write_hls(root: Path, spec: RegionSpec, surface: Any, t: int, product: str) -> dict[str, Any]:
    hls = hls_sensor()
    when = spec.hls_date(t, product)
    coll = "HLSL30_2.0" if product == "l30" else "HLSS30_2.0"
    granule = f"HLS.{product.upper()}.{spec.mgrs_tile}.{when:%Y%j}T{when:%H%M%S}.v2.0"
    folder = root / coll / granule
    folder.mkdir(parents=True)
    dn, fmask = hls_reflectance(surface, t, product)
    keys = hls.asset_keys(product)
    cloud_pct = round(float(((fmask >> 1) & 1).mean()) * 100)
    common = {"MGRS_TILE_ID": spec.mgrs_tile[1:], "SENSING_TIME": f"{when:%Y-%m-%dT%H:%M:%S}.000000Z",
              "cloud_coverage": str(cloud_pct), "HLS_PROCESSING_VERSION": "v2.0"}  # fmt: skip
    files: dict[str, Path] = {}
    for i, role in enumerate(hls.roles):
        key = keys[role.name]
        files[key] = folder / f"{granule}.{key}.tif"
        write_geotiff(
            files[key], dn[i : i + 1], crs_epsg=spec.crs_epsg, transform=spec.hls_transform, nodata=hls.nodata,
            scales=(hls.scale,), descriptions=(role.name,),
            tags={**common, "long_name": role.name, "scale_factor": str(hls.scale), "add_offset": "0.0",
                  "_FillValue": str(hls.nodata)},
        )  # fmt: skip
    files[hls.fmask_asset] = folder / f"{granule}.{hls.fmask_asset}.tif"
    write_geotiff(
        files[hls.fmask_asset], fmask[None], crs_epsg=spec.crs_epsg, transform=spec.hls_transform,
        nodata=hls.fmask_fill, tags={**common, "long_name": "Fmask"},
    )  # fmt: skip
    paired = _enmap_id(spec, t)[0]
    return hls_item(spec, coll, granule, when, files, keys, cloud_pct, HLS_WAVELENGTH_UM, paired)


def _write_truth(root: Path, spec: RegionSpec, surface: Any) -> dict[str, Path]:
    folder = root / "truth"
    folder.mkdir()
    out = {name: folder / f"{name}.tif" for name in ("landcover", "crop_type", "soc")}
    kw = dict(crs_epsg=spec.crs_epsg, transform=spec.enmap_transform)
    classes = ",".join(f"{k}:{v}" for k, v in LANDCOVER_CLASSES.items())
    write_geotiff(
        out["landcover"], surface.landcover[None], nodata=None, tags={"classes": classes}, **kw
    )
    names = ",".join(f"{i + 1}:{c}" for i, c in enumerate(surface.crop_names))
    write_geotiff(
        out["crop_type"],
        surface.crop_type[None],
        nodata=None,
        tags={"classes": f"0:none,{names}"},
        **kw,
    )
    write_geotiff(out["soc"], surface.soc[None], nodata=float("nan"), tags={"units": "g/kg"}, **kw)
    return out


def _is_previous_output(path: Path) -> bool:
    try:
        return json.loads((path / MANIFEST).read_text()).get("kind") == MANIFEST_KIND
    except (OSError, ValueError, AttributeError):
        return False


def write_region(out_dir: str | os.PathLike[str], spec: RegionSpec) -> RegionManifest:
    """Generate ``spec`` and write all products, truth and the STAC catalog into ``out_dir``.

    ``out_dir`` must be absent, empty, or an earlier output of this function (it is replaced).
    Everything is written to a temporary folder beside it and renamed into place at the end,
    so a failure leaves nothing half-written.
    """
    out = Path(out_dir).absolute()
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not _is_previous_output(out):
        raise ValueError(
            f"output directory {out} is not empty and holds no earlier demo-data output"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        surface = make_surface(spec)
        enmap = [_write_enmap(tmp, spec, surface, t) for t in range(spec.n_scenes)]
        hls = [
            _write_hls(tmp, spec, surface, t, p)
            for t in range(spec.n_scenes)
            for p in ("l30", "s30")
        ]
        truth = _write_truth(tmp, spec, surface)
        catalog_path, item_paths = build_catalog(tmp, spec, enmap, hls)
        (tmp / MANIFEST).write_text(json.dumps(_manifest_doc(spec, tmp, truth), indent=1) + "\n")
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    moved = {k: out / p.relative_to(tmp) for k, p in truth.items()}
    items = [out / p.relative_to(tmp) for p in item_paths]
    return RegionManifest(
        root=out, catalog=out / catalog_path.relative_to(tmp),
        enmap_items=tuple(p for p in items if p.parts[-3] == "ENMAP_HSI_L2A"),
        hls_items=tuple(p for p in items if p.parts[-3] != "ENMAP_HSI_L2A"), truth=moved,
        crs_epsg=spec.crs_epsg, enmap_transform=tuple(spec.enmap_transform)[:6],
        enmap_shape=(spec.size_px, spec.size_px), hls_transform=tuple(spec.hls_transform)[:6],
        hls_shape=spec.hls_shape, n_bands=len(spec.enmap_bands),
    )  # fmt: skip


def _manifest_doc(spec: RegionSpec, root: Path, truth: Mapping[str, Path]) -> dict[str, Any]:
    d = asdict(spec)
    d["bands"] = None if spec.bands is None else f"{len(spec.bands)} custom bands"
    d["dates"] = [f"{x:%Y-%m-%dT%H:%M:%S}" for x in spec.enmap_dates]
    return {
        "kind": MANIFEST_KIND,
        "spec": d,
        "catalog": "catalog.json",
        "truth": {k: str(p.relative_to(root)) for k, p in truth.items()},
        "enmap_transform": list(tuple(spec.enmap_transform)[:6]),
        "hls_transform": list(tuple(spec.hls_transform)[:6]),
    }
