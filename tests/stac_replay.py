"""A real HTTP STAC API on 127.0.0.1 that replays recorded pages and fails on purpose.

``ReplayServer(features, page_size=4)`` serves:

* ``/`` and ``/conformance``: a landing page conforming to STAC API core + ITEM_SEARCH;
* ``/search`` GET (CMR style: ``next`` is a GET link with ``page=N``) and POST (DLR style:
  ``next`` is a POST link with ``{"startIndex", "limit"}`` and ``merge: true``), slicing the
  recorded features into pages of ``page_size``. Like a recording, it ignores the filters.

``share_503`` / ``share_timeout`` / ``share_429`` fail that share of requests (seeded, so runs
repeat): a 503, a hang of ``hang_s`` seconds (longer than the client's timeout) before
answering, or a 429 with a long ``Retry-After``. Every
request is recorded in ``requests`` for assertions.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

CONFORMANCE = [
    "https://api.stacspec.org/v1.0.0/core",
    "https://api.stacspec.org/v1.0.0/item-search",
    "https://api.stacspec.org/v1.0.0/item-search#query",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
]


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    body: dict[str, Any] | None
    headers: dict[str, str]
    outcome: str


class _Loopback:
    """A threaded HTTP server on 127.0.0.1 (a free port), started and stopped with ``with``."""

    _httpd: ThreadingHTTPServer
    _thread: threading.Thread

    def _serve(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> Any:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


@dataclass
class ReplayServer(_Loopback):
    features: list[dict[str, Any]]
    page_size: int = 4
    share_503: float = 0.0
    share_timeout: float = 0.0
    share_429: float = 0.0
    """Answer 429 Too Many Requests with ``Retry-After: retry_after_s`` (a rate limit)."""
    retry_after_s: int = 120
    hang_s: float = 0.6
    seed: int = 0
    requests: list[Recorded] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()
        self._serve(_handler(self))

    @property
    def outcomes(self) -> Counter[str]:
        return Counter(r.outcome for r in self.requests)

    def searches(self) -> list[Recorded]:
        return [r for r in self.requests if r.path == "/search" and r.outcome == "ok"]

    def _fault(self) -> str:
        with self._lock:
            draw = self._rng.random()
        if draw < self.share_503:
            return "503"
        if draw < self.share_503 + self.share_timeout:
            return "timeout"
        if draw < self.share_503 + self.share_timeout + self.share_429:
            return "429"
        return "ok"

    def landing(self) -> dict[str, Any]:
        return {
            "type": "Catalog",
            "id": "replay",
            "stac_version": "1.0.0",
            "description": "Replay of recorded STAC API pages",
            "conformsTo": CONFORMANCE,
            "links": [
                {"rel": "self", "href": f"{self.url}/", "type": "application/json"},
                {"rel": "root", "href": f"{self.url}/", "type": "application/json"},
                {"rel": "conformance", "href": f"{self.url}/conformance"},
                {
                    "rel": "search",
                    "href": f"{self.url}/search",
                    "type": "application/geo+json",
                    "method": "GET",
                },
                {
                    "rel": "search",
                    "href": f"{self.url}/search",
                    "type": "application/geo+json",
                    "method": "POST",
                },
            ],
        }

    def page(self, start: int, next_link: dict[str, Any] | None) -> dict[str, Any]:
        chunk = self.features[start : start + self.page_size]
        links = [{"rel": "root", "href": f"{self.url}/"}]
        if start + self.page_size < len(self.features) and next_link is not None:
            links.append(next_link)
        return {
            "type": "FeatureCollection",
            "stac_version": "1.0.0",
            "numberMatched": len(self.features),
            "numberReturned": len(chunk),
            "features": chunk,
            "links": links,
        }


class _ReplayHandler(BaseHTTPRequestHandler):
    """Answers one request for ``replay``: a drawn fault, or the route's recorded response."""

    protocol_version = "HTTP/1.1"
    replay: ReplayServer

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        """Parse and record the request, then answer it."""
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        body = self._read_body()
        outcome = self.replay._fault()
        self.replay.requests.append(
            Recorded(method, parts.path, query, body, dict(self.headers.items()), outcome)
        )
        try:
            if outcome == "ok":
                self._route(method, parts.path, query, body)
            else:
                self._send_fault(outcome)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client timed out and closed the socket

    def _read_body(self) -> dict[str, Any] | None:
        """The JSON request body, or None when there is none."""
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length)) if length else None

    def _send_fault(self, outcome: str) -> None:
        """Fail on purpose: ``"timeout"`` (a late answer), ``"429"`` or ``"503"``."""
        if outcome == "timeout":
            time.sleep(self.replay.hang_s)  # the client has given up by now
            self._send(200, self.replay.landing())
        elif outcome == "429":
            self._send(429, {"code": "TooManyRequests"}, retry_after=self.replay.retry_after_s)
        elif outcome == "503":
            self._send(
                503,
                {"code": "ServiceUnavailable", "description": "Oops! Something has gone wrong"},
            )

    def _route(
        self, method: str, path: str, query: dict[str, list[str]], body: dict[str, Any] | None
    ) -> None:
        """Answer a request that drew no fault, by path and method."""
        if path in ("/", ""):
            self._send(200, self.replay.landing())
        elif path == "/conformance":
            self._send(200, {"conformsTo": CONFORMANCE})
        elif path == "/search" and method == "GET":
            self._search_get(query)
        elif path == "/search" and method == "POST":
            self._search_post(body)
        else:
            self._send(404, {"code": "NotFound", "description": f"no route {path}"})

    def _search_get(self, query: dict[str, list[str]]) -> None:
        """A CMR-style page: ``next`` is a GET link repeating the query with ``page=N+1``."""
        page = int(query.get("page", ["1"])[0])
        following = {k: v[0] for k, v in query.items()} | {"page": str(page + 1)}
        link = {
            "rel": "next",
            "method": "GET",
            "href": f"{self.replay.url}/search?{urlencode(following)}",
        }
        start = (page - 1) * self.replay.page_size
        self._send(200, self.replay.page(start, link), "application/geo+json")

    def _search_post(self, body: dict[str, Any] | None) -> None:
        """A DLR-style page: ``next`` is a POST link merging ``startIndex``/``limit`` into the body."""
        start = int((body or {}).get("startIndex", 0))
        size = self.replay.page_size
        link = {
            "rel": "next",
            "method": "POST",
            "merge": True,
            "body": {"startIndex": start + size, "limit": size},
            "href": f"{self.replay.url}/search",
        }
        self._send(200, self.replay.page(start, link), "application/geo+json")

    def _send(
        self,
        status: int,
        doc: dict[str, Any],
        kind: str = "application/json",
        retry_after: int | None = None,
    ) -> None:
        """Write ``doc`` as a JSON response with an exact Content-Length (keep-alive)."""
        data = json.dumps(doc).encode()
        self.send_response(status)
        if retry_after is not None:
            self.send_header("Retry-After", str(retry_after))
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _handler(server: ReplayServer) -> type[BaseHTTPRequestHandler]:
    """A handler class bound to ``server`` (the HTTP server instantiates it per request)."""

    class Handler(_ReplayHandler):
        replay = server

    return Handler


