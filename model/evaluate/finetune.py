"""Fine-tuning an encoder with a segmentation head on a tile store's labelled pixels
(``hyperkd downstream --finetune-steps``), after its linear probe."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from hyperkd.model.data.dataset import TileDataset
from hyperkd.model.data.loader import make_loader
from hyperkd.model.evaluate import pixels, probes


class FinetuneSettings(Protocol):
    """What fine-tuning reads of a :class:`~hyperkd.model.evaluate.downstream.DownstreamConfig`."""

    @property
    def finetune_steps(self) -> int: ...
    @property
    def finetune_lr(self) -> float: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def seed(self) -> int: ...
    @property
    def label_level(self) -> str: ...
    @property
    def only(self) -> tuple[str, tuple[int, ...]] | None: ...


def finetune(
    net: probes.SegmentationHead,
    ds: TileDataset,
    label: str,
    target_fn: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    cfg: FinetuneSettings,
    device: torch.device,
) -> list[float]:
    """``cfg.finetune_steps`` AdamW steps on every labelled pixel; returns the loss per step.

    ``target_fn(label, valid)`` maps a (B, T, T) label batch to ``(target, use)`` with ``use``
    a (B, T, T) bool selection; classification targets are class indices, regression targets
    standardised values.
    """
    classes = net.head.out_channels > 1
    patch = ds.info.patch_size if cfg.label_level == "patch" else None
    opt = torch.optim.AdamW(
        [
            {"params": net.encoder.parameters(), "lr": cfg.finetune_lr},
            {"params": net.head.parameters(), "lr": 10 * cfg.finetune_lr},
        ],
        weight_decay=0.01,
    )
    loader = make_loader(
        ds, min(cfg.batch_size, len(ds)), seed=cfg.seed, num_workers=0, drop_last=False
    )
    net.train()
    losses: list[float] = []
    epoch = 0
    while len(losses) < cfg.finetune_steps:
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            lab, use = batch[f"label_{label}"], pixels.usable(batch, cfg.only)
            if patch is not None:
                lab = pixels.patch_labels(lab, use, patch, classes)
            target, use = target_fn(lab, use)
            if not use.any():
                continue
            out = net(batch["student"].to(device))  # (B, K, T, T)
            use = use.to(device)
            if classes:
                loss = F.cross_entropy(out.permute(0, 2, 3, 1)[use], target.to(device)[use])
            else:
                loss = F.mse_loss(out[:, 0][use], target.to(device)[use])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            losses.append(float(loss.detach()))
            if len(losses) >= cfg.finetune_steps:
                break
        epoch += 1
        if epoch > 10 * cfg.finetune_steps + 10:  # no labelled pixel in any train tile
            raise ValueError(f"no labelled train pixel for label_{label}")
    net.eval()
    return losses
