"""The tile index: the grid of tiles over a cube, valid-fraction filtering and leak-free splits.

Numpy; of a scene only its valid mask is read. A tile is addressed by the pixel offsets
``(y0, x0)`` of its upper-left corner in the cube grid and covers ``[y0, y0 + T) x [x0, x0 +
T)``. Splits are decided by *location* only, never by time, so the same ground is in the same
split in every scene of the cube. :func:`plan_tiles` puts it together for a tile store.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import xarray as xr

    from hyperkd.pipeline.tiles.config import TileConfig

SPLITS = ("train", "val", "test")

# When two tiles of different splits touch, the one from the split ranked first here is
# dropped. Train is the largest split, so a ring of guard tiles costs it the least; between
# val and test, val gives way so the test set stays as drawn.
_DROP_PRIORITY = {"train": 0, "val": 1, "test": 2}


def tile_origins(height: int, width: int, tile_size: int, stride: int) -> np.ndarray:
    """Upper-left corners of every tile that lies fully inside a ``height x width`` grid.

    Returns int64 ``(n, 2)`` rows ``(y0, x0)``, row-major. Edge strips narrower than a tile
    are not covered (a partial tile would need padding the student never sees in training).
    """
    if tile_size <= 0 or stride <= 0:
        raise ValueError(f"tile size and stride must be positive, got {tile_size} and {stride}")
    ys = np.arange(0, height - tile_size + 1, stride, dtype=np.int64)
    xs = np.arange(0, width - tile_size + 1, stride, dtype=np.int64)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([yy.ravel(), xx.ravel()], axis=1)


def tile_fraction(mask: np.ndarray, origins: np.ndarray, tile_size: int) -> np.ndarray:
    """Fraction of True pixels of ``mask (y, x)`` inside each tile, float32 ``(n,)``.

    Uses a summed-area table, so the cost is one pass over the mask whatever the stride.
    """
    sat = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    sat[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0, dtype=np.int64), axis=1)
    y0, x0 = origins[:, 0], origins[:, 1]
    y1, x1 = y0 + tile_size, x0 + tile_size
    total = sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]
    return (total / float(tile_size * tile_size)).astype(np.float32)


def _block_rank(by: int, bx: int, seed: int) -> int:
    """A stable pseudo-random rank for a split block (same on every machine and run)."""
    digest = hashlib.sha256(f"{seed}:{by}:{bx}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def block_splits(
    origins: np.ndarray,
    block_px: int,
    fractions: Sequence[float],
    seed: int,
) -> np.ndarray:
    """Split name per tile from the spatial block holding its upper-left corner.

    Blocks are ``block_px`` square cells of the cube grid. They are ordered by a seeded hash
    and dealt out so that the split shares of *blocks* follow ``fractions`` (train, val,
    test); every split with a non-zero fraction gets at least one block when there are
    enough blocks. Returns a str array ``(n,)``.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1):
        raise ValueError(
            f"split fractions must be three non-negative numbers summing to 1, got {fractions}"
        )
    if block_px <= 0:
        raise ValueError(f"split block size must be positive, got {block_px}")
    blocks = origins // block_px
    unique = sorted({(int(b[0]), int(b[1])) for b in blocks}, key=lambda b: _block_rank(*b, seed))
    n = len(unique)
    counts = [round(f * n) for f in fractions]
    # Make sure a requested split is not rounded away when there are blocks enough for all.
    for k in (1, 2):
        if fractions[k] > 0 and counts[k] == 0 and n >= sum(1 for f in fractions if f > 0):
            counts[k] = 1
    counts[0] = n - counts[1] - counts[2]
    names = np.repeat(np.array(SPLITS), counts)
    of_block = {b: str(names[i]) for i, b in enumerate(unique)}
    return np.array([of_block[(int(b[0]), int(b[1]))] for b in blocks], dtype=object).astype(str)


