"""``hyperkd downstream``: a frozen encoder on a labelled tile store, against baselines.

Tasks (``--task`` -> tile-store label): ``landcover`` -> ``label_landcover`` and ``crop`` ->
``label_crop_type`` (classes, 0 = unlabeled and ignored), ``soc`` -> ``label_soc`` (soil organic
carbon, g/kg, NaN = no value).

Methods, all scored on the same labelled pixels (see :mod:`hyperkd.model.evaluate.probes` for the
features, the probes and the metrics):

- ``hyperkd``: the checkpoint under test (``--checkpoint``, a student run directory), named
  ``student (<masking>, <loss>)`` instead when it was trained without the KLD term;
- ``no-teacher``: a student trained without the teacher (``--baseline-checkpoint``, e.g. an
  ablation's ``cells/no-teacher``); skipped with a note when not given;
- ``random-init``: the same architecture, randomly initialised (seed ``seed``);
- ``raw-spectra``: the pixel's normalised spectrum;
- ``patch-mean-spectra``: its patch's mean spectrum, resampled to pixels like the encoder's
  tokens: what the encoder's resolution alone is worth, with no learning.

With ``label_level="patch"`` (``--label-level patch``) every pixel takes its patch's majority
class (or mean value) for training and scoring, so sub-patch detail that the tokens cannot
resolve no longer counts against them (``OUT/downstream_<task>_patch.*``).

Each encoder is scored twice: a **linear probe** on the frozen features, and a short
**fine-tune** (``finetune_steps`` AdamW steps of encoder + head on the train tiles, every labelled
pixel, LP-FT: the head starts from the linear probe, Kumar et al. 2022). The raw spectra only get
the probe. Probes and fine-tunes train on ``train`` and are scored on ``test``, or on ``val``
when ``test`` has no labelled pixel (recorded as ``eval_split``).

Results: ``OUT/downstream_<task>.json`` and ``OUT/downstream_<task>.md`` (``<task>_<label><codes>``
with ``only``, see :func:`result_name`).
"""

from __future__ import annotations

import copy
import functools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hyperkd.model.data.dataset import TileDataset
from hyperkd.model.evaluate import pixels, probes
from hyperkd.model.evaluate.downstream_results import write_results
from hyperkd.model.evaluate.finetune import finetune
from hyperkd.model.nets.mae import StudentMAE
from hyperkd.model.train.runs import load_student
from hyperkd.pipeline.store.guard import check_output

_log = logging.getLogger(__name__)

TASKS: dict[str, tuple[str, bool]] = {
    "landcover": ("landcover", True),
    "crop": ("crop_type", True),
    "soc": ("soc", False),
}
"""``--task`` -> (label name in the tile store, is classification)."""
LABEL_LEVELS = ("pixel", "patch")


@dataclass(frozen=True)
class DownstreamConfig:
    """One downstream evaluation."""

    checkpoint: str
    """Student run directory (``model.safetensors`` + ``config.json``)."""
    task: str
    data: str
    """Tile store holding the task's label."""
    out: str
    finetune_steps: int = 50
    baseline_checkpoint: str | None = None
    """The no-teacher student's run directory, or None to skip that baseline."""
    embeddings: str | None = None
    """An embeddings store of the tile store's cube (``hyperkd embed``): its per-patch features
    are probed too (method ``embeddings store``), on the same pixels."""
    max_train_pixels: int = 50_000
    max_eval_pixels: int = 100_000
    batch_size: int = 8
    finetune_lr: float = 3e-4
    """Encoder learning rate; the head's is 10x."""
    seed: int = 0
    device: str = "auto"
    only: tuple[str, tuple[int, ...]] | None = None
    """Score and train only on pixels whose class label ``only[0]`` is one of ``only[1]``, e.g.
    ``("landcover", (5,))``: SOC on bare soil, where the soil is seen."""
    storage_options: dict[str, Any] | None = None
    label_level: str = "pixel"
    """``pixel``: every pixel's own label; ``patch``: every pixel takes its patch's majority
    class (or mean value), the resolution the encoder's tokens have."""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}: choose one of {', '.join(TASKS)}")
        if (
            self.finetune_steps < 0
            or self.batch_size < 1
            or min(self.max_train_pixels, self.max_eval_pixels) < 1
        ):
            raise ValueError("finetune steps must be >= 0; batch size and pixel caps >= 1")
        if self.label_level not in LABEL_LEVELS:
            raise ValueError(
                f"unknown label level {self.label_level!r}: choose one of {', '.join(LABEL_LEVELS)}"
            )


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# --- the evaluation -----------------------------------------------------------------------


def method_name(run_config: Mapping[str, Any]) -> str:
    """``hyperkd`` for a distilled student (its loss has a KLD term), else ``student
    (<masking>, <loss>)``, so a table never calls an undistilled student HyperKD."""
    spec = run_config.get("run", {})
    loss = str(spec.get("loss", {}).get("terms", "?"))
    if "kld" in loss:
        return "hyperkd"
    return f"student ({spec.get('masking', {}).get('kind', '?')}, {loss})"


