"""preprocess_cube: stored teacher bands and significance maps, idempotency, schedulers."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from hyperkd.pipeline.cube import (
    CubeLayout,
    CubeWriter,
    Grid,
    SceneWrite,
    open_cube,
    verify_cube,
)
from hyperkd.pipeline.features.aggregate import TEACHER_DIM, teacher_bands
from hyperkd.pipeline.features.preprocess import (
    PARAMS_ATTR,
    PreprocessConfig,
    open_enmap,
    preprocess_cube,
    product_names,
)
from hyperkd.pipeline.features.significance import (
    SignificanceConfig,
    WaveletConfig,
    significance_maps,
)
from hyperkd.pipeline.sensors import enmap_table
from hyperkd.pipeline.synthetic.factory import (
    RegionSpec,
    cloud_fields,
    enmap_reflectance,
    is_cloudy,
    make_surface,
)

SIZE, TILE = 96, 32


def factory_cube(
    url: str, n_scenes: int = 2, *, first: int = 0, spec: RegionSpec | None = None
) -> None:
    """A cube from the scene factory: the catalog's canonical bands, clouds masked in ``valid``."""
    spec = spec or RegionSpec(size_px=SIZE, n_scenes=3, seed=11, cloud_cover=0.2)
    surface = make_surface(spec)
    bands = enmap_table().bands
    grid = Grid(f"EPSG:{spec.crs_epsg}", tuple(spec.enmap_transform)[:6], (spec.size_px,) * 2)
    with CubeWriter(url) as writer:
        if not writer.exists:
            writer.create(CubeLayout(grid, bands, TILE, region="test"))
        for t in range(first, first + n_scenes):
            dn = enmap_reflectance(surface, t, bands)
            n = spec.size_px
            opacity, _cirrus, shadow = cloud_fields(
                spec.seed, spec.cloud_cover, (n, n), (1, t), is_cloudy("enmap", t)
            )
            valid = (
                (dn[bands.valid] != bands.nodata).all(axis=0) & (opacity <= 0.08) & (shadow <= 0.2)
            )
            record = {
                "collection": "synthetic-enmap",
                "hrefs": {},
                "processing_version": spec.processor_version,
                "cloud_cover": float(1 - valid.mean()) * 100,
                "ingested_at": "2024-01-01T00:00:00Z",
                "code_version": "test",
                "parameters": {"seed": spec.seed},
                "wavelength": bands.wavelengths.tolist(),
                "fwhm": bands.fwhms.tolist(),
            }
            writer.append(
                SceneWrite("enmap", f"scene-{t}", spec.enmap_dates[t], dn, valid, record=record)
            )


@pytest.fixture
def cube(tmp_path: Path) -> str:
    url = str(tmp_path / "cube.zarr")
    factory_cube(url)
    return url


FAST = PreprocessConfig(significance=SignificanceConfig(chunk_px=48))
MAPS = ("significance_gabor_p16", "significance_wavelet_p16")


def _stored(url: str) -> xr.Dataset:
    return open_enmap(url)[["teacher_bands", *MAPS]].load()


