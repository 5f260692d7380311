"""The href policy: a catalog's assets are read only under its own root, on declared hosts, or
where the user allows (``--allow-href``); everything else is one line and exit code 2."""

from __future__ import annotations

import os
from pathlib import Path

import pystac
import pytest

from hyperkd.cli import main
from hyperkd.pipeline.stac.hrefs import HrefPolicy

REGION = ["--region", "0,10,0.3,10.3", "--start", "2024-06-01", "--end", "2024-06-30"]


def _catalog(folder: Path, href: str) -> Path:
    """A static catalog with one EnMAP item whose image asset is ``href``."""
    geom = {
        "type": "Polygon",
        "coordinates": [[[0.0, 10.0], [0.3, 10.0], [0.3, 10.3], [0.0, 10.3], [0.0, 10.0]]],
    }
    item = pystac.Item(
        "E1", geom, [0.0, 10.0, 0.3, 10.3], pystac.utils.str_to_datetime("2024-06-14T10:45Z"), {}
    )
    item.collection_id = "ENMAP_HSI_L2A"
    item.add_asset("image", pystac.Asset(href))
    root = pystac.Catalog("root", "href policy test")
    root.add_item(item)
    root.normalize_and_save(str(folder), pystac.CatalogType.SELF_CONTAINED)
    return folder / "catalog.json"


# Each case: an asset href a hostile or careless catalog names, and the reason printed.
REFUSED = [
    ("/vsicurl/https://example.org/x.tif", "GDAL /vsi paths are never read"),
    ("/vsizip//tmp/a.zip/x.tif", "GDAL /vsi paths are never read"),
    ("vsis3://bucket/x.tif", "GDAL /vsi paths are never read"),
    ("file:///etc/passwd", "a local file outside the catalog's folder"),
    ("../../outside/x.tif", "a local file outside the catalog's folder"),
    ("/tmp/elsewhere/x.tif", "a local file outside the catalog's folder"),
    ("http://127.0.0.1:9/x.tif", "host 127.0.0.1 is a loopback, link-local or private address"),
    ("http://localhost/x.tif", "host localhost is a loopback, link-local or private address"),
    ("http://[::1]:8080/x.tif", "host ::1 is a loopback, link-local or private address"),
    ("http://169.254.169.254/latest/x", "host 169.254.169.254 is a loopback, link-local or priv"),
    ("https://10.0.0.5/x.tif", "host 10.0.0.5 is a loopback, link-local or private address"),
    ("https://192.168.1.20/x.tif", "host 192.168.1.20 is a loopback, link-local or private"),
    ("https://evil.example.org/x.tif", "host evil.example.org is neither the catalog's own nor"),
    ("ftp://example.org/x.tif", "scheme 'ftp' is not read from a catalog"),
]


@pytest.mark.parametrize(("href", "reason"), REFUSED)
def test_search_refuses_assets_outside_the_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], href: str, reason: str
) -> None:
    catalog = _catalog(tmp_path / "cat", href)
    rc = main(["search", "--source", str(catalog), *REGION])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1, err
    assert "item E1: asset" in err and reason in err and "--allow-href" in err


def test_a_symlink_out_of_the_root_is_outside(tmp_path: Path, capsys) -> None:
    secret = tmp_path / "private" / "x.tif"
    secret.parent.mkdir()
    secret.write_bytes(b"not for catalogs")
    catalog = _catalog(tmp_path / "cat", "./link.tif")
    os.symlink(secret, tmp_path / "cat" / "E1" / "link.tif")  # beside the item
    assert main(["search", "--source", str(catalog), *REGION]) == 2
    assert "outside the catalog's folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    "href",
    ["http://127.0.0.1:9/x.tif", "/vsicurl/https://example.org/x.tif", "file:///etc/passwd"],
)
def test_ingest_refuses_before_writing_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], href: str
) -> None:
    catalog = _catalog(tmp_path / "cat", href)
    out = tmp_path / "cube.zarr"
    rc = main(["ingest", "--source", str(catalog), *REGION, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "refused" in err and "--allow-href" in err
    assert not out.exists()  # nothing created, nothing half-written


def test_allow_href_opens_what_the_user_trusts(tmp_path: Path, capsys) -> None:
    catalog = _catalog(tmp_path / "cat", "http://127.0.0.1:9/x.tif")
    allow = ["--allow-href", "http://127.0.0.1:*"]
    assert main(["search", "--source", str(catalog), *REGION, *allow]) == 0
    assert "E1" in capsys.readouterr().out
    # A pattern for another port does not cover it.
    other = ["--allow-href", "http://127.0.0.1:8*"]
    assert main(["search", "--source", str(catalog), *REGION, *other]) == 2


@pytest.mark.parametrize(
    "href",
    [
        "./E1/image.tif",  # beside the item, under the root
        "https://download.geoservice.dlr.de/ENMAP/x.TIF",  # declared by enmap-dlr
        "https://data.lpdaac.earthdatacloud.nasa.gov/lp-prod-protected/x.tif",
        "https://hlsstorage.blob.core.windows.net/hls2/x.tif",  # .blob.core.windows.net
    ],
)
def test_the_default_policy_reads_the_root_and_declared_hosts(tmp_path: Path, href: str) -> None:
    catalog = _catalog(tmp_path / "cat", href)
    assert main(["search", "--source", str(catalog), *REGION]) == 0


def test_policy_units() -> None:
    local = HrefPolicy.for_catalog("/data/cat/catalog.json")
    assert local.refusal("/data/cat/sub/x.tif") is None
    assert local.refusal("/data/catalogue/x.tif") is not None  # a sibling with a common prefix
    assert local.refusal("file:///data/cat/x.tif") is None
    remote = HrefPolicy.for_catalog("https://stac.example.org/cat/catalog.json")
    assert remote.refusal("https://stac.example.org/cat/items/x.tif") is None
    assert remote.refusal("https://stac.example.org/other/x.tif") is not None
    api = HrefPolicy.for_catalog(None)
    assert api.refusal("https://download.geoservice.dlr.de/x.TIF") is None
    assert api.refusal("https://sub.download.geoservice.dlr.de.evil.org/x") is not None
    assert HrefPolicy.for_catalog(None, ["/vsicurl/*"]).refusal("/vsicurl/https://x/y") is None


def test_the_flow_parameter_reaches_the_search(tmp_path: Path) -> None:
    import datetime as dt

    from hyperkd.flows.params import PipelineParams
    from hyperkd.flows.tasks import search_scenes
    from hyperkd.pipeline.stac.hrefs import HrefRefusedError

    catalog = str(_catalog(tmp_path / "cat", "http://127.0.0.1:9/x.tif"))
    params = PipelineParams(
        region="0,10,0.3,10.3", sources=(catalog,), start="2024-06-01", end="2024-06-30",
        out=str(tmp_path / "out"), allow_hrefs=("http://127.0.0.1:*",),
    )  # fmt: skip
    args = (params.sources, params.region, dt.date(2024, 6, 1), dt.date(2024, 6, 30), None, 10)
    with pytest.raises(HrefRefusedError, match="refused"):
        search_scenes.fn(*args)
    refs = search_scenes.fn(*args, params.allow_hrefs)
    assert [r.id for r in refs] == ["E1"]
