"""In-memory tiles shaped like the tile loader's samples, for model and trainer tests.

``FakeTiles[i]`` returns what ``hyperkd.model.data.dataset.TileDataset[i]`` returns (``student``
(C, T, T), ``teacher`` (6, T, T), ``significance_*`` (T/P, T/P), ``valid`` (T, T)) and carries
an ``info`` with the ``TileStoreInfo`` fields the model reads. Tiles are smooth spectra over
smooth spatial fields, so MAEs can actually learn them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class FakeInfo:
    n_bands: int
    tile_size: int
    patch_size: int
    student_mean: tuple[float, ...]
    student_std: tuple[float, ...]
    band_wavelength: tuple[float, ...]
    teacher_bands: tuple[str, ...] = ("blue", "green", "red", "nir_narrow", "swir1", "swir2")
    teacher_mean: tuple[float, ...] = (775.23, 1080.99, 1228.59, 2497.20, 2204.21, 1610.83)
    teacher_std: tuple[float, ...] = (1281.53, 1270.03, 1399.48, 1368.34, 1291.68, 1154.51)
    labels: tuple[str, ...] = ()


class FakeTiles(torch.utils.data.Dataset):
    """``n`` tiles of ``bands`` x ``size`` x ``size``, patches of ``patch`` px, fixed by ``seed``."""

    def __init__(
        self, n: int = 4, *, bands: int = 8, size: int = 32, patch: int = 8, seed: int = 0
    ) -> None:
        g = torch.Generator().manual_seed(seed)
        yy, xx = torch.meshgrid(
            torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij"
        )
        fields = []
        for _ in range(n):
            f = torch.rand(3, 1, 1, generator=g) * 6
            fields.append(
                torch.stack([torch.sin(f[0] * xx + f[1] * yy), torch.cos(f[2] * yy), xx * yy])
            )
        fields_t = torch.stack(fields)  # (n, 3, T, T)
        mix = torch.randn(bands, 3, generator=g)
        self.student = torch.einsum("bk,nkyx->nbyx", mix, fields_t)  # (n, C, T, T)
        self.teacher = torch.einsum(
            "bk,nkyx->nbyx", mix[:6] if bands >= 6 else torch.randn(6, 3, generator=g), fields_t
        )
        dx = self.student.diff(dim=-1).abs().mean(1)[:, :-1, :]  # (n, T-1, T-1)
        dy = self.student.diff(dim=-2).abs().mean(1)[:, :, :-1]  # (n, T-1, T-1)
        grad = dx + dy
        grad = torch.nn.functional.pad(grad, (0, 1, 0, 1))
        self.significance = torch.nn.functional.avg_pool2d(grad[:, None], patch)[
            :, 0
        ]  # (n, T/P, T/P)
        self.info = FakeInfo(
            n_bands=bands,
            tile_size=size,
            patch_size=patch,
            student_mean=tuple(1000.0 + 100 * b for b in range(bands)),
            student_std=tuple(500.0 for _ in range(bands)),
            band_wavelength=tuple(420.0 + 10 * b for b in range(bands)),
        )

    def __len__(self) -> int:
        return self.student.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "student": self.student[i].clone(),
            "teacher": self.teacher[i].clone(),
            "significance_gabor": self.significance[i].clone(),
            "significance_wavelet": self.significance[i].flip(-1).clone(),
            "valid": torch.ones(self.student.shape[-2:], dtype=torch.bool),
        }


def collate(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}


def shard_loader(
    dataset: FakeTiles, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1
):  # type: ignore[no-untyped-def]
    """epoch -> this rank's batches: a seeded permutation per epoch, split like DistributedSampler."""

    def factory(epoch: int) -> Iterable[dict[str, torch.Tensor]]:
        order = torch.randperm(
            len(dataset), generator=torch.Generator().manual_seed(seed + epoch)
        ).tolist()
        mine = order[: len(order) // world_size * world_size][rank::world_size]

        def batches() -> Iterator[dict[str, torch.Tensor]]:
            for start in range(0, len(mine) - batch_size + 1, batch_size):
                yield collate([dataset[i] for i in mine[start : start + batch_size]])

        return batches()

    return factory


def write_small_tile_store(url: str) -> str:
    """A real Zarr tile store (two 160 x 192 scenes, 32-px tiles, 8-px patches) at ``url``."""
    from tile_helpers import make_scene

    from hyperkd.pipeline.tiles.build import TileConfig, write_tile_store

    scenes = [make_scene(160, 192, patch=8, seed=s, scene_id=f"ENMAP_TEST_{s}") for s in (0, 1)]
    write_tile_store(scenes, url, TileConfig(tile_size=32, patch_size=8, split_block_px=64))
    return url
