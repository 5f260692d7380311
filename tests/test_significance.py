"""Significance maps: texture ranking, chunk independence, schedulers, invalid pixels."""

from __future__ import annotations

import dask
import numpy as np
import pytest
import xarray as xr

from hyperkd.pipeline.features.aggregate import TEACHER_DIM, TEACHER_NODATA
from hyperkd.pipeline.features.significance import (
    GaborConfig,
    SignificanceConfig,
    WaveletConfig,
    gabor_energy,
    patch_scores,
    significance_maps,
    wavelet_energy,
)
from hyperkd.pipeline.sensors import enmap_table, hls_sensor, prithvi_preset

N = 192
MEAN = np.array(prithvi_preset().mean)


def _teacher(img: np.ndarray) -> xr.DataArray:
    """``(time, 6, y, x)`` int16 teacher bands from float reflectance x 10000."""
    t, _, ny, nx = img.shape
    return xr.DataArray(
        np.rint(img).astype(np.int16),
        dims=("time", TEACHER_DIM, "y", "x"),
        coords={
            "time": np.arange(t).astype("datetime64[D]").astype("datetime64[ns]"),
            TEACHER_DIM: list(hls_sensor().band_names),
            "y": 5000.0 - 30 * np.arange(ny),
            "x": 300000.0 + 30 * np.arange(nx),
        },
    )


