"""The student presets as timm models: ``hyperkd_student_{tiny,small,base}``.

Importing :mod:`hyperkd.model` registers them. The student's encoder *is* a timm
``VisionTransformer`` (same ``PatchEmbed``, ``Block`` and key names), so its run weights load
with no missing or unexpected key::

    import timm, hyperkd.model
    m = timm.create_model("hyperkd_student_base", pretrained=True,
                          pretrained_cfg_overlay=dict(file="runs/student/model.safetensors"))
    tokens = m.forward_features(x)[:, 1:]   # == load_student("runs/student").forward_features

When ``config.json`` sits beside the weights file, the architecture's tile size, patch size and
band count are read from it, and the model's ``pretrained_cfg`` ``mean``/``std`` are the run's
per-band statistics in reflectance units (``timm.data.resolve_data_config`` gives them). Without
it the defaults are 128-px tiles, 16-px patches and 218 bands, and ``mean``/``std`` are empty:
the student has no ImageNet normalisation to fall back on. ``x`` is normalised input, as the
tile loader gives it (``StudentBackbone.normalise`` maps reflectance to it).

``dynamic_img_size`` is on by default, so any H, W divisible by the patch size work, with the
position table resampled exactly as ``StudentMAE.forward_features`` resamples it.
``features_only=True`` (terratorch's timm path) returns ``(B, D, h, w)`` maps of the blocks in
``out_indices`` (default: the last 3).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from timm.models import build_model_with_cfg, register_model
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import nn

from hyperkd.defaults import PATCH_SIZE, TILE_SIZE
from hyperkd.model.nets.backbone import REFLECTANCE_SCALE
from hyperkd.model.nets.mae import MAEConfig, fold_spectral_embed, student_config

DEFAULTS = dict(img_size=TILE_SIZE, patch_size=PATCH_SIZE, in_chans=218)
"""The tile store's defaults (EnMAP L2A: 218 usable bands): used when no run config sits
beside the weights."""


def _cfg(preset: str) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 0,
        "input_size": (DEFAULTS["in_chans"], DEFAULTS["img_size"], DEFAULTS["img_size"]),
        "pool_size": None,
        "interpolation": "bicubic",
        "fixed_input_size": False,
        "mean": (),
        "std": (),
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "apache-2.0",
        "description": f"hyperkd student ({preset}): EnMAP 218-band ViT-MAE encoder",
    }


default_cfgs = {f"hyperkd_student_{p}": _cfg(p) for p in ("tiny", "small", "base")}


def _run_beside(file: str | None) -> dict[str, Any] | None:
    """The run's ``config.json`` next to a local weights file, or None."""
    if not file:
        return None
    config = Path(file).with_name("config.json")
    return json.loads(config.read_text()) if config.is_file() else None


def _student_weights(state: dict[str, Any], model: VisionTransformer) -> dict[str, Any]:
    """Drop the MAE decoder, fold a band projection into the patch embedding
    (:func:`~hyperkd.model.nets.mae.fold_spectral_embed`), then timm's own filter (resamples
    ``pos_embed`` to the grid)."""
    encoder = {k: v for k, v in state.items() if not k.startswith(("decoder", "mask_token"))}
    return checkpoint_filter_fn(fold_spectral_embed(encoder), model)


def _create(preset: str, pretrained: bool, **kwargs: Any) -> VisionTransformer:
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    if pretrained and not overlay.get("file"):
        raise ValueError(
            f"hyperkd_student_{preset} has no published weights: pass "
            "pretrained_cfg_overlay=dict(file='RUN/model.safetensors')"
        )
    run = _run_beside(overlay.get("file")) if pretrained else None
    if run is not None:
        config = MAEConfig(**run["model"])
        if config.preset != preset:
            raise ValueError(f"{overlay['file']} holds a {config.preset!r} student, not {preset!r}")
        stats = run["tile_store"]
        overlay.setdefault("mean", tuple(m / REFLECTANCE_SCALE for m in stats["student_mean"]))
        overlay.setdefault("std", tuple(s / REFLECTANCE_SCALE for s in stats["student_std"]))
        overlay.setdefault("input_size", (config.in_chans, config.img_size, config.img_size))
    else:
        config = student_config(preset, **DEFAULTS)  # type: ignore[arg-type]
    args: dict[str, Any] = dict(
        img_size=config.img_size,
        patch_size=config.patch_size,
        in_chans=config.in_chans,
        embed_dim=config.embed_dim,
        depth=config.depth,
        num_heads=config.num_heads,
        mlp_ratio=config.mlp_ratio,
        qkv_bias=True,
        norm_layer=nn.LayerNorm,  # the student's eps (1e-5), not timm's ViT default (1e-6)
        num_classes=0,
        dynamic_img_size=True,
    )
    args.update(kwargs)
    out_indices = args.pop("out_indices", 3)
    return build_model_with_cfg(
        VisionTransformer,
        f"hyperkd_student_{preset}",
        pretrained,
        pretrained_cfg_overlay=overlay,
        pretrained_filter_fn=_student_weights,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **args,
    )


@register_model
def hyperkd_student_tiny(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """Student ``tiny``: 64 wide, 4 blocks, 4 heads (tests and the CPU demo)."""
    return _create("tiny", pretrained, **kwargs)


@register_model
def hyperkd_student_small(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """Student ``small``: ViT-S, 384 wide, 12 blocks, 6 heads."""
    return _create("small", pretrained, **kwargs)


@register_model
def hyperkd_student_base(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """Student ``base``: ViT-B, 768 wide, 12 blocks, 12 heads (the paper's student)."""
    return _create("base", pretrained, **kwargs)
