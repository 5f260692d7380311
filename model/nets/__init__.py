"""The networks: the hyperspectral student MAE, the Prithvi teacher, masking and positional
embeddings.
"""

from hyperkd.model.nets.mae import MAEConfig, StudentMAE, student_config
from hyperkd.model.nets.masking import MASKINGS, Masking, PatchMask
from hyperkd.model.nets.prithvi import (
    PrithviConfig,
    PrithviMAE,
    Teacher,
    load_prithvi_state_dict,
    teacher_config,
)

__all__ = [
    "MASKINGS",
    "MAEConfig",
    "Masking",
    "PatchMask",
    "PrithviConfig",
    "PrithviMAE",
    "StudentMAE",
    "Teacher",
    "load_prithvi_state_dict",
    "student_config",
    "teacher_config",
]
