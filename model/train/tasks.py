"""Training tasks: a module that maps a batch of tiles to a loss dict (timm ``TrainingTask`` style).

- :class:`DistillationTask`: the HyperKD student MAE, optionally distilled from a frozen teacher.
- :class:`TeacherPretrainTask`: MAE pretraining of the Prithvi architecture on teacher tiles.

Batches are dicts of stacked tensors as the tile loader yields them (``student`` (B, C, T, T),
``teacher`` (B, 6, T, T), ``significance_gabor``/``significance_wavelet`` (B, T/P, T/P),
``valid`` (B, T, T)). Masks are drawn outside ``forward`` from a dedicated generator, so a
checkpoint can store exactly where the masking noise stands.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hyperkd.model.nets.mae import StudentMAE
from hyperkd.model.nets.masking import Masking, PatchMask
from hyperkd.model.nets.prithvi import PrithviMAE, Teacher
from hyperkd.model.train.losses import LossConfig, hyperkd_loss, masked_patch_mse

Batch = dict[str, torch.Tensor]


def valid_patches(valid: torch.Tensor, patch: int) -> torch.Tensor:
    """Pixel validity (B, H, W) -> (B, L, P*P), patches in grid order like ``patchify``."""
    b, hp, wq = valid.shape
    x = valid.reshape(b, hp // patch, patch, wq // patch, patch)  # (B, h, p, w, q)
    return x.permute(0, 1, 3, 2, 4).reshape(b, (hp // patch) * (wq // patch), patch * patch)


def mask_image(mask: torch.Tensor, grid: tuple[int, int], patch: int) -> torch.Tensor:
    """Patch mask (B, L) -> pixel mask (B, 1, H, W)."""
    m = mask.reshape(mask.shape[0], 1, *grid)  # (B, 1, h, w)
    return m.repeat_interleave(patch, dim=2).repeat_interleave(patch, dim=3)


def tokens_to_grid(
    tokens: torch.Tensor, src: tuple[int, int], dst: tuple[int, int]
) -> torch.Tensor:
    """Resample a token map (B, h*w, D) on grid ``src`` to grid ``dst`` (bilinear) -> (B, h'*w', D).

    Used when the teacher's patch differs from the student's (Prithvi's 16 px vs 8-px student
    patches), so features are compared at the same ground positions.
    """
    if src == dst:
        return tokens
    b, _, d = tokens.shape
    maps = tokens.transpose(1, 2).reshape(b, d, *src)  # (B, D, h, w)
    maps = F.interpolate(maps, size=dst, mode="bilinear", align_corners=False)
    return maps.flatten(2).transpose(1, 2)  # (B, h'*w', D)


class DistillationTask(nn.Module):
    """Student MAE + optional frozen teacher and the student -> teacher feature projection."""

    def __init__(
        self,
        student: StudentMAE,
        masking: Masking,
        loss: LossConfig,
        teacher: Teacher | None = None,
    ) -> None:
        super().__init__()
        self.student = student
        self.masking = masking
        self.loss_config = loss
        if loss.use_kd:
            if teacher is None:
                raise ValueError(f"loss {loss.terms!r} needs a teacher")
            if teacher.config.img_size != student.config.img_size:
                raise ValueError(
                    f"teacher tile size {teacher.config.img_size} differs from the student's "
                    f"{student.config.img_size}"
                )
            self.teacher: Teacher | None = teacher
            # The FC layer from student block-8 width to teacher block-8 width (HyperKD §KD).
            self.kd_proj: nn.Linear | None = nn.Linear(student.config.embed_dim, teacher.embed_dim)
            nn.init.xavier_uniform_(self.kd_proj.weight)
            nn.init.zeros_(self.kd_proj.bias)
        else:
            self.teacher, self.kd_proj = None, None

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything the optimizer trains (student + projection), never the frozen teacher."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("teacher.")}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("teacher.")]
        if missing or unexpected:
            raise ValueError(
                f"checkpoint does not fit the task: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )

    @property
    def component_loss(self) -> bool:
        """Whether the loss runs on the student's k spectral components (a fixed basis and no
        SSIM term): the same MSE as in band space (:func:`masked_component_mse`), so batches
        may carry ``student_components`` and ``student_residual`` instead of ``student``."""
        return self.student.spectral_fixed and not self.loss_config.use_ssim

    @property
    def batch_fields(self) -> tuple[str, ...]:
        """The batch keys :meth:`make_mask` and :meth:`forward` read: what a cached train split
        keeps and copies into each batch (labels and unused maps stay out)."""
        images = ("student_components", "student_residual") if self.component_loss else ("student",)
        significance = (self.masking.significance_key,) if self.masking.significance_key else ()
        teacher = ("teacher",) if self.loss_config.use_kd else ()
        return (*images, "valid", *significance, *teacher)

    def make_mask(self, batch: Batch, generator: torch.Generator | None = None) -> PatchMask:
        imgs = batch["student"] if "student" in batch else batch["student_components"]
        key = self.masking.significance_key
        return self.masking(
            imgs.shape[0],
            self.student.num_patches,
            significance=batch[key] if key else None,
            generator=generator,
            device=imgs.device,
        )

    def forward(self, batch: Batch, patch_mask: PatchMask) -> dict[str, torch.Tensor]:
        student, cfg = self.student, self.loss_config
        p = student.config.patch_size
        kd_block = student.config.kd_block if cfg.use_kd else None
        residual = None  # (B, L, P*P): distances to a fixed basis (component loss only)
        if self.component_loss:
            if "student_components" in batch:  # projected once, when the split was cached
                imgs, dist = batch["student_components"], batch["student_residual"]
            else:
                imgs, dist = student.project_bands(batch["student"])
            # imgs: (B, k, T, T), dist: (B, T, T)
            residual = valid_patches(dist, p)
            latent, hidden = student.forward_encoder_components(
                imgs, patch_mask, return_block=kd_block
            )
            pred = student.forward_decoder_components(latent, patch_mask.ids_restore)
            target = student.patchify(imgs, components=True)  # (B, L, P*P*k)
        else:
            imgs = batch["student"]  # (B, C, T, T)
            latent, hidden = student.forward_encoder(imgs, patch_mask, return_block=kd_block)
            pred = student.forward_decoder(latent, patch_mask.ids_restore)  # (B, L, P*P*C)
            target = student.patchify(imgs)  # (B, L, P*P*C)
        valid = batch.get("valid")
        recon = None  # (B, C, T, T): predicted masked patches, true visible ones (SSIM only)
        if cfg.use_ssim:
            masked = patch_mask.mask[..., None].bool()  # (B, L, 1)
            recon = student.unpatchify(torch.where(masked, pred, target))
        student_kd = teacher_kd = None
        if cfg.use_kd:
            assert self.teacher is not None and self.kd_proj is not None and hidden is not None
            student_kd, teacher_kd = self._kd_tokens(batch["teacher"], hidden, patch_mask)
        return hyperkd_loss(
            cfg,
            pred=pred,
            target=target,
            recon=recon,
            target_img=imgs,
            mask=patch_mask.mask,
            mask_img=mask_image(patch_mask.mask, student.grid, p),
            valid=None if valid is None else valid_patches(valid, p),
            valid_img=None if valid is None else valid[:, None],
            student_kd=student_kd,
            teacher_kd=teacher_kd,
            residual=residual,
            bands=student.config.in_chans,
        )

    def _kd_tokens(
        self, teacher_imgs: torch.Tensor, hidden: torch.Tensor, patch_mask: PatchMask
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected student tokens and the teacher's at the same visible positions, (B, K, Dt)."""
        assert self.teacher is not None and self.kd_proj is not None
        feats = self.teacher.features(teacher_imgs)  # (B, Lt, Dt), the teacher sees all
        feats = tokens_to_grid(feats, self.teacher.model.grid[1:], self.student.grid)  # (B, L, Dt)
        index = patch_mask.ids_keep.unsqueeze(-1).expand(-1, -1, feats.shape[2])
        teacher_kd = torch.gather(feats, 1, index)  # (B, K, Dt) at the student's visible tokens
        return self.kd_proj(hidden), teacher_kd

    @torch.no_grad()
    def reconstruct(self, batch: Batch, patch_mask: PatchMask) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder's full reconstruction (B, C, T, T) and the pixel mask (B, 1, T, T)."""
        latent, _ = self.student.forward_encoder(batch["student"], patch_mask)
        pred = self.student.forward_decoder(latent, patch_mask.ids_restore)
        image = self.student.unpatchify(pred)
        return image, mask_image(patch_mask.mask, self.student.grid, self.student.config.patch_size)


