"""``hyperkd evaluate``'s two costly parts, each against the code it replaced, same process.

- ``metrics``: :func:`reconstruction_metrics` on a batch of scene-factory tiles (masked-patch
  and full-tile scores of one prediction, de-normalised, per-band SSIM range), which computes
  the per-pixel SSIM, SAM and error maps once for both selections, against the way it scored
  before: :func:`tile_metrics` once per selection, every map computed twice.
- ``band_stats``: :func:`split_band_stats` over batches of the same tiles (the train split's
  per-band mean, minimum and maximum that the baselines and the band-range PSNR need), against
  its previous form: a float64 copy of every batch, masked with ``where`` even when every
  pixel is valid.

Both pairs give the same numbers (checked here before timing). Medians of ``--repeats``
timings of ``--steps`` calls, the pairs alternating. The last line is ``metrics=<speed-up>
band_stats=<speed-up>``.

    .venv/bin/python benchmarks/evaluate_metrics.py --repeats 5
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable

import torch
from spectral_basis import add_step_args, samples_per_s, scene_of

from hyperkd.model.evaluate.baselines import BandStats, split_band_stats
from hyperkd.model.evaluate.metrics import reconstruction_metrics, tile_metrics, to_reflectance

Batch = dict[str, torch.Tensor]


def metrics_before(
    pred: torch.Tensor, target: torch.Tensor, mask_img: torch.Tensor, band_range: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The scores as :func:`reconstruction_metrics` computed them before (no normalised MSE,
    which did not change): :func:`tile_metrics` per selection, all valid pixels."""
    mean, std = [0.2] * pred.shape[1], [0.05] * pred.shape[1]
    pred_r, target_r = to_reflectance(pred, mean, std), to_reflectance(target, mean, std)
    out = {}
    for suffix, weight in (("", mask_img), ("_full", torch.ones_like(mask_img))):
        per_tile = tile_metrics(pred_r, target_r, weight, band_range)
        out |= {f"{k}{suffix}": v for k, v in per_tile.items()}
    return out


def band_stats_before(batches: Iterable[Batch], key: str = "student") -> BandStats:
    """:func:`split_band_stats` as it was: every batch copied to float64 and masked."""
    acc: list[torch.Tensor] | None = None
    n = 0
    for batch in batches:
        x = batch[key].double()  # (B, C, H, W)
        w = batch["valid"][:, None].to(x.dtype)
        inf = torch.tensor(torch.inf, dtype=x.dtype)
        part = [
            (x * w).sum(dim=(0, 2, 3)),
            w.sum().expand(x.shape[1]),
            torch.where(w > 0, x, inf).amin(dim=(0, 2, 3)),
            torch.where(w > 0, x, -inf).amax(dim=(0, 2, 3)),
        ]
        acc = part if acc is None else [
            acc[0] + part[0], acc[1] + part[1], acc[2].minimum(part[2]), acc[3].maximum(part[3]),
        ]  # fmt: skip
        n += x.shape[0]
    assert acc is not None
    total, count, lo, hi = acc
    return BandStats((total / count).float(), lo.float(), hi.float(), n)


def metric_pair(tiles: torch.Tensor, batch: int, patch: int) -> dict[str, Callable[[], None]]:
    """Score a noisy copy of ``batch`` tiles under a random 75 % patch mask, both ways."""
    g = torch.Generator().manual_seed(0)
    target = tiles[:batch]
    pred = target + 0.3 * torch.randn(target.shape, generator=g)
    b, c, size, _ = target.shape
    grid = size // patch
    mask = (torch.rand(b, 1, grid, grid, generator=g) < 0.75).float()
    mask_img = mask.repeat_interleave(patch, 2).repeat_interleave(patch, 3)  # (B, 1, H, W)
    band_range = torch.full((c,), 0.2)
    mean, std = [0.2] * c, [0.05] * c
    before = metrics_before(pred, target, mask_img, band_range)
    after = reconstruction_metrics(pred, target, mask_img, None, mean, std, band_range)
    for name, value in before.items():
        assert torch.equal(value, after[name]), name
    return {
        "metrics, maps twice": lambda: metrics_before(pred, target, mask_img, band_range),
        "metrics, maps once": lambda: reconstruction_metrics(
            pred, target, mask_img, None, mean, std, band_range
        ),
    }


def band_stats_pair(tiles: torch.Tensor, batch: int) -> dict[str, Callable[[], None]]:
    """The statistics of ``tiles`` in batches of ``batch``, every pixel valid, both ways."""
    valid = torch.ones(batch, *tiles.shape[2:], dtype=torch.bool)
    batches = [
        {"student": tiles[i : i + batch], "valid": valid[: len(tiles[i : i + batch])]}
        for i in range(0, len(tiles), batch)
    ]
    before, after = band_stats_before(batches), split_band_stats(batches)["student"]
    for name in ("mean", "minimum", "maximum"):
        assert torch.equal(getattr(before, name), getattr(after, name)), name
    return {
        "band stats, float64 copy": lambda: band_stats_before(batches),
        "band stats, float64 sums": lambda: split_band_stats(batches),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8, help="tiles per batch (evaluate's default)")
    add_step_args(p)
    args = p.parse_args()
    tiles = scene_of(args)
    steps = metric_pair(tiles, args.batch, args.patch) | band_stats_pair(tiles, args.batch)
    print(f"batch {args.batch}, {args.tiles} tiles of {args.bands} bands x {args.tile}^2 px, "
          f"{torch.get_num_threads()} threads; medians of {args.repeats} x {args.steps} calls")  # fmt: skip
    rate = samples_per_s(steps, 1, args)  # calls per second
    for name, r in rate.items():
        print(f"{name:28s} {r:8.2f} calls/s")
    names = list(rate)
    print(
        f"metrics={rate[names[1]] / rate[names[0]]:.2f} "
        f"band_stats={rate[names[3]] / rate[names[2]]:.2f}"
    )


if __name__ == "__main__":
    main()
