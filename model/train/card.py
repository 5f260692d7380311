"""What a run directory says about itself: a ``README.md`` model card and a STAC ``item.json``.

Both are written with the final weights (``save_run``), before ``config.json`` marks the run
finished, and can be rewritten later with evaluation metrics (``hyperkd card``). The item uses
the Machine Learning Model extension (MLM v1.4) and STAC 1.1 ``bands`` with the EO extension's
wavelengths; ``tests/test_card.py`` validates it offline against the extension's JSON schema.
The card's front matter (YAML) carries license, tags and metrics, like a Hugging Face card.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import torch
import yaml

MLM = "https://stac-extensions.github.io/mlm/v1.4.0/schema.json"
EO = "https://stac-extensions.github.io/eo/v2.0.0/schema.json"
LICENSE = "Apache-2.0"
SCALE = 10000.0
"""Run statistics are reflectance x 10000; model inputs are reflectance."""

LIMITATIONS = (
    "Trained on the tiles of one tile store (one region, a few scenes): it has seen only those "
    "surfaces, that season and that sensor; check it on your own data before relying on it.",
    "Inputs must be EnMAP L2A surface reflectance on the same bands (wavelengths below), "
    "normalised with these statistics; other sensors or processing levels are out of scope.",
    "Embeddings depend on the window they are computed in (global attention over the window); "
    "compare embeddings made with the same window size.",
    "Reconstruction metrics say how well masked patches are filled in, not how useful the "
    "embeddings are for a task: probe them on labelled data (`hyperkd downstream`).",
)
INTENDED_USE = (
    "A frozen or fine-tuned backbone for EnMAP hyperspectral tasks (land cover, crops, soil), "
    "per-patch embeddings for similarity search, clustering and cheap probes (`hyperkd embed`), "
    "and research on distilling multispectral foundation models into hyperspectral students."
)


def _kind(config: Mapping[str, Any]) -> str:
    return str(config.get("kind", "student"))


def _inputs(config: Mapping[str, Any]) -> tuple[list[str], list[float], list[float], list[float]]:
    """Band names, wavelengths (nm, or NaN), means and stds (reflectance x 10000)."""
    stats = config.get("tile_store") or {}
    if _kind(config) == "teacher":
        names = list(stats.get("teacher_bands") or [])
        mean, std = stats.get("teacher_mean") or [], stats.get("teacher_std") or []
        return names, [float("nan")] * len(names), list(mean), list(std)
    wavelengths = [float(w) for w in stats.get("band_wavelength") or []]
    mean, std = list(stats.get("student_mean") or []), list(stats.get("student_std") or [])
    names = [f"band_{i + 1:03d}" for i in range(len(mean))]
    return names, wavelengths or [float("nan")] * len(names), mean, std


def _counts(weights: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """All parameters and the encoder's (no decoder, no mask token)."""
    total = sum(int(v.numel()) for v in weights.values())
    decoder = sum(
        int(v.numel()) for k, v in weights.items() if k.startswith(("decoder", "mask_token"))
    )
    return total, total - decoder


def _model_input(config: Mapping[str, Any]) -> Any:
    """The MLM input: reflectance bands, their shape and one z-score per band."""
    from pystac.extensions.mlm import InputStructure, ModelInput, ValueScaling

    names, _, mean, std = _inputs(config)
    size, patch = int(config["model"]["img_size"]), int(config["model"]["patch_size"])
    model_input = ModelInput.create(
        name="reflectance",
        bands=names,
        input=InputStructure.create(
            shape=[-1, len(names), size, size],
            dim_order=["batch", "channel", "height", "width"],
            data_type="float32",
        ),
        description="surface reflectance (0..1, NaN = nodata), z-scored per band; any "
        f"H, W divisible by {patch} px work (position table resampled)",
    )
    # One z-score per band: the schema's list form (pystac's setter takes a single object).
    model_input.properties["value_scaling"] = [
        ValueScaling.create(type="z-score", mean=m / SCALE, stddev=s / SCALE).to_dict()
        for m, s in zip(mean, std, strict=True)
    ]
    return model_input


def _add_assets(item: Any) -> None:
    """Weights (the MLM model asset), config and card, all relative to the run directory."""
    import pystac

    item.add_asset(
        "weights",
        pystac.Asset(
            href="./model.safetensors",
            media_type="application/octet-stream; application=safetensors",
            roles=["mlm:model", "mlm:weights"],
            title="weights (safetensors)",
            # Also on the asset: STAC 1.1's item schema only admits item-level bands then.
            extra_fields={"mlm:artifact_type": "safetensors", "bands": item.properties["bands"]},
        ),
    )
    item.add_asset(
        "config",
        pystac.Asset(href="./config.json", media_type="application/json", roles=["metadata"]),
    )
    item.add_asset(
        "card", pystac.Asset(href="./README.md", media_type="text/markdown", roles=["metadata"])
    )


