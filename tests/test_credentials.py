"""Credentials: redaction, GDAL auth options, Planetary Computer signing, and no leaks anywhere."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import importlib
import json
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from stac_replay import ReplayServer, TokenServer

from hyperkd.pipeline.stac.credentials import (
    clean_href,
    clear_token_cache,
    gdal_env,
    reading_href,
    redact,
    strip_credentials,
)
from hyperkd.pipeline.stac.http import StacApiError
from hyperkd.pipeline.stac.regions import parse_region
from hyperkd.pipeline.stac.search import SearchQuery, SearchResult, search
from hyperkd.pipeline.stac.sources import RetryPolicy, Source, load_source

TOKEN = "EDL-TOKEN-SECRET-1f2e3d"
PASSWORD = "NETRC-PW-SECRET-4c5b6a"
SAS_SIG = "SAS-SIG-SECRET-7a8b9c"
FAST = RetryPolicy(tries=3, backoff_s=0.01, backoff_max_s=0.02, jitter_s=0.0, timeout_s=1.0)
LPDAAC = "https://data.lpdaac.earthdatacloud.nasa.gov/lp-prod-protected/HLSL30.020/x/x.B04.tif"
DLR = "https://download.geoservice.dlr.de/ENMAP/files/L2A/x/x-SPECTRAL_IMAGE.TIF"
BLOB = "https://hlsstorage.blob.core.windows.net/hls2/L30/2024/HLS.L30.T13SDA.2024120T173913.v2.0.B04.tif"


@pytest.fixture
def netrc_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HOME and NETRC in a tmp folder; the netrc holds Earthdata, DLR and loopback entries."""
    path = tmp_path / "netrc"
    path.write_text(
        f"machine urs.earthdata.nasa.gov login bob password {PASSWORD}\n"
        f"machine download.geoservice.dlr.de login carol password {PASSWORD}\n"
        f"machine 127.0.0.1 login alice password {PASSWORD}\n"
    )
    path.chmod(0o600)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(path))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("EARTHDATA_TOKEN", raising=False)
    return path


@pytest.fixture
def token_server() -> Iterator[TokenServer]:
    clear_token_cache()
    with TokenServer() as server:
        yield server
    clear_token_cache()


def _pc_source(token_server: TokenServer):
    source = load_source("hls-planetary-computer")
    signing = dict(source.signing or {}) | {"token_url": token_server.token_url}
    return dataclasses.replace(source, signing=signing, retry=FAST)


# --- redact / clean_href ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("GET https://bob:hunter2pw@example.org/x.tif failed", "hunter2pw"),
        (f"{BLOB}?st=2024&se=2030&sp=rl&sv=2021&sr=c&sig=abc%2Fdef123", "sig=abc"),
        (
            "https://bucket.s3.amazonaws.com/k?X-Amz-Credential=AKIA42&X-Amz-Signature=ffee00",
            "AKIA42",
        ),
        ("{'Authorization': 'Bearer eyJhbGciOiJSUzI1NiJ9.payload'}", "eyJhbGci"),
        ("Authorization: Basic YWxpY2U6cGFzc3dvcmQ=", "YWxpY2U6"),
        ('{"token": "abc123def456", "msft:expiry": "2030"}', "abc123def456"),
        ("EARTHDATA_TOKEN=zzzz9999yyyy", "zzzz9999yyyy"),
        ("machine urs.earthdata.nasa.gov login bob password p4ssw0rd!", "p4ssw0rd!"),
    ],
)
def test_redact_removes_credentials(text: str, secret: str) -> None:
    cleaned = redact(text)
    assert secret not in cleaned
    assert "***" in cleaned


def test_redact_keeps_ordinary_urls() -> None:
    text = "GET https://geoservice.dlr.de/eoc/ogc/stac/v1/search?f=application%2Fgeo%2Bjson page 2"
    assert redact(text) == text


def test_clean_href_and_strip_credentials() -> None:
    signed = f"https://bob:pw@{BLOB.removeprefix('https://')}?sv=2021&sig=xyz"
    assert clean_href(signed) == BLOB
    assert strip_credentials(signed) == BLOB
    dlr = "https://geoservice.dlr.de/eoc/ogc/stac/v1?f=application/json"
    assert strip_credentials(dlr) == dlr  # an ordinary query stays
    assert clean_href(dlr) == "https://geoservice.dlr.de/eoc/ogc/stac/v1"
    assert clean_href("/data/scene.tif") == "/data/scene.tif"


# --- gdal_env ----------------------------------------------------------------------------------