def _touching_pairs(origins: np.ndarray, tile_size: int) -> list[tuple[int, int]]:
    """Index pairs ``(i, j)``, i < j, of tiles whose closed extents intersect.

    Two tiles touch when ``|dy| <= T`` and ``|dx| <= T`` (shared edges and corners count).
    A hash grid of cell size ``T`` keeps this near-linear: touching tiles sit in
    neighbouring cells.
    """
    cells: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, (y0, x0) in enumerate(origins.tolist()):
        cells[(y0 // tile_size, x0 // tile_size)].append(i)
    pairs: list[tuple[int, int]] = []
    for (cy, cx), members in cells.items():
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                for j in cells.get((cy + dy, cx + dx), ()):
                    for i in members:
                        if i < j and (
                            abs(origins[i, 0] - origins[j, 0]) <= tile_size
                            and abs(origins[i, 1] - origins[j, 1]) <= tile_size
                        ):
                            pairs.append((i, j))
    return pairs


def leaking_pairs(origins: np.ndarray, splits: np.ndarray, tile_size: int) -> list[tuple[int, int]]:
    """Pairs of tiles in different splits that overlap or touch (should be empty)."""
    return [(i, j) for i, j in _touching_pairs(origins, tile_size) if splits[i] != splits[j]]


def drop_leaks(origins: np.ndarray, splits: np.ndarray, tile_size: int) -> np.ndarray:
    """Boolean keep-mask ``(n,)`` so that no kept tiles of different splits touch.

    ``origins`` may repeat a location (the same place in several scenes); those share a
    split, so they never conflict with each other. For every touching pair in different
    splits, the tile of the lower-priority split (train, then val) is dropped.
    """
    places, first, where = np.unique(origins, axis=0, return_index=True, return_inverse=True)
    keep_place = np.ones(len(places), dtype=bool)
    place_split = splits[first]
    for i, j in leaking_pairs(places, place_split, tile_size):
        low = _DROP_PRIORITY[str(place_split[i])] < _DROP_PRIORITY[str(place_split[j])]
        keep_place[i if low else j] = False
    return keep_place[where.ravel()]


def plan_tiles(
    scenes: Sequence[xr.Dataset], cfg: TileConfig
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """The tile index columns (``scene_i``, ``y0``, ``x0``, ``valid_fraction``, ``split``, before
    the write pass) and the counts of tiles dropped as ``invalid`` or for ``leakage``.

    Refuses (ValueError) a plan with no tile, no train tile, or an empty val or test split
    (unless ``cfg.allow_empty_splits``).
    """
    T = cfg.tile_size
    scene_i, origins, fractions = [], [], []
    for i, scene in enumerate(scenes):
        valid = np.asarray(scene["valid"].values, dtype=bool)
        o = tile_origins(valid.shape[0], valid.shape[1], T, cfg.train_step)  # holds the stride grid
        scene_i.append(np.full(len(o), i, dtype=np.int64))
        origins.append(o)
        fractions.append(tile_fraction(valid, o, T))
    sc, org, vf = np.concatenate(scene_i), np.concatenate(origins), np.concatenate(fractions)
    ok = vf >= cfg.min_valid
    dropped = {"invalid": int((~ok).sum())}
    sc, org, vf = sc[ok], org[ok], vf[ok]
    splits = block_splits(org, cfg.block_px, cfg.split_fractions, cfg.seed)
    # Only train tiles use the finer train grid: val and test keep the stride grid.
    on_grid = (splits == "train") | np.all(org % cfg.step == 0, axis=1)
    sc, org, vf, splits = sc[on_grid], org[on_grid], vf[on_grid], splits[on_grid]
    keep = drop_leaks(org, splits, T)
    dropped["leakage"] = int((~keep).sum())
    order = np.lexsort((org[keep, 1], org[keep, 0], sc[keep]))
    cols = {
        "scene_i": sc[keep][order],
        "y0": org[keep, 0][order].astype(np.int32),
        "x0": org[keep, 1][order].astype(np.int32),
        "valid_fraction": vf[keep][order],
        "split": splits[keep][order],
    }
    if len(order) == 0:
        raise ValueError(
            f"no tile has a valid fraction of at least {cfg.min_valid}; nothing to write"
        )
    if not (cols["split"] == "train").any():
        raise ValueError(
            "no train tiles: the student statistics need at least one (more scene or smaller blocks)"
        )
    _check_splits(cols["split"], cfg)
    return cols, dropped


def _check_splits(split: np.ndarray, cfg: TileConfig) -> None:
    """Refuse empty val/test splits (unless allowed), naming them and the fix."""
    empty = [s for s in SPLITS[1:] if not (split == s).any()]
    if not empty or cfg.allow_empty_splits:
        return
    fix = (
        f"pass a smaller --split-block (now {cfg.block_px} px, at least the tile size "
        f"{cfg.tile_size} px)"
        if cfg.block_px > cfg.tile_size
        else "tile a larger region, or try another --seed"
    )
    raise ValueError(
        f"the {' and '.join(empty)} split{'s' if len(empty) > 1 else ''} came out empty "
        f"({len(split)} tiles): {fix}, or pass --allow-empty-splits"
    )
