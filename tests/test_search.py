"""Search: static catalogs, the real recorded pages, a flaky loopback STAC API, pairing, CLI."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import socket
import time
from pathlib import Path
from typing import Any

import pystac
import pytest
from stac_replay import ReplayServer

from hyperkd import cli
from hyperkd.pipeline.stac.http import StacApiError
from hyperkd.pipeline.stac.regions import parse_region
from hyperkd.pipeline.stac.search import SearchQuery, pair_scenes, search
from hyperkd.pipeline.stac.sources import RetryPolicy, Source, load_source, resolve_source

DLR_PAGE = "enmap_dlr_stac_search_page_20items.json"
LPDAAC_PAGE = "hls_l30_v1.5_cmr_stac_item_collection.json"
WORLD = parse_region("-180,-90,180,90")
FAST = RetryPolicy(tries=6, backoff_s=0.01, backoff_max_s=0.05, jitter_s=0.01, timeout_s=0.3)


def _features(sample_data: Path, name: str) -> list[dict[str, Any]]:
    return json.loads((sample_data / "stac" / name).read_text())["features"]


def _query(start: str, end: str, region=WORLD, **kw: Any) -> SearchQuery:
    return SearchQuery(
        ("test",), region, dt.date.fromisoformat(start), dt.date.fromisoformat(end), **kw
    )


def _api(name: str, url: str, retry: RetryPolicy = FAST, **kw: Any) -> Source:
    return dataclasses.replace(load_source(name), url=url, retry=retry, **kw)


# --- static: the real recorded pages as static sources ---------------------------------------


def test_real_dlr_page_yields_the_nine_l2a_scenes(sample_data: Path) -> None:
    features = _features(sample_data, DLR_PAGE)
    l2a = {f["id"] for f in features if f["collection"] == "ENMAP_HSI_L2A"}
    assert len(l2a) == 9 and len(features) == 20
    source = resolve_source(str(sample_data / "stac" / DLR_PAGE))
    result = search(_query("2025-07-08", "2025-07-08"), sources=[source])
    assert {i.id for i in result.enmap} == l2a  # the 11 ENMAP_HSI_L0_QL quicklooks are dropped
    assert result.hls == ()
    assert [p.enmap_id for p in result.pairs] == [i.id for i in result.enmap]


def test_real_dlr_page_filters_region_and_cloud(sample_data: Path) -> None:
    source = resolve_source(str(sample_data / "stac" / DLR_PAGE))
    kazakhstan = parse_region("84.8,45.0,85.6,46.0")
    three = search(_query("2025-07-08", "2025-07-08", kazakhstan), sources=[source])
    assert len(three.enmap) == 3 and all("DT0000142249" in i.id for i in three.enmap)
    clear = search(_query("2025-07-08", "2025-07-08", kazakhstan, max_cloud=10), sources=[source])
    assert [i.properties["eo:cloud_cover"] for i in clear.enmap] == ["3"]  # DLR writes a string
    none = search(_query("2025-07-09", "2025-07-31", kazakhstan), sources=[source])
    assert len(none) == 0


def test_real_lpdaac_collection_yields_l30_scenes(sample_data: Path) -> None:
    features = _features(sample_data, LPDAAC_PAGE)
    source = resolve_source(str(sample_data / "stac" / LPDAAC_PAGE))
    result = search(_query("2021-01-01", "2021-01-31"), sources=[source])
    assert result.enmap == ()
    assert {i.id for i in result.hls} == {f["id"] for f in features}
    jan14 = search(_query("2021-01-14", "2021-01-14", max_cloud=40), sources=[source])
    expected = {
        f["id"]
        for f in features
        if f["properties"]["datetime"].startswith("2021-01-14")
        and f["properties"]["eo:cloud_cover"] <= 40
    }
    assert {i.id for i in jan14.hls} == expected and len(expected) == 3


# --- static: a catalog written with pystac ----------------------------------------------------


def _item(item_id: str, collection: str, when: str, lon: float, cloud: float | None) -> pystac.Item:
    geom = {
        "type": "Polygon",
        "coordinates": [
            [[lon, 10.0], [lon + 0.3, 10.0], [lon + 0.3, 10.3], [lon, 10.3], [lon, 10.0]]
        ],
    }
    props = {} if cloud is None else {"eo:cloud_cover": cloud}
    item = pystac.Item(
        item_id, geom, [lon, 10.0, lon + 0.3, 10.3], pystac.utils.str_to_datetime(when), props
    )
    item.collection_id = collection
    href = (
        f"./{item_id}.tif"
        if collection != "ENMAP_HSI_L2A"
        else f"./{item_id}-SPECTRAL_IMAGE_COG.TIF"
    )
    item.add_asset("image" if collection == "ENMAP_HSI_L2A" else "B04", pystac.Asset(href))
    return item


@pytest.fixture
def static_catalog(tmp_path: Path) -> Path:
    """Two EnMAP scenes and five HLS scenes in nested sub-catalogs, on disk."""
    root = pystac.Catalog("root", "test region")
    enmap, hls = pystac.Catalog("enmap", "EnMAP"), pystac.Catalog("hls", "HLS")
    root.add_children([enmap, hls])
    enmap.add_item(_item("E1", "ENMAP_HSI_L2A", "2024-06-14T10:45:26Z", 0.0, 5.0))
    enmap.add_item(_item("E2", "ENMAP_HSI_L2A", "2024-07-08T10:45:26Z", 0.0, 80.0))
    hls.add_item(_item("S-cloudy", "HLSS30_2.0", "2024-06-12T10:30:00Z", 0.1, 40.0))
    hls.add_item(_item("L-clear-far", "HLSL30_2.0", "2024-06-22T10:30:00Z", 0.1, 2.0))
    hls.add_item(_item("L-clear-near", "HLSL30_2.0", "2024-06-16T10:30:00Z", 0.1, 2.0))
    hls.add_item(_item("S-out-of-window", "HLSS30_2.0", "2024-06-30T10:30:00Z", 0.1, 1.0))
    hls.add_item(_item("L-elsewhere", "HLSL30_2.0", "2024-06-14T10:30:00Z", 5.0, 0.0))
    hls.add_item(_item("Q-quicklook", "ENMAP_HSI_L0_QL", "2024-06-14T10:45:26Z", 0.0, 0.0))
    root.normalize_and_save(str(tmp_path / "cat"), pystac.CatalogType.SELF_CONTAINED)
    return tmp_path / "cat" / "catalog.json"


def test_static_catalog_pairs_least_cloudy_first(static_catalog: Path) -> None:
    region = parse_region("-1,9,1,11")
    result = search(
        _query("2024-06-01", "2024-07-31", region), sources=[resolve_source(str(static_catalog))]
    )
    assert [i.id for i in result.enmap] == ["E1", "E2"]
    assert "L-elsewhere" not in {i.id for i in result.hls}  # outside the region
    assert "Q-quicklook" not in {i.id for i in result.items}  # not a scene collection
    pairs = {p.enmap_id: p.hls_ids for p in result.pairs}
    # E1 (06-14): equal cloud 2 % -> nearer first; 40 % after; 06-30 is 16 days away.
    assert pairs["E1"] == ("L-clear-near", "L-clear-far", "S-cloudy")
    # E2 (07-08): only 06-30 is within 10 days.
    assert pairs["E2"] == ("S-out-of-window",)
    image = result.enmap[0].assets["image"].href
    assert Path(image).is_absolute() and image.endswith("E1-SPECTRAL_IMAGE_COG.TIF")


def test_static_catalog_window_and_cloud_limit(static_catalog: Path) -> None:
    source = resolve_source(str(static_catalog))
    region = parse_region("-1,9,1,11")
    narrow = search(
        _query("2024-06-01", "2024-06-30", region, max_cloud=10, pair_window_days=3),
        sources=[source],
    )
    assert [i.id for i in narrow.enmap] == ["E1"]  # E2 is 80 % cloudy and after the end date
    assert [i.id for i in narrow.hls] == ["L-clear-near", "L-clear-far", "S-out-of-window"]
    assert narrow.pairs[0].hls_ids == ("L-clear-near",)


def test_pairing_without_hls_gives_empty_tuples(static_catalog: Path) -> None:
    items = list(pystac.Catalog.from_file(str(static_catalog)).get_items(recursive=True))
    enmap = [i for i in items if i.collection_id == "ENMAP_HSI_L2A"]
    assert [p.hls_ids for p in pair_scenes(enmap, [])] == [(), ()]


def test_start_after_end_is_rejected() -> None:
    with pytest.raises(ValueError, match="start date 2024-07-01 is after end date 2024-06-01"):
        _query("2024-07-01", "2024-06-01")
    with pytest.raises(ValueError, match=r"outside 0\.\.100"):
        _query("2024-06-01", "2024-07-01", max_cloud=120)


# --- the API path: a real loopback server replaying the real pages ----------------------------


def test_api_search_pages_through_replayed_dlr_pages_with_post(sample_data: Path) -> None:
    features = _features(sample_data, DLR_PAGE)
    with ReplayServer(features, page_size=4) as server:
        result = search(_query("2025-07-08", "2025-07-08"), sources=[_api("enmap-dlr", server.url)])
    assert {i.id for i in result.enmap} == {
        f["id"] for f in features if f["collection"] == "ENMAP_HSI_L2A"
    }
    pages = server.searches()
    assert [r.method for r in pages] == ["POST"] * 5
    assert [r.body.get("startIndex", 0) for r in pages] == [0, 4, 8, 12, 16]  # type: ignore[union-attr]
    first = pages[0].body or {}
    assert first["collections"] == ["ENMAP_HSI_L2A"] and first["limit"] == 50
    assert first["bbox"] == [-180.0, -90.0, 180.0, 90.0]


def test_api_search_never_sends_cloud_filters_to_cmr(sample_data: Path) -> None:
    features = _features(sample_data, LPDAAC_PAGE)
    with ReplayServer(features, page_size=4) as server:
        result = search(
            _query("2021-01-01", "2021-01-31", max_cloud=40),
            sources=[_api("hls-lpdaac", server.url)],
        )
    assert {i.id for i in result.hls} == {
        f["id"] for f in features if f["properties"]["eo:cloud_cover"] <= 40
    }
    pages = server.searches()
    assert [r.query.get("page", ["1"])[0] for r in pages] == [
        "1",
        "2",
        "3",
    ]  # GET paging, CMR style
    for request in pages:
        assert request.method == "GET"
        assert not {"filter", "query", "filter-lang"} & set(request.query)
        assert request.query["collections"] == ["HLSL30_2.0,HLSS30_2.0"]


def test_query_mode_sends_the_cloud_limit(sample_data: Path) -> None:
    with ReplayServer(_features(sample_data, DLR_PAGE), page_size=10) as server:
        source = _api("enmap-dlr", server.url, cloud_filter="query")
        search(_query("2025-07-08", "2025-07-08", max_cloud=30), sources=[source])
    assert server.searches()[0].body["query"] == {"eo:cloud_cover": {"lte": 30}}  # type: ignore[index]


def test_api_search_survives_503s_and_timeouts_and_logs_retries(
    sample_data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    features = _features(sample_data, DLR_PAGE)
    with ReplayServer(features, page_size=2) as clean:
        expected = search(
            _query("2021-01-01", "2025-12-31"), sources=[_api("enmap-dlr", clean.url)]
        )
    caplog.set_level(logging.WARNING, logger="hyperkd.pipeline.stac")
    with ReplayServer(features, page_size=2, share_503=0.3, share_timeout=0.15, seed=7) as flaky:
        result = search(_query("2021-01-01", "2025-12-31"), sources=[_api("enmap-dlr", flaky.url)])
    assert [i.id for i in result.enmap] == [i.id for i in expected.enmap]
    assert [i.id for i in result.hls] == [i.id for i in expected.hls]
    assert len(result.enmap) == 9 and len(flaky.searches()) == 10  # every page, once
    assert flaky.outcomes["503"] >= 2 and flaky.outcomes["timeout"] >= 1
    retries = [
        r
        for r in caplog.records
        if r.name.startswith("hyperkd.pipeline.stac.") and "retry" in r.getMessage()
    ]
    # One log line per injected fault (more only if the loaded machine misses a 0.3 s deadline).
    assert len(retries) >= flaky.outcomes["503"] + flaky.outcomes["timeout"]
    messages = "\n".join(r.getMessage() for r in retries)
    assert "503 Service Unavailable" in messages and "read timeout" in messages
    assert f"POST {flaky.url}/search" in messages


def test_rate_limit_retry_after_is_honoured_but_capped(sample_data: Path) -> None:
    with ReplayServer(
        _features(sample_data, DLR_PAGE), share_429=0.5, retry_after_s=120, seed=1
    ) as server:
        started = time.monotonic()
        result = search(_query("2025-07-08", "2025-07-08"), sources=[_api("enmap-dlr", server.url)])
    assert len(result.enmap) == 9 and server.outcomes["429"] >= 2
    assert time.monotonic() - started < 10  # Retry-After: 120 is capped at backoff_max_s (0.05 s)


def test_persistent_503_gives_one_line_after_the_last_try(
    sample_data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="hyperkd.pipeline.stac")
    policy = dataclasses.replace(FAST, tries=3)
    server = ReplayServer(_features(sample_data, DLR_PAGE), share_503=1.0)
    with server, pytest.raises(StacApiError) as info:
        search(_query("2025-07-08", "2025-07-08"), sources=[_api("enmap-dlr", server.url, policy)])
    assert (
        str(info.value)
        == f"STAC API {server.url} unreachable after 3 tries: 503 Service Unavailable"
    )
    assert len(server.requests) == 3
    assert sum("retry" in r.getMessage() for r in caplog.records) == 2


def test_unreachable_api_fails_fast_with_one_line() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    policy = RetryPolicy(tries=5, backoff_s=0.01, backoff_max_s=0.02, jitter_s=0.0, timeout_s=1.0)
    started = time.monotonic()
    with pytest.raises(StacApiError) as info:
        search(
            _query("2024-01-01", "2024-01-02"),
            sources=[_api("enmap-dlr", f"http://127.0.0.1:{port}", policy)],
        )
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert message.startswith(
        f"STAC API http://127.0.0.1:{port} unreachable after 5 tries: cannot connect"
    )
    assert "Connection refused" in message and "\n" not in message


def test_http_error_that_is_not_retried_is_one_line(sample_data: Path) -> None:
    with ReplayServer(_features(sample_data, DLR_PAGE)) as server:
        with pytest.raises(
            StacApiError, match=r"STAC API http://127\.0\.0\.1:\d+/nope failed: 404 Not Found"
        ):
            search(
                _query("2025-07-08", "2025-07-08"),
                sources=[_api("enmap-dlr", f"{server.url}/nope")],
            )
        assert len(server.requests) == 1
        with pytest.raises(StacApiError, match=r"/conformance gave an unusable answer: \w+"):
            search(
                _query("2025-07-08", "2025-07-08"),
                sources=[_api("enmap-dlr", f"{server.url}/conformance")],
            )


# --- CLI ----------------------------------------------------------------------------------------


def _main(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("hyperkd.cli.stac",))
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_search_prints_scenes_and_pairs(
    static_catalog: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["search", "--source", str(static_catalog), "--region", "-1,9,1,11"]
    code, out, _ = _main(
        [*argv, "--start", "2024-06-01", "--end", "2024-07-31"], monkeypatch, capsys
    )
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["id", "sensor", "collection", "datetime"]
    e1 = next(line for line in lines if line.startswith("E1 "))
    assert "enmap" in e1 and "ENMAP_HSI_L2A" in e1 and "2024-06-14 10:45:26" in e1
    assert e1.rstrip().endswith("L-clear-near, L-clear-far, S-cloudy")
    assert lines[-1] == "2 EnMAP scenes, 4 HLS scenes; 2 of 2 EnMAP scenes paired within +-10 days"


def test_cli_no_scenes_exits_zero(
    static_catalog: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "search",
        "--source",
        str(static_catalog),
        "--region",
        "kansas",
        "--start",
        "2024-06-01",
    ]
    code, out, _ = _main([*argv, "--end", "2024-07-31"], monkeypatch, capsys)
    assert code == 0
    assert out.strip() == "no scenes in region kansas from 2024-06-01 to 2024-07-31"


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--source", "nowhere"], "unknown source 'nowhere': choose one of enmap-dlr"),
        (["--region", "1,2,3"], "invalid bbox '1,2,3': expected 4 numbers"),
        (["--start", "2024-08-01"], "start date 2024-08-01 is after end date 2024-07-31"),
        (["--start", "2024-13-01"], "invalid --start '2024-13-01': expected a date YYYY-MM-DD"),
    ],
)
def test_cli_bad_input_is_one_line(
    static_catalog: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    problem: str,
) -> None:
    opts = {
        "--source": str(static_catalog),
        "--region": "-1,9,1,11",
        "--start": "2024-06-01",
        "--end": "2024-07-31",
    }
    opts.update(dict(zip(args[::2], args[1::2], strict=True)))
    code, out, err = _main(["search", *[x for kv in opts.items() for x in kv]], monkeypatch, capsys)
    assert code == 2 and out == ""
    assert err == f"hyperkd search: error: {problem}" + err.split(problem, 1)[1]
    assert err.count("\n") == 1


def test_cli_shared_options_build_a_query() -> None:
    import argparse

    from hyperkd.cli.stac import add_search_arguments, search_query_from_args

    parser = argparse.ArgumentParser()
    add_search_arguments(parser)
    args = parser.parse_args(
        ["--source", "enmap-dlr", "--source", "hls-lpdaac", "--region", "colorado", "--start", "2024-05-01",
         "--end", "2024-09-30", "--max-cloud", "20", "--pair-window", "5"]
    )  # fmt: skip
    query = search_query_from_args(args)
    assert query.sources == ("enmap-dlr", "hls-lpdaac")
    assert query.region.name == "colorado" and query.max_cloud == 20 and query.pair_window_days == 5
    assert query.time_range[1] == dt.datetime(2024, 9, 30, 23, 59, 59, 999999, tzinfo=dt.UTC)


# --- the real internet (never in CI) --------------------------------------------------------------


@pytest.mark.network
def test_real_dlr_search() -> None:
    query = SearchQuery(
        ("enmap-dlr",),
        parse_region("13.0,52.3,13.2,52.45"),
        dt.date(2024, 6, 1),
        dt.date(2024, 8, 31),
    )
    result = search(query)
    assert result.enmap, "DLR lists EnMAP scenes over Potsdam in summer 2024"
    assert all(i.collection_id == "ENMAP_HSI_L2A" for i in result.enmap)