def _encoders(
    cfg: DownstreamConfig, device: torch.device
) -> tuple[dict[str, StudentMAE | None], dict[str, Any], list[str]]:
    """Method name -> encoder (None: raw spectra), the checkpoint's run config, and notes."""
    student, run_config = load_student(cfg.checkpoint)
    notes: list[str] = []
    torch.manual_seed(cfg.seed)
    random_init = StudentMAE(student.config)
    methods: dict[str, StudentMAE | None] = {method_name(run_config): student}
    if cfg.baseline_checkpoint:
        baseline, _ = load_student(cfg.baseline_checkpoint)
        if baseline.config != student.config:
            raise ValueError(
                f"{cfg.baseline_checkpoint} has another architecture than {cfg.checkpoint}"
            )
        methods["no-teacher"] = baseline
    else:
        notes.append("no-teacher baseline skipped: no --baseline-checkpoint given")
    methods["random-init"] = random_init
    methods |= {name: None for name in pixels.WITHOUT_ENCODER}  # spectra, no learning
    for model in methods.values():
        if model is not None:
            model.to(device).eval()
    return methods, run_config, notes


def _probe_store(
    cfg: DownstreamConfig,
    train: tuple[TileDataset, probes.PixelSample],
    held_out: tuple[TileDataset, probes.PixelSample],
    targets: probes.Targets,
    score: Callable[..., dict[str, float]],
) -> dict[str, Any]:
    """A linear probe on an embeddings store's features at the sampled pixels."""
    from hyperkd.model.embed.features import pixel_features

    t0 = time.perf_counter()
    x = [
        pixel_features(str(cfg.embeddings), ds, s.tiles, s.pixels, cfg.storage_options)
        for ds, s in (train, held_out)
    ]
    probe = targets.fit_probe(x[0], train[1].target)
    pred = targets.decode_probe(probe.predict(x[1]))
    row = {"method": "embeddings store", "mode": "linear probe", **score(held_out[1].target, pred)}
    return row | {"seconds": time.perf_counter() - t0}


def run_downstream(
    cfg: DownstreamConfig, progress: Callable[[int, int], None] | None = None
) -> dict[str, Any]:
    """Evaluate every method on ``cfg.task``; writes the JSON and markdown results and returns them.

    ``progress(done, total)``: called with ``(0, total)`` once the inputs are checked and the
    encoders loaded, then after each result row (a probe or a fine-tune) is scored.
    """
    label, classes = TASKS[cfg.task]
    check_output(cfg.out, "files", [cfg.checkpoint, cfg.data, cfg.baseline_checkpoint])
    device = _device(cfg.device)
    data = _Samples.draw(cfg, label, classes)
    methods, run_config, notes = _encoders(cfg, device)
    if cfg.only is not None:
        notes.insert(0, f"only pixels whose label_{cfg.only[0]} is one of {list(cfg.only[1])}")
    if classes:
        codes = np.unique(data.train_sample.target)
        missing = sorted(set(np.unique(data.eval_sample.target).tolist()) - set(codes.tolist()))
        if missing:
            notes.append(
                f"classes {missing} occur in {data.eval_split} but not in train; they count as "
                "errors"
            )
    targets = probes.Targets.from_train(data.train_sample.target, classes)
    score = probes.classification_metrics if classes else probes.regression_metrics
    rows: list[dict[str, Any]] = []
    total = sum(1 + (e is not None and cfg.finetune_steps > 0) for e in methods.values())
    total += bool(cfg.embeddings)

    def scored(row: dict[str, Any]) -> None:
        rows.append(row)
        _log.info("%s: %s", row["method"], row)
        if progress is not None:
            progress(len(rows), total)

    if progress is not None:
        progress(0, total)
    for name, encoder in methods.items():
        probe, row = _probe(name, encoder, data, targets, score, cfg, device)
        scored(row)
        if encoder is not None and cfg.finetune_steps > 0:
            scored(_finetune(name, encoder, probe, data, targets, score, label, cfg, device))
    if cfg.embeddings:
        scored(
            _probe_store(
                cfg, (data.train, data.train_sample), (data.eval_ds, data.eval_sample), targets,
                score,
            )
        )  # fmt: skip
    result = _result(cfg, label, classes, data, run_config, notes, rows)
    write_results(Path(cfg.out), result)
    return result


