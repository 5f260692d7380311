"""Recipe sweeps on the val split: a minimal MAE loop over an in-memory train split.

Not the trainer: a short loop (AdamW, warm-up + cosine, flips/rot90s, random masks at 0.75,
MSE on masked patches) that varies one lever at a time (``--rank``: the spectral
factorisation and its PCA or random start; ``--lr``; ``--sizes``: preset overrides;
``--resid``: predict the residual over interpolation; ``--revin``: see and predict deviations
from each tile's visible mean spectrum; ``--fixed``: the product's fixed spectral basis, trained
on the cached components, ``spectral_basis="fixed"``; ``--reflectance``: with ``--fixed``,
weigh each band's squared error by its reflectance variance, the weights of the PSNR it is
scored with; ``--ema``: score an exponential moving average of the weights;
``--eval-tiles``: train on one store, e.g. one cut at a finer stride, and score another's
split) and scores the val split like ``hyperkd evaluate``: 3 random masks per tile, the baselines on the same masks. The levers
that won went into the product (``spectral_dim``, the demo's lr); benchmarks/SCIENCE.md has
the numbers.

    .venv/bin/python benchmarks/recipe.py --tiles T.zarr --steps 600 --rank 16 --lr 2e-3
"""

import argparse
import dataclasses
import json
import math
import resource
import time

import numpy as np
import torch
from torch import nn

from hyperkd.model.data.dataset import TileDataset
from hyperkd.model.data.memory import MemoryTiles
from hyperkd.model.evaluate.baselines import patch_means, predictors
from hyperkd.model.evaluate.metrics import reconstruction_metrics
from hyperkd.model.nets.mae import StudentMAE, student_config
from hyperkd.model.nets.masking import Masking
from hyperkd.model.train.losses import LossConfig
from hyperkd.model.train.tasks import DistillationTask, mask_image

ap = argparse.ArgumentParser()
ap.add_argument("--tiles", required=True)
ap.add_argument("--steps", type=int, default=400)
ap.add_argument("--batch", type=int, default=8)
ap.add_argument("--lr", type=float, default=1e-3)
ap.add_argument("--wd", type=float, default=0.05)
ap.add_argument("--warmup", type=float, default=0.05)
ap.add_argument("--sizes", default="{}")
ap.add_argument("--rank", type=int, default=0)
ap.add_argument("--split", default="val")
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--wloss", action="store_true")
ap.add_argument("--resid", action="store_true")
ap.add_argument("--randinit", action="store_true")
ap.add_argument("--revin", action="store_true")
ap.add_argument("--fixed", action="store_true", help="fixed PCA basis, loss on components")
ap.add_argument("--eval-tiles", help="score this store's split instead (renormalised)")
ap.add_argument(
    "--reflectance", action="store_true",
    help="with --fixed: weigh each band's error by its reflectance variance (the metric's weights)",
)  # fmt: skip
ap.add_argument("--ema", type=float, default=0.0, help="score an EMA of the weights (decay)")
a = ap.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(a.seed)

tr = MemoryTiles(TileDataset(a.tiles, split="train"))
ev = MemoryTiles(TileDataset(a.eval_tiles or a.tiles, split=a.split))
info = tr.info
x_tr = tr.tiles["student"]
C = x_tr.shape[1]
P = info.patch_size
T = info.tile_size
G = T // P


