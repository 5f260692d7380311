"""The in-memory tile cache: the same samples as the tile store, the same flips/rotations, and
only the fields a run reads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tile_helpers import labelled_store

from hyperkd.model.data.dataset import TileDataset
from hyperkd.model.data.memory import MemoryTiles, memory_loader_factory


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    return labelled_store(tmp_path_factory.mktemp("memory"))


def test_cached_samples_equal_the_store(store: str) -> None:
    dataset = TileDataset(store, split="train")
    cache = MemoryTiles(dataset, batch_size=3)
    assert len(cache) == len(dataset) and list(cache.tile_ids) == list(dataset.tile_ids)
    for i in (0, len(dataset) - 1):
        expected, got = dataset[i], cache[i]
        assert set(got) == set(expected)
        for key, value in expected.items():
            torch.testing.assert_close(got[key], value, rtol=0, atol=0)


def test_an_augmenting_dataset_is_cached_as_stored(store: str) -> None:
    """The trainer's split draws flips/rot90s; the cache keeps the stored tiles (its batches
    draw their own), and the dataset still augments afterwards."""
    plain = TileDataset(store, split="train")
    augmenting = TileDataset(store, split="train", augment=True)
    torch.manual_seed(0)
    cache = MemoryTiles(augmenting, batch_size=3)
    for i in range(len(plain)):
        torch.testing.assert_close(cache[i]["student"], plain[i]["student"], rtol=0, atol=0)
    assert augmenting.augment
    torch.manual_seed(0)
    drawn = [augmenting[0]["student"] for _ in range(8)]
    assert any(not torch.equal(d, plain[0]["student"]) for d in drawn)


def test_a_cache_over_decoded_tensors() -> None:
    tiles = {"student": torch.randn(3, 2, 4, 4), "valid": torch.ones(3, 4, 4, dtype=torch.bool)}
    cache = MemoryTiles.from_tensors(tiles)
    assert len(cache) == 3 and list(cache.tile_ids) == [0, 1, 2]
    torch.testing.assert_close(cache.batch(np.array([2]))["student"][0], tiles["student"][2])
    with pytest.raises(ValueError, match="same number of tiles"):
        MemoryTiles.from_tensors({"student": torch.zeros(3, 1), "valid": torch.zeros(2, 1)})


def test_batch_augmentation_is_the_datasets_rot90_then_flip(store: str) -> None:
    dataset = TileDataset(store, split="train")
    cache = MemoryTiles(dataset)
    choices = np.arange(8) % 8
    positions = np.arange(8) % len(cache)
    batch = cache.batch(positions, choices)
    for slot, (i, choice) in enumerate(zip(positions, choices, strict=True)):
        fields = {key: v.numpy() for key, v in dataset[int(i)].items() if key != "tile_id"}
        for key, value in dataset._augment(fields, int(choice)).items():
            torch.testing.assert_close(batch[key][slot], torch.from_numpy(value), rtol=0, atol=0)


def test_fields_keeps_only_what_a_run_reads(store: str) -> None:
    dataset = TileDataset(store, split="train")
    cache = MemoryTiles(dataset, fields=("teacher", "valid"))
    assert set(cache.tiles) == {"teacher", "valid"}
    batches = list(memory_loader_factory(cache, 2, seed=0, augment=True)(0))
    assert batches and all(set(b) == {"teacher", "valid"} for b in batches)
    torch.testing.assert_close(cache[0]["teacher"], dataset[0]["teacher"], rtol=0, atol=0)


def test_epochs_are_replayable(store: str) -> None:
    cache = MemoryTiles(TileDataset(store, split="train"))
    factory = memory_loader_factory(cache, 2, seed=5, augment=True)
    first, again = list(factory(3)), list(factory(3))
    for a, b in zip(first, again, strict=True):
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    other = list(factory(4))
    assert any(
        not torch.equal(a["student"], b["student"]) for a, b in zip(first, other, strict=True)
    )
