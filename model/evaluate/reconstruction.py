"""``hyperkd evaluate``: reconstruction metrics of a student run on a split of a tile store."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from hyperkd.model.evaluate.metrics import MetricMeter, reconstruction_metrics
from hyperkd.model.train.checkpoint import atomic_write_text
from hyperkd.model.train.config import EvaluateConfig
from hyperkd.model.train.runs import load_student, open_tiles
from hyperkd.model.train.tasks import mask_image
from hyperkd.pipeline.store.guard import check_output


@torch.no_grad()
def evaluate(
    config: EvaluateConfig,
    *,
    dataset: Any = None,
    batches: Iterable[dict[str, torch.Tensor]] | None = None,
) -> dict[str, Any]:
    """Reconstruction metrics of a student run on a split; writes ``OUT/metrics.json``.

    Masks come from ``config.masking`` with a fixed seed, so two runs are scored on the same
    masks. Metrics are in reflectance units (:mod:`hyperkd.model.evaluate.metrics`).
    """
    inputs = [config.checkpoint, config.tiles, getattr(config, "teacher", None)]
    check_output(config.out, "files", inputs, config.storage_options)
    model, _ = load_student(config.checkpoint)
    dataset = (
        dataset
        if dataset is not None
        else open_tiles(config.tiles, config.split, config.storage_options)
    )
    info = dataset.info
    c = model.config
    if (info.n_bands, info.tile_size, info.patch_size) != (c.in_chans, c.img_size, c.patch_size):
        raise ValueError(
            f"tile store has {info.n_bands} bands, {info.tile_size}-px tiles and {info.patch_size}-px "
            f"patches; the student was trained on {c.in_chans}, {c.img_size} and {c.patch_size}"
        )
    if batches is None:
        from hyperkd.model.data.loader import make_loader

        batches = make_loader(dataset, config.batch_size, shuffle=False, drop_last=False)
    device = torch.device("cuda" if config.device != "cpu" and torch.cuda.is_available() else "cpu")
    model.to(device)
    generator = torch.Generator().manual_seed(config.seed)
    key = config.masking.significance_key
    meter, n_tiles = MetricMeter(), 0
    for batch in batches:
        imgs = batch["student"].to(device)
        pm = config.masking(
            imgs.shape[0],
            model.num_patches,
            significance=batch[key] if key else None,
            generator=generator,
            device=device,
        )
        latent, _ = model.forward_encoder(imgs, pm)
        image = model.unpatchify(model.forward_decoder(latent, pm.ids_restore))
        valid = batch.get("valid")
        meter.update(
            reconstruction_metrics(
                image,
                imgs,
                mask_image(pm.mask, model.grid, c.patch_size),
                None if valid is None else valid.to(device),
                info.student_mean,
                info.student_std,
            )
        )
        n_tiles += imgs.shape[0]
    if n_tiles == 0:
        raise ValueError(f"split {config.split!r} of {config.tiles} holds no tiles")
    result: dict[str, Any] = meter.compute()
    bad = {k: v for k, v in result.items() if isinstance(v, float) and not math.isfinite(v)}
    if bad:
        raise ValueError(
            f"the student's metrics are not finite ({', '.join(f'{k} {v}' for k, v in bad.items())}"
            f"); its weights or the tiles hold NaN or inf. {config.out}/metrics.json not written"
        )
    result |= {
        "n_tiles": n_tiles,
        "split": config.split,
        "masking": dataclasses.asdict(config.masking),
        "checkpoint": str(config.checkpoint),
    }
    atomic_write_text(
        Path(config.out) / "metrics.json", json.dumps(result, indent=1, sort_keys=True)
    )
    return result