def _quadrants(rng: np.random.Generator) -> xr.DataArray:
    """Upper-left quadrant textured (multi-scale noise), three flat quadrants at other levels."""
    img = np.empty((1, 6, N, N))
    h = N // 2
    level = {(0, 1): 0.8, (1, 0): 1.2, (1, 1): 1.0}
    for (qy, qx), f in level.items():
        img[0, :, qy * h : (qy + 1) * h, qx * h : (qx + 1) * h] = f * MEAN[:, None, None]
    fine = rng.normal(0, 1, (h, h))
    coarse = np.kron(rng.normal(0, 1, (h // 8, h // 8)), np.ones((8, 8)))
    tex = 400 * fine + 600 * coarse
    img[0, :, :h, :h] = MEAN[:, None, None] + tex[None] * np.linspace(0.7, 1.3, 6)[:, None, None]
    return _teacher(img)


def _all_valid(teacher: xr.DataArray) -> xr.DataArray:
    return xr.ones_like(teacher.isel({TEACHER_DIM: 0}), dtype=bool).drop_vars(TEACHER_DIM)


@pytest.mark.parametrize("var", ["significance_gabor", "significance_wavelet"])
def test_textured_quadrant_outranks_every_flat_patch(var: str) -> None:
    teacher = _quadrants(np.random.default_rng(0))
    ds = significance_maps(teacher, _all_valid(teacher), SignificanceConfig(chunk_px=64)).compute()
    score = ds[var].values[0]
    assert score.shape == (N // 16, N // 16)
    assert ds[var].dtype == np.float32
    q = N // 32
    textured, flat = score[:q, :q], np.concatenate([score[:q, q:].ravel(), score[q:].ravel()])
    assert textured.min() > flat.max()


def _scene_with_holes(rng: np.random.Generator, t: int = 2, ny: int = 176, nx: int = 208):
    """Texture everywhere plus nodata pixels, a cloud block, and a nodata stripe at the edge."""
    base = (
        rng.normal(0, 1, (t, 1, ny, nx)) * 500
        + np.kron(rng.normal(0, 1, (t, 1, ny // 16, nx // 16)), np.ones((16, 16))) * 300
    )
    img = MEAN[None, :, None, None] + base * np.linspace(0.8, 1.2, 6)[None, :, None, None]
    teacher = _teacher(img)
    holes = rng.random((t, ny, nx)) < 0.02
    teacher.values[np.broadcast_to(holes[:, None], teacher.shape)] = TEACHER_NODATA
    teacher.values[:, :, :, :7] = TEACHER_NODATA
    valid = _all_valid(teacher).copy(data=np.ones((t, ny, nx), dtype=bool))
    valid.values[0, 40:90, 60:150] = False  # a cloud straddling chunk boundaries
    return teacher, valid


def test_results_do_not_depend_on_the_chunking() -> None:
    teacher, valid = _scene_with_holes(np.random.default_rng(3))
    runs = []
    for chunk_px, in_chunks in ((64, 48), (112, 80), (4096, 1000)):
        cfg = SignificanceConfig(chunk_px=chunk_px)
        ds = significance_maps(teacher.chunk({"y": in_chunks, "x": in_chunks}), valid, cfg)
        runs.append(ds.compute())
    whole = runs[-1]  # one chunk: nothing to depend on
    for ds in runs[:-1]:
        for var in ("significance_gabor", "significance_wavelet"):
            ref = whole[var].values
            np.testing.assert_allclose(
                ds[var].values, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max()
            )


def test_energy_maps_do_not_depend_on_the_chunking_for_other_banks() -> None:
    rng = np.random.default_rng(5)
    img = xr.DataArray(
        rng.normal(size=(1, 2, 150, 170)).astype(np.float32), dims=("time", "channel", "y", "x")
    )
    img[0, :, 20:30, 100:140] = np.nan
    wav = WaveletConfig(wavelet="db4", levels=3)
    gab = GaborConfig(wavelengths_px=(3.0, 11.0), orientations=6)
    one_w = wavelet_energy(img, wav, chunk_px=4096).values
    one_g = gabor_energy(img, gab, chunk_px=4096).values
    for chunk in (56, 96):
        np.testing.assert_allclose(
            wavelet_energy(img, wav, chunk_px=chunk).values, one_w, rtol=1e-5, atol=1e-9
        )
        np.testing.assert_allclose(
            gabor_energy(img, gab, chunk_px=chunk).values, one_g, rtol=1e-5, atol=1e-9
        )
    assert np.isnan(one_w[0, 20:30, 100:140]).all() and np.isfinite(one_w[0, :20]).all()


def test_threaded_scheduler_and_local_cluster_agree() -> None:
    distributed = pytest.importorskip("distributed")
    teacher, valid = _scene_with_holes(np.random.default_rng(4), t=1, ny=160, nx=160)
    cfg = SignificanceConfig(chunk_px=64)
    with dask.config.set(scheduler="threads"):
        threaded = significance_maps(teacher.chunk({"y": 64, "x": 64}), valid, cfg).compute()
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        lazy = significance_maps(teacher.chunk({"y": 64, "x": 64}), valid, cfg)
        clustered = client.compute(lazy).result()
    for var in ("significance_gabor", "significance_wavelet"):
        np.testing.assert_allclose(clustered[var].values, threaded[var].values, rtol=1e-5)


def test_invalid_pixels_create_no_texture() -> None:
    # A flat scene with extreme nodata values in holes and an invalid block: no energy at all.
    rng = np.random.default_rng(6)
    flat = _teacher(np.broadcast_to(MEAN[None, :, None, None], (1, 6, 128, 128)).copy())
    flat.values[np.broadcast_to(rng.random((1, 1, 128, 128)) < 0.05, flat.shape)] = TEACHER_NODATA
    valid = _all_valid(flat).copy(data=np.ones((1, 128, 128), dtype=bool))
    valid.values[0, 30:70, 50:90] = False
    flat.values[0, :, 30:70, 50:90] = 32000  # e.g. a bright cloud: masked, must not show
    ds = significance_maps(flat, valid, SignificanceConfig(chunk_px=64)).compute()
    for var in ("significance_gabor", "significance_wavelet"):
        assert np.abs(ds[var].values).max() < 1e-6, var
    # The same image with the cloud left valid does light up: the test can fail.
    loud = significance_maps(flat, _all_valid(flat), SignificanceConfig(chunk_px=64)).compute()
    assert loud["significance_gabor"].values.max() > 1.0


def test_patch_scores_average_finite_pixels_only() -> None:
    e = np.arange(2 * 20 * 36, dtype=np.float32).reshape(2, 20, 36)
    e[1, :16, :16] = np.nan
    e[1, 0, 16] = np.nan
    energy = xr.DataArray(e, dims=("time", "y", "x")).chunk({"y": 10, "x": 12})
    got = patch_scores(energy, 16).values
    assert got.shape == (2, 2, 3)
    assert got[0, 0, 0] == pytest.approx(e[0, :16, :16].mean())
    assert got[0, 1, 2] == pytest.approx(e[0, 16:, 32:].mean())  # partial patch
    assert got[1, 0, 0] == 0.0  # no finite pixel
    assert got[1, 0, 1] == pytest.approx(np.nanmean(e[1, :16, 16:32]))


def test_gabor_bank_defaults() -> None:
    kernels = GaborConfig().kernels()
    assert len(kernels) == 12
    assert sorted({k.shape[0] for k in kernels}) == [15, 27, 55]  # odd ceil(6 * 0.56 * lambda)
    for k in kernels:
        assert abs(k.real.sum()) < 1e-9 and abs(k.imag.sum()) < 1e-9  # flat -> zero response
        assert (np.abs(k) ** 2).sum() == pytest.approx(1.0)


@pytest.mark.parametrize("kind", ["pca", "all"])
def test_spectral_inputs(kind: str) -> None:
    rng = np.random.default_rng(7)
    bands = enmap_table().bands
    ny = nx = 96
    abund = np.ones((1, 1, ny, nx)) * 0.5
    abund[0, 0, :48, :48] = rng.uniform(0, 1, (48, 48))  # texture in one quadrant only
    spectrum_a = 500 + bands.wavelengths * 0.5
    spectrum_b = 3000 - bands.wavelengths * 0.7
    refl = abund * spectrum_a[None, :, None, None] + (1 - abund) * spectrum_b[None, :, None, None]
    refl = np.rint(refl + rng.normal(0, 5, refl.shape)).astype(np.int16)
    refl[:, ~bands.valid] = -32768
    cube = xr.DataArray(
        refl,
        dims=("time", "band", "y", "x"),
        coords={
            "wavelength": ("band", bands.wavelengths),
            "fwhm": ("band", bands.fwhms),
            "valid_band": ("band", bands.valid),
        },
    )
    valid = xr.DataArray(np.ones((1, ny, nx), bool), dims=("time", "y", "x"))
    whole = significance_maps(
        None, valid, SignificanceConfig(input=kind, n_components=2), reflectance=cube
    ).compute()
    for var in ("significance_gabor", "significance_wavelet"):
        s = whole[var].values[0]
        assert s[:3, :3].min() > max(s[:3, 3:].max(), s[3:].max()), var
    if kind == "all":
        return  # 218 channels: the chunking check below runs on the cheaper PCA input
    cfg = SignificanceConfig(input=kind, n_components=2, chunk_px=48)
    ds = significance_maps(None, valid, cfg, reflectance=cube.chunk({"y": 32, "x": 32})).compute()
    for var in ("significance_gabor", "significance_wavelet"):
        ref = whole[var].values[0]
        np.testing.assert_allclose(ds[var].values[0], ref, rtol=1e-5, atol=1e-6 * ref.max())


def test_bad_config_and_input_are_refused() -> None:
    with pytest.raises(ValueError, match="wavelet"):
        WaveletConfig(wavelet="nope")
    with pytest.raises(ValueError, match="Nyquist"):
        GaborConfig(wavelengths_px=(1.0,))
    with pytest.raises(ValueError, match="input"):
        SignificanceConfig(input="rgb")  # type: ignore[arg-type]
    teacher = _quadrants(np.random.default_rng(0))
    with pytest.raises(ValueError, match="needs the reflectance"):
        significance_maps(teacher, _all_valid(teacher), SignificanceConfig(input="pca"))
    with pytest.raises(ValueError, match="do not match"):
        significance_maps(teacher.isel({TEACHER_DIM: [1, 0, 2, 3, 4, 5]}), _all_valid(teacher))
