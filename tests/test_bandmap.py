"""The canonical band axis: copy within 2 nm, interpolate within one FWHM, else nodata."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hyperkd.pipeline.cube.bandmap import (
    COPY,
    INTERPOLATE,
    MISSING,
    load_band_table,
    plan_bands,
)
from hyperkd.pipeline.sensors import EnmapBands, SpectralBand, enmap_table


def _bands(centres, fwhm=8.0, nodata=()):
    return EnmapBands(
        tuple(SpectralBand(str(i + 1), float(c), fwhm) for i, c in enumerate(centres)),
        frozenset(nodata),
    )


def test_same_generation_is_an_exact_copy():
    table = enmap_table().bands
    plan = plan_bands(table)
    assert plan.is_identity
    assert plan.counts == {"copy": 218, "interpolate": 0, "missing": 6}
    rng = np.random.default_rng(0)
    dn = rng.integers(-100, 10000, size=(224, 3, 4)).astype(np.int16)
    out = plan.apply(dn, nodata=-32768)
    valid = table.valid
    np.testing.assert_array_equal(out[valid], dn[valid])
    assert (out[~valid] == -32768).all()


def test_copy_interpolate_and_missing_rules():
    canonical = _bands([500.0, 600.0, 700.0, 800.0], fwhm=10.0)
    # 501.5 copies (1.5 nm away); 600 lies between 594 and 608 (both within 10 nm);
    # 700 has 694 below but 712 above is 12 nm away (> FWHM) -> missing;
    # 800 has nothing above -> missing.
    scene = _bands([608.0, 501.5, 594.0, 694.0, 712.0])  # unsorted on purpose
    plan = plan_bands(scene, canonical)
    assert plan.kind == (COPY, INTERPOLATE, MISSING, MISSING)
    assert plan.lower[0] == 1
    assert (plan.lower[1], plan.upper[1]) == (2, 0)
    assert plan.weight[1] == pytest.approx(6.0 / 14.0)
    dn = np.zeros((5, 1, 2), np.int16)
    dn[1] = 1000
    dn[2] = 2000  # 594 nm
    dn[0] = 3400  # 608 nm
    dn[2, 0, 1] = -32768  # one source pixel is nodata
    out = plan.apply(dn, nodata=-32768)
    assert out[0].tolist() == [[1000, 1000]]
    expected = round(2000 + (3400 - 2000) * 6 / 14)
    assert out[1, 0, 0] == expected
    assert out[1, 0, 1] == -32768  # interpolation never uses a nodata source
    assert (out[2:] == -32768).all()


def test_scale_and_offset_are_applied():
    canonical = _bands([500.0, 600.0])
    scene = EnmapBands(canonical.bands, gain=(2e-4, 1e-4), offset=(0.01, 0.0))
    plan = plan_bands(scene, canonical)
    dn = np.array([[[100, -32768]], [[7, 8]]], np.int16)
    out = plan.apply(dn, nodata=-32768, gain=np.array(scene.gain), offset=np.array(scene.offset))
    assert out[0, 0].tolist() == [300, -32768]  # 100 * 2e-4 + 0.01 = 0.03 -> 300
    assert out[1, 0].tolist() == [7, 8]


def test_scene_nodata_bands_are_never_sources():
    canonical = _bands([500.0, 600.0])
    scene = _bands([500.5, 600.2], nodata=(1,))
    plan = plan_bands(scene, canonical)
    assert plan.kind == (COPY, MISSING)


def test_band_count_mismatch_is_a_clear_error():
    plan = plan_bands(_bands([500.0, 600.0]), _bands([500.0, 600.0]))
    with pytest.raises(ValueError, match="band count mismatch"):
        plan.apply(np.zeros((3, 1, 1), np.int16), nodata=-32768)


def test_dlr_item_lands_on_the_canonical_axis(sample_data):
    item = json.loads(
        (sample_data / "stac" / "enmap_l2a_dlr_stac_item_DT0000080454.json").read_text()
    )
    scene = EnmapBands.from_eo_bands(item["assets"]["image"]["eo:bands"])
    table = enmap_table().bands
    plan = plan_bands(scene)
    kind = np.asarray(plan.kind)
    # Every canonical band follows the rule, checked independently of the plan's code path.
    for c, band in enumerate(table.bands):
        d = np.abs(scene.wavelengths - band.center_nm)
        if not table.valid[c]:
            assert kind[c] == MISSING
        elif d.min() <= 2.0:
            assert kind[c] == COPY
            assert plan.lower[c] == int(np.argmin(d))
        else:
            below = scene.wavelengths[scene.wavelengths < band.center_nm]
            above = scene.wavelengths[scene.wavelengths > band.center_nm]
            ok = (
                below.size
                and above.size
                and band.center_nm - below.max() <= band.fwhm_nm
                and above.min() - band.center_nm <= band.fwhm_nm
            )
            assert kind[c] == (INTERPOLATE if ok else MISSING)
    assert plan.counts["copy"] > 200
    assert not plan.is_identity


def test_band_table_by_name_and_path(tmp_path):
    assert len(load_band_table("enmap_hsi")) == 224
    custom = tmp_path / "t.yaml"
    custom.write_text("bands:\n  - [600.0, 9.0, VNIR]\n  - [500.0, 8.0, VNIR]\n")
    t = load_band_table(custom)
    assert t.wavelengths.tolist() == [500.0, 600.0]
    with pytest.raises(ValueError, match="unknown band table"):
        load_band_table("no-such-table")