@dataclass(frozen=True)
class _Samples:
    """The labelled pixels a task is probed on: from the train split, and from the first of
    test and val that holds any."""

    train: TileDataset
    train_sample: probes.PixelSample
    eval_split: str
    eval_ds: TileDataset
    eval_sample: probes.PixelSample

    @classmethod
    def draw(cls, cfg: DownstreamConfig, label: str, classes: bool) -> _Samples:
        train = TileDataset(cfg.data, split="train", storage_options=cfg.storage_options)
        labels = train.info.labels
        if label not in labels:
            raise ValueError(
                f"tile store {cfg.data} has no label_{label} (labels: {sorted(labels) or 'none'})"
            )
        if cfg.only is not None and cfg.only[0] not in labels:
            raise ValueError(
                f"tile store {cfg.data} has no label_{cfg.only[0]} to select pixels with --only"
            )
        patch = train.info.patch_size if cfg.label_level == "patch" else None
        train_sample = pixels.split_sample(
            train, label, classes, cfg.max_train_pixels, cfg.seed, cfg.only, patch
        )
        if len(train_sample) == 0:
            raise ValueError(
                f"no labelled pixel for label_{label} in the train split of {cfg.data}"
            )
        for split in ("test", "val"):
            if train.info.splits.get(split, 0) == 0:
                continue
            eval_ds = TileDataset(cfg.data, split=split, storage_options=cfg.storage_options)
            eval_sample = pixels.split_sample(
                eval_ds, label, classes, cfg.max_eval_pixels, cfg.seed + 1, cfg.only, patch
            )
            if len(eval_sample):
                return cls(train, train_sample, split, eval_ds, eval_sample)
        raise ValueError(
            f"no labelled pixel for label_{label} in the test or val split of {cfg.data}"
        )


def _probe(name: str, encoder: Any, data: _Samples, targets: probes.Targets, score: Callable,
           cfg: DownstreamConfig, device: torch.device) -> tuple[Any, dict[str, Any]]:  # fmt: skip
    """A linear probe on ``name``'s per-pixel features (an encoder's, or features that need
    none when ``encoder`` is None); returns the probe and its result row."""
    t0 = time.perf_counter()
    fn: pixels.FeatureFn = (
        pixels.features_without_encoder(name, data.train.info.patch_size)
        if encoder is None
        else functools.partial(probes.pixel_features, encoder)
    )
    x_train = pixels.gather(data.train, data.train_sample, fn, cfg.batch_size, device)
    x_eval = pixels.gather(data.eval_ds, data.eval_sample, fn, cfg.batch_size, device)
    probe = targets.fit_probe(x_train, data.train_sample.target)
    pred = targets.decode_probe(probe.predict(x_eval))
    row = {"method": name, "mode": "linear probe", **score(data.eval_sample.target, pred)}
    return probe, row | {"seconds": time.perf_counter() - t0}


def _finetune(name: str, encoder: Any, probe: Any, data: _Samples, targets: probes.Targets,
              score: Callable, label: str, cfg: DownstreamConfig,
              device: torch.device) -> dict[str, Any]:  # fmt: skip
    """The encoder and a segmentation head started at the probe, fine-tuned; its result row."""
    t0 = time.perf_counter()
    net = probes.SegmentationHead(copy.deepcopy(encoder), targets.out_dim).to(device)
    net.init_from_probe(probe)
    losses = finetune(net, data.train, label, targets.pixel_targets, cfg, device)
    pred = targets.decode_outputs(
        pixels.gather(data.eval_ds, data.eval_sample, net, cfg.batch_size, device)
    )
    return {
        "method": name,
        "mode": f"fine-tune {cfg.finetune_steps} steps",
        **score(data.eval_sample.target, pred),
        "seconds": time.perf_counter() - t0,
        "finetune_loss_first_last": [losses[0], losses[-1]],
    }


def _result(cfg: DownstreamConfig, label: str, classes: bool, data: _Samples,
            run_config: dict[str, Any], notes: list[str],
            rows: list[dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
    """The task's result document (``downstream_<name>.json``)."""
    return {
        "task": cfg.task,
        "name": result_name(cfg),
        "label": f"label_{label}",
        "kind": "classification" if classes else "regression",
        "metrics": ["accuracy", "macro_f1"] if classes else ["r2", "rmse"],
        "data": cfg.data,
        "checkpoint": cfg.checkpoint,
        "baseline_checkpoint": cfg.baseline_checkpoint,
        "train_split": "train",
        "eval_split": data.eval_split,
        "n_train_pixels": len(data.train_sample),
        "n_eval_pixels": len(data.eval_sample),
        "classes": [int(c) for c in np.unique(data.train_sample.target)] if classes else None,
        "features": "encoder patch tokens (no masking, final LayerNorm) resampled bilinearly to pixels; "
        "raw-spectra: normalised pixel spectrum; patch-mean-spectra: each patch's mean spectrum, "
        "resampled like the tokens",
        "label_level": cfg.label_level,
        "student": run_config.get("model", {}),
        "student_run": run_config.get("run", {}),
        "config": {k: v for k, v in asdict(cfg).items() if k != "storage_options"},
        "only": None
        if cfg.only is None
        else {"label": f"label_{cfg.only[0]}", "classes": list(cfg.only[1])},
        "notes": notes,
        "results": rows,
    }


def result_name(cfg: DownstreamConfig) -> str:
    """``<task>``, or ``<task>_<label><codes>`` with ``only`` (e.g. ``soc_landcover5``); with
    patch-level labels ``_patch`` follows (``landcover_patch``)."""
    name = cfg.task
    if cfg.only is not None:
        name += f"_{cfg.only[0]}{'-'.join(str(c) for c in cfg.only[1])}"
    return name + ("_patch" if cfg.label_level == "patch" else "")
