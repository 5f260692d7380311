"""hyperkd: EnMAP + HLS STAC -> Zarr v3 cubes -> tile store -> HyperKD distillation.

Installed packages: ``hyperkd.pipeline`` (xarray/dask, no torch), ``hyperkd.model`` (torch),
``hyperkd.flows`` (Prefect), ``hyperkd.catalogs`` (YAML facts) and ``hyperkd.cli``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hyperkd")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0+unknown"
