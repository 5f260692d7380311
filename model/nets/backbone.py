"""The student as a backbone: load a run from any fsspec URL, feed it reflectance, get tokens.

```python
from hyperkd.model import load_student
backbone = load_student("s3://bucket/runs/student")    # or a local run directory
tokens = backbone.forward_features(reflectance)         # (B, 218, H, W) -> (B, h*w, D)
```

Callers pass **surface reflectance** (unitless, about 0..1: the cube's ``reflectance`` as
xarray decodes it, or a tile store's int16 values / 10000), NaN where there is no data. The
per-band statistics the student was trained with travel in the run's ``config.json``
(``tile_store.student_mean``/``student_std``, reflectance x 10000), so the backbone normalises
exactly like the tile loader did: ``(10000 x - mean) / std``, and 0 at every band of a pixel
that is not valid (a NaN in any band, or ``valid`` False).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from torch import nn

from hyperkd.model.nets.mae import MAEConfig, StudentMAE
from hyperkd.pipeline.redaction import redact

REFLECTANCE_SCALE = 10000.0
"""Tile stores and run statistics hold reflectance x 10000."""


@dataclass(frozen=True)
class Embeddings:
    """``pooled`` (B, D): mean over patches; ``patches`` (B, D, h, w) on the patch grid."""

    pooled: torch.Tensor
    patches: torch.Tensor


class StudentBackbone(nn.Module):
    """The student's encoder with its input normalisation; ``model(x)`` = ``forward_features``.

    Attributes:
        mae: the whole :class:`StudentMAE` (decoder included, for reconstructions).
        run: the run's ``config.json``.
        wavelength: the 218 band centres (nm) the input bands must follow, in order.
    """

    def __init__(self, mae: StudentMAE, run: Mapping[str, Any]) -> None:
        super().__init__()
        stats = run.get("tile_store") or {}
        c = mae.config.in_chans
        mean, std = stats.get("student_mean"), stats.get("student_std")
        if mean is None or std is None or len(mean) != c or len(std) != c:
            raise ValueError(f"the run holds no per-band statistics for its {c} bands")
        self.mae = mae
        self.run = dict(run)
        self.wavelength = tuple(float(w) for w in stats.get("band_wavelength") or ())
        # Not persistent: the state dict stays the student's own (and timm's) key set.
        self.register_buffer("band_mean", torch.tensor(mean).view(1, c, 1, 1), persistent=False)
        self.register_buffer("band_std", torch.tensor(std).view(1, c, 1, 1), persistent=False)

    @property
    def config(self) -> MAEConfig:
        return self.mae.config

    @property
    def embed_dim(self) -> int:
        return self.mae.config.embed_dim

    @property
    def patch_size(self) -> int:
        return self.mae.config.patch_size

    def normalise(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Reflectance (B, C, H, W) -> the student's input units, 0 where a pixel is not valid.

        ``valid``: optional (B, H, W) bool; pixels with a non-finite value in any band are
        never valid (the tile store marks a pixel invalid when any student band is nodata).
        """
        return self.normalise_with_mask(x, valid)[0]

    def normalise_with_mask(
        self, x: torch.Tensor, valid: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`normalise` and the (B, H, W) bool mask of the pixels kept."""
        if x.dim() != 4 or x.shape[1] != self.config.in_chans:
            raise ValueError(
                f"expected (B, {self.config.in_chans}, H, W) reflectance, got {tuple(x.shape)}"
            )
        scale = REFLECTANCE_SCALE / self.band_std  # (1, C, 1, 1)
        z = torch.addcmul(-self.band_mean / self.band_std, x.float(), scale)  # (B, C, H, W)
        # A NaN or inf in any band makes the band sum non-finite: one cheap reduction.
        ok = torch.isfinite(z.sum(dim=1))  # (B, H, W)
        if valid is not None:
            ok &= valid.to(ok.device, torch.bool)
        return z.masked_fill_(~ok[:, None], 0.0), ok

    def forward_features(
        self, x: torch.Tensor, valid: torch.Tensor | None = None, *, normalised: bool = False
    ) -> torch.Tensor:
        """Patch tokens of an unmasked batch: (B, C, H, W) -> (B, h*w, D), grid order.

        ``x`` is reflectance (see the module docstring) unless ``normalised`` (then it is the
        tile loader's normalised ``student`` tensor and ``valid`` is ignored). ``H`` and ``W``
        are any multiples of the patch size; tokens are after the encoder's final LayerNorm.
        """
        z = x if normalised else self.normalise(x, valid)
        return self.mae.forward_features(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)

    def embed(
        self, x: torch.Tensor, valid: torch.Tensor | None = None, *, normalised: bool = False
    ) -> Embeddings:
        """Pooled (B, D) and per-patch (B, D, h, w) embeddings of reflectance (B, C, H, W)."""
        tokens = self.forward_features(x, valid, normalised=normalised)  # (B, h*w, D)
        b, p = x.shape[0], self.patch_size
        h, w = x.shape[-2] // p, x.shape[-1] // p
        patches = tokens.transpose(1, 2).reshape(b, tokens.shape[-1], h, w)  # (B, D, h, w)
        return Embeddings(pooled=tokens.mean(dim=1), patches=patches)


def read_run_files(
    url: str, storage_options: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A run directory's ``config.json`` and ``model.safetensors`` from a path or fsspec URL.

    The weights are read with safetensors (never unpickled).
    """
    from hyperkd.pipeline.store.location import CubeStore

    store = CubeStore(url, storage_options)
    raw_config, raw_weights = store.read_bytes("config.json"), store.read_bytes("model.safetensors")
    if raw_config is None or raw_weights is None:
        raise FileNotFoundError(
            f"no finished run at {redact(url)}: it needs config.json and model.safetensors"
        )
    try:
        config = json.loads(raw_config)
        weights = load_safetensors(raw_weights)
    except ValueError as exc:
        raise ValueError(f"run at {redact(url)} is unreadable: {exc}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{redact(url)}/config.json is not a JSON object")
    return config, weights


def load_student(
    path_or_url: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
) -> StudentBackbone:
    """A student run (local path or fsspec URL) as a :class:`StudentBackbone` in eval mode."""
    run, state = read_run_files(str(path_or_url), storage_options)
    if run.get("kind") != "student":
        raise ValueError(f"{redact(path_or_url)} holds a {run.get('kind')!r} run, not a student")
    mae = StudentMAE(MAEConfig(**run["model"]))
    mae.load_state_dict(state, strict=True)
    return StudentBackbone(mae, run).to(device).eval()
