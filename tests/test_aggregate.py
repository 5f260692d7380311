"""Band aggregation: numpy reference, no bad band or nodata in a mean, SRF, laziness, real data."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from hyperkd.pipeline.features.aggregate import (
    TEACHER_DIM,
    TEACHER_NODATA,
    cube_bands,
    srf_from_npz,
    srf_weights,
    teacher_bands,
)
from hyperkd.pipeline.sensors import enmap_table, hls_sensor

NODATA = -32768


def _cube(
    rng: np.random.Generator, shape: tuple[int, int, int] = (2, 40, 48), chunk: int = 16
) -> xr.DataArray:
    """A cube-layout reflectance ``(time, band, y, x)`` int16 with smooth, plausible spectra."""
    bands = enmap_table().bands
    t, ny, nx = shape
    wl = bands.wavelengths
    # Per-pixel spectra: a mix of two smooth endmembers, plus noise (reflectance x 10000).
    veg = 300 + 3500 / (1 + np.exp(-(wl - 720) / 15)) * np.exp(-(((wl - 1000) / 1200) ** 2))
    soil = 900 + 2.2 * (wl - 400)
    frac = rng.uniform(0, 1, size=(t, 1, ny, nx))
    spec = frac * veg[None, :, None, None] + (1 - frac) * soil[None, :, None, None]
    refl = np.rint(spec + rng.normal(0, 40, size=(t, len(wl), ny, nx))).astype(np.int16)
    refl[:, ~bands.valid] = NODATA
    return xr.DataArray(
        da.from_array(refl, chunks=(1, -1, chunk, chunk)),
        dims=("time", "band", "y", "x"),
        coords={
            "time": np.array(["2024-06-01", "2024-07-01"][:t], dtype="datetime64[ns]"),
            "band": np.arange(1, len(wl) + 1),
            "wavelength": ("band", wl),
            "fwhm": ("band", bands.fwhms),
            "valid_band": ("band", bands.valid),
        },
    )


def _reference(cube: xr.DataArray) -> np.ndarray:
    """Plain numpy: mean over valid, non-nodata bands with centres in each HLS range (float64)."""
    refl = np.asarray(cube.values, dtype=np.float64)
    wl = cube.wavelength.values
    out = []
    for role in hls_sensor().roles:
        lo, hi = role.range_nm
        sel = (wl >= lo) & (wl <= hi) & cube.valid_band.values
        x = refl[:, sel]
        ok = x != NODATA
        with np.errstate(invalid="ignore"):
            out.append(np.where(ok, x, 0).sum(axis=1) / ok.sum(axis=1))
    return np.stack(out, axis=1)


@pytest.fixture
def cube() -> xr.DataArray:
    return _cube(np.random.default_rng(42))


def test_mean_equals_numpy_reference_to_float32_precision(cube: xr.DataArray) -> None:
    ref = _reference(cube)
    f32 = teacher_bands(cube, dtype="float32")
    assert isinstance(f32.data, da.Array)
    assert f32.dims == ("time", TEACHER_DIM, "y", "x")
    assert list(f32[TEACHER_DIM].values) == list(hls_sensor().band_names)
    np.testing.assert_allclose(f32.values, ref, rtol=2e-7)
    i16 = teacher_bands(cube).values
    assert i16.dtype == np.int16
    np.testing.assert_array_equal(i16, np.rint(ref).astype(np.int16))


def test_bad_bands_and_nodata_pixels_never_enter_a_mean(cube: xr.DataArray) -> None:
    clean = teacher_bands(cube, dtype="float32").values
    planted = cube.values.copy()
    bad = ~cube.valid_band.values
    planted[:, bad] = 32000  # a bad band that is NOT filled with nodata must still be ignored
    # Mark one in-range band bad (valid_band False) and fill it with an extreme value.
    red_idx = np.flatnonzero((cube.wavelength.values >= 640) & (cube.wavelength.values <= 670))
    valid_band = cube.valid_band.values.copy()
    valid_band[red_idx[0]] = False
    planted[:, red_idx[0]] = 30000
    # Per-pixel nodata in some in-range bands of some pixels.
    rng = np.random.default_rng(1)
    holes = rng.random(planted[:, :, :, :].shape) < 0.05
    planted[holes] = NODATA
    hit = cube.copy(data=da.from_array(planted, chunks=cube.data.chunksize))
    got = teacher_bands(hit, valid_band, dtype="float32").values
    expect = _reference(hit.assign_coords(valid_band=("band", valid_band)))
    np.testing.assert_allclose(got, expect, rtol=2e-7)
    # Without the holes and with the same bad band list, we recover the clean result exactly
    # (apart from red, which lost one band on purpose).
    unholed = np.where(holes, cube.values, planted)
    got2 = teacher_bands(cube.copy(data=unholed), valid_band, dtype="float32").values
    other = [k for k, n in enumerate(hls_sensor().band_names) if n != "red"]
    np.testing.assert_allclose(got2[:, other], clean[:, other], rtol=2e-7)
    assert np.abs(got).max() < 10000  # no extreme value leaked into any mean


def test_pixel_without_any_valid_input_is_teacher_nodata(cube: xr.DataArray) -> None:
    refl = cube.values.copy()
    refl[0, :, 3, 5] = NODATA
    blue = (cube.wavelength.values >= 450) & (cube.wavelength.values <= 510)
    refl[1, blue, 7, 7] = NODATA
    out = teacher_bands(cube.copy(data=refl)).values
    assert (out[0, :, 3, 5] == TEACHER_NODATA).all()
    assert out[1, 0, 7, 7] == TEACHER_NODATA and (out[1, 1:, 7, 7] != TEACHER_NODATA).all()
    assert np.isnan(teacher_bands(cube.copy(data=refl), dtype="float32").values[0, :, 3, 5]).all()


def test_uses_the_cubes_own_band_axis(cube: xr.DataArray) -> None:
    # A cube whose band axis lacks some bands (two of them blue) and runs backwards:
    # the alignment follows the cube's own coords, not the table.
    keep = np.setdiff1d(np.arange(224), [0, 1, 2, 3, 9, 10, *range(100, 110)])[::-1]
    sub = cube.isel(band=keep)
    got = teacher_bands(sub, dtype="float32").values
    np.testing.assert_allclose(got, _reference(sub), rtol=2e-7)
    assert not np.allclose(got[:, 0], teacher_bands(cube, dtype="float32").values[:, 0], rtol=1e-4)
    assert len(cube_bands(sub)) == 224 - 16


def test_cf_decoded_float_input_gives_the_same_result(cube: xr.DataArray) -> None:
    raw = cube.values
    decoded = np.where(raw == NODATA, np.nan, raw * 1e-4).astype(np.float32)
    dec = cube.copy(data=decoded)
    dec.encoding.update({"scale_factor": 1e-4, "_FillValue": NODATA})
    # float32 decoding costs ~1e-7 relative, which can flip a .5 tie when rounding to int16.
    np.testing.assert_allclose(
        teacher_bands(dec, dtype="float32").values,
        teacher_bands(cube, dtype="float32").values,
        rtol=1e-6,
    )
    diff = teacher_bands(dec).values.astype(int) - teacher_bands(cube).values
    assert np.abs(diff).max() <= 1


def test_output_is_lazy_and_chunked_like_the_input(cube: xr.DataArray) -> None:
    out = teacher_bands(cube)
    assert out.data.chunks == ((1, 1), (6,), (16, 16, 8), (16, 16, 16))
    # One output task per input chunk, each depending on that chunk only.
    graph = dict(out.data.__dask_graph__())
    blocks = [k for k in graph if isinstance(k, tuple) and k[0] == out.data.name]
    assert len(blocks) == 2 * 3 * 3
    assert out.encoding["_FillValue"] == TEACHER_NODATA
    assert out.attrs["scale_factor"] == 1e-4


def test_srf_weights_are_normalised_and_skip_bad_bands() -> None:
    bands = enmap_table().bands
    w = srf_weights(bands)
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    assert (w[:, ~bands.valid] == 0).all()
    # Each teacher band's weight is centred inside its range.
    for k, role in enumerate(hls_sensor().roles):
        centre = (w[k] * bands.wavelengths).sum()
        assert role.range_nm[0] < centre < role.range_nm[1]


def test_srf_method_on_a_flat_spectrum_returns_it(cube: xr.DataArray) -> None:
    flat = np.full(cube.shape, 2345, dtype=np.int16)
    flat[:, ~cube.valid_band.values] = NODATA
    out = teacher_bands(cube.copy(data=flat), method="srf").values
    assert (out == 2345).all()


def test_bad_input_is_refused(cube: xr.DataArray) -> None:
    with pytest.raises(ValueError, match="unknown aggregation method"):
        teacher_bands(cube, method="median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dims"):
        teacher_bands(cube.transpose("band", "time", "y", "x"))
    with pytest.raises(ValueError, match="wavelength"):
        teacher_bands(cube.drop_vars("wavelength"))
    with pytest.raises(ValueError, match="not 'srf'"):
        teacher_bands(cube, srf={"blue": (np.array([450.0, 510.0]), np.array([1.0, 1.0]))})


# --- real data: EnMAP Potsdam vs Landsat-8 simulated through its real SRFs -------------------


def _potsdam(root: Path) -> xr.DataArray:
    rasterio = pytest.importorskip("rasterio")
    files = sorted((root / "enmap_potsdam_l2a" / "images").glob("*.tif"))
    assert len(files) == 18
    tiles = []
    for f in files:
        with rasterio.open(f) as src:
            tiles.append(src.read())
            tags = [src.tags(i + 1) for i in range(src.count)]
    return xr.DataArray(
        np.stack(tiles),  # (tile, band, y, x) float32, reflectance x 10000, nodata -32768
        dims=("time", "band", "y", "x"),
        coords={
            "wavelength": ("band", [float(t["wavelength"]) for t in tags]),
            "fwhm": ("band", [float(t["fwhm"]) for t in tags]),
            "valid_band": ("band", [t["bbl"] == "1" for t in tags]),
        },
    )


def _simulate(
    cube: xr.DataArray, srf: dict[str, tuple[np.ndarray, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel's spectrum interpolated onto the SRF wavelengths and integrated against it."""
    good = cube.valid_band.values
    wl = cube.wavelength.values[good]
    spectra = cube.values[:, good].transpose(0, 2, 3, 1).reshape(-1, good.sum()).astype(np.float64)
    ok = (spectra != NODATA).all(axis=1)
    sims = []
    for swl, resp in srf.values():
        interp = np.stack([np.interp(swl, wl, s) for s in spectra[ok]])
        sims.append(np.trapezoid(interp * resp, swl, axis=1) / np.trapezoid(resp, swl))
    return np.stack(sims, axis=1), ok


@pytest.mark.parametrize("method", ["mean", "srf"])
def test_real_enmap_matches_landsat8_simulated_through_real_srfs(
    sample_data: Path, method: str
) -> None:
    cube = _potsdam(sample_data)
    srf = srf_from_npz(sample_data / "srf" / "Landsat8_srf.npz")
    assert list(srf) == list(hls_sensor().band_names)  # OLI bands 2-7 picked by centre
    sim, ok = _simulate(cube, srf)
    kwargs = {"srf": srf} if method == "srf" else {}
    agg = teacher_bands(cube.chunk({"time": 1}), method=method, dtype="float32", **kwargs).values
    agg = agg.transpose(0, 2, 3, 1).reshape(-1, 6)[ok]
    for k, name in enumerate(srf):
        r = np.corrcoef(agg[:, k], sim[:, k])[0, 1]
        assert r > 0.95, f"{method} {name}: Pearson r = {r:.4f}"
        bias = abs(agg[:, k].mean() - sim[:, k].mean()) / sim[:, k].mean()
        assert bias < 0.03, f"{method} {name}: mean bias {bias:.2%}"
