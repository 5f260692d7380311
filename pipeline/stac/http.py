"""HTTP for STAC: retries with exponential backoff and jitter, logged, with one clear final error.

pystac-client's :class:`~pystac_client.stac_api_io.StacApiIO` mounts a ``requests`` adapter with
a urllib3 ``Retry``. We hand it :class:`LoggedRetry`, which retries 429, 5xx, connection
errors and timeouts (GET and POST: a STAC search is idempotent), logs every retry on
``hyperkd.pipeline.stac.http`` with the URL redacted, and remembers why the last try failed so
that the error after the last try reads
``STAC API https://... unreachable after 5 tries: 503 Service Unavailable``.
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import requests
import requests.auth
from pystac.stac_io import DefaultStacIO
from pystac_client.exceptions import APIError
from pystac_client.stac_api_io import StacApiIO
from requests.adapters import HTTPAdapter
from urllib3 import BaseHTTPResponse
from urllib3.exceptions import (
    ConnectTimeoutError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)
from urllib3.util.retry import Retry

from hyperkd.pipeline.redaction import clean_href, redact, redacted_logger
from hyperkd.pipeline.stac.sources import RetryPolicy

log = redacted_logger(__name__)

_ERRNO = re.compile(r"\[Errno -?\d+\][^'\")]*")


class StacApiError(ValueError):
    """A STAC API could not be searched. One line, credentials redacted.

    A ``ValueError`` so that the CLI prints it as a one-line error (exit 2) without extra code.
    """


@dataclass
class RetryReport:
    """Mutable record of the current request's failures, shared by the Retry copies."""

    label: str = "STAC API"
    method: str = "GET"
    url: str = ""
    failures: int = 0
    last_cause: str = ""
    exhausted: bool = False
    causes: list[str] = field(default_factory=list)

    def start(self, method: str, url: str) -> None:
        self.method, self.url = method.upper(), url
        self.failures, self.last_cause, self.exhausted, self.causes = 0, "", False, []


