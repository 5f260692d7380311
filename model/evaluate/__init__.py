"""Evaluation: reconstruction metrics, the ablation grid and the downstream probes."""

from hyperkd.model.evaluate.ablate import AblationConfig, run_ablation
from hyperkd.model.evaluate.downstream import DownstreamConfig, run_downstream
from hyperkd.model.evaluate.metrics import MetricMeter, reconstruction_metrics, tile_metrics
from hyperkd.model.evaluate.reconstruction import evaluate

__all__ = [
    "AblationConfig",
    "DownstreamConfig",
    "MetricMeter",
    "evaluate",
    "reconstruction_metrics",
    "run_ablation",
    "run_downstream",
    "tile_metrics",
]
