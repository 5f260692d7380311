"""What the model needs from a cube: the teacher's six synthetic bands (band aggregation) and
the significance maps (Gabor or wavelet energy per patch), computed with dask.
"""

from hyperkd.pipeline.features.aggregate import teacher_bands
from hyperkd.pipeline.features.preprocess import PreprocessConfig, preprocess_cube
from hyperkd.pipeline.features.significance import SignificanceConfig, significance_maps

__all__ = [
    "PreprocessConfig",
    "SignificanceConfig",
    "preprocess_cube",
    "significance_maps",
    "teacher_bands",
]
