"""``hyperkd embed``: a cube's EnMAP scenes through the student, window by window, into a store.

Each scene is cut into windows of ``window`` px (default: the student's tile size, so the
encoder sees the context it was trained on), aligned with the cube grid from its upper-left
corner; edge windows are smaller (still whole patches) and batched by shape. A window's
reflectance is read from the cube (only the chunks it covers), normalised with the run's own
statistics and encoded unmasked; its (D, h, w) patch tokens are written to the store's chunk at
the same place. While the model runs on one batch, the next batch is read (a thread, or the
dask cluster with ``dask_address``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hyperkd.defaults import EMBED_BATCH_SIZE
from hyperkd.model.embed import store as layout
from hyperkd.model.embed.stac import collection
from hyperkd.model.nets.backbone import StudentBackbone, load_student
from hyperkd.pipeline.redaction import clean_href, redacted_logger
from hyperkd.pipeline.store.guard import check_output
from hyperkd.pipeline.store.location import CubeStore

_log = redacted_logger(__name__)


@dataclass(frozen=True)
class EmbedConfig:
    """``hyperkd embed``: one student run over one cube."""

    checkpoint: str
    """Student run directory (local path or fsspec URL)."""
    cube: str
    out: str
    window: int | None = None
    """Window size in px (a multiple of the patch size); None: the student's tile size."""
    batch_size: int = EMBED_BATCH_SIZE
    device: str = "auto"
    dask_address: str | None = None
    """Read windows on this dask scheduler (``tcp://...``, or ``local``); None: a thread."""
    storage_options: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("--batch-size must be at least 1")
        if self.window is not None and self.window < 1:
            raise ValueError("--window must be positive")


@dataclass(frozen=True)
class Window:
    """Pixel rows ``[y0, y1)`` and columns ``[x0, x1)`` of one scene."""

    t: int
    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0


def windows(t: int, height: int, width: int, size: int, patch: int) -> list[Window]:
    """Windows of ``size`` px over the whole patches of a ``height`` x ``width`` grid."""
    h, w = height // patch * patch, width // patch * patch
    return [
        Window(t, y0, min(y0 + size, h), x0, min(x0 + size, w))
        for y0 in range(0, h, size)
        for x0 in range(0, w, size)
    ]


def batches(items: Sequence[Window], size: int) -> list[list[Window]]:
    """Batches of same-shaped windows, in grid order within each shape."""
    by_shape: dict[tuple[int, int], list[Window]] = {}
    for item in items:
        by_shape.setdefault(item.shape, []).append(item)
    return [group[i : i + size] for group in by_shape.values() for i in range(0, len(group), size)]


