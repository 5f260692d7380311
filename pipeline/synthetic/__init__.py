"""The scene factory: a deterministic, realistic EnMAP L2A + HLS region with a static STAC
catalog, used by the demo and by every test that needs fake data.
"""

from hyperkd.pipeline.synthetic.factory import SIZES, RegionSpec
from hyperkd.pipeline.synthetic.products import RegionManifest, write_region

__all__ = ["SIZES", "RegionManifest", "RegionSpec", "write_region"]
