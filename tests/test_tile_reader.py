"""How the tile dataset reads: its own event loop (inside a running loop, after a fork, shut
down when dropped), recycled batch memory, and reading the next batch ahead without workers."""

from __future__ import annotations

import asyncio
import gc
import shutil
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np
import pytest
import torch
from tile_helpers import labelled_store

from hyperkd.model.data.dataset import TileDataset, collate_tiles
from hyperkd.model.data.loader import make_loader


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    return labelled_store(tmp_path_factory.mktemp("reads"))


class _Recording(TileDataset):
    """Records every tile read; reads of positions in ``fail`` raise."""

    def __init__(self, *args: object, fail: tuple[int, ...] = (), **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.reads: list[int] = []
        self.fail = fail

    async def aread_raw(self, i: int, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        self.reads.append(i)
        if i in self.fail:
            raise RuntimeError(f"tile {i} is unreadable")
        return await super().aread_raw(i, names)


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return bool(condition())


def test_without_workers_the_next_batch_is_read_ahead_once(store: str) -> None:
    ds = _Recording(store, split=None, augment=True)
    plain = TileDataset(store, split=None)
    loader = make_loader(ds, batch_size=3, num_workers=0, shuffle=True, seed=2, drop_last=False)
    order = loader.sampler.epoch_order().tolist()
    torch.manual_seed(0)
    batches = iter(loader)
    first = next(batches)
    assert first["tile_id"].tolist() == [int(ds.tile_ids[p]) for p in order[:3]]
    # The following batch is being read while the caller still holds the first one.
    assert _wait_for(lambda: sorted(ds.reads) == sorted(order[:6]))
    rest = list(batches)
    # Every tile was read exactly once: the reads done ahead were taken over, not repeated.
    assert sorted(ds.reads) == sorted(order) and len(ds.reads) == len(order)
    # And the batches are what the store holds (up to each tile's flip/rotation).
    for batch in [first, *rest]:
        for slot, tile in enumerate(batch["tile_id"].tolist()):
            expected = plain[tile]["student"].numpy()
            turns = [np.rot90(expected, k, axes=(-2, -1)) for k in range(4)]
            variants = turns + [t[..., ::-1] for t in turns]
            got = batch["student"][slot].numpy()
            assert any(np.array_equal(v, got) for v in variants)


def test_a_failed_read_ahead_raises_in_the_batch_that_needed_it(store: str) -> None:
    ds = _Recording(store, split=None, fail=(3,))
    loader = make_loader(ds, batch_size=2, num_workers=0, shuffle=False, drop_last=False)
    batches = iter(loader)
    assert next(batches)["tile_id"].tolist() == [0, 1]
    assert _wait_for(lambda: 3 in ds.reads)  # read ahead, and failed, in the background
    with pytest.raises(RuntimeError, match="tile 3 is unreadable"):
        next(batches)


def test_a_batch_off_the_plan_drops_the_read_ahead(store: str) -> None:
    ds = _Recording(store, split=None)
    ds.plan_reads([0, 1, 2, 3, 4, 5])
    collate_tiles(ds.__getitems__([0, 1]))
    assert _wait_for(lambda: {2, 3} <= set(ds.reads))
    off = collate_tiles(ds.__getitems__([5, 4]))
    for slot, position in enumerate([5, 4]):
        for key, value in ds[position].items():
            torch.testing.assert_close(off[key][slot], value, rtol=0, atol=0, msg=key)
    reads = len(ds.reads)
    collate_tiles(ds.__getitems__([2, 3]))  # the plan is gone: read again, nothing ahead
    time.sleep(0.2)
    assert len(ds.reads) == reads + 2


def test_reads_inside_an_event_loop_and_after_a_fork(store: str) -> None:
    """The dataset reads from code that already runs an event loop (a notebook), and a
    worker forked after the parent has read starts its own loop instead of hanging on the
    parent's."""
    ds = TileDataset(store, split=None)
    expected = ds[1]

    async def in_a_loop() -> dict[str, torch.Tensor]:
        return collate_tiles(ds.__getitems__([1, 0]))

    batch = asyncio.run(in_a_loop())
    for key, value in expected.items():
        torch.testing.assert_close(batch[key][0], value, rtol=0, atol=0, msg=key)
    loader = make_loader(ds, batch_size=2, num_workers=1, shuffle=False, timeout=20.0)
    forked = next(iter(loader))
    for key, value in expected.items():
        torch.testing.assert_close(forked[key][1], value, rtol=0, atol=0, msg=key)


def test_batch_memory_is_reused_only_after_the_last_view_is_gone(store: str) -> None:
    ds = TileDataset(store, split=None)
    first = collate_tiles(ds.__getitems__([0, 1]))
    address, expected = first["student"].data_ptr(), first["student"].clone()
    sample = first["student"][1]  # a view that outlives the batch
    del first
    second = collate_tiles(ds.__getitems__([2, 3]))
    assert second["student"].data_ptr() != address
    torch.testing.assert_close(sample, expected[1], rtol=0, atol=0)
    del sample
    third = collate_tiles(ds.__getitems__([4, 5]))
    assert third["student"].data_ptr() == address
    fresh = torch.stack([ds[4]["student"], ds[5]["student"]])
    torch.testing.assert_close(third["student"], fresh, rtol=0, atol=0)


def test_a_dropped_dataset_stops_its_threads(store: str) -> None:
    before = set(threading.enumerate())
    ds = TileDataset(store, split=None, read_threads=2)
    collate_tiles(ds.__getitems__([0, 1, 2]))
    started = [t for t in set(threading.enumerate()) - before if t.name.startswith("tile-")]
    assert {t.name.split("_")[0] for t in started} == {"tile-io", "tile-decode"}
    del ds
    gc.collect()
    for thread in started:
        thread.join(timeout=10)
    assert not [t.name for t in started if t.is_alive()]


def test_a_store_removed_after_opening_fails_with_its_name(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    path = labelled_store(tmp_path_factory.mktemp("gone"))
    ds = TileDataset(path, split=None)
    shutil.rmtree(path)
    for _ in range(2):  # and again: a failed start leaves nothing half-started behind
        with pytest.raises(FileNotFoundError, match=r"tiles\.zarr does not exist"):
            ds[0]
