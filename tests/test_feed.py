"""Feeding the trainer: int16 tiles normalised on the device equal the loader's float32
tiles, and the device feed hands batches on unchanged."""

from __future__ import annotations

import pytest
import torch
from tile_helpers import labelled_store

from hyperkd.model.data.dataset import TileDataset
from hyperkd.model.data.loader import make_loader, to_device


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    return labelled_store(tmp_path_factory.mktemp("feed"))


@pytest.mark.parametrize("bands", [None, [0, 4, 6]])
def test_raw_batches_normalised_on_the_device_equal_decoded_batches(
    store: str, bands: list[int] | None
) -> None:
    plain = TileDataset(store, split=None, bands=bands, augment=True)
    raw = plain.as_raw()
    assert raw.raw and not plain.raw and len(raw) == len(plain)
    loaders = [make_loader(d, 4, shuffle=True, seed=3, num_workers=0) for d in (plain, raw)]
    torch.manual_seed(0)
    expected = list(loaders[0])
    torch.manual_seed(0)  # the same augmentation draws
    got = list(loaders[1])
    assert len(got) == len(expected) > 1
    saw_invalid = False
    for want, batch in zip(expected, got, strict=True):
        assert batch["student"].dtype == torch.int16 and batch["teacher"].dtype == torch.int16
        fed = next(to_device([batch], torch.device("cpu"), raw.normalise_batch))
        assert set(fed) == set(want)
        for key, value in want.items():
            assert fed[key].dtype == value.dtype, key
            torch.testing.assert_close(fed[key], value, atol=1e-6, rtol=1e-6, msg=key)
        saw_invalid |= not bool(want["valid"].all())
    assert saw_invalid  # nodata -> 0 happened on the device side too


def test_plain_dataset_batches_pass_through_normalise(store: str) -> None:
    ds = TileDataset(store, split=None)
    batch = next(iter(make_loader(ds, 2, shuffle=False, num_workers=0)))
    assert ds.normalise_batch(batch) is batch


def test_to_device_keeps_order_and_drops_non_tensors() -> None:
    batches = [{"x": torch.full((2,), float(i)), "name": "tile"} for i in range(3)]
    out = list(to_device(batches, torch.device("cpu"), lambda b: {"x": b["x"] + 1}))
    assert [float(b["x"][0]) for b in out] == [1.0, 2.0, 3.0]
    assert all(set(b) == {"x"} for b in out)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_to_device_on_cuda_gives_the_cpu_batches(store: str) -> None:
    raw = TileDataset(store, split=None).as_raw()
    plain = TileDataset(store, split=None)
    dev = torch.device("cuda")
    loader = make_loader(raw, 4, shuffle=False, num_workers=0)
    fed = list(to_device(loader, dev, raw.normalise_batch))
    for batch, want in zip(fed, make_loader(plain, 4, shuffle=False, num_workers=0), strict=True):
        torch.testing.assert_close(batch["student"].cpu(), want["student"], atol=1e-5, rtol=1e-5)