def _bands(names: Sequence[str], wavelengths: Sequence[float]) -> list[dict[str, Any]]:
    """STAC 1.1 ``bands``: each band's name and, where known (not NaN), its EO centre
    wavelength in micrometres (``wavelengths`` are nm)."""
    return [
        {"name": n} | ({} if w != w else {"eo:center_wavelength": round(w / 1000.0, 6)})
        for n, w in zip(names, wavelengths, strict=True)
    ]


def _patch_tokens_output(tokens: int, dim: int, patch: int) -> Any:
    """The MLM output: ``(batch, tokens, dim)`` encoder tokens, one per ``patch``-px patch."""
    from pystac.extensions.mlm import ModelOutput, ResultStructure

    return ModelOutput.create(
        name="patch_tokens",
        tasks=["similarity-search"],
        result=ResultStructure.create(
            shape=[-1, tokens, dim],
            dim_order=["batch", "token", "embedding"],
            data_type="float32",
        ),
        description=f"encoder tokens after the final LayerNorm, one per {patch}-px "
        "patch in row-major grid order (forward_features)",
    )


def _hyperparameters(
    model: Mapping[str, Any], spec: Mapping[str, Any], size: int, patch: int, dim: int, encoder: int
) -> Any:
    """The MLM hyperparameters: preset, tile and patch size (px), token width, depth, heads,
    encoder parameter count, and the run's masking, loss and optimizer."""
    from pystac.extensions.mlm import Hyperparameters

    return Hyperparameters.create(
        preset=model.get("preset", "?"),
        patch_size=patch,
        tile_size=size,
        embed_dim=dim,
        depth=model.get("depth"),
        num_heads=model.get("num_heads"),
        encoder_parameters=encoder,
        masking=spec.get("masking"),
        loss=spec.get("loss"),
        optimizer=spec.get("train", {}).get("optim", {}).get("optimizer", "adamw"),
    )


