"""Credentials for reading assets: Earthdata, DLR, Planetary Computer. Never stored, never logged.

* NASA Earthdata (``hls-lpdaac``): a bearer token in ``EARTHDATA_TOKEN``, else a netrc entry for
  ``urs.earthdata.nasa.gov``; GDAL also needs a cookie jar to follow the login redirect.
* DLR (``enmap-dlr``): a netrc entry for ``download.geoservice.dlr.de``.
* Planetary Computer: each href is signed with a SAS token just before it is read
  (:func:`reading_href`); tokens are cached per storage account/container until shortly before
  they expire. Signed hrefs are never stored: provenance keeps :func:`clean_href`.

Scope: a credential goes only to the hosts its source declares (``auth.hosts``) and only over
https (:func:`credential_owner`); GDAL's own netrc lookup is off everywhere else, and the netrc
it may use holds only the declared hosts' entries. Hosts, env names and the token endpoint
come from the source's YAML. Every secret read here is
registered with :func:`redact`, which scrubs it from any text.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import netrc
import os
import threading
from collections.abc import Sequence
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
from hyperkd.pipeline.stac.sources import Source, shipped_sources

__all__ = [
    "clean_href",
    "credential_owner",
    "gdal_env",
    "reading_href",
    "redact",
    "strip_credentials",
]

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


def credential_owner(source: Source, href: str) -> Source | None:
    """The source whose credentials may go with a read of ``href``, ``None`` for none.

    Only https hrefs on a host the source declares (``auth.hosts`` in its YAML) qualify. A
    static catalog has no credentials of its own: an https href on a host a shipped source
    declares gets that source's credentials, because they belong to the host, not to whoever
    named it. Plain http, loopback replays and undeclared hosts never get any.
    """
    parts = urlsplit(href)
    if parts.scheme != "https":
        return None
    if source.auth is not None:
        return source if source.serves(parts.hostname) else None
    if source.kind == "static":
        for shipped in shipped_sources():
            if shipped.auth is not None and shipped.serves(parts.hostname):
                return shipped
    return None


def gdal_env(source: Source, hrefs: Sequence[str] = ()) -> dict[str, str]:
    """GDAL/rasterio config options to read ``hrefs`` of ``source`` (``rasterio.Env(**env)``).

    GDAL's own netrc lookup is always off (``GDAL_HTTP_NETRC=NO``): it would send any host's
    netrc password to that host. Credentials are added only when every href is https on a
    host the source declares (:func:`credential_owner`); the netrc GDAL then sees holds only
    those hosts' entries. Hrefs that mix credentialed and other hosts are refused.

    The result may contain a bearer token: pass it to GDAL, never log or store it (its
    ``repr`` hides the values). Raises ``ValueError`` naming what to set when the source needs
    credentials that are missing.
    """
    found = [credential_owner(source, h) for h in hrefs]
    owners = {o.name if o else None: o for o in found}
    if len(owners) > 1:
        raise ValueError(
            "one read mixes hosts that get credentials with hosts that do not: "
            + ", ".join(sorted({urlsplit(h).hostname or h for h in map(clean_href, hrefs)}))
        )
    owner = next(iter(owners.values()), None)
    env = SecretEnv({**(owner.gdal if owner else {}), **source.gdal, "GDAL_HTTP_NETRC": "NO"})
    if owner is None:
        return env
    if owner.auth == "earthdata":
        token = os.environ.get(owner.token_env or "EARTHDATA_TOKEN", "").strip()
        if token:
            register_secret(token)
            env.update(GDAL_HTTP_AUTH="BEARER", GDAL_HTTP_BEARER=token)
        else:
            env.update(GDAL_HTTP_NETRC="YES", GDAL_HTTP_NETRC_FILE=str(_scoped_netrc(owner)))
        if owner.cookies:
            cookies = _cookie_jar()
            env.update(GDAL_HTTP_COOKIEFILE=str(cookies), GDAL_HTTP_COOKIEJAR=str(cookies))
    elif owner.auth == "dlr":
        env.update(GDAL_HTTP_NETRC="YES", GDAL_HTTP_NETRC_FILE=str(_scoped_netrc(owner)))
    return env


def reading_href(href: str, source: Source) -> str:
    """The href to read right now: SAS-signed for Planetary Computer blobs, else unchanged.

    Only https hrefs on a declared blob host are signed (:func:`credential_owner`). Any query
    string already on a blob href is dropped first: an old signature would not be refreshed
    (planetary-computer-sdk-for-python #65). Call this just before each read and never keep
    the result.
    """
    owner = credential_owner(source, href)
    signing = owner.signing if owner is not None else None
    if not signing or signing.get("kind") != "planetary-computer":
        return href
    assert owner is not None
    parts = urlsplit(href)
    suffix = str(signing.get("blob_host_suffix", ".blob.core.windows.net"))
    host = parts.hostname or ""
    if not host.endswith(suffix):
        return href
    account = host.removesuffix(suffix)
    container = parts.path.lstrip("/").split("/", 1)[0]
    if not account or not container:
        raise ValueError(f"cannot sign {clean_href(href)}: no storage account/container in it")
    token = _sas_token(owner, account, container)
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


def _scoped_netrc(source: Source) -> Path:
    """A private netrc holding only the user's entries for ``source``'s credential hosts.

    GDAL (libcurl) uses a netrc entry for whichever host it connects to, redirects included;
    a copy limited to the declared hosts keeps every other password out of reach. The file
    is 0600 in a 0700 folder of the user's cache, named by a hash of its content.
    """
    path = _require_netrc(source)
    try:
        hosts = netrc.netrc(str(path)).hosts
    except (netrc.NetrcParseError, OSError) as exc:
        raise ValueError(f"cannot read netrc file {path}: {redact(exc)}") from None
    lines = []
    for host, (login, _, password) in sorted(hosts.items()):
        if source.serves(host):
            register_secret(password)
            lines.append(f"machine {host} login {login} password {password}\n")
    text = "".join(lines)
    folder = _cache_dir() / "netrc"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    scoped = folder / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.netrc"
    if not scoped.exists():
        fd = os.open(
            scoped.with_suffix(f".{os.getpid()}"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600
        )
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(scoped.with_suffix(f".{os.getpid()}"), scoped)
    return scoped


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


def _cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hyperkd"
    base.mkdir(parents=True, exist_ok=True)
    return base


def _cookie_jar() -> Path:
    """A private cookie file for GDAL's Earthdata redirect dance (created 0600)."""
    path = _cache_dir() / "earthdata_cookies.txt"
    if not path.exists():
        path.touch(mode=0o600)
    return path
