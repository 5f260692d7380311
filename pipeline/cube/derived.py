"""Derived variables in a cube group (``teacher_bands``, ``significance_*``): checks and schema.

:func:`plan_variables` validates a Dataset against the group's committed dims and turns each
variable into an array document plus a deferred write; :meth:`~hyperkd.pipeline.cube.io.CubeWriter.write_variables`
performs the writes and re-consolidates under the lock.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from hyperkd.pipeline.cube.layout import CORE_VARIABLES, ArraySpec, array_doc
from hyperkd.pipeline.cube.schema import time_chunks


@dataclass(frozen=True)
class VariablePlan:
    """One array to write: its path, its zarr document and how to fill it."""

    path: str
    doc: dict[str, Any]
    replace: bool
    """True when an array exists at ``path`` with another schema (it is deleted first)."""
    store: Callable[[Any], None]


def _default_fill(dtype: np.dtype) -> Any:
    if dtype.kind == "f":
        return float("nan")
    if dtype.kind == "b":
        return False
    if dtype.kind in "iu":
        return int(np.iinfo(dtype).min) if dtype.kind == "i" else int(np.iinfo(dtype).max)
    raise ValueError(f"unsupported dtype {dtype} for a derived cube variable")


def group_dims(nodes: Mapping[str, dict[str, Any]], group: str) -> dict[str, int]:
    """Dimension name -> committed size over all arrays of ``group`` (``nodes``: path -> doc)."""
    dims: dict[str, int] = {}
    for path, doc in nodes.items():
        if path.startswith(f"{group}/") and doc.get("node_type") == "array":
            for name, size in zip(doc.get("dimension_names") or (), doc["shape"], strict=True):
                dims.setdefault(name, int(size))
    return dims


def plan_variables(
    nodes: Mapping[str, dict[str, Any]], tile_size: int, group: str, ds: Any
) -> list[VariablePlan]:
    """Check ``ds`` against ``group`` and plan one array per variable (see ``write_variables``).

    ``nodes`` are the cube's committed zarr documents by path; ``tile_size`` its y/x chunk.
    Variables are checked and planned in order, so the first bad one is the one reported.
    """
    existing = group_dims(nodes, group)
    names = list(ds.data_vars) + [c for c in ds.coords if c not in existing]
    if not ds.data_vars:
        raise ValueError("write_variables: the dataset has no data variables")
    plans: list[VariablePlan] = []
    for name in names:
        var = ds[name].variable
        _check_variable(name, var, group, existing)
        plans.append(_plan_variable(nodes, tile_size, group, name, var))
    return plans


def _check_variable(name: str, var: Any, group: str, existing: Mapping[str, int]) -> None:
    """Refuse a core variable, a dim whose size differs from the group's, an unsupported dtype."""
    if name in CORE_VARIABLES:
        raise ValueError(
            f"write_variables: {name!r} is written by the ingest and cannot be replaced"
        )
    for dim, size in var.sizes.items():
        if dim in existing and existing[dim] != size:
            raise ValueError(
                f"write_variables: {name!r} has {dim}={size} but the cube's "
                f"{group} group has {dim}={existing[dim]}"
            )
    dtype = np.dtype(var.dtype)
    if dtype.kind not in "UOTfiub":  # text, or numbers and booleans
        raise ValueError(f"write_variables: {name!r} has unsupported dtype {dtype}")


def _plan_variable(
    nodes: Mapping[str, dict[str, Any]], tile_size: int, group: str, name: str, var: Any
) -> VariablePlan:
    """The array document of the checked ``var`` at ``{group}/{name}`` and its deferred write;
    it replaces an existing array unless that has the same schema."""
    dtype = np.dtype(var.dtype)
    text = dtype.kind in "UOT"
    fill = var.encoding.get("_FillValue", var.attrs.get("_FillValue"))
    fill = "" if text else _default_fill(dtype) if fill is None else fill
    chunks = _chunks(var, tile_size)
    attrs = _array_attrs(var, dtype, fill)
    path = f"{group}/{name}"
    doc = array_doc(
        ArraySpec(
            name,
            tuple(map(str, var.dims)),
            "str" if text else dtype.str,
            var.shape,
            chunks,
            fill,
            attrs,
        )
    )
    old = nodes.get(path)
    same = old is not None and all(
        old.get(k) == doc.get(k)
        for k in ("shape", "data_type", "chunk_grid", "dimension_names", "fill_value")
    )
    store = _deferred_store(var, dtype, text, chunks)
    return VariablePlan(path, doc, replace=old is None or not same, store=store)


def _chunks(var: Any, tile: int) -> tuple[int, ...]:
    """One scene per chunk along ``time``, ``tile`` px along ``y``/``x``, whole along others."""
    return tuple(
        time_chunks(var.ndim)[0] if d == "time" else min(tile, s) if d in ("y", "x") else max(s, 1)
        for d, s in var.sizes.items()
    )


def _array_attrs(var: Any, dtype: np.dtype, fill: Any) -> dict[str, Any]:
    """``var``'s attributes as JSON, with the ``_FillValue`` xarray reads and a grid mapping."""
    attrs = {k: _jsonable(v) for k, v in var.attrs.items() if k != "_FillValue"}
    if dtype.kind in "iu":
        attrs["_FillValue"] = int(fill)
    elif dtype.kind == "f":
        # xarray's zarr backend stores float _FillValue as base64 of a little-endian double.
        attrs["_FillValue"] = base64.standard_b64encode(struct.pack("<d", float(fill))).decode()
    if "y" in var.dims and "x" in var.dims:
        attrs["grid_mapping"] = "spatial_ref"
    return attrs


def _deferred_store(
    var: Any, dtype: np.dtype, text: bool, chunks: tuple[int, ...]
) -> Callable[[Any], None]:
    """A function that writes ``var``'s values (as ``dtype``, in ``chunks``) into a target."""
    import dask.array as da

    if text:
        data = da.from_array(np.asarray(var.values, dtype=object), chunks=chunks)
    else:
        data = var.data if isinstance(var.data, da.Array) else da.from_array(np.asarray(var.data))
        data = data.astype(dtype).rechunk(chunks) if data.ndim else data

    def _store(target: Any, data: Any = data) -> None:
        if data.ndim == 0:
            target[...] = np.asarray(data)
        else:
            da.store(data, target, lock=False)

    return _store


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value