class TeacherPretrainTask(nn.Module):
    """MAE pretraining of a Prithvi architecture on the six-band teacher tiles (random masking)."""

    batch_fields = ("teacher", "valid")
    """The batch keys :meth:`forward` reads: the six bands and where they are valid."""

    def __init__(self, model: PrithviMAE, masking: Masking) -> None:
        super().__init__()
        if masking.kind != "random":
            raise ValueError("teacher pretraining uses random masking")
        self.model = model
        self.masking = masking

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.state_dict())

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.load_state_dict(state, strict=True)

    def make_mask(self, batch: Batch, generator: torch.Generator | None = None) -> PatchMask:
        imgs = batch["teacher"]
        return self.masking(
            imgs.shape[0], self.model.num_patches, generator=generator, device=imgs.device
        )

    def forward(self, batch: Batch, patch_mask: PatchMask) -> dict[str, torch.Tensor]:
        imgs = batch["teacher"]  # (B, 6, T, T)
        latent = self.model.forward_encoder(imgs, patch_mask)
        pred = self.model.forward_decoder(latent, patch_mask.ids_restore)
        valid = batch.get("valid")
        valid_p = None if valid is None else valid_patches(valid, self.model.config.patch_size)
        mse = masked_patch_mse(pred, self.model.patchify(imgs), patch_mask.mask, valid_p)
        return {"mse": mse.detach(), "loss": mse}