class CubeScenes:
    """The cube's EnMAP group, lazily: its student bands, valid mask and grid."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None, model: StudentBackbone):
        import rioxarray  # noqa: F401  (registers .rio)

        from hyperkd.pipeline.cube import open_cube

        enmap = open_cube(url, storage_options)["enmap"].to_dataset()
        keep = np.flatnonzero(np.asarray(enmap["valid_band"].values, dtype=bool))
        if len(keep) != model.config.in_chans:
            raise ValueError(
                f"cube {clean_href(url)} has {len(keep)} valid EnMAP bands; "
                f"the student takes {model.config.in_chans}"
            )
        wavelength = np.asarray(enmap["wavelength"].values, dtype=float)[keep]
        if model.wavelength and not np.allclose(wavelength, model.wavelength, atol=0.5):
            raise ValueError(f"cube {clean_href(url)} bands are not the student's wavelengths")
        # Whole chunks along band, then the valid bands in numpy: an index array on the lazy
        # array makes every read an orthogonal selection, about 6x slower.
        self.keep = keep
        self.reflectance = enmap["reflectance"]
        self.valid = enmap["valid"]
        self.scene_ids = [str(s) for s in enmap["scene_id"].values]
        self.times = np.asarray(enmap["time"].values, dtype="datetime64[ns]")
        self.height, self.width = enmap.sizes["y"], enmap.sizes["x"]
        self.crs = str(enmap.rio.crs)
        self.transform = tuple(enmap.rio.transform())[:6]
        self.chunk = enmap["reflectance"].encoding.get("chunks") or (1, 1, 128, 128)

    def read(self, batch: Sequence[Window]) -> tuple[np.ndarray, np.ndarray]:
        """Reflectance (B, C, h, w) float32 (NaN: nodata) and valid (B, h, w) bool of
        same-shaped windows, each copied once into its slot of the batch."""
        h, w = batch[0].shape
        refl = np.empty((len(batch), len(self.keep), h, w), np.float32)
        valid = np.empty((len(batch), h, w), bool)
        for i, win in enumerate(batch):
            sel = dict(time=win.t, y=slice(win.y0, win.y1), x=slice(win.x0, win.x1))
            np.take(np.asarray(self.reflectance.isel(sel).values), self.keep, axis=0, out=refl[i])
            valid[i] = np.asarray(self.valid.isel(sel).values, dtype=bool)
        return refl, valid


@contextmanager
def reader(cfg: EmbedConfig, scenes: CubeScenes) -> Iterator[Callable[[list[Window]], Any]]:
    """``submit(batch) -> future`` of ``(reflectance, valid)`` batch arrays: a thread, or dask."""
    if cfg.dask_address is None:
        with ThreadPoolExecutor(1, thread_name_prefix="embed-read") as pool:
            yield lambda batch: pool.submit(scenes.read, batch)
        return
    import distributed

    cluster = None
    try:
        if cfg.dask_address == "local":
            cluster = distributed.LocalCluster(
                n_workers=2, threads_per_worker=1, dashboard_address=None
            )
        client = distributed.Client(
            cluster or cfg.dask_address, timeout="30s", set_as_default=False
        )
    except OSError as exc:
        if cluster is not None:
            cluster.close()
        raise ValueError(f"cannot reach dask scheduler {cfg.dask_address}: {exc}") from None
    try:
        yield lambda batch: client.submit(scenes.read, batch, pure=False)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.no_grad()
def encode(
    model: StudentBackbone, read: tuple[np.ndarray, np.ndarray], device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """Reflectance (B, C, H, W) and valid (B, H, W) -> embeddings (B, D, h, w) and the share
    of valid pixels per patch (B, h, w)."""
    refl, valid = (torch.from_numpy(a).to(device) for a in read)
    z, ok = model.normalise_with_mask(refl, valid)  # ok: what the encoder saw as data
    patches = model.embed(z, normalised=True).patches  # (B, D, h, w)
    frac = torch.nn.functional.avg_pool2d(ok[:, None].float(), model.patch_size)[:, 0]
    return patches.float().cpu().numpy(), frac.cpu().numpy()  # (B, D, h, w), (B, h, w)


def _identity(
    cfg: EmbedConfig, scenes: CubeScenes, model: StudentBackbone, window: int
) -> dict[str, Any]:
    """Root attributes that say what the store holds; a re-run must match them."""
    weights = CubeStore(cfg.checkpoint, cfg.storage_options).read_bytes("model.safetensors")
    return {
        layout.VERSION_ATTR: layout.EMBEDDINGS_VERSION,
        "hyperkd:cube": clean_href(cfg.cube),
        "hyperkd:checkpoint": clean_href(cfg.checkpoint),
        "hyperkd:checkpoint_sha256": hashlib.sha256(weights or b"").hexdigest(),
        "hyperkd:scene_ids": list(scenes.scene_ids),
        "hyperkd:window": window,
        "hyperkd:patch_size": model.patch_size,
        "hyperkd:model": dict(model.config.to_dict()),
        "hyperkd:input": "surface reflectance, normalised with the run's tile-store statistics",
        "Conventions": "CF-1.8",
    }


_MATCH = {
    "hyperkd:checkpoint_sha256": "checkpoint",
    "hyperkd:window": "window size",
    "hyperkd:scene_ids": "set of cube scenes",
}


def prepare_store(
    cfg: EmbedConfig, scenes: CubeScenes, model: StudentBackbone, window: int
) -> tuple[CubeStore, list[str]]:
    """Create the store, or check that the existing one holds this run; the scenes done."""
    out = CubeStore(cfg.out, cfg.storage_options)
    identity = _identity(cfg, scenes, model, window)
    root = layout.read_root(out)
    attrs = (root or {}).get("attributes", {})
    if root is not None and not attrs.get(layout.READY_ATTR):
        _log.info("removing the half-created embeddings store at %s", cfg.out)
        out.delete_tree()
        root, attrs = None, {}
    if root is None:
        grid = layout.EmbeddingGrid.from_pixels(
            scenes.crs, scenes.transform, scenes.height, scenes.width, model.patch_size
        )
        layout.create_store(
            out, grid, scenes.times, scenes.scene_ids, model.embed_dim,
            window // model.patch_size, identity,
        )  # fmt: skip
        doc = collection(grid, scenes.times, model.embed_dim, identity)
        out.write_atomic("collection.json", json.dumps(doc, indent=1).encode())
        layout.update_root(out, {layout.READY_ATTR: True})
        return out, []
    for key, what in _MATCH.items():
        if attrs.get(key) != identity[key]:
            raise ValueError(
                f"{clean_href(cfg.out)} holds embeddings made with another {what}; "
                "choose a new --out"
            )
    return out, list(attrs.get(layout.DONE_ATTR, []))


def _write_batch(
    group: Any, job: list[Window], emb: np.ndarray, frac: np.ndarray, patch: int
) -> int:
    """Each window's (D, h, w) embeddings and (h, w) valid fractions into its chunk; the
    number of patches written."""
    n = 0
    for win, e, f in zip(job, emb, frac, strict=True):
        rows, cols = (
            slice(win.y0 // patch, win.y1 // patch),
            slice(win.x0 // patch, win.x1 // patch),
        )
        layout.write_window(group, win.t, rows, cols, e, f)
        n += e.shape[1] * e.shape[2]
    return n


def embed_cube(
    cfg: EmbedConfig, *, on_scene: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Embed every scene of ``cfg.cube`` not yet in ``cfg.out``; returns a summary.

    Idempotent: committed scenes are skipped, so a re-run after a kill finishes the job and a
    re-run after success writes nothing.
    """
    import zarr

    # Never create or clear a store over what is not an embeddings store, nor over an input.
    check_output(cfg.out, "embeddings", [cfg.cube, cfg.checkpoint], cfg.storage_options)
    device = _device(cfg.device)
    model = load_student(cfg.checkpoint, storage_options=cfg.storage_options, device=device)
    window = cfg.window or model.config.img_size
    if window % model.patch_size:
        raise ValueError(f"--window {window} is not a multiple of patch size {model.patch_size}")
    scenes = CubeScenes(cfg.cube, cfg.storage_options, model)
    out, done = prepare_store(cfg, scenes, model, window)
    group = zarr.open_group(out.zarr_store(), mode="r+", zarr_format=3)
    todo = [t for t, sid in enumerate(scenes.scene_ids) if sid not in done]
    p, n_patches = model.patch_size, 0
    h, w = scenes.height, scenes.width
    jobs = [job for t in todo for job in batches(windows(t, h, w, window, p), cfg.batch_size)]
    with reader(cfg, scenes) as submit:
        # One queue over every scene: the read-ahead does not stall at scene boundaries.
        pending = submit(jobs[0]) if jobs else None
        for i, job in enumerate(jobs):
            read = pending.result()
            pending = submit(jobs[i + 1]) if i + 1 < len(jobs) else None
            n_patches += _write_batch(group, job, *encode(model, read, device), p)
            t = job[0].t
            if i + 1 == len(jobs) or jobs[i + 1][0].t != t:  # the scene's last batch
                layout.commit_scene(out, scenes.scene_ids[t])
                _log.info(
                    "embedded scene %s (%d of %d)", scenes.scene_ids[t], t + 1, len(scenes.times)
                )
                if on_scene is not None:
                    on_scene(scenes.scene_ids[t])
    return {
        "out": clean_href(cfg.out),
        "scenes": len(scenes.scene_ids),
        "embedded_now": len(todo),
        "skipped": len(scenes.scene_ids) - len(todo),
        "patches": n_patches,
        "feature_dim": model.embed_dim,
        "device": str(device),
    }
