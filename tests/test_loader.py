"""The PyTorch tile loader: exact tiles, normalisation round-trip, augmentation, DDP sharding,
failing workers and S3."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from tile_helpers import labelled_store, make_scene

from hyperkd.model.data.dataset import TileDataset, collate_tiles, denormalise_student, read_info
from hyperkd.model.data.loader import TileSampler, make_loader
from hyperkd.pipeline.tiles.build import TileConfig, verify_tiles, write_tile_store

CFG = TileConfig(tile_size=32, patch_size=8, split_block_px=64)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    return labelled_store(tmp_path_factory.mktemp("loader"))


def test_loader_returns_exactly_the_stored_tiles(store: str) -> None:
    root = zarr.open_group(store, mode="r")
    ds = TileDataset(store, split=None)
    assert len(ds) == root["student"].shape[0] == ds.info.n_tiles
    mean, std = np.array(ds.info.student_mean), np.array(ds.info.student_std)
    tmean, tstd = np.array(ds.info.teacher_mean), np.array(ds.info.teacher_std)
    saw_invalid = False
    for i in range(len(ds)):
        x = ds[i]
        assert x["student"].dtype == torch.float32 and x["student"].shape == (7, 32, 32)
        assert x["label_landcover"].dtype == torch.int64 and x["valid"].dtype == torch.bool
        assert int(x["tile_id"]) == i
        valid = root["valid"][i]
        np.testing.assert_array_equal(x["valid"].numpy(), valid)
        student = root["student"][i].astype(np.float64)
        expected = np.where(valid, (student - mean[:, None, None]) / std[:, None, None], 0.0)
        np.testing.assert_allclose(x["student"].numpy(), expected, atol=2e-5)
        back = denormalise_student(x["student"], ds.info).numpy()
        np.testing.assert_allclose(back[:, valid], student[:, valid], atol=0.02)  # int16 round-trip
        teacher = root["teacher"][i].astype(np.float64)
        np.testing.assert_allclose(
            x["teacher"].numpy(),
            np.where(valid, (teacher - tmean[:, None, None]) / tstd[:, None, None], 0.0),
            atol=2e-5,
        )
        np.testing.assert_array_equal(
            x["significance_gabor"].numpy(), root["significance_gabor"][i]
        )
        np.testing.assert_array_equal(
            x["significance_wavelet"].numpy(), root["significance_wavelet"][i]
        )
        np.testing.assert_array_equal(x["label_landcover"].numpy(), root["label_landcover"][i])
        saw_invalid |= not valid.all()
    assert saw_invalid  # the nodata -> 0 path was exercised


def test_split_and_band_selection(store: str) -> None:
    info = read_info(store)
    split = np.array(zarr.open_group(store)["index/split"][:].tolist())
    val = TileDataset(store, split="val", bands=[0, 5])
    assert len(val) == info.splits["val"] == (split == "val").sum()
    x = val[0]
    assert x["student"].shape == (2, 32, 32) and split[int(x["tile_id"])] == "val"
    full = TileDataset(store, split=None)[int(x["tile_id"])]["student"]
    torch.testing.assert_close(x["student"], full[[0, 5]])
    with pytest.raises(ValueError, match="band indices"):
        TileDataset(store, bands=[7])
    with pytest.raises(ValueError, match="unknown split"):
        TileDataset(store, split="holdout")


def _dihedral(a: np.ndarray, k: int, flip: bool) -> np.ndarray:
    a = np.rot90(a, k, axes=(-2, -1))
    return a[..., ::-1] if flip else a


def test_augmentation_moves_every_field_alike(store: str) -> None:
    plain, aug = TileDataset(store, split=None), TileDataset(store, split=None, augment=True)
    torch.manual_seed(0)
    seen = set()
    for i in range(12):
        a, p = aug[i % len(aug)], plain[i % len(plain)]
        matches = [
            (k, f)
            for k in range(4)
            for f in (False, True)
            if np.array_equal(_dihedral(p["student"].numpy(), k, f), a["student"].numpy())
        ]
        assert matches, "augmented student is not a flip/rotation of the stored tile"
        k, f = matches[0]
        seen.add((k, f))
        for key in (
            "teacher",
            "valid",
            "significance_gabor",
            "significance_wavelet",
            "label_landcover",
        ):
            np.testing.assert_array_equal(
                _dihedral(p[key].numpy(), k, f), a[key].numpy(), err_msg=key
            )
    assert len(seen) > 2


@pytest.mark.parametrize("n,world", [(12, 3), (13, 4), (7, 1)])
def test_ddp_sampler_gives_every_tile_to_exactly_one_rank(n: int, world: int) -> None:
    for epoch in (0, 1):
        per_rank = []
        for rank in range(world):
            sampler = TileSampler(n, seed=5, rank=rank, world_size=world)
            sampler.set_epoch(epoch)
            per_rank.append(list(sampler))
        flat = [i for r in per_rank for i in r]
        assert len(set(flat)) == len(flat)  # no tile on two ranks
        assert {len(r) for r in per_rank} == {n // world}  # same number of steps on every rank
        assert len(flat) == n - n % world  # all tiles; the documented remainder skipped
    orders = set()
    for epoch in range(4):
        s = TileSampler(n, seed=5, world_size=1)
        s.set_epoch(epoch)
        orders.add(tuple(s))
        assert sorted(s) == list(range(n))
    assert len(orders) > 1


def test_sampler_keeps_shard_locality(tmp_path: Path) -> None:
    scenes = [make_scene(160, 192, patch=8, seed=0)]
    out = str(tmp_path / "sharded.zarr")
    write_tile_store(
        scenes, out, TileConfig(tile_size=32, patch_size=8, split_block_px=64, shard=4)
    )
    ds = TileDataset(out, split=None)
    assert ds.info.shard_tiles == 4
    order = list(TileSampler(ds, seed=1))
    shards = [int(ds.tile_ids[i]) // 4 for i in order]
    runs = sum(1 for a, b in itertools.pairwise(shards) if a != b) + 1
    assert runs == len(set(shards))  # each shard's tiles come out together
    assert sorted(order) == list(range(len(ds)))


def test_loader_covers_an_epoch_with_workers(store: str) -> None:
    ds = TileDataset(store, split=None)
    loader = make_loader(ds, batch_size=4, num_workers=2, drop_last=False, seed=2)
    assert loader.persistent_workers and loader.prefetch_factor == 4
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        ids = torch.cat([b["tile_id"] for b in loader]).tolist()
        assert sorted(ids) == list(range(len(ds)))
        batch = next(iter(loader))
        assert batch["student"].shape == (4, 7, 32, 32)
    # Batches read in the workers hold exactly what ds[i] gives, field by field.
    for batch in make_loader(ds, batch_size=3, num_workers=1, seed=4):
        for slot, tile in enumerate(batch["tile_id"].tolist()):
            single = ds[tile]
            for key, value in single.items():
                torch.testing.assert_close(batch[key][slot], value, rtol=0, atol=0, msg=key)
        break


class _Broken(TileDataset):
    async def aread_raw(self, i: int, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        if i >= 2:
            raise RuntimeError(f"tile {i} is unreadable")
        return await super().aread_raw(i, names)


class _Stuck(TileDataset):
    async def aread_raw(self, i: int, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        await asyncio.sleep(60)
        return await super().aread_raw(i, names)


def test_failing_worker_raises_instead_of_hanging(store: str) -> None:
    loader = make_loader(_Broken(store, split=None), batch_size=2, num_workers=1, shuffle=False)
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="unreadable"):
        for _ in loader:
            pass
    assert time.monotonic() - start < 30
    stuck = make_loader(_Stuck(store, split=None), batch_size=1, num_workers=1, timeout=2.0)
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="timed out"):
        next(iter(stuck))
    assert time.monotonic() - start < 30


def test_reads_from_s3(store: str, s3_server: dict[str, str], s3_bucket: str) -> None:
    url = f"{s3_bucket}/tiles.zarr"
    scenes = [make_scene(96, 128, patch=8, seed=4)]
    summary = write_tile_store(scenes, url, CFG, storage_options=s3_server)
    assert verify_tiles(url, storage_options=s3_server) == []
    local = str(Path(store).with_name("from_same_scenes.zarr"))
    write_tile_store(scenes, local, CFG)
    remote_ds = TileDataset(url, split=None, storage_options=s3_server)
    local_ds = TileDataset(local, split=None)
    assert len(remote_ds) == summary.n_tiles == len(local_ds)
    # In a worker process, and in this one (with the read-ahead, after zarr's own loop has
    # opened the same bucket for read_info).
    for workers in (1, 0):
        loader = make_loader(
            remote_ds, batch_size=2, num_workers=workers, shuffle=False, drop_last=False
        )
        got = {int(t): s for b in loader for t, s in zip(b["tile_id"], b["student"], strict=True)}
        assert sorted(got) == list(range(len(local_ds)))
        for i in got:
            torch.testing.assert_close(got[i], local_ds[i]["student"])
    again = write_tile_store(scenes, url, CFG, storage_options=s3_server)
    assert again.skipped


def test_augmented_batches_move_every_field_alike(store: str) -> None:
    plain = TileDataset(store, split=None)
    loader = make_loader(
        TileDataset(store, split=None, augment=True), batch_size=4, num_workers=0, seed=1
    )
    torch.manual_seed(1)
    batch = next(iter(loader))
    for slot, tile in enumerate(batch["tile_id"].tolist()):
        p = plain[tile]
        matches = [
            (k, f)
            for k in range(4)
            for f in (False, True)
            if np.array_equal(_dihedral(p["student"].numpy(), k, f), batch["student"][slot].numpy())
        ]
        assert matches
        k, f = matches[0]
        for key in ("teacher", "valid", "significance_gabor", "label_landcover"):
            np.testing.assert_array_equal(_dihedral(p[key].numpy(), k, f), batch[key][slot].numpy())


def test_threaded_batch_reads_match_sequential_reads(store: str) -> None:
    """Reading a batch's tiles on several threads changes neither values nor augmentations."""
    indices = [5, 0, 3, 1, 4]
    batches = {}
    for threads in (1, 3):
        ds = TileDataset(store, split=None, augment=True, read_threads=threads)
        torch.manual_seed(7)
        batches[threads] = collate_tiles(ds.__getitems__(indices))
    assert batches[1].keys() == batches[3].keys()
    for key, value in batches[1].items():
        torch.testing.assert_close(batches[3][key], value, rtol=0, atol=0, msg=key)
    with pytest.raises(RuntimeError, match="tile 2 is unreadable"):
        _Broken(store, split=None, read_threads=2).__getitems__([0, 1, 2, 3])
    with pytest.raises(ValueError, match="read_threads must be at least 1"):
        TileDataset(store, split=None, read_threads=0)
