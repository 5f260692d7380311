"""What the report draws: a few tiles masked, reconstructed by the student, on reflectance scale."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hyperkd.model.data.dataset import TileDataset
from hyperkd.model.evaluate.baselines import interpolation
from hyperkd.model.evaluate.metrics import tile_metrics, to_reflectance
from hyperkd.model.nets.mae import StudentMAE
from hyperkd.model.nets.masking import Masking, PatchMask
from hyperkd.model.train.runs import check_student_fits, load_student
from hyperkd.model.train.tasks import mask_image


@dataclass(frozen=True)
class ReconstructionSample:
    """Tiles, their masks and reconstructions. ``n`` tiles, ``C`` bands, ``T`` pixels, ``h = T/P``."""

    split: str
    tile_ids: list[int]
    wavelengths: list[float]
    """(C,) nm."""
    patch_size: int
    masking: Masking
    true: np.ndarray
    """(n, C, T, T) reflectance (0-1)."""
    recon: np.ndarray
    """(n, C, T, T) reflectance: the decoder's prediction in masked patches, the tile elsewhere."""
    interp: np.ndarray
    """(n, C, T, T) reflectance: the interpolation baseline in masked patches, the tile elsewhere."""
    valid: np.ndarray
    """(n, T, T) bool."""
    masks: list[np.ndarray]
    """(h, h) bool per tile, True = masked."""
    psnr: list[float]
    """dB on the masked valid pixels, per tile."""
    interp_psnr: list[float]
    """The interpolation baseline's, on the same pixels."""
    significance: dict[str, list[np.ndarray]]
    """``gabor``/``wavelet`` -> (h, h) per tile."""
    pixel_true: np.ndarray
    """(N, C) reflectance spectra of sample pixels in masked patches."""
    pixel_recon: np.ndarray
    pixel_titles: list[str]


def _pick_split(url: str, storage_options: Mapping[str, Any] | None) -> TileDataset:
    for split in ("test", "val", "train"):
        try:
            ds = TileDataset(url, split=split, storage_options=storage_options)
        except ValueError:
            continue
        if len(ds):
            return ds
    raise ValueError(f"tile store {url} holds no tiles")


def _evenly_spaced(ds: TileDataset, n_tiles: int) -> dict[str, torch.Tensor]:
    """``n_tiles`` tiles spread evenly over ``ds`` (all of them when it holds fewer), each of
    the dataset's fields stacked with a leading ``(n,)`` axis."""
    picks = np.unique(np.linspace(0, len(ds) - 1, min(n_tiles, len(ds))).round().astype(int))
    items = [ds[int(i)] for i in picks]
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def _masked_reconstruction(
    model: StudentMAE, batch: dict[str, torch.Tensor], masking: Masking, seed: int
) -> tuple[PatchMask, torch.Tensor, torch.Tensor]:
    """Masks drawn from a generator seeded ``seed``; their (n, 1, T, T) pixel image; and the
    student's composite, (n, C, T, T) normalised: its prediction in masked patches, the tile
    elsewhere."""
    imgs = batch["student"]  # (n, C, T, T)
    key = masking.significance_key
    pm = masking(
        imgs.shape[0],
        model.num_patches,
        significance=batch[key] if key else None,
        generator=torch.Generator().manual_seed(seed),
    )
    latent, _ = model.forward_encoder(imgs, pm)
    pred = model.unpatchify(model.forward_decoder(latent, pm.ids_restore))  # (n, C, T, T)
    m_img = mask_image(pm.mask, model.grid, model.config.patch_size)  # (n, 1, T, T)
    return pm, m_img, pred * m_img + imgs * (1 - m_img)