@dataclass
class TokenServer(_Loopback):
    """A loopback stand-in for the Planetary Computer SAS token endpoint.

    ``GET /api/sas/v1/token/<account>/<container>`` answers ``{"token", "msft:expiry"}`` with a
    fresh token per request (``SAS-TOKEN-<n>-<account>-<container>`` inside a SAS query string)
    valid for ``lifetime_s``. ``fail`` answers 503 instead.
    """

    lifetime_s: float = 2700.0
    fail: bool = False
    requests: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._serve(_token_handler(self))

    @property
    def token_url(self) -> str:
        return f"{self.url}/api/sas/v1/token"


def _token_handler(server: TokenServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            server.requests.append(self.path)
            *_, account, container = self.path.rstrip("/").split("/")
            if server.fail:
                status, doc = 503, {"detail": "unavailable"}
            else:
                import datetime as dt

                expiry = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=server.lifetime_s)
                n = len(server.requests)
                token = f"st=2024-01-01&se=2030-01-01&sp=rl&sv=2021-06-08&sr=c&sig=SAS-TOKEN-{n}-{account}-{container}"
                status, doc = (
                    200,
                    {"msft:expiry": expiry.strftime("%Y-%m-%dT%H:%M:%SZ"), "token": token},
                )
            data = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler
