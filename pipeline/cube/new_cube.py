"""A new cube's groups and arrays, written by :meth:`~hyperkd.pipeline.cube.io.CubeWriter.create`
before its first commit.

Nothing here is visible until that commit writes the root ``zarr.json`` with these documents
consolidated in it; a run killed before it leaves groups that the next ``create`` deletes
(docs/cube.md "Consistency guarantees").
"""

from __future__ import annotations

from typing import Any

from hyperkd.pipeline.cube.layout import (
    CubeLayout,
    array_doc,
    group_doc,
    group_specs,
    static_values,
)
from hyperkd.pipeline.cube.scene_chunks import array_handle
from hyperkd.pipeline.cube.schema import GROUPS
from hyperkd.pipeline.store.location import CubeStore


def write_groups(store: CubeStore, zstore: Any, layout: CubeLayout) -> dict[str, dict[str, Any]]:
    """Write both groups' ``zarr.json``, every array's ``zarr.json`` (``time`` length 0) and
    the static arrays' values (``band``, ``y``, ``x``, ...).

    ``zstore``: the zarr store of ``store``. Returns the documents by path as the root
    document consolidates them (each group's with an empty ``consolidated_metadata``).
    """
    nodes: dict[str, dict[str, Any]] = {}
    for group in GROUPS:
        gattrs = layout.grid.geozarr_attrs() | {"hyperkd:group": group}
        gdoc = group_doc(gattrs)
        store.write_json(f"{group}/zarr.json", gdoc)
        nodes[group] = gdoc | {
            "consolidated_metadata": {
                "kind": "inline",
                "must_understand": False,
                "metadata": {},
            }
        }
        values = static_values(group, layout.grid, layout.bands)
        for spec in group_specs(group, layout.grid, layout.bands, layout.tile_size):
            path = f"{group}/{spec.name}"
            nodes[path] = array_doc(spec)
            if spec.name in values:
                array_handle(zstore, path, nodes[path])[...] = values[spec.name]
            store.write_json(f"{path}/zarr.json", nodes[path])
    return nodes


def root_attributes(layout: CubeLayout, version: int) -> dict[str, Any]:
    """The root attributes of a cube with no scene yet, of cube ``version`` (the writer's own:
    :data:`~hyperkd.pipeline.cube.schema.CUBE_VERSION`)."""
    return {
        "hyperkd:cube_version": version,
        "hyperkd:region": layout.region,
        "hyperkd:tile_size": int(layout.tile_size),
        "hyperkd:scenes": [],
        "Conventions": "CF-1.8",
    }
