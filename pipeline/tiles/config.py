"""How scenes are cut into tiles: :class:`TileConfig`, shared by the tile plan and the build."""

from __future__ import annotations

from dataclasses import dataclass

from hyperkd.pipeline.sensors import prithvi_preset


@dataclass(frozen=True)
class TileConfig:
    """How scenes are cut into tiles."""

    tile_size: int = 128
    """Tile edge T, pixels."""
    patch_size: int = 16
    """ViT patch edge P, pixels; significance maps are ``(T/P, T/P)`` per tile."""
    stride: int | None = None
    """Step between tile origins, pixels; ``None`` = ``tile_size`` (no overlap)."""
    train_stride: int | None = None
    """Step between the origins of *train* tiles, pixels; ``None`` = ``stride``. A finer step
    (a divisor of ``stride``) adds overlapping train tiles, so a small region gives the model
    more placements of the patch grid to learn from; val and test stay on the ``stride``
    grid, exactly the tiles a store without it holds."""
    min_valid: float = 0.5
    """Tiles whose valid-pixel fraction is below this are dropped."""
    split_block_px: int | None = None
    """Edge of the spatial split blocks, pixels; ``None`` = 4 tiles."""
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    """Share of split blocks in train, val, test."""
    seed: int = 0
    """Seed of the block-to-split deal."""
    shard: int | None = None
    """Tiles per Zarr shard; ``None`` = unsharded, one tile per chunk (file/object)."""
    teacher_preset: str = "prithvi-eo-1.0-100m"
    """Prithvi preset whose mean/std normalise the teacher bands."""
    batch_tiles: int = 16
    """Tiles read and written per step (rounded to whole shards)."""
    allow_empty_splits: bool = False
    """Write a store whose val or test split is empty (refused by default: evaluation needs
    them); not part of the parameters hash, since it does not change what is written."""

    def __post_init__(self) -> None:
        t, p, s = self.tile_size, self.patch_size, self.step
        if t <= 0 or p <= 0 or t % p:
            raise ValueError(f"tile size {t} must be a positive multiple of the patch size {p}")
        if s <= 0 or s % p:
            raise ValueError(f"stride {s} must be a positive multiple of the patch size {p}")
        ts = self.train_step
        if ts <= 0 or ts % p or s % ts:
            raise ValueError(
                f"train stride {ts} must be a positive multiple of the patch size {p} "
                f"that divides the stride {s}"
            )
        if not 0.0 <= self.min_valid <= 1.0:
            raise ValueError(f"min valid fraction must be in [0, 1], got {self.min_valid}")
        if self.shard is not None and self.shard <= 0:
            raise ValueError(f"tiles per shard must be positive, got {self.shard}")
        if self.block_px < t:
            raise ValueError(f"split block {self.block_px} px is smaller than a tile ({t} px)")
        prithvi_preset(self.teacher_preset)  # fails early on an unknown preset

    @property
    def step(self) -> int:
        return self.stride if self.stride is not None else self.tile_size

    @property
    def train_step(self) -> int:
        return self.train_stride if self.train_stride is not None else self.step

    @property
    def block_px(self) -> int:
        return self.split_block_px if self.split_block_px is not None else 4 * self.tile_size
