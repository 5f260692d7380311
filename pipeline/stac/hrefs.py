"""Which asset hrefs a catalog may make us read (docs/cube.md, "Href policy").

A static catalog can point its assets anywhere: other folders, ``/vsi*`` GDAL paths, or
services on this machine or its network. By default an asset to be read must be

* under the catalog's own root (the folder, or URL prefix, holding its ``catalog.json``), or
* on an http(s) host that a shipped source declares (``asset_hosts`` in catalogs/sources).

Always refused unless a ``--allow-href`` pattern matches: ``/vsi*`` prefixes (and ``vsi*``
schemes), ``file://`` or plain paths outside the root, schemes other than http(s)/file, and
hosts that are loopback, link-local or private addresses (``localhost`` included). A pattern
is an ``fnmatch`` glob matched against the whole absolute href (``*`` crosses ``/``), e.g.
``http://127.0.0.1:*`` or ``/data/stac/*``.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from hyperkd.pipeline.redaction import clean_href
from hyperkd.pipeline.stac.sources import declared_asset_hosts, host_matches

__all__ = ["HrefPolicy", "HrefRefusedError"]


class HrefRefusedError(ValueError):
    """An asset href outside what the catalog may name; one line, with the way to allow it."""


@dataclass(frozen=True)
class HrefPolicy:
    """The assets a catalog may make us read.

    ``root``: the catalog's own folder (absolute path) or URL prefix (ending in ``/``);
    ``None`` for STAC APIs. ``hosts``: http(s) hosts read without a pattern (``.x.org``
    matches subdomains). ``allow``: the user's ``--allow-href`` globs.
    """

    root: str | None = None
    hosts: tuple[str, ...] = ()
    allow: tuple[str, ...] = ()

    @classmethod
    def for_catalog(cls, url: str | None, allow: Sequence[str] = ()) -> HrefPolicy:
        """The default policy for a catalog at ``url`` (``None``: an API, no root)."""
        root = None
        if url is not None:
            parts = urlsplit(url)
            if parts.scheme in ("http", "https"):
                root = url.rsplit("/", 1)[0] + "/"
            else:
                root = os.path.dirname(os.path.realpath(_local_path(url)))
        return cls(root=root, hosts=declared_asset_hosts(), allow=tuple(allow))

    def refusal(self, href: str) -> str | None:
        """Why ``href`` may not be read, or ``None`` when it may."""
        if any(fnmatch.fnmatchcase(href, p) for p in self.allow):
            return None
        parts = urlsplit(href)
        scheme = parts.scheme.lower()
        if href.startswith("/vsi") or scheme.startswith("vsi"):
            return "GDAL /vsi paths are never read from a catalog"
        if scheme in ("", "file") or (len(scheme) == 1 and href[1:3] in (":\\", ":/")):
            path = os.path.realpath(_local_path(href))
            root = self.root if self.root and not self.root.endswith("/") else None
            if root is not None and (path == root or path.startswith(root + os.sep)):
                return None
            return "a local file outside the catalog's folder"
        if scheme not in ("http", "https"):
            return f"scheme {scheme!r} is not read from a catalog"
        host = parts.hostname or ""
        if _internal(host):
            return f"host {host} is a loopback, link-local or private address"
        if self.root and self.root.endswith("/") and href.startswith(self.root):
            return None
        if host_matches(host, self.hosts):
            return None
        return f"host {host} is neither the catalog's own nor declared by a source"

    def check(self, item_id: str, hrefs: Sequence[str]) -> None:
        """Raise :class:`HrefRefusedError` for the first href of ``item_id`` that is refused."""
        for href in hrefs:
            why = self.refusal(href)
            if why is not None:
                shown = clean_href(href)
                raise HrefRefusedError(
                    f"item {item_id}: asset {shown} refused ({why}); "
                    f"pass --allow-href '{_suggest(shown)}' if you trust it"
                )


def _local_path(href: str) -> str:
    if href.startswith("file://"):
        return unquote(urlsplit(href).path)
    return href


def _internal(host: str) -> bool:
    """Loopback, link-local, private, unspecified or reserved addresses, and ``localhost``."""
    name = host.strip("[]").lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return False  # a name; resolving it here would not bind what GDAL resolves later
    return (
        ip.is_loopback or ip.is_link_local or ip.is_private or ip.is_unspecified or ip.is_reserved
    )


def _suggest(href: str) -> str:
    """A pattern covering ``href``'s host (URLs) or folder (paths)."""
    parts = urlsplit(href)
    if parts.scheme in ("http", "https") and parts.netloc:
        return f"{parts.scheme}://{parts.netloc}/*"
    return os.path.dirname(href.rstrip("/")) + "/*"