def test_preprocess_stores_what_the_functions_compute(cube: str) -> None:
    summary = preprocess_cube(cube, FAST)
    assert summary.scenes == ("scene-0", "scene-1")
    assert summary.teacher_computed == summary.significance_computed == summary.scenes
    assert verify_cube(cube) == []
    raw = open_enmap(cube)
    expect_teacher = teacher_bands(raw["reflectance"]).values
    stored = _stored(cube)
    np.testing.assert_array_equal(stored["teacher_bands"].values, expect_teacher)
    assert stored["teacher_bands"].dims == ("time", TEACHER_DIM, "y", "x")
    assert list(stored[TEACHER_DIM].values) == [
        "blue",
        "green",
        "red",
        "nir_narrow",
        "swir1",
        "swir2",
    ]
    maps = significance_maps(raw["teacher_bands"], raw["valid"], FAST.significance).compute()
    for var in MAPS:
        assert stored[var].shape == (2, SIZE // 16, SIZE // 16)
        computed = maps[var.removesuffix("_p16")].values
        np.testing.assert_allclose(stored[var].values, computed, rtol=1e-6)
        assert np.isfinite(stored[var].values).all() and (stored[var].values >= 0).all()
    # The public opener (CF-decoded) sees reflectance units and teacher nodata as NaN.
    enmap = open_cube(cube)["enmap"].ds
    decoded = enmap["teacher_bands"].values
    np.testing.assert_allclose(
        decoded, np.where(expect_teacher == -9999, np.nan, expect_teacher * 1e-4), rtol=1e-6
    )


def test_rerun_skips_and_new_scenes_only_are_computed(cube: str) -> None:
    preprocess_cube(cube, FAST)
    first = _stored(cube)
    again = preprocess_cube(cube, FAST)
    assert again.skipped and again.variables == ()
    factory_cube(cube, 1, first=2)  # a later scene is appended to the cube
    grown = preprocess_cube(cube, FAST)
    assert grown.teacher_computed == grown.significance_computed == ("scene-2",)
    stored = _stored(cube)
    for var in first.data_vars:
        np.testing.assert_array_equal(stored[var].values[:2], first[var].values)
    raw = open_enmap(cube)
    np.testing.assert_array_equal(
        stored["teacher_bands"].values[2], teacher_bands(raw["reflectance"]).values[2]
    )
    assert np.isfinite(stored[MAPS[0]].values[2]).all()
    assert stored[MAPS[0]].values[2].max() > 0
    # Other significance parameters: teacher bands are kept, both maps are recomputed.
    other = PreprocessConfig(
        significance=SignificanceConfig(chunk_px=48, wavelet=WaveletConfig(levels=1))
    )
    changed = preprocess_cube(cube, other)
    assert changed.teacher_computed == () and changed.significance_computed == grown.scenes
    # ... stored beside the default filter bank's maps, under names keyed by the parameters.
    wavelet = product_names(other).wavelet
    assert wavelet.startswith("significance_wavelet_p16_") and wavelet != MAPS[1]
    assert '"levels": 1' in open_enmap(cube)[wavelet].attrs[PARAMS_ATTR]
    np.testing.assert_array_equal(_stored(cube)[MAPS[1]].values, stored[MAPS[1]].values)
    # A different chunking is not a different parameter: results do not depend on it.
    assert preprocess_cube(
        cube,
        PreprocessConfig(
            significance=SignificanceConfig(chunk_px=64, wavelet=WaveletConfig(levels=1))
        ),
    ).skipped


def test_threaded_and_local_cluster_store_the_same_result(cube: str, tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    twin = str(tmp_path / "twin.zarr")
    third = str(tmp_path / "third.zarr")
    shutil.copytree(cube, twin)
    shutil.copytree(cube, third)
    threaded = preprocess_cube(cube, FAST)
    local = PreprocessConfig(
        significance=SignificanceConfig(chunk_px=48), scheduler="local", local_workers=2
    )
    clustered = preprocess_cube(twin, local)
    assert (threaded.scheduler, clustered.scheduler) == ("threads", "local")
    # A running cluster reached by address (here a LocalCluster of our own).
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:
        by_address = PreprocessConfig(
            significance=SignificanceConfig(chunk_px=48), dask_address=cluster.scheduler_address
        )
        remote = preprocess_cube(third, by_address)
        assert remote.scheduler == "distributed" and remote.teacher_computed == remote.scenes
    with pytest.raises(ValueError):
        distributed.default_client()  # every client was closed
    a, b, c = _stored(cube), _stored(twin), _stored(third)
    np.testing.assert_array_equal(a["teacher_bands"].values, b["teacher_bands"].values)
    np.testing.assert_array_equal(a["teacher_bands"].values, c["teacher_bands"].values)
    for var in MAPS:
        np.testing.assert_allclose(a[var].values, b[var].values, rtol=1e-5)
        np.testing.assert_allclose(a[var].values, c[var].values, rtol=1e-5)


def test_srf_aggregation_with_a_tabulated_response(cube: str, sample_data: Path) -> None:
    srf = sample_data / "srf" / "Landsat8_srf.npz"
    cfg = PreprocessConfig(
        aggregation="srf", srf_file=str(srf), significance=SignificanceConfig(chunk_px=48)
    )
    preprocess_cube(cube, cfg)
    enmap = open_enmap(cube)
    name = product_names(cfg).teacher
    assert name.startswith("teacher_bands_") and "teacher_bands" not in enmap
    assert '"sha256"' in enmap[name].attrs[PARAMS_ATTR]
    mean = teacher_bands(enmap["reflectance"]).values.astype(float)
    got = enmap[name].values.astype(float)
    ok = (got != -9999) & (mean != -9999)
    # Different weights, same surface: close but not identical.
    assert not np.array_equal(got, mean)
    assert np.corrcoef(got[ok], mean[ok])[0, 1] > 0.99


def test_bad_input_is_refused(tmp_path: Path, cube: str) -> None:
    with pytest.raises(FileNotFoundError, match="no hyperkd cube"):
        preprocess_cube(str(tmp_path / "nothing.zarr"))
    with pytest.raises(ValueError, match="SRF file not found"):
        preprocess_cube(cube, PreprocessConfig(aggregation="srf", srf_file=str(tmp_path / "x.npz")))
    with pytest.raises(ValueError, match="scheduler"):
        PreprocessConfig(scheduler="mpi")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cannot reach dask scheduler"):
        preprocess_cube(
            cube, PreprocessConfig(dask_address="tcp://127.0.0.1:9", connect_timeout_s=2)
        )
    assert "teacher_bands" not in open_enmap(cube)  # nothing half-written


def test_patch_sizes_live_side_by_side_on_their_own_georeferenced_grids(cube: str) -> None:
    """`hyperkd preprocess` at patch 8 and 16: both sets stored, each on a patch grid that
    rioxarray reads as cells of 8 or 16 pixels covering the cube's bounds."""
    import rioxarray  # noqa: F401

    from hyperkd.cli import main

    assert main(["preprocess", "--cube", cube, "--patch-size", "8"]) == 0
    first = open_enmap(cube)["significance_gabor_p8"].values
    assert main(["preprocess", "--cube", cube, "--patch-size", "16"]) == 0
    enmap = open_cube(cube)["enmap"].ds
    np.testing.assert_array_equal(enmap["significance_gabor_p8"].values, first)  # kept
    assert enmap["teacher_bands"].attrs["units"] == "1"  # decoded: reflectance
    bounds = enmap["reflectance"].rio.bounds()
    for patch in (8, 16):
        for kind in ("gabor", "wavelet"):
            var = enmap[f"significance_{kind}_p{patch}"]
            assert var.dims == ("time", f"y_p{patch}", f"x_p{patch}")
            assert var.shape == (2, SIZE // patch, SIZE // patch)
            assert var.rio.resolution() == (30.0 * patch, -30.0 * patch)
            assert var.rio.bounds() == pytest.approx(bounds)
    x = enmap["x_p16"].values
    np.testing.assert_allclose(x[0], enmap["x"].values[:16].mean())  # patch centres
    assert verify_cube(cube) == []


def test_preprocess_cli_bad_input_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from hyperkd.cli import main

    assert main(["preprocess", "--cube", str(tmp_path / "none.zarr")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no hyperkd cube" in err
    assert not (tmp_path / "none.zarr").exists()


@pytest.mark.slow  # the Prefect server's start dominates when run alone
def test_the_prefect_task_stores_the_products(prefect_harness: None, cube: str) -> None:
    """The flows' preprocess step: a real Prefect task run, passing the cube's URL."""
    from prefect import flow

    from hyperkd.flows.tasks import preprocess_cube as preprocess_task

    @flow
    def preprocess_flow(url: str) -> dict:
        return preprocess_task(url, "fingerprint", 8, None)

    summary = preprocess_flow(cube)
    assert summary["n_scenes"] == 2 and not summary["skipped"]
    assert "enmap/significance_gabor_p8" in summary["variables"]
    enmap = open_enmap(cube)
    assert "significance_gabor_p8" in enmap and "significance_gabor_p16" not in enmap
