"""HyperKD in torch: nothing here imports Prefect (a test enforces it).

- :mod:`~hyperkd.model.nets`: the student MAE, the Prithvi teacher, masking.
- :mod:`~hyperkd.model.data`: the tile store as a PyTorch dataset, and its loader.
- :mod:`~hyperkd.model.train`: the distillation task, its loss, the loop, checkpoints, runs.
- :mod:`~hyperkd.model.evaluate`: metrics, the ablation grid, downstream probes.
- :mod:`~hyperkd.model.report`: the run report.

Tiles are read only through :mod:`hyperkd.pipeline.tiles`.
"""