def test_earthdata_token_becomes_a_bearer_header(
    netrc_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EARTHDATA_TOKEN", TOKEN)
    env = gdal_env(load_source("hls-lpdaac"), [LPDAAC])
    assert env["GDAL_HTTP_NETRC"] == "NO"  # the bearer token, and no netrc besides
    assert env["GDAL_HTTP_AUTH"] == "BEARER" and env["GDAL_HTTP_BEARER"] == TOKEN
    assert env["GDAL_HTTP_COOKIEFILE"] == env["GDAL_HTTP_COOKIEJAR"]
    cookies = Path(env["GDAL_HTTP_COOKIEJAR"])
    assert cookies.is_file() and cookies.stat().st_mode & 0o077 == 0
    assert env["CPL_VSIL_CURL_USE_HEAD"] == "FALSE"  # per-source GDAL options from the YAML
    assert TOKEN not in repr(env) and TOKEN not in str(env)


def test_earthdata_and_dlr_fall_back_to_netrc(netrc_home: Path) -> None:
    for name, href, host in (
        ("hls-lpdaac", LPDAAC, "urs.earthdata.nasa.gov"),
        ("enmap-dlr", DLR, "download.geoservice.dlr.de"),
    ):
        env = gdal_env(load_source(name), [href])
        assert env["GDAL_HTTP_NETRC"] == "YES"
        assert "GDAL_HTTP_BEARER" not in env
        # GDAL sees a private copy holding only the source's own hosts, not 127.0.0.1 & co.
        scoped = Path(env["GDAL_HTTP_NETRC_FILE"])
        assert scoped != netrc_home and scoped.stat().st_mode & 0o077 == 0
        assert (
            scoped.read_text()
            == f"machine {host} login {'bob' if 'urs' in host else 'carol'} password {PASSWORD}\n"
        )


def test_missing_credentials_say_what_to_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("NETRC", raising=False)
    monkeypatch.delenv("EARTHDATA_TOKEN", raising=False)
    with pytest.raises(
        ValueError, match=r"set EARTHDATA_TOKEN or add 'machine urs\.earthdata\.nasa\.gov"
    ):
        gdal_env(load_source("hls-lpdaac"), [LPDAAC])
    with pytest.raises(ValueError, match=r"add 'machine download\.geoservice\.dlr\.de login"):
        gdal_env(load_source("enmap-dlr"), [DLR])
    assert dict(gdal_env(load_source("hls-planetary-computer"), [BLOB])) == {
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        "GDAL_HTTP_NETRC": "NO",
    }


# --- Planetary Computer signing -----------------------------------------------------------------


def test_reading_href_signs_with_a_cached_token(token_server: TokenServer) -> None:
    source = _pc_source(token_server)
    first = reading_href(BLOB, source)
    assert first.startswith(BLOB + "?") and "sig=SAS-TOKEN-1-hlsstorage-hls2" in first
    again = reading_href(BLOB.replace("B04", "B05"), source)
    assert "SAS-TOKEN-1-" in again and len(token_server.requests) == 1  # cached per container
    other = reading_href("https://hlsstorage.blob.core.windows.net/other/x.tif", source)
    assert "SAS-TOKEN-2-hlsstorage-other" in other
    assert token_server.requests == [
        "/api/sas/v1/token/hlsstorage/hls2",
        "/api/sas/v1/token/hlsstorage/other",
    ]


def test_reading_href_replaces_an_old_signature(token_server: TokenServer) -> None:
    stale = f"{BLOB}?se=2020-01-01&sig=STALE"
    signed = reading_href(stale, _pc_source(token_server))
    assert "STALE" not in signed and signed.count("?") == 1 and "SAS-TOKEN-1" in signed


def test_token_is_refreshed_before_it_expires(token_server: TokenServer) -> None:
    token_server.lifetime_s = 60  # inside the 300 s refresh margin: every read re-signs
    source = _pc_source(token_server)
    assert "SAS-TOKEN-1" in reading_href(BLOB, source)
    assert "SAS-TOKEN-2" in reading_href(BLOB, source)


def test_only_blob_hrefs_are_signed(token_server: TokenServer) -> None:
    source = _pc_source(token_server)
    assert reading_href("/data/local/B04.tif", source) == "/data/local/B04.tif"
    assert reading_href("https://example.org/B04.tif", source) == "https://example.org/B04.tif"
    assert reading_href(BLOB, load_source("hls-lpdaac")) == BLOB
    assert token_server.requests == []


# --- nothing leaks ---------------------------------------------------------------------------------


@pytest.fixture
def signed_features(sample_data: Path) -> list[dict[str, Any]]:
    """The recorded 20-item DLR page, as a server that hands out SAS-signed asset URLs would."""
    features = json.loads(
        (sample_data / "stac" / "enmap_dlr_stac_search_page_20items.json").read_text()
    )["features"]
    for feature in features:
        for asset in feature["assets"].values():
            asset["href"] += f"?sv=2021-06-08&se=2030-01-01&sp=r&sig={SAS_SIG}"
    return features


def _whole_world_query() -> SearchQuery:
    """One day, anywhere: the replay ignores filters, so only the query's shape matters."""
    return SearchQuery(
        ("x",), parse_region("-180,-90,180,90"), dt.date(2025, 7, 8), dt.date(2025, 7, 8)
    )


def _dlr_at(url: str) -> Source:
    """The shipped DLR source pointed at ``url``, retrying fast."""
    return dataclasses.replace(load_source("enmap-dlr"), url=url, retry=FAST)


def _unreachable_url_with_secrets() -> str:
    """A STAC URL carrying the netrc password and the token, on a loopback port nobody serves."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://alice:{PASSWORD}@127.0.0.1:{port}/stac?token={TOKEN}"


def _unreachable_api_error(query: SearchQuery) -> str:
    """The message of the error a search against an unreachable, credentialed URL raises."""
    with pytest.raises(StacApiError) as info:
        search(query, sources=[_dlr_at(_unreachable_url_with_secrets())])
    return str(info.value)


def _token_endpoint_error(token_server: TokenServer) -> str:
    """The message of the error signing an already-signed href raises when the endpoint fails."""
    token_server.fail = True
    clear_token_cache()  # a cached token would spare the failing endpoint
    with pytest.raises(StacApiError) as info:
        reading_href(f"{BLOB}?sig={SAS_SIG}", _pc_source(token_server))
    return str(info.value)


def _texts_that_must_stay_clean(
    caplog: pytest.LogCaptureFixture, errors: list[str], result: SearchResult
) -> dict[str, str]:
    """Everything a user or a log collector could see, by where it would show."""
    return {
        "logs": caplog.text,
        "errors": "\n".join(errors),
        "result repr": repr(result),
        "result items": json.dumps([i.to_dict() for i in result.items]),
        "gdal_env repr": repr(gdal_env(load_source("hls-lpdaac"), [LPDAAC])),
    }


def test_secrets_never_reach_logs_errors_or_results(
    signed_features: list[dict[str, Any]],
    netrc_home: Path,
    token_server: TokenServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("EARTHDATA_TOKEN", TOKEN)
    caplog.set_level(logging.DEBUG)
    query = _whole_world_query()
    with ReplayServer(signed_features, page_size=5, share_503=0.2, seed=3) as server:
        result = search(query, sources=[_dlr_at(server.url)])
        signed = reading_href(BLOB, _pc_source(token_server))
        logging.getLogger("hyperkd.pipeline.stac.search").info("would read %s", signed)
        errors = [_unreachable_api_error(query), _token_endpoint_error(token_server)]
    # The secrets were in play (a netrc entry for 127.0.0.1, a signed href), yet the loopback
    # API got no netrc basic auth: STAC requests never read netrc.
    assert all("Authorization" not in r.headers for r in server.requests)
    assert "sig=SAS-TOKEN-" in signed and len(result.enmap) == 9
    assert any("retry" in r.getMessage() for r in caplog.records)
    assert "unreachable after 3 tries" in errors[0] and "token endpoint" in errors[1]
    basic = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    for where, text in _texts_that_must_stay_clean(caplog, errors, result).items():
        for secret in (TOKEN, PASSWORD, SAS_SIG, basic, "SAS-TOKEN-"):
            assert secret not in text, f"{secret!r} leaked into {where}"


@pytest.mark.parametrize(
    "module",
    [
        "hyperkd.pipeline.stac.http",
        "hyperkd.pipeline.stac.search",
        "hyperkd.pipeline.stac.credentials",
        "hyperkd.pipeline.ingest.region",
    ],
)
def test_modules_that_log_urls_keep_their_redaction_when_moved(module: str) -> None:
    # The filter is attached by the module itself (redacted_logger(__name__)), not by a list of
    # names that a move could leave stale.
    from hyperkd.pipeline.redaction import RedactingFilter

    mod = importlib.import_module(module)
    assert mod.log.name == module
    assert any(isinstance(f, RedactingFilter) for f in mod.log.filters)
