"""The demo: one Prefect flow run from a generated region to the report, on local files.

demo region (scene factory) -> ingest -> tiles -> teacher pretraining -> student distillation
-> evaluation -> report. Sized to finish in under 10 minutes on 2 CPU cores with the tiny presets.

The student is the plain MAE recipe (random masking, MSE): the demo shows that the trainer
learns, scored beside the predictors that learn nothing (interpolation first). Whether
HyperKD's guided masking and distillation add to it is what ``benchmarks/science.py`` tests
with controls, not something the demo assumes. The tile split is kept in RAM and augmented
with flips/rot90s (:mod:`hyperkd.model.data.memory`), the student's as its 16 spectral
components (``spectral_basis="fixed"``). Teacher and student train with Muon on their blocks'
matrices (:mod:`hyperkd.model.train.optim`).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import INPUTS, TASK_SOURCE

from hyperkd import defaults
from hyperkd.flows.flows import _ONE_AT_A_TIME, _unless_gone, run_pipeline
from hyperkd.flows.params import PipelineParams


@task(cache_policy=INPUTS + TASK_SOURCE, persist_result=True)
def demo_region(out: str, size: str, seed: int) -> dict[str, Any]:
    """Writes the demo region (static STAC catalog + COGs + ground truth) with the scene factory."""
    from hyperkd.pipeline.synthetic.factory import SIZES, RegionSpec
    from hyperkd.pipeline.synthetic.products import write_region
    from hyperkd.pipeline.synthetic.stac import footprint_lonlat

    spec = RegionSpec(size_px=SIZES[size], seed=seed)
    manifest = write_region(out, spec)
    ring = footprint_lonlat(manifest.crs_epsg, spec.enmap_transform, manifest.enmap_shape)
    lon, lat = [p[0] for p in ring], [p[1] for p in ring]
    dates = spec.enmap_dates
    return {
        "catalog": str(manifest.catalog),
        "region": f"{min(lon)},{min(lat)},{max(lon)},{max(lat)}",
        "start": (min(dates) - timedelta(days=10)).date().isoformat(),
        "end": (max(dates) + timedelta(days=10)).date().isoformat(),
        "labels": {name: str(path) for name, path in manifest.truth.items()},
        "summary": manifest.summary(),
    }


def demo_inputs(out: str, size: str, seed: int) -> dict[str, Any]:
    """The demo region under ``<out>/region-<size>-seed<seed>``, from the cache only while its
    catalog is there (a deleted ``demo-out/`` is written again, not served from Prefect's result
    cache). One folder per region: the catalog's path is what the search's cache key sees, so
    another size or seed must not rewrite the same catalog."""
    region = f"{out}/region-{size}-seed{seed}"
    return _unless_gone(demo_region, f"{region}/catalog.json")(region, size, seed)


@flow(name="hyperkd-demo", task_runner=_ONE_AT_A_TIME)
def demo(
    out: str, size: str = defaults.DEMO_SIZE, seed: int = defaults.SEED, steps: int | None = None
) -> dict[str, Any]:
    """The whole job on the embedded demo region; returns the pipeline outputs and the report path.

    ``steps`` trains teacher and student that long; None: ``DEMO_TEACHER_STEPS`` and
    ``DEMO_STUDENT_STEPS`` (:mod:`hyperkd.defaults`).
    """
    out = str(Path(out).resolve())
    region = demo_inputs(out, size, seed)
    params = PipelineParams(
        region=region["region"],
        sources=(region["catalog"],),
        start=region["start"],
        end=region["end"],
        out=f"{out}/pipeline",
        # One pipeline folder per generated region: ingest is idempotent per scene id, so a
        # region of another size or seed must not be tiled from the cube an earlier one left.
        name=f"demo-{size}-seed{seed}",
        tile_size=64,
        patch_size=8,
        split_block_px=128,
        train_stride=defaults.DEMO_TRAIN_STRIDE,
        labels=region["labels"],
        teacher_steps=steps or defaults.DEMO_TEACHER_STEPS,
        student_steps=steps or defaults.DEMO_STUDENT_STEPS,
        masking="random",
        loss="mse",
        batch_size=defaults.DEMO_BATCH_SIZE,
        # A short CPU run: the MAE recipe's lr (1.5e-4 x batch/256) is made for thousands of
        # steps at batch 4096, so the demo sets a peak lr that learns within a few minutes, and
        # factorises the student's 218 bands through 16 fixed spectral components, so its loss
        # and its cached tiles hold 16 channels, not 218 (about 6x the samples per second).
        # Muon gets more out of each of the few steps than AdamW (SCIENCE.md, session 13).
        lr=defaults.DEMO_LR,
        optimizer=defaults.DEMO_OPTIMIZER,
        spectral_dim=defaults.DEMO_SPECTRAL_DIM,
        spectral_basis=defaults.DEMO_SPECTRAL_BASIS,
        seed=seed,
        dask_address=None,
    )
    return run_pipeline(params)