def mlm_item(
    config: Mapping[str, Any],
    weights: Mapping[str, torch.Tensor],
    metrics: Mapping[str, Any] | None = None,
    *,
    created: datetime | None = None,
) -> dict[str, Any]:
    """The run as a STAC Item with the MLM extension (JSON-able dict)."""
    import pystac
    from pystac.extensions.mlm import MLMExtension

    model, spec = config.get("model", {}), config.get("run", {})
    kind, preset = _kind(config), model.get("preset", "?")
    names, wavelengths, _, _ = _inputs(config)
    size, patch = int(model["img_size"]), int(model["patch_size"])
    dim, tokens = int(model["embed_dim"]), (size // patch) ** 2
    total, encoder = _counts(weights)
    item = pystac.Item(
        id=f"hyperkd-{kind}-{preset}",
        geometry=None,
        bbox=None,
        datetime=created or datetime.now(UTC),
        properties={"license": LICENSE, "description": _title(config)},
    )
    item.properties["bands"] = _bands(names, wavelengths)
    item.stac_extensions.append(EO)
    model_input = _model_input(config)
    MLMExtension.ext(item, add_if_missing=True).apply(
        name=f"hyperkd-{kind}-{preset}",
        architecture="ViT masked autoencoder (MAE)"
        + (", Prithvi layout" if kind == "teacher" else ", hyperkd student"),
        tasks=["similarity-search", "generative"],
        framework="pytorch",
        framework_version=torch.__version__.split("+")[0],
        total_parameters=total,
        pretrained=True,
        pretrained_source="hyperkd self-supervised pretraining"
        + (" distilled from a Prithvi teacher" if spec.get("teacher") else ""),
        batch_size_suggestion=16,
        input=[model_input],
        output=[_patch_tokens_output(tokens, dim, patch)],
        hyperparameters=_hyperparameters(model, spec, size, patch, dim, encoder),
    )
    if metrics:
        item.properties["hyperkd:metrics"] = dict(metrics)
    _add_assets(item)
    return item.to_dict(include_self_link=False, transform_hrefs=False)


def _title(config: Mapping[str, Any]) -> str:
    preset = config.get("model", {}).get("preset", "?")
    if _kind(config) == "teacher":
        return f"hyperkd teacher ({preset}): Prithvi architecture pretrained on six teacher bands"
    return f"hyperkd student ({preset}): EnMAP hyperspectral ViT-MAE"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def _metric_rows(evaluation: Mapping[str, Any]) -> list[str]:
    """Each metric beside every baseline scored on the same tiles and masks."""
    baselines = evaluation.get("baselines") or {}
    names = [k for k in ("psnr", "ssim", "sam", "psnr_full", "ssim_full", "sam_full")
             if isinstance(evaluation.get(k), (int, float))]  # fmt: skip
    if not names:
        return []
    head = ["metric", "this model", *baselines]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in names:
        cells = [name, _fmt(evaluation.get(name))]
        cells += [_fmt((baselines[b] or {}).get(name)) for b in baselines]
        rows.append("| " + " | ".join(cells) + " |")
    if not baselines:
        rows.append("")
        rows.append(
            "(this metrics.json holds no `baselines`: re-run `hyperkd evaluate` to add them)"
        )
    return rows


TAGS = ("hyperspectral", "EnMAP", "masked-autoencoder", "knowledge-distillation",
        "remote-sensing", "timm", "safetensors")  # fmt: skip


def _front_matter(
    training: Mapping[str, Any] | None, evaluation: Mapping[str, Any] | None
) -> list[str]:
    """YAML front matter: license, tags, and every scalar metric (training ones ``train_``)."""
    scalars: dict[str, float] = {}
    for source, prefix in ((training or {}, "train_"), (evaluation or {}, "")):
        for key, value in source.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                scalars[prefix + key] = float(value)
    front = {"license": LICENSE.lower(), "library_name": "hyperkd", "tags": list(TAGS),
             "metrics": scalars}  # fmt: skip
    return ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", ""]


def _use(config: Mapping[str, Any], weights: Mapping[str, torch.Tensor]) -> list[str]:
    model = config.get("model", {})
    total, encoder = _counts(weights)
    return [
        f"# {_title(config)}",
        "",
        f"{total:,} parameters ({encoder:,} in the encoder); {model.get('img_size')}-px tiles, "
        f"{model.get('patch_size')}-px patches, {len(_inputs(config)[0])} input bands, "
        f"{model.get('embed_dim')}-wide tokens. Weights: `model.safetensors` (never pickle). "
        "Machine-readable: `item.json` (STAC, MLM extension).",
        "",
        "## Use",
        "",
        "```python",
        "from hyperkd.model import load_student",
        'backbone = load_student("path/or/url/to/this/run")',
        "tokens = backbone.forward_features(reflectance)  # (B, C, H, W) -> (B, H/P * W/P, D)",
        "```",
        "",
        f'As a timm model: `timm.create_model("hyperkd_student_{model.get("preset")}", '
        'pretrained=True, pretrained_cfg_overlay=dict(file="RUN/model.safetensors"))` after '
        "`import hyperkd.model`. Embeddings of a whole cube: "
        "`hyperkd embed --checkpoint RUN --cube CUBE --out OUT`.",
        "",
    ]


def _data_and_bands(config: Mapping[str, Any]) -> list[str]:
    spec = config.get("run", {})
    names, wavelengths, mean, std = _inputs(config)
    budget = {k: v for k, v in (spec.get("train") or {}).items()
              if k in ("steps", "epochs", "batch_size", "seed")}  # fmt: skip
    return [
        "## Training data",
        "",
        f"- tile store: `{spec.get('tiles')}` (relative to this folder when local)",
        f"- teacher: `{spec.get('teacher')}`" if spec.get("teacher") else "- teacher: none",
        f"- masking: `{json.dumps(spec.get('masking'))}`; loss: `{json.dumps(spec.get('loss'))}`",
        f"- training: `{json.dumps(budget)}`",
        "",
        "## Bands, wavelengths and normalisation",
        "",
        "Inputs are surface reflectance (0..1); each band is z-scored with the statistics of the "
        "tile store's train tiles (below, reflectance x 10000): `(10000 x - mean) / std`, and "
        "a pixel with no data in any band is set to 0 in every band.",
        "",
        "| band | wavelength (nm) | mean | std |",
        "|---|---|---|---|",
        *(
            f"| {n} | {_fmt(w) if w == w else '-'} | {m:.1f} | {s:.1f} |"
            for n, w, m, s in zip(names, wavelengths, mean, std, strict=True)
        ),
        "",
    ]


def _metrics(training: Mapping[str, Any] | None, evaluation: Mapping[str, Any] | None) -> list[str]:
    lines = ["## Metrics", ""]
    if training:
        shown = ", ".join(f"{k} {_fmt(v)}" for k, v in training.items() if k != "epoch")
        lines += [f"Training (last logged step): {shown}.", ""]
    rows = _metric_rows(evaluation or {})
    if rows:
        where = (evaluation or {}).get("split", "?")
        lines += [f"Reconstruction on the `{where}` split (masked patches; `_full`: whole tile), "
                  "beside predictors that learn nothing, on the same tiles and masks:", "", *rows]  # fmt: skip
    else:
        lines.append("Not evaluated yet: `hyperkd evaluate`, then `hyperkd card --metrics`.")
    return [*lines, ""]


def model_card(
    config: Mapping[str, Any],
    weights: Mapping[str, torch.Tensor],
    training: Mapping[str, Any] | None = None,
    evaluation: Mapping[str, Any] | None = None,
) -> str:
    """``README.md``: YAML front matter, then data, bands, normalisation, metrics, limits, use."""
    lines = [
        *_front_matter(training, evaluation),
        *_use(config, weights),
        *_data_and_bands(config),
        *_metrics(training, evaluation),
        "## Limitations",
        "",
        *(f"- {text}" for text in LIMITATIONS),
        "",
        "## Intended use",
        "",
        INTENDED_USE,
        "",
    ]
    return "\n".join(lines)


def last_logged(lines: Sequence[str]) -> dict[str, Any] | None:
    """The last JSON object of a ``metrics.jsonl``."""
    for line in reversed(lines):
        if line.strip():
            return dict(json.loads(line))
    return None
