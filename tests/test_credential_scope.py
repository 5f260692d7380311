"""Credentials go only to the hosts their source declares, over https, and not past a redirect.

Real GDAL reads (rasterio through ``/vsicurl/``) against loopback file servers that log every
request's headers: a TLS one on 127.0.0.1 that the test declares as a source's host, and a
second one on 127.0.0.2 that the first redirects to.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import pytest
import rasterio
from stac_replay import ReplayServer

from hyperkd.pipeline.ingest.loading import read_header
from hyperkd.pipeline.ingest.region import plan_scenes
from hyperkd.pipeline.stac.credentials import credential_owner, gdal_env
from hyperkd.pipeline.stac.regions import parse_region
from hyperkd.pipeline.stac.search import SearchQuery, search
from hyperkd.pipeline.stac.sources import RetryPolicy, load_source, static_source

TOKEN = "EDL-SCOPE-TOKEN-9d8c7b"
PASSWORD = "NETRC-SCOPE-PW-6e5f4a"
# The loopback server answers GET with Range; GDAL's HEAD probe and directory listing are off.
NO_HEAD = {"CPL_VSIL_CURL_USE_HEAD": "FALSE", "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}
FAST = RetryPolicy(tries=2, backoff_s=0.01, backoff_max_s=0.02, jitter_s=0.0, timeout_s=2.0)


class FileServer:
    """Serves one file (GET/HEAD with Range) on ``host``; logs headers; may redirect all."""

    def __init__(self, host: str, data: bytes, tls: ssl.SSLContext | None = None):
        self.data, self.redirect_to, self.headers = data, None, []
        self.httpd = ThreadingHTTPServer((host, 0), _file_handler(self))
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"{self.scheme}://{host}:{port}"

    def auth(self) -> list[str]:
        return [h["Authorization"] for h in self.headers if "Authorization" in h]

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _file_handler(server: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _serve(self, body: bool) -> None:
            server.headers.append(dict(self.headers.items()))
            if server.redirect_to is not None:
                self.send_response(302)
                self.send_header("Location", server.redirect_to + self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data, status = server.data, 200
            ranged = self.headers.get("Range", "")
            if ranged.startswith("bytes="):
                a, _, b = ranged[6:].partition("-")
                end = min(int(b) if b else len(data) - 1, len(data) - 1)
                data, status = data[int(a) : end + 1], 206
                content_range = f"bytes {a}-{end}/{len(server.data)}"
            self.send_response(status)
            if status == 206:
                self.send_header("Content-Range", content_range)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

    return Handler


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, Path]:
    """A self-signed certificate for 127.0.0.1 and 127.0.0.2 (server context, CA file)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hyperkd loopback")])
    now = dt.datetime.now(dt.UTC)
    sans = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", "127.0.0.2")]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context, cert_file


