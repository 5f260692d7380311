"""Credentials for reading assets: Earthdata, DLR, Planetary Computer. Never stored, never logged.

* NASA Earthdata (``hls-lpdaac``): a bearer token in ``EARTHDATA_TOKEN``, else a netrc entry for
  ``urs.earthdata.nasa.gov``; GDAL also needs a cookie jar to follow the login redirect.
* DLR (``enmap-dlr``): a netrc entry for ``download.geoservice.dlr.de``.
* Planetary Computer: each href is signed with a SAS token just before it is read
  (:func:`reading_href`); tokens are cached per storage account/container until shortly before
  they expire. Signed hrefs are never stored: provenance keeps :func:`clean_href`.

Hosts, env names and the token endpoint come from the source's YAML. Every secret read here is
registered with :func:`redact`, which scrubs it from any text.
"""

from __future__ import annotations

import datetime as dt
import netrc
import os
import threading
from pathlib import Path
from urllib.parse import urlsplit

import requests

from hyperkd.pipeline.redaction import (
    clean_href,
    redact,
    redacted_logger,
    register_secret,
    strip_credentials,
)
from hyperkd.pipeline.stac.http import StacApiError, final_error, retrying_session
from hyperkd.pipeline.stac.sources import Source

__all__ = ["clean_href", "gdal_env", "reading_href", "redact", "strip_credentials"]

log = redacted_logger(__name__)

_token_lock = threading.Lock()
_token_cache: dict[tuple[str, str, str], tuple[str, dt.datetime]] = {}


class SecretEnv(dict[str, str]):
    """GDAL config options that may hold a secret; ``repr``/``str`` show keys only."""

    def __repr__(self) -> str:
        return "SecretEnv(" + ", ".join(f"{k}=***" for k in self) + ")"

    __str__ = __repr__


def netrc_path() -> Path | None:
    """The netrc file: ``$NETRC``, else ``~/.netrc`` (``~/_netrc`` on Windows), if it exists."""
    env = os.environ.get("NETRC")
    candidates = [Path(env)] if env else [Path.home() / ".netrc", Path.home() / "_netrc"]
    return next((p for p in candidates if p.is_file()), None)


def netrc_login(host: str) -> tuple[str, str] | None:
    """``(login, password)`` for ``host`` from the netrc file, ``None`` when absent."""
    path = netrc_path()
    if path is None:
        return None
    try:
        entry = netrc.netrc(str(path)).authenticators(host)
    except (netrc.NetrcParseError, OSError) as exc:
        # The parse error quotes the offending line, which may be a password.
        raise ValueError(f"cannot read netrc file {path}: {redact(exc)}") from None
    if entry is None:
        return None
    login, _, password = entry
    register_secret(password)
    return (login or "", password or "")


def gdal_env(source: Source) -> dict[str, str]:
    """GDAL/rasterio config options to read ``source``'s assets (``rasterio.Env(**env)``).

    The result may contain a bearer token: pass it to GDAL, never log or store it (its
    ``repr`` hides the values). Raises ``ValueError`` naming what to set when the source needs
    credentials that are missing.
    """
    env = SecretEnv(source.gdal)
    if source.auth == "earthdata":
        token = os.environ.get(source.token_env or "EARTHDATA_TOKEN", "").strip()
        if token:
            register_secret(token)
            env.update(GDAL_HTTP_AUTH="BEARER", GDAL_HTTP_BEARER=token)
        else:
            path = _require_netrc(source)
            env.update(GDAL_HTTP_NETRC="YES", GDAL_HTTP_NETRC_FILE=str(path))
        if source.cookies:
            cookies = _cookie_jar()
            env.update(GDAL_HTTP_COOKIEFILE=str(cookies), GDAL_HTTP_COOKIEJAR=str(cookies))
    elif source.auth == "dlr":
        path = _require_netrc(source)
        env.update(GDAL_HTTP_NETRC="YES", GDAL_HTTP_NETRC_FILE=str(path))
    return env


def reading_href(href: str, source: Source) -> str:
    """The href to read right now: SAS-signed for Planetary Computer blobs, else unchanged.

    Any query string already on a blob href is dropped first: an old signature would not be
    refreshed (planetary-computer-sdk-for-python #65). Call this just before each read and
    never keep the result.
    """
    signing = source.signing
    if not signing or signing.get("kind") != "planetary-computer":
        return href
    parts = urlsplit(href)
    suffix = str(signing.get("blob_host_suffix", ".blob.core.windows.net"))
    host = parts.hostname or ""
    if parts.scheme != "https" or not host.endswith(suffix):
        return href  # local files and other hosts need no SAS token
    account = host.removesuffix(suffix)
    container = parts.path.lstrip("/").split("/", 1)[0]
    if not account or not container:
        raise ValueError(f"cannot sign {clean_href(href)}: no storage account/container in it")
    token = _sas_token(source, account, container)
    return f"{clean_href(href)}?{token}"


def _sas_token(source: Source, account: str, container: str) -> str:
    """A SAS token for ``account/container``, cached until ``refresh_margin_s`` before expiry."""
    signing = source.signing or {}
    base = str(signing["token_url"]).rstrip("/")
    margin = dt.timedelta(seconds=float(signing.get("refresh_margin_s", 300)))
    key = (base, account, container)
    now = dt.datetime.now(dt.UTC)
    with _token_lock:
        cached = _token_cache.get(key)
        if cached is not None and now < cached[1] - margin:
            return cached[0]
        session, report = retrying_session(source.retry, "Planetary Computer token endpoint")
        url = f"{base}/{account}/{container}"
        report.start("GET", url)
        try:
            response = session.get(url, timeout=source.retry.timeout_s)
        except requests.RequestException as exc:
            raise final_error(report, source.retry, type(exc).__name__) from None
        finally:
            session.close()
        if response.status_code >= 400:
            raise final_error(report, source.retry, f"{response.status_code} {response.reason}")
        try:
            body = response.json()
            token = str(body["token"])
            expiry = _parse_expiry(str(body["msft:expiry"]))
        except (ValueError, KeyError, TypeError):
            raise StacApiError(
                f"Planetary Computer token endpoint {url} sent no token/expiry"
            ) from None
        register_secret(token)
        _token_cache[key] = (token, expiry)
        log.debug("signed %s/%s until %s", account, container, expiry.isoformat())
        return token


def clear_token_cache() -> None:
    """Forget cached SAS tokens (tests; after a credential change)."""
    with _token_lock:
        _token_cache.clear()


def _parse_expiry(text: str) -> dt.datetime:
    when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _require_netrc(source: Source) -> Path:
    for host in source.netrc_hosts:
        if netrc_login(host) is not None:
            path = netrc_path()
            assert path is not None
            return path
    hosts = ", ".join(source.netrc_hosts) or "(none configured)"
    hint = f"set {source.token_env} or " if source.token_env else ""
    raise ValueError(
        f"source {source.name} needs credentials: {hint}add 'machine {hosts} login ... password ...' "
        "to ~/.netrc (or the file in $NETRC)"
    )


def _cookie_jar() -> Path:
    """A private cookie file for GDAL's Earthdata redirect dance (created 0600)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hyperkd"
    base.mkdir(parents=True, exist_ok=True)
    path = base / "earthdata_cookies.txt"
    if not path.exists():
        path.touch(mode=0o600)
    return path
