"""Where a cube lives: a local folder or any fsspec URL, atomic metadata writes, the writer lock.

The cube's commit point is its root ``zarr.json`` (consolidated metadata + scene records,
docs/cube.md "Consistency guarantees"). This module supplies the three storage primitives the
commit protocol needs and nothing more:

* :meth:`CubeStore.write_atomic`: replace one object in a single step (local: temp file +
  ``os.replace``; object stores: one PUT, which S3 applies atomically);
* :meth:`CubeStore.create_exclusive`: create an object only if absent (local: ``O_EXCL``;
  S3: ``PutObject`` with ``If-None-Match: *``), the basis of :class:`CubeLock`;
* :meth:`CubeStore.zarr_store`: a zarr v3 store on the same location, for chunk I/O.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import fsspec

LOCK_KEY = ".hyperkd.lock"


class CubeLockedError(RuntimeError):
    """Another writer holds the cube's lock (and did not release it within the timeout)."""


def storage_options_for(url: str, storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    """fsspec options for ``url``; an S3 ``endpoint_url`` is moved into ``client_kwargs``.

    Both the old synchronous s3fs (0.4, in this venv) and current s3fs accept the endpoint in
    ``client_kwargs``; only current s3fs accepts it top-level.
    """
    opts = dict(storage_options or {})
    if url.startswith(("s3://", "s3a://")) and "endpoint_url" in opts:
        client = dict(opts.get("client_kwargs") or {})
        client.setdefault("endpoint_url", opts.pop("endpoint_url"))
        opts["client_kwargs"] = client
    return opts


class CubeStore:
    """A cube location: ``url`` (local path or fsspec URL) plus its ``storage_options``."""

    def __init__(
        self, url: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None
    ):
        self.url = str(url)
        self.storage_options = storage_options_for(self.url, storage_options)
        self.is_local = "://" not in self.url or self.url.startswith("file://")
        if self.is_local:
            self.root = os.path.abspath(self.url.removeprefix("file://"))
            self.fs = fsspec.filesystem("file")
        else:
            with warnings.catch_warnings():
                # fsspec warns that the venv's s3fs 0.4 is old; that is a fact about the
                # environment, not about this call, and it is reported in docs/cube.md.
                warnings.filterwarnings("ignore", message=".*s3fs is very old.*")
                self.fs, self.root = fsspec.core.url_to_fs(self.url, **self.storage_options)
            self.root = self.root.rstrip("/")

    def __repr__(self) -> str:
        return f"CubeStore({self.url!r})"

    def path(self, key: str = "") -> str:
        return f"{self.root}/{key}" if key else self.root

    # -- reads ------------------------------------------------------------------------------
    def invalidate(self) -> None:
        """Drop fsspec's listing cache: another process may have written since."""
        if not self.is_local:
            self.fs.invalidate_cache()

    def read_bytes(self, key: str) -> bytes | None:
        """The object's bytes, or None when absent."""
        try:
            if self.is_local:
                return Path(self.path(key)).read_bytes()
            return bytes(self.fs.cat_file(self.path(key)))
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def read_json(self, key: str) -> dict[str, Any] | None:
        """The JSON object at ``key``; None when absent or unreadable (a torn write)."""
        data = self.read_bytes(key)
        if data is None:
            return None
        try:
            doc = json.loads(data)
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None

    def exists(self, key: str = "") -> bool:
        if self.is_local:
            return os.path.exists(self.path(key))
        self.invalidate()
        return bool(self.fs.exists(self.path(key)))

    def listdir(self, key: str = "") -> list[str]:
        """Names directly under ``key`` (empty when absent)."""
        if self.is_local:
            try:
                return sorted(os.listdir(self.path(key)))
            except (FileNotFoundError, NotADirectoryError):
                return []
        self.invalidate()
        try:
            entries = self.fs.ls(self.path(key), detail=False)
        except FileNotFoundError:
            return []
        return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries)

    # -- writes -----------------------------------------------------------------------------
    def write_atomic(self, key: str, data: bytes) -> None:
        """Replace the object at ``key`` in one step: readers see the old or the new bytes."""
        if self.is_local:
            target = Path(self.path(key))
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
        else:
            # One PUT: S3 (and GCS/Azure) make a whole object visible at once.
            self.fs.pipe_file(self.path(key), data)

    def write_json(self, key: str, doc: Mapping[str, Any]) -> None:
        self.write_atomic(key, json.dumps(doc, indent=1, allow_nan=True).encode())

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Create ``key`` only if it does not exist; False if it already does."""
        if self.is_local:
            Path(self.root).mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(self.path(key), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return True
        if self.url.startswith("s3"):
            created = self._s3_create_exclusive(key, data)
            if created is not None:
                return created
        # Stores without a conditional create: check, then write. Two writers starting in the
        # same instant can both win here; documented in docs/cube.md ("Locking").
        if self.exists(key):
            return False
        self.fs.pipe_file(self.path(key), data)
        return True

    def _s3_create_exclusive(self, key: str, data: bytes) -> bool | None:
        """``PutObject`` with ``If-None-Match: *``; None when this s3fs offers no way to send it."""
        bucket, _, obj = self.path(key).partition("/")
        kwargs = {"Bucket": bucket, "Key": obj, "Body": data, "IfNoneMatch": "*"}
        try:
            if hasattr(self.fs, "call_s3"):  # current, async s3fs: a sync wrapper
                self.fs.call_s3("put_object", **kwargs)
            elif hasattr(getattr(self.fs, "s3", None), "put_object"):  # s3fs 0.4: boto3 client
                self.fs.s3.put_object(**kwargs)
            else:
                return None
        except FileExistsError:  # current s3fs translates 412 PreconditionFailed to this
            return False
        except Exception as exc:  # botocore ClientError or s3fs's OSError translation
            code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", "")) + str(exc)
            if any(c in code for c in ("PreconditionFailed", "ConditionalRequestConflict", "412")):
                return False
            raise
        return True

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            if self.is_local:
                os.remove(self.path(key))
            else:
                self.fs.rm(self.path(key))

    def delete_tree(self, key: str = "") -> None:
        """Remove ``key`` and everything under it (the whole cube when ``key`` is empty)."""
        path = self.path(key)
        if self.is_local:
            import shutil

            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.exists(path):
                os.remove(path)
            return
        self.invalidate()
        with contextlib.suppress(FileNotFoundError):
            if self.fs.exists(path):
                self.fs.rm(path, recursive=True)

    def zarr_store(self, read_only: bool = False) -> Any:
        """A zarr v3 store rooted at the cube (LocalStore, or FsspecStore over ``self.fs``)."""
        import zarr.storage

        if self.is_local:
            return zarr.storage.LocalStore(self.root, read_only=read_only)
        if self.fs.async_impl:
            # zarr drives async filesystems (s3fs, gcsfs, ...) itself: it needs its own
            # instance created with ``asynchronous=True``, not the blocking one used here.
            return zarr.storage.FsspecStore.from_url(
                self.url, storage_options=dict(self.storage_options), read_only=read_only
            )
        from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper

        wrapped = AsyncFileSystemWrapper(self.fs, asynchronous=True)
        return zarr.storage.FsspecStore(wrapped, read_only=read_only, path=self.root)


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class CubeLock:
    """One writer at a time: the object ``<cube>/.hyperkd.lock`` (owner, pid, host, times).

    ``acquire`` waits up to ``timeout_s`` for a live holder, then raises
    :class:`CubeLockedError`. A lock is stale, and taken over, when its holder ran on this host
    and its pid is gone (a killed run), or when it was not refreshed for ``stale_after_s``.
    Writers call :meth:`refresh` between scenes and :meth:`check` before each commit.
    """

    def __init__(
        self,
        store: CubeStore,
        *,
        timeout_s: float = 60.0,
        stale_after_s: float = 900.0,
        poll_s: float = 0.2,
    ):
        self.store = store
        self.timeout_s = timeout_s
        self.stale_after_s = stale_after_s
        self.poll_s = poll_s
        self.token = uuid.uuid4().hex
        self.held = False

    def _payload(self) -> bytes:
        now = time.time()
        return json.dumps(
            {
                "owner": f"{socket.gethostname()}:{os.getpid()}",
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "token": self.token,
                "refreshed_at": now,
            }
        ).encode()

    def _is_stale(self, doc: dict[str, Any] | None) -> bool:
        if doc is None:  # torn or unreadable lock: its writer died while writing it
            return True
        if doc.get("host") == socket.gethostname() and not pid_alive(int(doc.get("pid", -1))):
            return True
        return time.time() - float(doc.get("refreshed_at", 0.0)) > self.stale_after_s

    def acquire(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while True:
            if self.store.create_exclusive(LOCK_KEY, self._payload()):
                self.held = True
                return
            doc = self.store.read_json(LOCK_KEY)
            if self._is_stale(doc) and self.store.read_json(LOCK_KEY) == doc:
                # Take over a dead writer's lock. The re-read narrows (not closes) the window
                # in which two takers race; check() before each commit catches the loser.
                self.store.delete(LOCK_KEY)
                continue
            if time.monotonic() >= deadline:
                owner = (doc or {}).get("owner", "unknown")
                raise CubeLockedError(
                    f"cube {self.store.url} is being written by {owner} "
                    f"(lock {LOCK_KEY}); waited {self.timeout_s:.0f} s, try again later"
                )
            time.sleep(self.poll_s)

    def check(self) -> None:
        """Raise if the lock is no longer ours (taken over as stale): never commit then."""
        doc = self.store.read_json(LOCK_KEY)
        if not self.held or doc is None or doc.get("token") != self.token:
            raise CubeLockedError(f"lost the lock on {self.store.url}: another writer took it over")

    def refresh(self) -> None:
        self.check()
        self.store.write_atomic(LOCK_KEY, self._payload())

    def release(self) -> None:
        if self.held:
            doc = self.store.read_json(LOCK_KEY)
            if doc is not None and doc.get("token") == self.token:
                self.store.delete(LOCK_KEY)
            self.held = False

    def __enter__(self) -> CubeLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def locked(store: CubeStore, timeout_s: float = 60.0) -> Iterator[CubeLock]:
    """``with locked(store): ...`` holds the cube's writer lock for the block."""
    lock = CubeLock(store, timeout_s=timeout_s)
    with lock:
        yield lock
