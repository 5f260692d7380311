"""``hyperkd evaluate``: reconstruction metrics of a student run on a split of a tile store,
beside the predictors that learn nothing (:mod:`hyperkd.model.evaluate.baselines`), scored on
the same tiles and the same masks; optionally the teacher too, in teacher space.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from hyperkd.model.evaluate.baselines import BandStats, predictors, split_band_stats
from hyperkd.model.evaluate.metrics import REFLECTANCE_SCALE, MetricMeter, reconstruction_metrics
from hyperkd.model.nets.masking import Masking, PatchMask
from hyperkd.model.train.checkpoint import atomic_write_text
from hyperkd.model.train.config import EvaluateConfig
from hyperkd.model.train.runs import check_student_fits, load_student, load_teacher, open_tiles
from hyperkd.model.train.tasks import mask_image
from hyperkd.pipeline.store.guard import check_output

STATS_MAX_TILES = 512
"""Train tiles read for the band statistics (mean, dynamic range) the metrics use."""

Batch = dict[str, torch.Tensor]


def _loader(dataset: Any, batch_size: int) -> Iterable[Batch]:
    from hyperkd.model.data.loader import make_loader

    return make_loader(dataset, batch_size, shuffle=False, drop_last=False, num_workers=0)


class _Scorer:
    """Scores one space (student or teacher): a model's reconstruction and every baseline."""

    def __init__(self, mean: Any, std: Any, stats: BandStats, patch: int, per_tile: bool) -> None:
        self.mean, self.std, self.patch = mean, std, patch
        s = torch.as_tensor(list(std), dtype=torch.float32)
        self.band_range = (stats.maximum - stats.minimum) * s / REFLECTANCE_SCALE  # (C,) refl.
        self.baselines = predictors(stats.mean)
        self.meters = {name: MetricMeter() for name in ("model", *self.baselines)}
        self.per_tile = per_tile

    def update(self, recon: torch.Tensor, imgs: torch.Tensor, pm: PatchMask, grid: Any,
               valid: torch.Tensor | None) -> None:  # fmt: skip
        """recon, imgs: (B, C, H, W) normalised; pm: the masks both were scored with."""
        mask_img = mask_image(pm.mask, grid, self.patch)  # (B, 1, H, W)
        preds = {"model": recon} | {
            name: f(imgs, pm.mask, valid, self.patch) for name, f in self.baselines.items()
        }
        for name, pred in preds.items():
            self.meters[name].update(
                reconstruction_metrics(
                    pred, imgs, mask_img, valid, self.mean, self.std, self.band_range
                )
            )

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = self.meters["model"].compute()
        out["baselines"] = {name: self.meters[name].compute() for name in self.baselines}
        if self.per_tile:
            out["per_tile"] = {
                name: {k: meter.values(k) for k in ("psnr", "psnr_range", "mse_norm")}
                for name, meter in self.meters.items()
            }
        return out


def _masks(masking: Masking, batch: Batch, n: int, generator: torch.Generator,
           device: torch.device) -> PatchMask:  # fmt: skip
    key = masking.significance_key
    return masking(batch["student"].shape[0], n, significance=batch[key] if key else None,
                   generator=generator, device=device)  # fmt: skip


@torch.no_grad()
def evaluate(
    config: EvaluateConfig,
    *,
    dataset: Any = None,
    batches: Iterable[Batch] | None = None,
    train_batches: Callable[[], Iterable[Batch]] | None = None,
) -> dict[str, Any]:
    """Reconstruction metrics of a student run on a split; writes ``OUT/metrics.json``.

    Masks come from ``config.masking`` with a fixed seed, so two runs (and the baselines) are
    scored on the same masks. Metrics are in reflectance units
    (:mod:`hyperkd.model.evaluate.metrics`); ``psnr_range`` and ``ssim`` use each band's
    dynamic range on the train split (``train_batches``: default the store's train split).
    With ``config.teacher`` the teacher reconstructs its six bands under the same masks
    (its own draw where its patch grid differs), scored the same way, under ``teacher``.
    """
    inputs = [config.checkpoint, config.tiles, config.teacher]
    check_output(config.out, "files", inputs, config.storage_options)
    model, _ = load_student(config.checkpoint)
    if dataset is None:
        dataset = open_tiles(config.tiles, config.split, config.storage_options)
    info = dataset.info
    check_student_fits(model, info, config.tiles)
    device = torch.device("cuda" if config.device != "cpu" and torch.cuda.is_available() else "cpu")
    teacher = _teacher(config, info, device)
    keys = ("student", "teacher") if teacher is not None else ("student",)
    stats = _band_stats(config, keys, train_batches)
    model.to(device)
    student = _Scorer(info.student_mean, info.student_std, stats["student"],
                      model.config.patch_size, config.per_tile)  # fmt: skip
    teach = None
    if teacher is not None:
        teach = _Scorer(info.teacher_mean, info.teacher_std, stats["teacher"],
                        teacher.config.patch_size, config.per_tile)  # fmt: skip
    if batches is None:
        batches = _loader(dataset, config.batch_size)
    tile_ids = _score_batches(config, model, student, teacher, teach, batches, device)
    if not tile_ids:
        raise ValueError(f"split {config.split!r} of {config.tiles} holds no tiles")
    result = _result(config, student, teach, stats, tile_ids)
    atomic_write_text(
        Path(config.out) / "metrics.json", json.dumps(result, indent=1, sort_keys=True)
    )
    return result


