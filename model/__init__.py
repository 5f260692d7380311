"""HyperKD in torch: nothing here imports Prefect (a test enforces it).

- :mod:`~hyperkd.model.nets`: the student MAE, the Prithvi teacher, masking.
- :mod:`~hyperkd.model.data`: the tile store as a PyTorch dataset, and its loader.
- :mod:`~hyperkd.model.train`: the distillation task, its loss, the loop, checkpoints, runs.
- :mod:`~hyperkd.model.evaluate`: metrics, the ablation grid, downstream probes.
- :mod:`~hyperkd.model.report`: the run report.

Tiles are read only through :mod:`hyperkd.pipeline.tiles`. The one entry point other teams
need is here: :func:`load_student` (a student run as a backbone, from any fsspec URL).
"""

from hyperkd.model.nets import timm_student  # noqa: F401  (registers hyperkd_student_* in timm)
from hyperkd.model.nets.backbone import Embeddings, StudentBackbone, load_student

__all__ = ["Embeddings", "StudentBackbone", "load_student"]