@pytest.fixture(scope="module")
def tif(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("tif") / "b04.tif"
    profile = {"driver": "GTiff", "width": 8, "height": 8, "count": 1, "dtype": "int16"}
    transform = rasterio.Affine(30.0, 0.0, 362175.0, 0.0, -30.0, 5810000.0)
    with rasterio.open(path, "w", crs="EPSG:32633", transform=transform, **profile) as f:
        f.write(np.arange(64, dtype=np.int16).reshape(1, 8, 8))
    return path.read_bytes()


@pytest.fixture
def secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A bearer token in the environment and a netrc with entries for both loopback hosts."""
    netrc = tmp_path / "netrc"
    netrc.write_text(
        f"machine 127.0.0.1 login alice password {PASSWORD}\n"
        f"machine 127.0.0.2 login mallory password {PASSWORD}\n"
    )
    netrc.chmod(0o600)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("EARTHDATA_TOKEN", TOKEN)
    return netrc


def _earthdata(ca: Path, hosts: tuple[str, ...]):
    """hls-lpdaac with the loopback host(s) declared, trusting the test CA."""
    source = load_source("hls-lpdaac")
    gdal = dict(source.gdal) | {"GDAL_CURL_CA_BUNDLE": str(ca), "CURL_CA_BUNDLE": str(ca)}
    gdal.pop("CPL_VSIL_CURL_ALLOWED_EXTENSIONS", None)
    return dataclasses.replace(source, credential_hosts=hosts, gdal=gdal, retry=FAST)


def test_bearer_reaches_a_declared_https_host_but_not_its_redirect(tls, tif, secrets) -> None:
    context, ca = tls
    with FileServer("127.0.0.1", tif, context) as a, FileServer("127.0.0.2", tif, context) as b:
        a.redirect_to = b.url
        header = read_header(f"{a.url}/granule/b04.tif", _earthdata(ca, ("127.0.0.1",)))
    assert header.grid.shape == (8, 8)  # the read really went through
    assert a.auth() and set(a.auth()) == {f"Bearer {TOKEN}"}  # the declared host: yes
    assert b.headers and b.auth() == []  # its redirect target: never


def test_plain_http_to_a_declared_host_carries_no_credential(tif, secrets, tls) -> None:
    _, ca = tls
    with FileServer("127.0.0.1", tif) as a:
        header = read_header(f"{a.url}/granule/b04.tif", _earthdata(ca, ("127.0.0.1",)))
    assert header.count == 1 and a.headers and a.auth() == []


def test_undeclared_hosts_get_neither_token_nor_netrc(tls, tif, secrets) -> None:
    context, ca = tls
    source = _earthdata(ca, load_source("hls-lpdaac").credential_hosts)  # the real hosts only
    with FileServer("127.0.0.1", tif, context) as a:
        read_header(f"{a.url}/b04.tif", source)
    assert a.headers and a.auth() == []  # GDAL's own netrc lookup is off (127.0.0.1 is in it)


def test_netrc_goes_only_to_its_declared_host(tls, tif, secrets) -> None:
    context, ca = tls
    dlr = load_source("enmap-dlr")
    gdal = {"GDAL_CURL_CA_BUNDLE": str(ca), "CURL_CA_BUNDLE": str(ca)} | NO_HEAD
    source = dataclasses.replace(
        dlr, credential_hosts=("127.0.0.1",), netrc_hosts=("127.0.0.1",), gdal=gdal, retry=FAST
    )
    with FileServer("127.0.0.1", tif, context) as a, FileServer("127.0.0.2", tif, context) as b:
        a.redirect_to = b.url
        read_header(f"{a.url}/x.tif", source)
    assert a.auth() and all(v.startswith("Basic ") for v in a.auth())
    assert b.headers and b.auth() == []  # 127.0.0.2 is in the user's netrc, not in the scope


def test_mixed_hosts_in_one_read_are_refused(secrets) -> None:
    source = load_source("hls-lpdaac")
    ok = "https://data.lpdaac.earthdatacloud.nasa.gov/lp-prod-protected/x.B04.tif"
    with pytest.raises(ValueError, match="mixes hosts that get credentials"):
        gdal_env(source, [ok, "https://evil.example.org/x.B05.tif"])


def test_credentials_belong_to_hosts_not_to_catalogs() -> None:
    static = static_source("/data/cat/catalog.json")
    lp = "https://data.lpdaac.earthdatacloud.nasa.gov/lp-prod-protected/x.tif"
    assert credential_owner(static, lp).name == "hls-lpdaac"  # type: ignore[union-attr]
    assert credential_owner(static, lp.replace("https", "http")) is None
    assert credential_owner(static, "https://127.0.0.1/x.tif") is None
    assert (
        credential_owner(load_source("hls-lpdaac"), "https://download.geoservice.dlr.de/x") is None
    )


def _hls_item(item_id: str) -> dict[str, Any]:
    geom = {
        "type": "Polygon",
        "coordinates": [[[0, 10], [0.3, 10], [0.3, 10.3], [0, 10.3], [0, 10]]],
    }
    item = pystac.Item(
        item_id, geom, [0, 10, 0.3, 10.3], dt.datetime(2024, 6, 15, tzinfo=dt.UTC), {}
    )
    item.collection_id = "HLSL30_2.0"
    item.add_asset("B04", pystac.Asset("https://data.lpdaac.earthdatacloud.nasa.gov/x/B04.tif"))
    return item.to_dict()


def test_items_are_routed_to_the_source_that_named_them(tmp_path: Path) -> None:
    """``--source hls-lpdaac --source catalog.json``: the catalog's HLS items stay the catalog's."""
    enmap = pystac.Item.from_dict(_hls_item("E1"))
    enmap.collection_id = "ENMAP_HSI_L2A"
    enmap.assets.clear()
    enmap.add_asset("image", pystac.Asset("./E1.tif"))
    catalog = pystac.Catalog("cat", "a static catalog with HLS items")
    catalog.add_items([enmap, pystac.Item.from_dict(_hls_item("H-static"))])
    catalog.normalize_and_save(str(tmp_path / "cat"), pystac.CatalogType.SELF_CONTAINED)
    static = static_source(str(tmp_path / "cat" / "catalog.json"))
    query = SearchQuery(
        ("x",), parse_region("0,10,0.3,10.3"), dt.date(2024, 6, 1), dt.date(2024, 6, 30)
    )
    with ReplayServer([_hls_item("H-api")]) as server:
        api = dataclasses.replace(load_source("hls-lpdaac"), url=server.url, retry=FAST)
        result = search(query, sources=[api, static])
    planned = {p.item.id: p.source.name for p in plan_scenes(result, [api, static])}
    assert planned == {"E1": static.name, "H-static": static.name, "H-api": "hls-lpdaac"}
    assert json.dumps(result.origin)  # small and serialisable: names, not objects
