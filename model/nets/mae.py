"""The student: a ViT masked autoencoder for hyperspectral tiles (after facebookresearch/mae).

Built from timm's ``PatchEmbed`` and ``Block``; reads top to bottom like MAE's ``models_mae.py``:
constructor, ``patchify``/``unpatchify``, ``forward_encoder``, ``forward_decoder``,
``forward_loss``, ``forward``, size presets at the bottom. ``in_chans`` (218 for EnMAP L2A) is
threaded through every reshape, and there are no ImageNet defaults: inputs arrive normalised
per band with the tile store's own statistics.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from timm.layers import PatchEmbed, resample_abs_pos_embed
from timm.models.vision_transformer import Block
from torch import nn

from hyperkd.defaults import SPECTRAL_BASES
from hyperkd.model.nets.masking import PatchMask
from hyperkd.model.nets.pos_embed import sincos_2d

STUDENT_PRESETS = ("tiny", "small", "base")


@dataclass(frozen=True)
class MAEConfig:
    """Student architecture. Sizes in pixels; ``in_chans``, ``img_size`` and ``patch_size``
    come from the tile store."""

    img_size: int
    patch_size: int
    in_chans: int
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    mlp_ratio: float = 4.0
    kd_block: int = 8
    """Encoder block (1-based) whose output is distilled into the teacher's feature space."""
    preset: str = "base"
    spectral_dim: int = 0
    """0: MAE's linear patch embedding and prediction head over all ``in_chans`` bands. k > 0:
    both factorise through k spectral components per pixel (a 1x1 band projection before the
    patch embedding, a shared k -> C layer after the head), initialised from the train split's
    principal components (:meth:`StudentMAE.init_spectral_basis`). EnMAP spectra are nearly
    low-rank, so this is MAE at rank k, for 0.6-0.8x the step time (benchmarks/SCIENCE.md)."""
    spectral_basis: str = "learned"
    """With ``spectral_dim`` k > 0: ``learned`` trains the band projection and the output layer
    from their PCA start; ``fixed`` freezes them at the train split's principal components. A
    fixed orthonormal basis lets training compute the same MSE on k components instead of C
    bands (:meth:`StudentMAE.project_bands`), so tiles can be cached and augmented at k
    channels: about 4x cheaper steps in the demo (benchmarks/SCIENCE.md)."""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class StudentMAE(nn.Module):
    """ViT-MAE over (B, C, H, W) tiles, C = ``in_chans``."""

    def __init__(self, config: MAEConfig) -> None:
        super().__init__()
        c = config
        if c.img_size % c.patch_size:
            raise ValueError(
                f"tile size {c.img_size} is not a multiple of patch size {c.patch_size}"
            )
        if not 1 <= c.kd_block <= c.depth:
            raise ValueError(f"student kd_block {c.kd_block} outside 1..{c.depth}")
        if c.spectral_basis not in SPECTRAL_BASES:
            raise ValueError(
                f"unknown spectral basis {c.spectral_basis!r}: choose one of {SPECTRAL_BASES}"
            )
        self.config = c
        self.grid = (c.img_size // c.patch_size, c.img_size // c.patch_size)
        # --- encoder ---
        k = c.spectral_dim or c.in_chans  # channels the patch embedding and the head see
        self.spectral_embed = nn.Conv2d(c.in_chans, k, 1) if c.spectral_dim else None
        self.patch_embed = PatchEmbed(c.img_size, c.patch_size, k, c.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))
        self.register_buffer("pos_embed", sincos_2d(c.embed_dim, self.grid)[None])  # fixed
        self.blocks = nn.ModuleList(
            Block(c.embed_dim, c.num_heads, c.mlp_ratio, qkv_bias=True, norm_layer=nn.LayerNorm)
            for _ in range(c.depth)
        )
        self.norm = nn.LayerNorm(c.embed_dim)
        # --- decoder ---
        self.decoder_embed = nn.Linear(c.embed_dim, c.decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.decoder_embed_dim))
        self.register_buffer("decoder_pos_embed", sincos_2d(c.decoder_embed_dim, self.grid)[None])
        self.decoder_blocks = nn.ModuleList(
            Block(
                c.decoder_embed_dim,
                c.decoder_num_heads,
                c.mlp_ratio,
                qkv_bias=True,
                norm_layer=nn.LayerNorm,
            )
            for _ in range(c.decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(c.decoder_embed_dim)
        self.decoder_pred = nn.Linear(c.decoder_embed_dim, c.patch_size**2 * k)
        self.spectral_pred = nn.Linear(k, c.in_chans) if c.spectral_dim else None
        self._init_weights()
        if self.spectral_fixed:
            for layer in (self.spectral_embed, self.spectral_pred):
                layer.requires_grad_(False)

    def _init_weights(self) -> None:
        # MAE's initialisation: patch embedding like a Linear, tokens N(0, 0.02), xavier Linears.
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @torch.no_grad()
    def init_spectral_basis(self, pixels: torch.Tensor) -> None:
        """Start the spectral factorisation at PCA: ``pixels`` (N, C) normalised spectra.

        The band projection becomes the top ``spectral_dim`` principal components (centred),
        and the output layer their transpose plus the mean, so embedding and head start in the
        subspace that holds the variance. From a random start the student learns it slowly
        (about 1 dB behind after 600 demo steps, benchmarks/SCIENCE.md).
        """
        if self.spectral_embed is None or self.spectral_pred is None:
            raise ValueError("init_spectral_basis needs a student with spectral_dim > 0")
        k = self.config.spectral_dim
        x = pixels.double()
        mean = x.mean(dim=0)  # (C,)
        _, _, vt = torch.linalg.svd(x - mean, full_matrices=False)  # vt: (min(N, C), C)
        if vt.shape[0] < k:
            raise ValueError(f"{pixels.shape[0]} pixels cannot give {k} spectral components")
        basis = vt[:k].float()  # (k, C)
        self.spectral_embed.weight.copy_(basis[:, :, None, None])  # (k, C, 1, 1)
        self.spectral_embed.bias.copy_(-(basis @ mean.float()))
        self.spectral_pred.weight.copy_(basis.T)  # (C, k)
        self.spectral_pred.bias.copy_(mean.float())

    @property
    def spectral_fixed(self) -> bool:
        """Whether the spectral layers are a frozen orthonormal basis (``spectral_basis``)."""
        return bool(self.config.spectral_dim) and self.config.spectral_basis == "fixed"

    def embed_bands(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, k, H, W) spectral components; the identity when k = 0."""
        return imgs if self.spectral_embed is None else self.spectral_embed(imgs)

    @torch.no_grad()
    def project_bands(self, imgs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A fixed basis's view of a tile: components and what they miss.

        ``imgs`` (B, C, H, W) normalised -> ``components`` (B, k, H, W), ``V (x - m)``, and
        ``residual`` (B, H, W), each pixel's squared distance to the basis' affine subspace,
        ``|x - m - V^T V (x - m)|^2``. With orthonormal ``V``, any prediction ``m + V^T z``
        has ``|x - m - V^T z|^2 = |V (x - m) - z|^2 + residual``: the band-space MSE, exactly.
        """
        if not self.spectral_fixed:
            raise ValueError("project_bands needs a student with spectral_basis='fixed'")
        assert self.spectral_embed is not None and self.spectral_pred is not None
        components = self.spectral_embed(imgs)  # (B, k, H, W)
        back = self.spectral_pred(components.permute(0, 2, 3, 1))  # (B, H, W, C)
        residual = ((imgs.permute(0, 2, 3, 1) - back) ** 2).sum(dim=-1)  # (B, H, W)
        return components, residual

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def patchify(self, imgs: torch.Tensor, *, components: bool = False) -> torch.Tensor:
        """(B, C, H, W) -> (B, L, P*P*C), channels fastest inside a patch vector.

        ``components``: the input holds the k spectral components (B, k, H, W) instead.
        """
        b, c, hp, wq = imgs.shape
        p = self.config.patch_size
        expected = self.config.spectral_dim if components else self.config.in_chans
        if c != expected:
            kind = "spectral components" if components else "bands"
            raise ValueError(f"student expects {expected} {kind}, got {c}")
        x = imgs.reshape(b, c, hp // p, p, wq // p, p)  # (B, C, h, p, w, q)
        x = torch.einsum("nchpwq->nhwpqc", x)  # (B, h, w, p, q, C)
        return x.reshape(b, (hp // p) * (wq // p), p * p * c)  # (B, L, P*P*C)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, P*P*C) -> (B, C, H, W), the inverse of :meth:`patchify`."""
        (h, w), p, c = self.grid, self.config.patch_size, self.config.in_chans
        x = x.reshape(x.shape[0], h, w, p, p, c)  # (B, h, w, p, q, C)
        x = torch.einsum("nhwpqc->nchpwq", x)  # (B, C, h, p, w, q)
        return x.reshape(x.shape[0], c, h * p, w * p)  # (B, C, H, W)

    def forward_encoder(
        self, imgs: torch.Tensor, patch_mask: PatchMask, *, return_block: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encode the visible patches.

        Returns:
            latent: (B, 1 + K, D) after the final LayerNorm, CLS first.
            hidden: (B, K, D) visible tokens after block ``return_block`` (1-based, no CLS, no
                final norm), or None when ``return_block`` is None.
        """
        return self.forward_encoder_components(
            self.embed_bands(imgs), patch_mask, return_block=return_block
        )

    def forward_encoder_components(
        self, components: torch.Tensor, patch_mask: PatchMask, *, return_block: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`forward_encoder` after the band projection: ``components`` (B, k, H, W)."""
        x = self.patch_embed(components)  # (B, L, D)
        x = x + self.pos_embed[:, 1:, :]
        index = patch_mask.ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[2])  # (B, K, D)
        x = torch.gather(x, 1, index)  # (B, K, D) visible tokens only
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)  # (B, 1, D)
        x = torch.cat([cls, x], dim=1)  # (B, 1 + K, D)
        hidden = None
        for i, block in enumerate(self.blocks, start=1):
            x = block(x)
            if i == return_block:
                hidden = x[:, 1:, :]
        return self.norm(x), hidden

    def forward_features(self, imgs: torch.Tensor) -> torch.Tensor:
        """Encode an unmasked batch: normalised (B, C, H, W) -> patch tokens (B, h*w, D).

        Tokens are in grid order (row-major over ``h = H / P``, ``w = W / P``), after the final
        LayerNorm, CLS dropped. Any ``H``, ``W`` divisible by the patch size work: the fixed
        position table is resampled bicubically like timm's ``dynamic_img_size`` does, so a
        timm ``VisionTransformer`` holding these weights gives the same tokens.
        """
        b, _, height, width = imgs.shape
        p = self.config.patch_size
        if height % p or width % p:
            raise ValueError(f"input {height} x {width} px is not a multiple of patch size {p}")
        grid = (height // p, width // p)
        x = self.patch_embed.proj(self.embed_bands(imgs)).flatten(2).transpose(1, 2)  # (B, h*w, D)
        pos = resample_abs_pos_embed(
            self.pos_embed, new_size=grid, old_size=self.grid, num_prefix_tokens=1
        )  # (1, 1 + h*w, D)
        cls = self.cls_token.expand(b, -1, -1)  # (B, 1, D)
        x = torch.cat([cls, x], dim=1) + pos  # (B, 1 + h*w, D)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 1:, :]  # (B, h*w, D)

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """(B, 1 + K, D) -> per-patch predictions (B, L, P*P*C) in grid order."""
        x = self.forward_decoder_components(latent, ids_restore)  # (B, L, P*P*k)
        if self.spectral_pred is not None:
            b, length = x.shape[:2]
            x = x.reshape(b, length, self.config.patch_size**2, -1)  # (B, L, P*P, k)
            x = self.spectral_pred(x).reshape(b, length, -1)  # (B, L, P*P*C)
        return x

    def forward_decoder_components(
        self, latent: torch.Tensor, ids_restore: torch.Tensor
    ) -> torch.Tensor:
        """:meth:`forward_decoder` before the output layer: (B, L, P*P*k), k = C when
        ``spectral_dim`` is 0."""
        x = self.decoder_embed(latent)  # (B, 1 + K, Dd)
        b, length, dim = x.shape[0], ids_restore.shape[1], x.shape[2]
        mask_tokens = self.mask_token.expand(b, length + 1 - x.shape[1], -1)  # (B, L - K, Dd)
        tokens = torch.cat([x[:, 1:, :], mask_tokens], dim=1)  # (B, L, Dd) in keep order
        tokens = torch.gather(
            tokens, 1, ids_restore.unsqueeze(-1).expand(-1, -1, dim)
        )  # grid order
        x = torch.cat([x[:, :1, :], tokens], dim=1) + self.decoder_pos_embed  # (B, 1 + L, Dd)
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:, :]  # (B, L, P*P*k), CLS dropped

    def forward_loss(
        self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """MAE's loss: per-patch MSE on the (per-band normalised) tile, over masked patches."""
        target = self.patchify(imgs)  # (B, L, P*P*C)
        per_patch = ((pred - target) ** 2).mean(dim=-1)  # (B, L)
        return (per_patch * mask).sum() / mask.sum()

    def forward(self, imgs: torch.Tensor, patch_mask: PatchMask) -> dict[str, torch.Tensor]:
        """Masking is done by the caller (:class:`hyperkd.model.nets.masking.Masking`)."""
        latent, _ = self.forward_encoder(imgs, patch_mask)
        pred = self.forward_decoder(latent, patch_mask.ids_restore)
        loss = self.forward_loss(imgs, pred, patch_mask.mask)
        return {"loss": loss, "pred": pred, "mask": patch_mask.mask}


def fold_spectral_embed(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An encoder state dict with the band projection folded into one patch embedding.

    For a ``spectral_dim`` student, ``patch_embed.proj`` (D, k, P, P) after ``spectral_embed``
    (k, C, 1, 1) is one linear map of the patch; folded it is MAE's (D, C, P, P) embedding,
    which a plain ViT (timm's) loads. Other state dicts are returned unchanged.
    """
    if "spectral_embed.weight" not in state:
        return state
    out = {k: v for k, v in state.items() if not k.startswith(("spectral_", "decoder", "mask_"))}
    w1 = state["spectral_embed.weight"][:, :, 0, 0]  # (k, C)
    b1 = state["spectral_embed.bias"]  # (k,)
    w2, b2 = state["patch_embed.proj.weight"], state["patch_embed.proj.bias"]  # (D, k, P, P), (D,)
    out["patch_embed.proj.weight"] = torch.einsum("dkpq,kc->dcpq", w2, w1)  # (D, C, P, P)
    out["patch_embed.proj.bias"] = b2 + torch.einsum("dkpq,k->d", w2, b1)  # (D,)
    return out


def student_config(
    preset: str,
    *,
    img_size: int,
    patch_size: int,
    in_chans: int,
    spectral_dim: int = 0,
    spectral_basis: str = "learned",
) -> MAEConfig:
    """A student preset for a tile store's tile size, patch size and band count.

    - ``tiny``: 64 wide, 4 blocks; tests and the CPU demo. Over all bands its decoder is
      128 x 2, wider than the encoder because it predicts P*P*C values per patch (8*8*218);
      at 32 wide it underfits. Over ``spectral_dim`` components it predicts P*P*k values
      (8*8*16 in the demo) and is 64 x 2: on the demo's val split as good as 128 x 2 after
      3000 steps, masked and visible patches alike, at 1.4-1.6x the step; after 6000 steps
      0.1 dB behind, so longer runs should widen it. (64 x 1 matched it on masked patches but
      its visible-patch outputs, which the loss never sees, fell apart; benchmarks/SCIENCE.md.)
    - ``small``: ViT-S (384 x 12, 6 heads), decoder 256 x 4.
    - ``base``: the paper's ViT-B (768 x 12, 12 heads), decoder 512 x 8 (16 heads).
    The distilled block is 8 of 12, or the same 2/3 depth for ``tiny``.
    """
    sizes = {
        "tiny": dict(embed_dim=64, depth=4, num_heads=4, decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4, kd_block=3),
        "small": dict(embed_dim=384, depth=12, num_heads=6, decoder_embed_dim=256, decoder_depth=4, decoder_num_heads=8, kd_block=8),
        "base": dict(embed_dim=768, depth=12, num_heads=12, decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16, kd_block=8),
    }  # fmt: skip
    if preset not in sizes:
        raise ValueError(f"unknown student preset {preset!r}: choose one of {STUDENT_PRESETS}")
    if not 0 <= spectral_dim < in_chans:
        raise ValueError(f"spectral_dim {spectral_dim} must be 0 (off) or below {in_chans} bands")
    if preset == "tiny" and spectral_dim:
        sizes["tiny"] |= dict(decoder_embed_dim=64)
    return MAEConfig(
        img_size=img_size, patch_size=patch_size, in_chans=in_chans, preset=preset,
        spectral_dim=spectral_dim, spectral_basis=spectral_basis, **sizes[preset],
    )  # fmt: skip
