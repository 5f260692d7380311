"""Facts as data: sensor tables, STAC sources and named regions (YAML).

This package holds no logic beyond locating its files; ``hyperkd.pipeline.sensors`` and
``hyperkd.pipeline.stac.sources`` parse them into frozen dataclasses. The ``__init__`` exists so
that ``importlib.resources`` finds the YAML files in editable installs too.
"""

from importlib.resources import files
from importlib.resources.abc import Traversable


def resource(*parts: str) -> Traversable:
    """Return the catalog file at ``parts`` (e.g. ``resource("sensors", "hls.yaml")``)."""
    node = files(__name__)
    for part in parts:
        node = node / part
    return node
