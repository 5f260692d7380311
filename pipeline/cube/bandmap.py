"""The cube's canonical EnMAP band axis, and the mapping of a scene's bands onto it.

Real products differ in band order and band set across processor versions (the DLR 2024 item's
SWIR centres sit up to ~12 nm away from the 2022 Potsdam product's). The cube has ONE band axis,
sorted by wavelength; each scene is mapped onto it by wavelength (docs/cube.md "Band axis"):

* a scene band within ``COPY_TOLERANCE_NM`` (2 nm) of a canonical centre is copied unchanged;
* otherwise the value is interpolated linearly between the scene's nearest band below and nearest
  band above the canonical centre, each within one FWHM (of the canonical band) of it;
* otherwise the canonical band is nodata for that scene.

:func:`plan_bands` returns a small :class:`BandPlan` (per canonical band: copy index, or two indices
and a weight, or missing) so the mapping is testable on its own and applied lazily per chunk by
:meth:`BandPlan.apply`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from hyperkd.catalogs import resource
from hyperkd.pipeline.sensors import EnmapBands, SpectralBand, enmap_table

COPY_TOLERANCE_NM = 2.0
"""A scene band this close (nm) to a canonical centre is copied as it is."""

CUBE_SCALE = 1e-4
"""The cube stores reflectance / CUBE_SCALE as int16 (docs/cube.md "Units")."""

COPY, INTERPOLATE, MISSING = 0, 1, 2

_INT16_MIN, _INT16_MAX = -32768, 32767


def load_band_table(name: str | Path | None = None) -> EnmapBands:
    """The canonical band set, sorted by wavelength.

    ``name`` is ``None`` (the catalog's EnMAP table), the stem of a YAML in ``catalogs/sensors``
    (e.g. ``"enmap_hsi"``) or a path to a YAML in the same format (``bands: [[centre_nm,
    fwhm_nm, detector], ...]``, optional ``nodata_bands``, ``scale``, ``offset``, ``nodata``).
    """
    if name is None or str(name) in ("enmap_hsi", "enmap_hsi.yaml"):
        return enmap_table().bands
    path = Path(name)
    if not path.is_file():
        candidate = resource("sensors", f"{Path(str(name)).stem}.yaml")
        if not Path(str(candidate)).is_file():
            raise ValueError(
                f"unknown band table {str(name)!r}: not a file and not a table in catalogs/sensors"
            )
        path = Path(str(candidate))
    try:
        raw = yaml.safe_load(path.read_text())
        rows = raw["bands"]
        bands = tuple(
            SpectralBand(
                name=str(i + 1),
                center_nm=float(r[0]),
                fwhm_nm=float(r[1]),
                detector=str(r[2]) if len(r) > 2 else None,
            )
            for i, r in enumerate(rows)
        )
    except (OSError, yaml.YAMLError, KeyError, TypeError, IndexError, ValueError) as exc:
        raise ValueError(f"band table {str(name)!r} is not a valid band table: {exc}") from exc
    if not bands:
        raise ValueError(f"band table {str(name)!r} lists no bands")
    n = len(bands)
    table = EnmapBands(
        bands=bands,
        nodata_bands=frozenset(int(i) for i in raw.get("nodata_bands", ())),
        gain=(float(raw.get("scale", CUBE_SCALE)),) * n,
        offset=(float(raw.get("offset", 0.0)),) * n,
        nodata=int(raw.get("nodata", -32768)),
        processor_version=str(raw.get("processor_generation", "")) or None,
    )
    return table if table.is_sorted else table.sorted_by_wavelength()


@dataclass(frozen=True)
class BandPlan:
    """How one scene's bands become the canonical band axis.

    All tuples have one entry per canonical band. ``kind`` is ``COPY`` (take scene band
    ``lower``), ``INTERPOLATE`` (``(1 - weight) * scene[lower] + weight * scene[upper]``) or
    ``MISSING`` (nodata). ``lower``/``upper`` are scene band positions (-1 where unused).
    """

    kind: tuple[int, ...]
    lower: tuple[int, ...]
    upper: tuple[int, ...]
    weight: tuple[float, ...]
    n_scene: int
    """Number of bands in the scene (the input's band axis length)."""
    canonical_valid: tuple[bool, ...] = ()
    """Per canonical band: False where the table fills it with nodata (always MISSING)."""

    def __len__(self) -> int:
        return len(self.kind)

    @property
    def counts(self) -> dict[str, int]:
        """How many canonical bands are copied, interpolated and missing."""
        k = np.asarray(self.kind)
        return {
            "copy": int((k == COPY).sum()),
            "interpolate": int((k == INTERPOLATE).sum()),
            "missing": int((k == MISSING).sum()),
        }

    @property
    def is_identity(self) -> bool:
        """True when the scene already is the canonical axis (same generation, same order)."""
        n = len(self.kind)
        valid = self.canonical_valid or (True,) * n
        return self.n_scene == n and all(
            (k == COPY and lo == c) or not v
            for c, (k, lo, v) in enumerate(zip(self.kind, self.lower, valid, strict=True))
        )

    def apply(
        self,
        scene: np.ndarray,
        *,
        nodata: int,
        gain: np.ndarray | None = None,
        offset: np.ndarray | None = None,
        out_nodata: int = -32768,
    ) -> np.ndarray:
        """Map one block of scene DNs onto the canonical axis as cube int16.

        ``scene``: ``(band, y, x)`` integer DNs in the scene's band order, ``nodata`` where empty.
        ``gain``/``offset``: per scene band, reflectance = DN * gain + offset (default 1e-4, 0).
        Returns ``(canonical band, y, x)`` int16 reflectance x 10000, ``out_nodata`` where any
        source is nodata or the band is missing. Where the product's scale is already the cube's
        (1e-4, 0), copied bands are bit-exact copies with no float round trip.
        """
        if scene.ndim != 3 or scene.shape[0] != self.n_scene:
            raise ValueError(
                f"band count mismatch: scene block has shape {scene.shape}, "
                f"plan expects {self.n_scene} bands"
            )
        n_scene = self.n_scene
        gain = np.full(n_scene, CUBE_SCALE) if gain is None else np.asarray(gain, np.float64)
        offset = np.zeros(n_scene) if offset is None else np.asarray(offset, np.float64)
        native = bool(np.all(gain == CUBE_SCALE) and np.all(offset == 0.0))
        kind = np.asarray(self.kind)
        lower = np.asarray(self.lower)
        out = np.full((len(kind), *scene.shape[1:]), out_nodata, dtype=np.int16)

        copy = np.flatnonzero(kind == COPY)
        if native and nodata == out_nodata:
            # The common case: a band-for-band copy, one pass per band, no temporaries.
            for c in copy:
                out[c] = scene[lower[c]]
        elif copy.size:
            src = scene[lower[copy]]
            empty = src == nodata
            if native:
                values = src.astype(np.int16, copy=False)
            else:
                values = self._to_cube(src, gain[lower[copy]], offset[lower[copy]])
            out[copy] = np.where(empty, out_nodata, values)

        for c in np.flatnonzero(kind == INTERPOLATE):
            lo, hi, w = self.lower[c], self.upper[c], self.weight[c]
            a = scene[lo].astype(np.float64) * gain[lo] + offset[lo]
            b = scene[hi].astype(np.float64) * gain[hi] + offset[hi]
            value = np.rint(((1.0 - w) * a + w * b) / CUBE_SCALE)
            value = np.clip(value, _INT16_MIN + 1, _INT16_MAX).astype(np.int16)
            out[c] = np.where((scene[lo] == nodata) | (scene[hi] == nodata), out_nodata, value)
        return out

    @staticmethod
    def _to_cube(dn: np.ndarray, gain: np.ndarray, offset: np.ndarray) -> np.ndarray:
        """DN ``(k, y, x)`` with per-band gain/offset ``(k,)`` -> int16 reflectance x 10000."""
        refl = dn.astype(np.float64) * gain[:, None, None] + offset[:, None, None]
        value = np.rint(refl / CUBE_SCALE)
        # The fill value itself is reserved for nodata, so valid data saturates one above it.
        return np.clip(value, _INT16_MIN + 1, _INT16_MAX).astype(np.int16)


def plan_bands(scene: EnmapBands, canonical: EnmapBands | None = None) -> BandPlan:
    """Map ``scene``'s bands (any order) onto ``canonical`` (default: the catalog table).

    Canonical bands flagged nodata in the table (``valid_band`` False) are always MISSING; scene
    bands the scene flags as nodata are never used as sources.
    """
    canonical = canonical if canonical is not None else enmap_table().bands
    if not canonical.is_sorted:
        raise ValueError("the canonical band table must be sorted by wavelength")
    if len(scene) == 0:
        raise ValueError("scene has no band metadata")
    w_scene = scene.wavelengths
    usable = scene.valid & np.isfinite(w_scene)
    idx = np.flatnonzero(usable)
    ws = w_scene[idx]
    kind, lower, upper, weight = [], [], [], []
    for c, band in enumerate(canonical.bands):
        k, lo, hi, w = MISSING, -1, -1, 0.0
        if canonical.valid[c] and idx.size:
            wc, fc = band.center_nm, band.fwhm_nm
            dist = np.abs(ws - wc)
            nearest = int(np.argmin(dist))
            if dist[nearest] <= COPY_TOLERANCE_NM:
                k, lo = COPY, int(idx[nearest])
            else:
                below = np.flatnonzero(ws < wc)
                above = np.flatnonzero(ws > wc)
                if below.size and above.size:
                    b = below[np.argmax(ws[below])]
                    a = above[np.argmin(ws[above])]
                    if wc - ws[b] <= fc and ws[a] - wc <= fc:
                        k, lo, hi = INTERPOLATE, int(idx[b]), int(idx[a])
                        w = float((wc - ws[b]) / (ws[a] - ws[b]))
        kind.append(k)
        lower.append(lo)
        upper.append(hi)
        weight.append(w)
    return BandPlan(
        tuple(kind),
        tuple(lower),
        tuple(upper),
        tuple(weight),
        len(scene),
        tuple(bool(v) for v in canonical.valid),
    )
