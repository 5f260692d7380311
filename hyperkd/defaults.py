"""Defaults shared by the CLI and the flows, declared once.

The ``hyperkd`` sub-commands show these values in their ``--help`` and the flows' parameter
models (:mod:`hyperkd.flows.params`) take them as field defaults, so ``hyperkd pipeline``, a
scheduled deployment and a hand-run ``train`` agree. The demo's recipe (region size, training
steps, seed) lives here too, so ``demo`` and ``demo-data`` make the same region.

Plain values only: importing this module must stay free (``hyperkd --help`` reads it).
"""

from __future__ import annotations

STUDENT_PRESETS = ("tiny", "small", "base")
TEACHER_PRESETS = ("tiny", "prithvi-eo-1.0-100m", "prithvi-eo-2.0-300m")
OFFICIAL_TEACHER_PRESETS = TEACHER_PRESETS[1:]
"""Architectures of the official Prithvi ``.pt`` checkpoints."""

STUDENT_PRESET = "tiny"
PRETRAIN_TEACHER_PRESET = "tiny"
"""Architecture of a teacher pretrained on the region's own tiles (no official weights)."""
OFFICIAL_TEACHER_PRESET = "prithvi-eo-1.0-100m"
"""Architecture assumed for an official ``.pt`` teacher unless one is named."""

TILE_SIZE = 128
"""Tile edge and cube chunk edge, pixels."""
PATCH_SIZE = 16
"""ViT patch edge, pixels."""
STEPS = 200
"""Optimizer steps of the teacher and of the student in a pipeline run."""
SPECTRAL_DIM = 0
"""Spectral components per pixel of the student's embedding and head; 0 = every band (MAE)."""
SPECTRAL_BASES = ("learned", "fixed")
SPECTRAL_BASIS = "learned"
"""The spectral components' basis: ``learned`` from a PCA start, or ``fixed`` at the PCA
(frozen; the loss then runs on the components, about 4x cheaper steps)."""
OPTIMIZERS = ("adamw", "muon")
OPTIMIZER = "adamw"
"""The trainer's optimizer: ``adamw`` (MAE's recipe) or ``muon`` (Muon on the transformer
blocks' matrices, AdamW on the rest; :mod:`hyperkd.model.train.optim`)."""
MASKINGS = ("random", "gabor", "wavelet")
LOSSES = ("mse", "mse+ssim", "mse+kld", "mse+ssim+kld")
"""The student's loss terms. ``mse+kld`` leaves out SSIM, so a fixed-basis student keeps its
cheap component loss while distilling (SSIM needs every band, about 14x the CPU step)."""
LOSS = "mse+ssim+kld"
"""HyperKD's loss."""
BATCH_SIZE = 8
"""Tiles per step."""
SEED = 0
DEVICES = ("auto", "cpu", "cuda")
"""Where a command runs its model: ``auto`` is CUDA when present, else the CPU."""

DEMO_SIZE = "large"
"""Side of the demo region (``demo`` and ``demo-data``): 1024 EnMAP pixels at 30 m. More
independent scene than ``medium`` (512 px) is what the student needed (benchmarks/SCIENCE.md)."""
DEMO_STEPS = None
"""``hyperkd demo --steps``: one step count for teacher and student; None = the two below."""
DEMO_TEACHER_STEPS = 2000
"""Teacher steps of ``hyperkd demo`` (six bands: cheap). On the seed-0 val split the teacher
beat interpolation in its own bands by +0.06 dB after 3000 AdamW steps at batch 32 (not after
600 or 2000), and by +0.27 dB after 2000 Muon steps at the demo's lr (benchmarks/SCIENCE.md)."""
DEMO_STUDENT_STEPS = 3000
"""Student steps of ``hyperkd demo``: the budget that fits 10 minutes on 2 CPU cores, also on
a day when the machine runs 1.4x slower (benchmarks/SCIENCE.md)."""
DEMO_SPECTRAL_DIM = 16
"""The demo student's spectral components: MAE at rank 16, 0.6-0.8x the step time, PCA start."""
DEMO_SPECTRAL_BASIS = "fixed"
"""The demo student's spectral basis (``SPECTRAL_BASES``): fixed, so its loss runs on the 16
components and a step of batch 32 costs about what one of batch 8 did over all bands."""
DEMO_BATCH_SIZE = 32
"""Tiles per step of the demo's teacher and student."""
DEMO_TRAIN_STRIDE = 32
"""Train-tile step of the demo's 64 px tiles: overlapping train tiles, about 4x the train tiles
(val and test unchanged); +0.4 dB on val over the plain grid (SCIENCE.md)."""
DEMO_LR = 4e-3
"""Peak learning rate of the demo's short CPU runs (chosen on the val split with Muon, SCIENCE.md;
AdamW's was 2e-3)."""
DEMO_OPTIMIZER = "muon"
"""The demo's optimizer (``OPTIMIZERS``): Muon on the blocks' matrices, AdamW on the rest. On the
seed-0 val split the student gains +0.31 dB over AdamW at the same 3000 steps, and the teacher
beats interpolation by +0.27 dB after 2000 steps, AdamW's by +0.06 after 3000 (SCIENCE.md)."""
DEMO_OUT = "demo-out"

CPU_POOL = "hyperkd-cpu"
"""Work pool of deployments that only ingest and tile."""
GPU_POOL = "hyperkd-gpu"
"""Work pool of deployments that train or evaluate."""
RESULTS_DIR = ".prefect-results"
"""Prefect's task results (the shared cache), under a run's ``out`` unless set elsewhere."""

EMBED_BATCH_SIZE = 16
"""Windows per forward pass of ``hyperkd embed``."""


def optimizer_setting(optimizer: str) -> dict[str, str]:
    """The optimizer as a recorded setting (run fingerprints, folder names, settings files):
    empty for ``adamw``, the only optimizer before the choice existed, so that what was
    recorded then still matches."""
    return {} if optimizer == "adamw" else {"optimizer": optimizer}
