"""Training: the distillation task and its loss, the loop, checkpoints and runs."""

from hyperkd.model.train.losses import LOSS_TERMS, LossConfig
from hyperkd.model.train.runs import load_student, run_distill, run_teacher_pretrain
from hyperkd.model.train.tasks import DistillationTask
from hyperkd.model.train.trainer import NonFiniteLossError

__all__ = [
    "LOSS_TERMS",
    "DistillationTask",
    "LossConfig",
    "NonFiniteLossError",
    "load_student",
    "run_distill",
    "run_teacher_pretrain",
]