def _sample_pixels(
    true_r: torch.Tensor,
    recon_r: torch.Tensor,
    chosen: np.ndarray,
    tile_ids: torch.Tensor,
    n_pixels: int,
    seed: int,
) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """``n_pixels`` pixels, from the tiles in turn, each drawn uniformly among a tile's
    ``chosen`` (n, T, T) pixels not drawn yet (a tile with none left is passed over), by a
    generator seeded ``seed``: their true and reconstructed (C,) reflectance spectra (from
    ``true_r``, ``recon_r`` (n, C, T, T)) and a title each. Clears the drawn pixels in ``chosen``."""
    rng = np.random.default_rng(seed)
    pixel_true, pixel_recon, titles = [], [], []
    for k in range(n_pixels):
        tile = k % chosen.shape[0]
        ys, xs = np.nonzero(chosen[tile])
        if ys.size == 0:
            continue
        j = int(rng.integers(ys.size))
        y, x = int(ys[j]), int(xs[j])
        chosen[tile, y, x] = False
        pixel_true.append(true_r[tile, :, y, x].numpy())
        pixel_recon.append(recon_r[tile, :, y, x].numpy())
        titles.append(f"tile {int(tile_ids[tile])}, pixel (y={y}, x={x})")
    return pixel_true, pixel_recon, titles


@torch.no_grad()
def sample_reconstructions(
    student_dir: str,
    tiles_url: str,
    *,
    n_tiles: int = 3,
    n_pixels: int = 4,
    seed: int = 0,
    masking: Masking | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> ReconstructionSample:
    """Mask ``n_tiles`` evenly spaced tiles of the test split (``val``/``train`` when empty) with
    ``masking`` (default: the student's training masking) from a generator seeded ``seed``, and
    reconstruct them with the student run in ``student_dir``."""
    model, run = load_student(student_dir)
    ds = _pick_split(tiles_url, storage_options)
    info, c = ds.info, model.config
    check_student_fits(model, info, tiles_url)
    masking = masking or Masking(**run.get("run", {}).get("masking", {}))
    batch = _evenly_spaced(ds, n_tiles)
    imgs = batch["student"]  # (n, C, T, T)
    pm, m_img, composite = _masked_reconstruction(model, batch, masking, seed)
    true_r = to_reflectance(imgs, info.student_mean, info.student_std)
    recon_r = to_reflectance(composite, info.student_mean, info.student_std)
    valid = batch["valid"]
    psnr = tile_metrics(recon_r, true_r, m_img * valid[:, None])["psnr"]
    guess = interpolation(imgs, pm.mask, valid, c.patch_size, torch.zeros(c.in_chans))
    interp_r = to_reflectance(
        guess * m_img + imgs * (1 - m_img), info.student_mean, info.student_std
    )
    interp_psnr = tile_metrics(interp_r, true_r, m_img * valid[:, None])["psnr"]
    chosen = (m_img[:, 0].bool() & valid).numpy()  # (n, T, T) masked valid pixels
    pixel_true, pixel_recon, titles = _sample_pixels(
        true_r, recon_r, chosen, batch["tile_id"], n_pixels, seed
    )
    grid = model.grid
    empty = np.zeros((0, c.in_chans), np.float32)
    return ReconstructionSample(
        split=str(ds.split),
        tile_ids=[int(t) for t in batch["tile_id"]],
        wavelengths=list(info.band_wavelength),
        patch_size=c.patch_size,
        masking=masking,
        true=true_r.numpy(),
        recon=recon_r.numpy(),
        interp=interp_r.numpy(),
        valid=valid.numpy(),
        masks=[m.reshape(grid).numpy().astype(bool) for m in pm.mask],
        psnr=[float(v) for v in psnr],
        interp_psnr=[float(v) for v in interp_psnr],
        significance={
            n: [s.numpy() for s in batch[f"significance_{n}"]] for n in ("gabor", "wavelet")
        },
        pixel_true=np.stack(pixel_true) if pixel_true else empty,
        pixel_recon=np.stack(pixel_recon) if pixel_recon else empty,
        pixel_titles=titles,
    )
