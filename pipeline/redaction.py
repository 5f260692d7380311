"""Keep secrets out of text: logs, error messages, cube attributes, flow results.

Two layers: patterns (``user:pass@`` in URLs, SAS/presigned query strings, bearer headers,
``token=``/``password`` fields) and a registry of the exact secret strings this process has
read (Earthdata token, netrc passwords, SAS tokens), which catches them in any shape.
"""

from __future__ import annotations

import logging
import re
import threading
from urllib.parse import parse_qsl, urlsplit, urlunsplit

MASK = "***"

# Query keys that make a URL a credential: Azure SAS, S3 presigned, generic tokens.
_SECRET_QUERY_KEYS = frozenset(
    k.lower()
    for k in (
        "sig", "se", "st", "sp", "sv", "sr", "skoid", "sktid", "skt", "ske", "sks", "skv",
        "token", "access_token", "api_key", "apikey", "key", "password", "passwd", "secret",
        "x-amz-signature", "x-amz-credential", "x-amz-security-token", "signature",
        "googleaccessid", "x-goog-signature", "x-goog-credential",
    )
)  # fmt: skip
_URL = re.compile(r"""(?i)\b[a-z][a-z0-9+.\-]*://[^\s'"<>`]+""")
_USERINFO = re.compile(r"(?i)(\b[a-z][a-z0-9+.\-]*://)[^/\s@'\"]+@")
_AUTH_HEADER = re.compile(
    r"""(?i)(authorization['"]?\s*[:=]\s*['"]?)(?:(bearer|basic|token)\s+)?[^'",\s}]+"""
)
_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9\-._~+/=]{8,}")
_FIELD = re.compile(
    r"""(?i)(\b(?:[a-z_]*token|password|passwd|secret|sig|x-amz-signature)['"]?\s*[=:]\s*['"]?)"""
    r"""[^'"&\s,}]+"""
)
_NETRC_PASSWORD = re.compile(r"(?i)(\bpassword\s+)\S+")

_lock = threading.Lock()
_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Remember a secret string so :func:`redact` removes it wherever it shows up."""
    # Very short values would mask ordinary words; real tokens and passwords are longer.
    if value and len(value) >= 4:
        with _lock:
            _secrets.add(value)


def redact(text: object) -> str:
    """``text`` with tokens, passwords, SAS query strings and ``user:pass@`` removed."""
    out = str(text)
    with _lock:
        known = sorted(_secrets, key=len, reverse=True)
    for secret in known:
        out = out.replace(secret, MASK)
    out = _URL.sub(lambda m: _redact_url(m.group(0)), out)
    out = _AUTH_HEADER.sub(
        lambda m: m.group(1) + (m.group(2) + " " if m.group(2) else "") + MASK, out
    )
    out = _BEARER.sub(lambda m: f"{m.group(1)} {MASK}", out)
    out = _NETRC_PASSWORD.sub(lambda m: m.group(1) + MASK, out)
    out = _FIELD.sub(lambda m: m.group(1) + MASK, out)
    return out


def _redact_url(url: str) -> str:
    url = _USERINFO.sub(lambda m: m.group(1) + MASK + "@", url)
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if not parts.query:
        return url
    keys = {k.lower() for k, _ in parse_qsl(parts.query, keep_blank_values=True)}
    if keys & _SECRET_QUERY_KEYS:
        # A SAS query string is one credential: drop all of it rather than guess which part leaks.
        return urlunsplit((parts.scheme, parts.netloc, parts.path, MASK, parts.fragment))
    return url


def clean_href(href: str) -> str:
    """``href`` without ``user:pass@``, query string and fragment, for provenance.

    Local paths pass through unchanged.
    """
    parts = urlsplit(href)
    if not parts.scheme or len(parts.scheme) == 1:  # a path, or a Windows drive letter
        return href
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def strip_credentials(href: str) -> str:
    """``href`` without ``user:pass@`` and without a credential-bearing query string.

    Unlike :func:`clean_href` an ordinary query (``?f=json``) is kept, so the href still works.
    """
    parts = urlsplit(href)
    if not parts.scheme or len(parts.scheme) == 1:
        return href
    keys = {k.lower() for k, _ in parse_qsl(parts.query, keep_blank_values=True)}
    query = "" if keys & _SECRET_QUERY_KEYS else parts.query
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, query, parts.fragment))


class RedactingFilter(logging.Filter):
    """A logging filter that redacts the formatted message of every record it sees."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken %-format must not break logging
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


# Our own modules that log URLs take their logger from :func:`redacted_logger`, so a module
# that moves keeps its filter; these are the third-party loggers that see the same URLs.
_FILTERED_LOGGERS = (
    # Third-party loggers that print URLs and request headers (pystac-client logs headers at DEBUG).
    "pystac_client.stac_api_io",
    "urllib3.connectionpool",
    "urllib3.util.retry",
    # GDAL messages (rasterio's CPL error handler) quote the URL that failed, signature included.
    "rasterio._env",
    "rasterio._err",
)


def redacted_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` with a :class:`RedactingFilter`, plus the third-party loggers.

    Modules that log URLs, hrefs or headers call this with ``__name__`` instead of
    ``logging.getLogger``: the filter travels with the module, whatever it is named.
    """
    logger = logging.getLogger(name)
    if not any(isinstance(f, RedactingFilter) for f in logger.filters):
        logger.addFilter(RedactingFilter())
    install_log_redaction()
    return logger


def install_log_redaction() -> None:
    """Attach a :class:`RedactingFilter` to the loggers that see URLs and headers (idempotent)."""
    for name in _FILTERED_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter())
