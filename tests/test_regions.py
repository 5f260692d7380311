"""Regions: bbox strings, GeoJSON files, shipped named regions, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from shapely.geometry import shape

from hyperkd.pipeline.stac.regions import named_regions, parse_region


def test_bbox_string_becomes_lonlat_polygon() -> None:
    region = parse_region(" 13.0, 52.3,13.2,52.45 ")
    assert region.bbox == (13.0, 52.3, 13.2, 52.45)
    assert region.geometry["type"] == "Polygon"
    assert shape(region.geometry).area == pytest.approx(0.2 * 0.15)


@pytest.mark.parametrize("name", ["california", "colorado", "kansas"])
def test_paper_study_areas_ship_as_small_named_regions(name: str) -> None:
    region = parse_region(name)
    assert region.name == name
    minlon, minlat, maxlon, maxlat = region.bbox
    # ~20 x 20 km: 0.18 deg of latitude, lon degrees shrink with cos(lat).
    assert 0.15 < maxlat - minlat < 0.25
    assert 0.18 < maxlon - minlon < 0.30
    assert -125 < minlon < -94 and 30 < minlat < 42  # the conterminous US west of Kansas City
    assert "unknown" in region.description  # says the exact paper sites are not known


def test_named_region_files_carry_their_name() -> None:
    for name, path in named_regions().items():
        doc = json.loads(path.read_text())
        assert doc["type"] == "Feature"
        assert doc["properties"]["name"] == name


def test_geojson_feature_collection_is_unioned(tmp_path: Path) -> None:
    features = [
        {"type": "Feature", "properties": {"name": "fields"}, "geometry": _square(10.0, 50.0)},
        {"type": "Feature", "properties": {}, "geometry": _square(10.5, 50.0)},
    ]
    path = tmp_path / "fields.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    region = parse_region(str(path))
    assert region.name == "fields"
    assert region.bbox == (10.0, 50.0, 10.6, 50.1)
    assert region.geometry["type"] == "MultiPolygon"


def test_bare_geometry_file_takes_the_file_name(tmp_path: Path) -> None:
    path = tmp_path / "plot.json"
    path.write_text(json.dumps(_square(1.0, 2.0)))
    region = parse_region(str(path))
    assert region.name == "plot"
    assert region.bbox == (1.0, 2.0, 1.1, 2.1)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("1,2,3", "expected 4 numbers"),
        ("1,2,3,4,5", "expected 4 numbers"),
        ("1,2,east,4", "'east' is not a number"),
        ("1,nan,3,4", "not a finite number"),
        ("5,2,3,4", "minlon 5 is not below maxlon 3"),
        ("1,4,3,2", "minlat 4 is not below maxlat 2"),
        ("1,-91,3,4", "minlat -91 is outside -90..90"),
        ("1,2,3,95", "maxlat 95 is outside -90..90"),
        ("-181,2,3,4", "minlon -181 is outside -180..180"),
        ("atlantis", "unknown region 'atlantis'"),
        ("missing.geojson", "region file not found"),
        ("", "empty region"),
    ],
)
def test_bad_region_is_one_clear_line(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as info:
        parse_region(text)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "expected an object with a 'type' member"),
        (json.dumps({"type": "Point", "coordinates": [1, 2]}), "'Point' is not an area"),
        (json.dumps({"type": "FeatureCollection", "features": []}), "has no features"),
        (json.dumps({"type": "Feature", "properties": {}, "geometry": None}), "has no geometry"),
        (
            json.dumps({"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}),
            "Self-intersection",
        ),
        (
            json.dumps({"type": "Polygon", "coordinates": [[[500000, 5800000], [510000, 5800000],
                                                            [510000, 5810000], [500000, 5800000]]]}),
            "not lon/lat degrees",
        ),
        (json.dumps({"type": "Polygon", "coordinates": [[[0, 0], [1, 0]]]}), "bad Polygon coordinates"),
    ],
)  # fmt: skip
def test_invalid_geojson_is_one_clear_line(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "area.geojson"
    path.write_text(content)
    with pytest.raises(ValueError, match=problem) as info:
        parse_region(str(path))
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def _square(lon: float, lat: float, size: float = 0.1) -> dict:
    ring = [[lon, lat], [lon + size, lat], [lon + size, lat + size], [lon, lat + size], [lon, lat]]
    return {"type": "Polygon", "coordinates": [[[round(x, 6), round(y, 6)] for x, y in ring]]}
