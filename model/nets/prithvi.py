"""The Prithvi teacher: the Prithvi-EO MAE architecture, its official checkpoint layout, a wrapper.

Architecture as in IBM/terratorch ``prithvi_mae.py`` and the HF ``Prithvi.py`` (method.md §2.4):
a Conv3d patch embedding (kernel = stride = (1, P, P), one frame), a fixed 3-D sin-cos positional
embedding, timm ``Block``s (qkv bias, LayerNorm) and an MAE decoder. The module's ``state_dict``
is the official *flat* V1 layout (``cls_token``, ``pos_embed``, ``patch_embed.proj.weight``,
``blocks.*``, ``norm.*``, ``decoder_embed.*``, ``mask_token``, ``decoder_pos_embed``,
``decoder_blocks.*``, ``decoder_norm.*``, ``decoder_pred.*``), so a ``Prithvi_EO_V1_100M.pt`` loads
strictly through :func:`load_prithvi_state_dict`, and our own ``train-teacher`` runs save exactly
that layout.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
from timm.models.vision_transformer import Block
from torch import nn

from hyperkd.model.nets.masking import PatchMask
from hyperkd.model.nets.pos_embed import infer_grid, interpolate_grid, sincos_3d
from hyperkd.pipeline.sensors import prithvi_preset

TEACHER_PRESETS = ("tiny", "prithvi-eo-1.0-100m", "prithvi-eo-2.0-300m")


@dataclass(frozen=True)
class PrithviConfig:
    """Architecture of a Prithvi MAE. Image and patch sizes are pixels; widths are channels."""

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 6
    num_frames: int = 1
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    mlp_ratio: float = 4.0
    kd_block: int = 8
    """Encoder block (1-based) whose output is distilled; 8 of 12 after HyperKD."""
    preset: str = "prithvi-eo-1.0-100m"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def teacher_config(preset: str, *, img_size: int, patch_size: int | None = None) -> PrithviConfig:
    """A teacher preset at a tile size.

    ``prithvi-eo-1.0-100m`` and ``prithvi-eo-2.0-300m`` are the published architectures
    (``catalogs/sensors/prithvi.yaml``) with their 16-px patches, so official weights fit.
    ``tiny`` keeps Prithvi's structure at CPU size (64 wide, 4 blocks) and takes the tile
    store's ``patch_size``, for tests and the CPU demo.
    """
    if preset == "tiny":
        return PrithviConfig(
            img_size=img_size,
            patch_size=patch_size or 16,
            embed_dim=64,
            depth=4,
            num_heads=4,
            decoder_embed_dim=32,
            decoder_depth=2,
            decoder_num_heads=4,
            kd_block=3,
            preset="tiny",
        )
    if preset not in TEACHER_PRESETS:
        raise ValueError(f"unknown teacher preset {preset!r}: choose one of {TEACHER_PRESETS}")
    p = prithvi_preset(preset)
    return PrithviConfig(
        img_size=img_size,
        patch_size=p.patch_size,
        in_chans=len(p.bands),
        embed_dim=p.embed_dim,
        depth=p.depth,
        num_heads=p.num_heads,
        decoder_embed_dim=p.decoder_embed_dim,
        decoder_depth=p.decoder_depth,
        decoder_num_heads=p.decoder_num_heads,
        mlp_ratio=p.mlp_ratio,
        # Block 8 of 12 in HyperKD; the same relative depth (2/3) for deeper presets.
        kd_block=round(p.depth * 2 / 3),
        preset=preset,
    )


class PatchEmbed3d(nn.Module):
    """Prithvi's 3-D patch embedding: (B, C, T, H, W) -> (B, T*h*w, D), tokens ordered (t, h, w)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = (1, patch_size, patch_size)
        self.proj = nn.Conv3d(
            in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # (B, D, T, h, w)
        return x.flatten(2).transpose(1, 2)  # (B, T*h*w, D)


class PrithviMAE(nn.Module):
    """Prithvi MAE with the official flat parameter names. Inputs are (B, C, H, W) or (B, C, T, H, W)
    normalised with the preset's HLS statistics; T = ``num_frames``."""

    def __init__(self, config: PrithviConfig) -> None:
        super().__init__()
        c = config
        if c.img_size % c.patch_size:
            raise ValueError(
                f"image size {c.img_size} is not a multiple of patch size {c.patch_size}"
            )
        self.config = c
        self.grid = (c.num_frames, c.img_size // c.patch_size, c.img_size // c.patch_size)
        num_patches = self.grid[0] * self.grid[1] * self.grid[2]
        # --- encoder ---
        self.patch_embed = PatchEmbed3d(c.patch_size, c.in_chans, c.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))
        # Fixed tables live in buffers: saved in the state dict (official layout), never trained.
        self.register_buffer("pos_embed", sincos_3d(c.embed_dim, self.grid)[None])
        self.blocks = nn.ModuleList(
            Block(c.embed_dim, c.num_heads, c.mlp_ratio, qkv_bias=True, norm_layer=nn.LayerNorm)
            for _ in range(c.depth)
        )
        self.norm = nn.LayerNorm(c.embed_dim)
        # --- decoder ---
        self.decoder_embed = nn.Linear(c.embed_dim, c.decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.decoder_embed_dim))
        self.register_buffer("decoder_pos_embed", sincos_3d(c.decoder_embed_dim, self.grid)[None])
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
        assert num_patches + 1 == self.pos_embed.shape[1]
        self._init_weights()

    def _init_weights(self) -> None:
        # As Prithvi/MAE: patch embedding like a Linear, tokens N(0, 0.02), xavier Linear layers.
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
        return self.grid[0] * self.grid[1] * self.grid[2]

    def _frames(self, imgs: torch.Tensor) -> torch.Tensor:
        if imgs.dim() == 4:
            imgs = imgs.unsqueeze(2)  # (B, C, H, W) -> (B, C, 1, H, W)
        c = self.config
        if imgs.shape[1:] != (c.in_chans, c.num_frames, c.img_size, c.img_size):
            raise ValueError(
                f"teacher expects (B, {c.in_chans}, {c.num_frames}, {c.img_size}, {c.img_size}) "
                f"inputs, got {tuple(imgs.shape)}"
            )
        return imgs

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, L, P*P*C): ``b c t (h p) (w q) -> b (t h w) (p q c)``."""
        imgs = self._frames(imgs)
        b, c, t, hp, wq = imgs.shape
        p = self.config.patch_size
        x = imgs.reshape(b, c, t, hp // p, p, wq // p, p)  # (B, C, T, h, p, w, q)
        x = x.permute(0, 2, 3, 5, 4, 6, 1)  # (B, T, h, w, p, q, C)
        return x.reshape(b, t * (hp // p) * (wq // p), p * p * c)  # (B, L, P*P*C)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, P*P*C) -> (B, C, T, H, W), the inverse of :meth:`patchify`."""
        (t, h, w), p, c = self.grid, self.config.patch_size, self.config.in_chans
        b = x.shape[0]
        x = x.reshape(b, t, h, w, p, p, c)  # (B, T, h, w, p, q, C)
        x = x.permute(0, 6, 1, 2, 4, 3, 5)  # (B, C, T, h, p, w, q)
        return x.reshape(b, c, t, h * p, w * p)

    def _embed(self, imgs: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(self._frames(imgs))  # (B, L, D)
        return x + self.pos_embed[:, 1:, :]

    def _with_cls(self, x: torch.Tensor) -> torch.Tensor:
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)  # (B, 1, D)
        return torch.cat([cls, x], dim=1)  # (B, 1 + K, D)

    def forward_encoder(self, imgs: torch.Tensor, patch_mask: PatchMask) -> torch.Tensor:
        """Encode the visible patches: (B, C, [T,] H, W) -> (B, 1 + K, D), final norm applied."""
        x = self._embed(imgs)  # (B, L, D)
        index = patch_mask.ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[2])  # (B, K, D)
        x = self._with_cls(torch.gather(x, 1, index))  # (B, 1 + K, D)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """(B, 1 + K, D) -> per-patch predictions (B, L, P*P*C) in grid order."""
        x = self.decoder_embed(latent)  # (B, 1 + K, Dd)
        b, length, dim = x.shape[0], ids_restore.shape[1], x.shape[2]
        mask_tokens = self.mask_token.expand(b, length + 1 - x.shape[1], -1)  # (B, L - K, Dd)
        tokens = torch.cat([x[:, 1:, :], mask_tokens], dim=1)  # (B, L, Dd) in keep order
        index = ids_restore.unsqueeze(-1).expand(-1, -1, dim)
        tokens = torch.gather(tokens, 1, index)  # (B, L, Dd) in grid order
        x = torch.cat([x[:, :1, :], tokens], dim=1) + self.decoder_pos_embed  # (B, 1 + L, Dd)
        for block in self.decoder_blocks:
            x = block(x)
        x = self.decoder_pred(self.decoder_norm(x))  # (B, 1 + L, P*P*C)
        return x[:, 1:, :]

    def forward_loss(
        self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Prithvi's loss: per-patch MSE averaged over masked patches (norm_pix_loss off)."""
        target = self.patchify(imgs)  # (B, L, P*P*C)
        per_patch = ((pred - target) ** 2).mean(dim=-1)  # (B, L)
        return (per_patch * mask).sum() / mask.sum()

    def forward(self, imgs: torch.Tensor, patch_mask: PatchMask) -> dict[str, torch.Tensor]:
        latent = self.forward_encoder(imgs, patch_mask)
        pred = self.forward_decoder(latent, patch_mask.ids_restore)
        loss = self.forward_loss(imgs, pred, patch_mask.mask)
        return {"loss": loss, "mse": loss.detach(), "pred": pred, "mask": patch_mask.mask}

    def forward_features(self, imgs: torch.Tensor, block: int) -> torch.Tensor:
        """Unmasked tokens after encoder block ``block`` (1-based), CLS dropped: (B, L, D).

        Like Prithvi's ``forward_features``, intermediate outputs carry no final LayerNorm.
        """
        if not 1 <= block <= len(self.blocks):
            raise ValueError(f"teacher block {block} outside 1..{len(self.blocks)}")
        x = self._with_cls(self._embed(imgs))  # (B, 1 + L, D)
        for blk in self.blocks[:block]:
            x = blk(x)
        return x[:, 1:, :]


def _strip_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official layout from legacy ``_timm_module.``/``model.`` and terratorch ``encoder.``/
    ``decoder.`` prefixes (terratorch's ``checkpoint_filter_fn_mae`` adds the latter two)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key
        for prefix in ("_timm_module.", "model.", "encoder.", "decoder."):
            if name.startswith(prefix):
                name = name[len(prefix) :]
        if name in out:
            raise ValueError(f"checkpoint holds {name!r} twice (once as {key!r})")
        out[name] = value
    return out


def adapt_pos_table(stored: torch.Tensor, target: torch.Tensor, frames: int) -> torch.Tensor:
    """A stored (1, 1 + T*h*w, D) table for the model's ``target`` table shape.

    A table that *is* Prithvi's fixed sin-cos table is recomputed for the new grid, which is
    exactly what the teacher would see on a crop at the same GSD. Any other (learned) table has
    its first frame's spatial grid resized bicubically, as terratorch does.
    """
    if stored.shape == target.shape:
        return stored
    dim, n_tokens = stored.shape[-1], stored.shape[1] - 1
    for f in dict.fromkeys((frames, 1, 2, 3, 4)):
        try:
            grid = infer_grid(n_tokens, f)
        except ValueError:
            continue
        if torch.allclose(stored[0].float(), sincos_3d(dim, grid), atol=1e-5):
            return target.clone()
    grid = infer_grid(n_tokens, frames)
    _, h_new, w_new = infer_grid(target.shape[1] - 1, 1)
    first = stored[:, : 1 + grid[1] * grid[2], :]  # CLS + frame 0
    return interpolate_grid(first, (1, grid[1], grid[2]), (h_new, w_new)).to(target.dtype)


def load_prithvi_state_dict(
    model: PrithviMAE, state: Mapping[str, torch.Tensor], *, frames: int = 3
) -> None:
    """Load an official-layout state dict strictly into ``model``.

    ``frames`` is the stored tables' frame count (3 for EO-1.0-100M, 4 for EO-2.0). Positional
    tables of another grid are adapted with :func:`adapt_pos_table`; every other key and shape
    must match exactly, and a mismatch raises one ``ValueError`` naming the keys.
    """
    state = _strip_prefixes(state)
    own = model.state_dict()
    for key in ("pos_embed", "decoder_pos_embed"):
        if key in state and state[key].shape != own[key].shape:
            state[key] = adapt_pos_table(state[key], own[key], frames)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        details = [
            f"missing {missing[:5]}" if missing else "",
            f"unexpected {unexpected[:5]}" if unexpected else "",
        ]
        details += [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in wrong[:5]]
        raise ValueError(
            "teacher weights do not fit the architecture: " + "; ".join(d for d in details if d)
        )
    model.load_state_dict(state, strict=True)


class Teacher(nn.Module):
    """A frozen Prithvi encoder for distillation: eval mode, no gradients, ``features(x, block)``."""

    def __init__(self, model: PrithviMAE) -> None:
        super().__init__()
        self.model = model.requires_grad_(False).eval()

    @property
    def config(self) -> PrithviConfig:
        return self.model.config

    @property
    def embed_dim(self) -> int:
        return self.model.config.embed_dim

    def train(self, mode: bool = True) -> Teacher:
        # The teacher never leaves eval mode, whatever the trainer asks of its parent module.
        return super().train(False)

    @torch.no_grad()
    def features(self, imgs: torch.Tensor, block: int | None = None) -> torch.Tensor:
        """(B, 6, H, W) teacher tile -> (B, L, D) tokens after ``block`` (default ``kd_block``)."""
        return self.model.forward_features(imgs, block or self.config.kd_block)
