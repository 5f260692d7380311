"""Shared fixtures: real sample data, the scene factory's demo region, moto S3 and Prefect.

Services are real: a moto S3 server on loopback, a Prefect test harness with a real
(temporary) API server. The suite never reaches the internet.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
# Prefect's home (results, cache keys, the harness database) lives in a throwaway folder, so a
# test run never reads cached results of an earlier one or writes to the user's ~/.prefect.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="hyperkd-prefect-"))

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def sample_data() -> Path:
    """The real sample data folder (``HYPERKD_SAMPLE_DATA``, default ``../shared/data``)."""
    root = Path(os.environ.get("HYPERKD_SAMPLE_DATA", REPO.parent / "shared" / "data"))
    if not (root / "enmap_potsdam_l2a").is_dir():
        pytest.skip(f"real sample data not found at {root} (set HYPERKD_SAMPLE_DATA)")
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def s3_server() -> Iterator[dict[str, str]]:
    """A real moto S3 server on loopback; yields fsspec ``storage_options`` for it."""
    pytest.importorskip("moto")
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("moto server did not start within 30 s")
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_server: dict[str, str]) -> Iterator[str]:
    """A fresh bucket on the moto server; yields ``s3://<bucket>``."""
    import uuid

    import s3fs

    fs = s3fs.S3FileSystem(
        key=s3_server["key"],
        secret=s3_server["secret"],
        client_kwargs={"endpoint_url": s3_server["endpoint_url"]},
    )
    bucket = f"hyperkd-{uuid.uuid4().hex[:8]}"
    fs.mkdir(bucket)
    yield f"s3://{bucket}"


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One Prefect test harness (real temporary API server) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(autouse=True)
def _prefect_console_writes_to_the_current_stderr() -> None:
    """Point Prefect's rich console handlers at whatever ``sys.stderr`` is when they write.

    Prefect configures logging once per process, binding its console handler to the
    ``sys.stderr`` of that moment: under pytest, one test's capture stream, closed when that test
    ends. A later flow run in the same process then fails on every log line ("I/O operation on
    closed file"), and logging's error report recurses. With ``file = None`` rich looks the
    stream up at each write.
    """
    if "prefect" not in sys.modules:
        return
    loggers = [logging.getLogger(), *map(logging.getLogger, logging.Logger.manager.loggerDict)]
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):
            console = getattr(handler, "console", None)
            if console is not None and hasattr(console, "file"):
                console.file = None