class LoggedRetry(Retry):
    """urllib3 ``Retry`` that logs each retry and records the cause of each failure.

    Backoff before retry *n* (1-based) is ``min(backoff_max, backoff_factor * 2**(n-1))``
    plus ``uniform(0, backoff_jitter)``; urllib3's own formula waits 0 s before the first retry,
    which a rate-limited API punishes.
    """

    def __init__(self, *args: Any, report: RetryReport | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.report = report if report is not None else RetryReport()

    def new(self, **kw: Any) -> LoggedRetry:
        kw.setdefault("report", self.report)
        return super().new(**kw)

    def increment(
        self,
        method: str | None = None,
        url: str | None = None,
        response: BaseHTTPResponse | None = None,
        error: Exception | None = None,
        _pool: Any = None,
        _stacktrace: Any = None,
    ) -> LoggedRetry:
        cause = describe_failure(response, error, self.report)
        self.report.failures += 1
        self.report.last_cause = cause
        self.report.causes.append(cause)
        try:
            return super().increment(method, url, response, error, _pool, _stacktrace)
        except MaxRetryError:
            self.report.exhausted = True
            raise

    def get_backoff_time(self) -> float:
        n = len(self.history)
        if n == 0:
            return 0.0
        delay = min(self.backoff_max, self.backoff_factor * 2 ** (n - 1))
        return float(delay + random.uniform(0.0, self.backoff_jitter))

    def sleep(self, response: BaseHTTPResponse | None = None) -> None:
        delay: float | None = None
        if self.respect_retry_after_header and response is not None:
            delay = self.get_retry_after(response)  # capped at retry_after_max
        if delay is None:
            delay = self.get_backoff_time()
        r = self.report
        tries = r.failures + (self.total if isinstance(self.total, int) else 0) + 1
        log.warning(
            "%s %s %s failed (%s); retry %d of %d in %.2f s",
            r.label,
            r.method,
            redact(clean_href(r.url)),
            r.last_cause,
            r.failures,
            tries - 1,
            delay,
        )
        if delay > 0:
            time.sleep(delay)


def describe_failure(
    response: BaseHTTPResponse | None, error: Exception | None, report: RetryReport | None = None
) -> str:
    """A short, secret-free reason: ``503 Service Unavailable``, ``read timeout``, ..."""
    if response is not None and response.status:
        try:
            phrase = HTTPStatus(response.status).phrase
        except ValueError:
            phrase = response.reason or ""
        return f"{response.status} {phrase}".strip()
    if isinstance(error, ReadTimeoutError):
        return "read timeout"
    if isinstance(error, NewConnectionError):  # a subclass of ConnectTimeoutError: test it first
        match = _ERRNO.search(str(error))
        return f"cannot connect: {match.group(0).strip()}" if match else "cannot connect"
    if isinstance(error, ConnectTimeoutError):
        return "connect timeout"
    if isinstance(error, ProtocolError):
        return "connection broken"
    return redact(type(error).__name__ if error is not None else "unknown error")


def make_retry(policy: RetryPolicy, report: RetryReport) -> LoggedRetry:
    """The urllib3 retry object for ``policy``; every counter is bounded by ``tries - 1``."""
    return LoggedRetry(
        total=policy.tries - 1,
        connect=None,
        read=None,
        status=None,
        other=0,
        redirect=5,
        status_forcelist=frozenset(policy.statuses),
        allowed_methods=frozenset({"GET", "POST", "HEAD"}),
        backoff_factor=policy.backoff_s,
        backoff_max=policy.backoff_max_s,
        backoff_jitter=policy.jitter_s,
        respect_retry_after_header=True,
        retry_after_max=policy.backoff_max_s,
        # Return the last 5xx response instead of raising, so the caller sees its status.
        raise_on_status=False,
        report=report,
    )


class _NoAuth(requests.auth.AuthBase):
    """An explicit "no credentials": keeps ``requests`` from reading ``~/.netrc`` for a host."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        return request


def without_netrc(session: requests.Session) -> requests.Session:
    """``session`` that never sends netrc passwords, neither first nor after a redirect.

    ``requests`` looks up ``~/.netrc`` for every host it is sent to (trust_env), so a catalog
    naming a host in the user's netrc would receive that password. STAC search needs no
    credentials; proxies from the environment still apply.
    """
    session.auth = _NoAuth()

    def rebuild_auth(prepared: requests.PreparedRequest, response: requests.Response) -> None:
        # requests' own version re-reads netrc for the redirect target; only strip here.
        if "Authorization" in prepared.headers and session.should_strip_auth(
            response.request.url, prepared.url
        ):
            del prepared.headers["Authorization"]

    session.rebuild_auth = rebuild_auth  # type: ignore[method-assign]
    return session


def retrying_session(policy: RetryPolicy, label: str) -> tuple[requests.Session, RetryReport]:
    """A ``requests`` session (no netrc) with the retry policy mounted for http and https."""
    report = RetryReport(label=label)
    session = without_netrc(requests.Session())
    adapter = HTTPAdapter(max_retries=make_retry(policy, report))
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session, report


def final_error(report: RetryReport, policy: RetryPolicy, detail: str = "") -> StacApiError:
    """The one-line error for a request that failed for good."""
    where = redact(clean_href(report.url))
    if report.exhausted or (report.failures >= policy.tries and report.last_cause):
        return StacApiError(
            f"{report.label} {where} unreachable after {policy.tries} tries: {report.last_cause}"
        )
    first = " ".join(redact(detail).split())[:200]
    return StacApiError(f"{report.label} {where} failed: {first or report.last_cause or 'error'}")


class RetryingStacApiIO(StacApiIO):
    """``StacApiIO`` with :class:`LoggedRetry` mounted and a one-line :class:`StacApiError`."""

    def __init__(self, policy: RetryPolicy, label: str = "STAC API") -> None:
        self.policy = policy
        self.report = RetryReport(label=label)
        super().__init__(timeout=policy.timeout_s, max_retries=make_retry(policy, self.report))
        without_netrc(self.session)

    def request(
        self,
        href: str,
        method: str | None = None,
        headers: dict[str, str] | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> str:
        self.report.start(method or "GET", href)
        try:
            return super().request(href, method=method, headers=headers, parameters=parameters)
        except APIError as exc:
            status = getattr(exc, "status_code", None)
            detail = str(exc)
            if status is not None and not self.report.exhausted:
                try:
                    detail = f"{status} {HTTPStatus(status).phrase}: {detail}"
                except ValueError:
                    detail = f"{status}: {detail}"
                if status in self.policy.statuses:
                    # raise_on_status=False hands back the last retryable response.
                    self.report.exhausted = self.report.failures >= self.policy.tries
            raise final_error(self.report, self.policy, detail) from None


class RetryingStaticIO(DefaultStacIO):
    """pystac IO for static catalogs: local files as usual, HTTP(S) through the retry policy.

    Not :class:`RetryingStacApiIO`: that one turns catalogs into pystac-client ``Client``
    objects, whose item walk warns and probes for API conformance.
    """

    def __init__(self, policy: RetryPolicy, label: str = "static catalog") -> None:
        super().__init__()
        self.policy = policy
        self.session, self.report = retrying_session(policy, label)

    def read_text_from_href(self, href: str) -> str:
        if not href.startswith(("http://", "https://")):
            return super().read_text_from_href(href)
        self.report.start("GET", href)
        try:
            response = self.session.get(href, timeout=self.policy.timeout_s)
        except requests.RequestException as exc:
            raise final_error(self.report, self.policy, type(exc).__name__) from None
        if response.status_code >= 400:
            detail = f"{response.status_code} {response.reason}"
            raise final_error(self.report, self.policy, detail)
        return response.text
