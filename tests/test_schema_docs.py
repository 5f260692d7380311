"""docs/cube.md and docs/tiles.md carry the tables generated from the schema objects, and the
writers follow the same schema."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hyperkd.pipeline.cube import schema as cube_schema
from hyperkd.pipeline.tiles import schema as tile_schema

DOCS = Path(__file__).resolve().parents[1] / "docs"
REGION = re.compile(r"<!-- schema:(\w+) -->\n(.*?)<!-- /schema -->", re.S)


@pytest.mark.parametrize(("doc", "module"), [("cube.md", cube_schema), ("tiles.md", tile_schema)])
def test_docs_tables_are_the_schema(doc: str, module: object) -> None:
    found = dict(REGION.findall((DOCS / doc).read_text()))
    expected = module.markdown_tables()  # type: ignore[attr-defined]
    assert set(found) == set(expected), f"docs/{doc}: tables {sorted(found)}"
    for name, table in expected.items():
        assert found[name] == table, (
            f"docs/{doc} table {name!r} differs from the schema: regenerate it with "
            f"`python -m {module.__name__}`"  # type: ignore[attr-defined]
        )


def test_cube_writer_follows_the_schema() -> None:
    from hyperkd.pipeline.cube.layout import Grid, group_specs
    from hyperkd.pipeline.sensors import enmap_table

    grid = Grid("EPSG:32633", (30.0, 0.0, 0.0, 0.0, -30.0, 0.0), (300, 260))
    for group in cube_schema.GROUPS:
        specs = {s.name: s for s in group_specs(group, grid, enmap_table().bands, 128)}
        expected = cube_schema.group_arrays(group)
        assert set(specs) == {a.name for a in expected}
        for a in expected:
            spec = specs[a.name]
            assert spec.dims == a.dims and spec.dtype == ("str" if a.dtype == "string" else a.dtype)
    refl = {s.name: s for s in group_specs("enmap", grid, enmap_table().bands, 128)}["reflectance"]
    assert refl.chunks == (1, 16, 128, 128) and refl.shards == (1, 224, 128, 128)
    assert refl.fill_value == cube_schema.ENMAP_NODATA