class Factorised(StudentMAE):
    """Spectral factorisation: per-pixel C->r, patch embed over r; head Dd->P*P*r, r->C."""

    def __init__(self, cfg, r, basis, mean):
        super().__init__(cfg)
        from timm.layers import PatchEmbed

        self.r = r
        self.spec_in = nn.Conv2d(C, r, 1)
        self.patch_embed = PatchEmbed(cfg.img_size, cfg.patch_size, r, cfg.embed_dim)
        self.decoder_pred = nn.Linear(cfg.decoder_embed_dim, P * P * r)
        self.spec_out = nn.Linear(r, C)
        if a.randinit:
            return
        with torch.no_grad():
            self.spec_in.weight.copy_(basis[:, :, None, None])
            self.spec_in.bias.copy_(-(basis @ mean))
            self.spec_out.weight.copy_(basis.T)
            self.spec_out.bias.copy_(mean)

    def forward_encoder(self, imgs, pm, return_block=None):
        return super().forward_encoder(self.spec_in(imgs), pm, return_block=return_block)

    def forward_decoder(self, latent, ids_restore):
        z = super().forward_decoder(latent, ids_restore)  # (B, L, P*P*r)
        b, n_patches, _ = z.shape
        return self.spec_out(z.reshape(b, n_patches, P * P, self.r)).reshape(
            b, n_patches, P * P * C
        )


std = torch.tensor(info.student_std, dtype=torch.float32)
wband = std**2 / (std**2).mean()
# --reflectance: train in y = sqrt(w) * x, where plain MSE is the reflectance-weighted one
scale = wband.sqrt().view(1, C, 1, 1) if a.reflectance else torch.ones(1, C, 1, 1)
cfg = dataclasses.replace(
    student_config("tiny", img_size=T, patch_size=P, in_chans=C), **json.loads(a.sizes)
)
if a.fixed:  # the product's StudentMAE with spectral_basis="fixed"; the split as components
    model = StudentMAE(dataclasses.replace(cfg, spectral_dim=a.rank, spectral_basis="fixed"))
    y_tr = x_tr * scale
    model.init_spectral_basis(y_tr.permute(0, 2, 3, 1).reshape(-1, C)[::7])
    parts = [model.project_bands(y_tr[i : i + 32]) for i in range(0, len(x_tr), 32)]
    z_tr = torch.cat([p[0] for p in parts])  # (N, k, T, T)
    res_tr = torch.cat([p[1] for p in parts])  # (N, T, T)
    component_task = DistillationTask(model, Masking("random", 0.75), LossConfig("mse"))
elif a.rank:
    centred = x_tr - x_tr.mean(dim=(2, 3), keepdim=True) if a.revin else x_tr
    pix = centred.permute(0, 2, 3, 1).reshape(-1, C)[::7]
    mean = pix.mean(0)
    u, s, vt = torch.linalg.svd(pix - mean, full_matrices=False)
    model = Factorised(cfg, a.rank, vt[: a.rank].contiguous(), mean)
else:
    model = StudentMAE(cfg)
interp_fn = predictors(torch.zeros(C))["interpolation"]


def visible_spectrum(x, mask, valid):
    """(B, C, 1, 1): each tile's mean spectrum over its visible patches' valid pixels."""
    means, counts = patch_means(x, valid, P)  # (B, C, G, G), (B, G, G)
    seen = (1 - mask.float()).view_as(counts) * counts  # (B, G, G)
    return ((means * seen[:, None]).sum(dim=(2, 3)) / seen.sum(dim=(1, 2)).clamp_min(1)[:, None])[
        ..., None, None
    ]


def predict(model, x, pm, valid):
    if a.revin:  # the model sees and predicts deviations from the tile's visible mean spectrum
        mu = visible_spectrum(x, pm.mask, valid)
        latent, _ = model.forward_encoder(x - mu, pm)
        pred = model.forward_decoder(latent, pm.ids_restore)
        return pred + model.patchify(mu.expand_as(x))
    latent, _ = model.forward_encoder(x, pm)
    pred = model.forward_decoder(latent, pm.ids_restore)
    if a.resid:
        pred = pred + model.patchify(interp_fn(x, pm.mask, valid, P))
    return pred


if a.resid:
    with torch.no_grad():
        model.decoder_pred.weight.zero_()
        model.decoder_pred.bias.zero_()
        if a.rank:
            model.spec_out.bias.zero_()
opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=a.wd, betas=(0.9, 0.95))
warm = max(1, int(a.warmup * a.steps))
sched = torch.optim.lr_scheduler.LambdaLR(
    opt, lambda s: min(1, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1, s / a.steps)))
)
masking = Masking("random", 0.75)
ema = torch.optim.swa_utils.AveragedModel(
    model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(a.ema)
) if a.ema else None  # fmt: skip
rng = np.random.default_rng(a.seed)
g = torch.Generator().manual_seed(a.seed)


def cpu():
    return sum(resource.getrusage(resource.RUSAGE_SELF)[:2])


t0, c0 = time.time(), cpu()
losses = []
order = []
for step in range(a.steps):
    if len(order) < a.batch:
        order += list(rng.permutation(len(x_tr)))
    idx, order = order[: a.batch], order[a.batch :]
    x = z_tr[idx] if a.fixed else x_tr[idx]
    k, flip = int(rng.integers(4)), bool(rng.integers(2))
    x = torch.rot90(x, k, (2, 3))
    if flip:
        x = x.flip(3)
    pm = masking(x.shape[0], G * G, generator=g)
    vx = torch.ones(x.shape[0], T, T, dtype=torch.bool)
    if a.fixed:  # the trainer's task on a cached batch of components
        res = torch.rot90(res_tr[idx], k, (1, 2))
        res = res.flip(2) if flip else res
        out = component_task({"student_components": x, "student_residual": res}, pm)
    else:
        pred = predict(model, x, pm, vx)
        out = {"pred": pred, "loss": model.forward_loss(x, pred, pm.mask)}
    if a.wloss:
        tgt = model.patchify(x)
        pred = out["pred"]
        per = (((pred - tgt) ** 2).reshape(*pred.shape[:2], P * P, C) * wband).mean(dim=(-1, -2))
        out["loss"] = (per * pm.mask).sum() / pm.mask.sum()
    out["loss"].backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    sched.step()
    if ema is not None:
        ema.update_parameters(model)
    losses.append(float(out["loss"].detach()))
    if step % 100 == 0 or step == a.steps - 1:
        print(step, round(float(np.mean(losses[-50:])), 4), round(time.time() - t0, 1), flush=True)
train_s, train_cpu = time.time() - t0, cpu() - c0

# --- evaluate: 3 masks per tile, same masks for model and baselines ---
if ema is not None:
    model = ema.module
model.eval()
xe = ev.tiles["student"]
if a.eval_tiles:  # the eval store's normalisation -> the train store's (reflectance x 1e4 between)

    def _stats(i):
        return (
            torch.tensor(i.student_mean, dtype=torch.float32).view(1, -1, 1, 1),
            torch.tensor(i.student_std, dtype=torch.float32).view(1, -1, 1, 1),
        )

    (me, se), (mt, st) = _stats(ev.info), _stats(info)
    xe = (xe * se + me - mt) / st
valid = ev.tiles["valid"]
ge = torch.Generator().manual_seed(0)
res = {}
band_mean = torch.zeros(C)
with torch.no_grad():
    for _rep in range(3):
        pm = masking(xe.shape[0], G * G, generator=ge)
        mi = mask_image(pm.mask, (G, G), P)
        pred = model.unpatchify(predict(model, xe * scale, pm, valid)) / scale
        preds = {k: f(xe, pm.mask, valid, P) for k, f in predictors(band_mean).items()}
        preds["student"] = pred
        for k, v in preds.items():
            r = reconstruction_metrics(v, xe, mi, valid, info.student_mean, info.student_std)
            res.setdefault(k, []).append(
                {kk: float(torch.nanmean(vv)) for kk, vv in r.items() if kk in ("psnr", "mse_norm")}
            )
summ = {k: round(float(np.mean([d["psnr"] for d in v])), 3) for k, v in res.items()}
print(
    json.dumps(
        dict(
            args=vars(a) | {"tiles": None},
            train_s=round(train_s, 1),
            train_cpu=round(train_cpu, 1),
            loss=round(float(np.mean(losses[-50:])), 4),
            **summ,
            gap=round(summ["student"] - summ["interpolation"], 3),
            params=sum(p.numel() for p in model.parameters()),
        )
    )
)
