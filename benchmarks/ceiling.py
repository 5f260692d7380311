"""How far a reconstruction can beat interpolation on a tile store, and where a student stands.

Splits the masked-pixel MSE (normalised units, the training objective) of each predictor into
the error of its masked patches' mean spectra and the error of the structure inside them:

    MSE = mean over masked pixels of (p - x)^2
        = [patch-mean part]  mean of (p_mean - x_mean)^2
        + [within part]      mean of ((p - p_mean) - (x - x_mean))^2

(exact per patch, valid pixels weighted equally). Interpolation predicts a constant per patch,
so its within part is the patches' own variance; the oracle predicts each masked patch's true
mean spectrum, so its patch-mean part is zero. A student has to win on one part or the other.
PSNR (peak 1.0 reflectance) is printed beside it, scored like ``hyperkd evaluate``: the same
random masks (ratio 0.75, seed 0) for every predictor. Also printed: the share of the split's
spectral variance in its top 1, 5 and 16 principal components (how low-rank the spectra are).

``smooth_interpolation`` asks how much of the within part is smooth, i.e. predictable from the
visible patch means alone: every masked *pixel* is a Gaussian-kernel mix (sigma 0.75 patches,
pixel to patch centre) of the visible patches' mean spectra, so it varies inside a patch.

    .venv/bin/python benchmarks/ceiling.py --tiles T.zarr [--student RUN] [--split val]
"""

from __future__ import annotations

import argparse
import json

import torch

from hyperkd.model.data.dataset import TileDataset
from hyperkd.model.data.memory import MemoryTiles
from hyperkd.model.evaluate.baselines import patch_means, predictors
from hyperkd.model.evaluate.metrics import reconstruction_metrics
from hyperkd.model.nets.masking import Masking
from hyperkd.model.train.tasks import mask_image


def split_mse(
    pred: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor, patch: int
) -> tuple[float, float]:
    """(patch-mean part, within part) of the masked-patch MSE; all (B, C, H, W) normalised."""
    pm, counts = patch_means(pred, valid, patch)  # (B, C, h, w), (B, h, w)
    xm, _ = patch_means(x, valid, patch)
    up = lambda t: t.repeat_interleave(patch, 2).repeat_interleave(patch, 3)  # noqa: E731
    w = (mask.view_as(counts)[:, None] * (counts > 0)[:, None]).float()  # (B, 1, h, w)
    pix = up(w) * valid[:, None].float()  # (B, 1, H, W) masked valid pixels
    n = pix.sum() * x.shape[1]
    mean_part = (up((pm - xm) ** 2) * pix).sum() / n
    within = ((((pred - up(pm)) - (x - up(xm))) ** 2) * pix).sum() / n
    return float(mean_part), float(within)


def smooth_interpolation(
    x: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor, patch: int, sigma: float = 0.75
) -> torch.Tensor:
    """(B, C, H, W): each pixel a Gaussian mix of the visible patch means (sigma in patches)."""
    means, counts = patch_means(x, valid, patch)  # (B, C, h, w), (B, h, w)
    b, c, h, w = means.shape
    centres = (torch.arange(h, dtype=torch.float32) + 0.5) * patch
    cy, cx = torch.meshgrid(centres, centres, indexing="ij")
    pix = torch.arange(h * patch, dtype=torch.float32) + 0.5
    py, px = torch.meshgrid(pix, pix, indexing="ij")
    d2 = (
        torch.cdist(
            torch.stack([py.flatten(), px.flatten()], 1),
            torch.stack([cy.flatten(), cx.flatten()], 1),
        )
        ** 2
        / patch**2
    )  # (H*W, L) squared distance, patches
    source = (1 - mask.float()) * (counts.flatten(1) > 0).float()  # (B, L) usable visible
    weight = torch.exp(-d2 / (2 * sigma**2))[None] * source[:, None, :]  # (B, H*W, L)
    weight = weight / weight.sum(-1, keepdim=True).clamp_min(1e-12)
    mixed = weight @ means.flatten(2).transpose(1, 2)  # (B, H*W, C)
    return mixed.transpose(1, 2).reshape(b, c, h * patch, w * patch)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiles", required=True)
    p.add_argument("--student", default=None, help="student run directory to place beside them")
    p.add_argument("--split", default="val")
    p.add_argument("--masks", type=int, default=3, help="random masks per tile")
    args = p.parse_args()
    tiles = MemoryTiles(TileDataset(args.tiles, split=args.split))
    info, x, valid = tiles.info, tiles.tiles["student"], tiles.tiles["valid"]
    patch, grid = info.patch_size, info.tile_size // info.patch_size
    student = None
    if args.student:
        from hyperkd.model.nets.backbone import read_run_files
        from hyperkd.model.nets.mae import MAEConfig, StudentMAE

        run, state = read_run_files(args.student, None)
        student = StudentMAE(MAEConfig(**run["model"])).eval()
        student.load_state_dict(state)
    gen = torch.Generator().manual_seed(0)
    rows: dict[str, list[tuple[float, float, float]]] = {}
    for _ in range(args.masks):
        pm = Masking("random", 0.75)(x.shape[0], grid * grid, generator=gen)
        preds = {
            k: f(x, pm.mask, valid, patch) for k, f in predictors(torch.zeros(x.shape[1])).items()
        }
        means, _ = patch_means(x, valid, patch)
        preds["smooth_interpolation"] = smooth_interpolation(x, pm.mask, valid, patch)
        preds["oracle_patch_mean"] = means.repeat_interleave(patch, 2).repeat_interleave(patch, 3)
        if student is not None:
            with torch.no_grad():
                latent, _ = student.forward_encoder(x, pm)
                preds["student"] = student.unpatchify(
                    student.forward_decoder(latent, pm.ids_restore)
                )
        image_mask = mask_image(pm.mask, (grid, grid), patch)
        for name, pred in preds.items():
            r = reconstruction_metrics(
                pred, x, image_mask, valid, info.student_mean, info.student_std
            )
            psnr = float(torch.nanmean(r["psnr"]))
            rows.setdefault(name, []).append((psnr, *split_mse(pred, x, pm.mask, valid, patch)))
    pixels = x.permute(0, 2, 3, 1)[valid].double()  # (N, C) valid spectra of the split
    power = torch.linalg.svdvals(pixels[::7] - pixels.mean(0)) ** 2
    share = (power.cumsum(0) / power.sum())[[0, 4, 15]].tolist()
    print(f"variance in the top 1 / 5 / 16 principal components: {share}")
    out = {}
    for name, vals in rows.items():
        psnr, mean_part, within = (sum(v[i] for v in vals) / len(vals) for i in range(3))
        out[name] = dict(
            psnr=round(psnr, 3), mse_patch_mean=round(mean_part, 4), mse_within=round(within, 4)
        )
        print(
            f"{name:>20}  PSNR {psnr:6.2f} dB   MSE = {mean_part:.4f} (patch means) + {within:.4f} (within)"
        )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
