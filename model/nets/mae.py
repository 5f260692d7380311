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
        self.config = c
        self.grid = (c.img_size // c.patch_size, c.img_size // c.patch_size)
        # --- encoder ---
        self.patch_embed = PatchEmbed(c.img_size, c.patch_size, c.in_chans, c.embed_dim)
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
        self.decoder_pred = nn.Linear(c.decoder_embed_dim, c.patch_size**2 * c.in_chans)
        self._init_weights()

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

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, L, P*P*C), channels fastest inside a patch vector."""
        b, c, hp, wq = imgs.shape
        p = self.config.patch_size
        if c != self.config.in_chans:
            raise ValueError(f"student expects {self.config.in_chans} bands, got {c}")
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
        x = self.patch_embed(imgs)  # (B, L, D)
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
        x = self.patch_embed.proj(imgs).flatten(2).transpose(1, 2)  # (B, h*w, D)
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
        x = self.decoder_pred(self.decoder_norm(x))  # (B, 1 + L, P*P*C)
        return x[:, 1:, :]  # drop CLS

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


def student_config(preset: str, *, img_size: int, patch_size: int, in_chans: int) -> MAEConfig:
    """A student preset for a tile store's tile size, patch size and band count.

    - ``tiny``: 64 wide, 4 blocks, decoder 128 x 2; tests and the CPU demo. The decoder is
      wider than the encoder because it predicts P*P*C values per patch (8*8*218 in the demo);
      at 32 wide it underfits (benchmarks/SCIENCE.md).
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
    return MAEConfig(
        img_size=img_size, patch_size=patch_size, in_chans=in_chans, preset=preset, **sizes[preset]
    )