def _teacher(config: EvaluateConfig, info: Any, device: torch.device) -> Any:
    """``config.teacher`` built for the store's tiles and teacher statistics, on ``device``;
    None without one."""
    if config.teacher is None:
        return None
    return load_teacher(
        config.teacher, img_size=info.tile_size, preset=config.teacher_preset,
        teacher_mean=info.teacher_mean, teacher_std=info.teacher_std,
        patch_size=info.patch_size, seed=config.seed,
    ).model.to(device)  # fmt: skip


def _band_stats(
    config: EvaluateConfig,
    keys: tuple[str, ...],
    train_batches: Callable[[], Iterable[Batch]] | None,
) -> dict[str, BandStats]:
    """Band statistics of ``keys`` over at most ``STATS_MAX_TILES`` train tiles: those of
    ``train_batches``, or of the store's train split without it."""
    if train_batches is None:
        train = open_tiles(config.tiles, "train", config.storage_options)
        return split_band_stats(_loader(train, config.batch_size), keys, STATS_MAX_TILES)
    return split_band_stats(train_batches(), keys, STATS_MAX_TILES)


def _score_batches(
    config: EvaluateConfig,
    model: Any,
    student: _Scorer,
    teacher: Any,
    teach: _Scorer | None,
    batches: Iterable[Batch],
    device: torch.device,
) -> list[int]:
    """Scores the student's reconstructions of every batch into ``student`` (and the teacher's
    into ``teach``); returns the tile ids scored, in order (-1 where a batch has none)."""
    # Fixed seeds: two runs score the same masks. The teacher's own draws (other patch grid)
    # take a generator of their own, so adding a teacher leaves the student's masks as they are.
    generator = torch.Generator().manual_seed(config.seed)
    teacher_generator = torch.Generator().manual_seed(config.seed + 1)
    tile_ids: list[int] = []
    for batch in batches:
        imgs = batch["student"].to(device)
        valid = batch.get("valid")
        valid = None if valid is None else valid.to(device)
        pm = _masks(config.masking, batch, model.num_patches, generator, device)
        latent, _ = model.forward_encoder(imgs, pm)
        recon = model.unpatchify(model.forward_decoder(latent, pm.ids_restore))
        student.update(recon, imgs, pm, model.grid, valid)
        if teacher is not None and teach is not None:
            timgs = batch["teacher"].to(device)
            # Same grid: the student's masks; otherwise random masks at the same ratio.
            same_grid = teacher.grid[1:] == model.grid
            tpm = pm if same_grid else _random_masks(config.masking.ratio, teacher, timgs,
                                                     teacher_generator)  # fmt: skip
            teach.update(_teacher_reconstruction(teacher, timgs, tpm), timgs, tpm,
                         teacher.grid[1:], valid)  # fmt: skip
        tile_ids += [int(t) for t in batch.get("tile_id", torch.full((imgs.shape[0],), -1))]
    return tile_ids


def _random_masks(ratio: float, teacher: Any, timgs: torch.Tensor,
                  generator: torch.Generator) -> PatchMask:  # fmt: skip
    return Masking("random", ratio)(
        timgs.shape[0], teacher.num_patches, generator=generator, device=timgs.device
    )


def _teacher_reconstruction(teacher: Any, timgs: torch.Tensor, tpm: PatchMask) -> torch.Tensor:
    """(B, 6, H, W) normalised: the teacher's decoder output over its six bands."""
    tlatent = teacher.forward_encoder(timgs, tpm)
    return teacher.unpatchify(teacher.forward_decoder(tlatent, tpm.ids_restore))[:, :, 0]


def _result(
    config: EvaluateConfig,
    student: _Scorer,
    teach: _Scorer | None,
    stats: dict[str, BandStats],
    tile_ids: list[int],
) -> dict[str, Any]:
    """``metrics.json``: the student's metrics and baselines (a ValueError where not finite),
    the teacher's under ``teacher``, and what was scored: tiles, split, masking, run."""
    result = _finite(student.result(), config)
    if teach is not None:
        result["teacher"] = teach.result() | {"checkpoint": str(config.teacher)}
    result |= {
        "n_tiles": len(tile_ids),
        "split": config.split,
        "masking": dataclasses.asdict(config.masking),
        "checkpoint": str(config.checkpoint),
        "band_range_tiles": stats["student"].n_tiles,
    }
    if config.per_tile:
        result["tile_id"] = tile_ids
    return result


def _finite(result: dict[str, Any], config: EvaluateConfig) -> dict[str, Any]:
    """``result``, or a one-line error when a metric is NaN or inf (nothing is written)."""
    if not math.isfinite(result["psnr"]):
        raise ValueError(
            f"the student's reconstructions of the {config.split} tiles are not finite "
            f"({config.checkpoint}); nothing written"
        )
    bad = {k: v for k, v in result.items() if isinstance(v, float) and not math.isfinite(v)}
    if bad:
        raise ValueError(
            f"the student's metrics are not finite ({', '.join(f'{k} {v}' for k, v in bad.items())}"
            f"); its weights or the tiles hold NaN or inf. {config.out}/metrics.json not written"
        )
    return result
