"""The report's figures, as PNG bytes (matplotlib, Agg canvas, no pyplot global state).

Every figure is drawn for reading without zooming: 11-pt text (at least 10 pt everywhere),
labelled axes with units, 110 dpi. Images are shown pixel for pixel (nearest interpolation).

- RGB composites use the EnMAP bands nearest 640 / 550 / 460 nm, with a per-channel 2-98 %
  percentile stretch taken from the *true* tile and applied unchanged to the reconstruction, so
  the two are directly comparable.
- The reconstruction panel is the MAE composite: the model's prediction in the masked patches,
  the input in the visible ones. With 75 % masked, the few *visible* patches are the ones
  outlined (on the true tile too), so the eye lands on what the model did not have to predict.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

FONT_PT = 11
DPI = 110
RGB_NM = (640.0, 550.0, 460.0)
OUTLINE = "#ffd700"
_RC = {
    "font.size": FONT_PT,
    "axes.titlesize": FONT_PT,
    "axes.labelsize": FONT_PT,
    "legend.fontsize": 10,
}


def _figure(width_in: float, height_in: float) -> Figure:
    import matplotlib

    matplotlib.rcParams.update(_RC)
    return Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")


def to_png(fig: Figure) -> bytes:
    """Render ``fig`` (Agg) to PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def rgb_bands(wavelengths_nm: Sequence[float]) -> tuple[int, int, int]:
    """Indices of the bands nearest 640, 550 and 460 nm."""
    w = np.asarray(wavelengths_nm, dtype=np.float64)
    if w.size == 0:
        raise ValueError("the tile store lists no band wavelengths; cannot build RGB composites")
    r, g, b = (int(np.argmin(np.abs(w - nm))) for nm in RGB_NM)
    return r, g, b


def stretch_limits(
    rgb: np.ndarray, valid: np.ndarray | None = None, pct: tuple[float, float] = (2, 98)
) -> np.ndarray:
    """Per-channel percentile limits of (H, W, 3) reflectance -> (2, 3) low/high."""
    pix = rgb.reshape(-1, 3)
    if valid is not None and valid.any():
        pix = pix[valid.reshape(-1)]
    lo, hi = np.nanpercentile(pix, pct, axis=0)
    return np.stack([lo, np.maximum(hi, lo + 1e-6)])


def apply_stretch(
    rgb: np.ndarray, limits: np.ndarray, valid: np.ndarray | None = None
) -> np.ndarray:
    """(H, W, 3) reflectance -> (H, W, 3) in [0, 1]; invalid pixels black."""
    out = np.clip((rgb - limits[0]) / (limits[1] - limits[0]), 0.0, 1.0)
    if valid is not None:
        out[~valid] = 0.0
    return np.nan_to_num(out)


def mask_outline(mask_grid: np.ndarray, patch: int) -> list[list[tuple[float, float]]]:
    """Boundary segments (pixel coordinates for ``imshow``) of the True patches of an (h, w) bool grid."""
    padded = np.pad(mask_grid.astype(bool), 1, constant_values=False)
    segs: list[list[tuple[float, float]]] = []
    for i, j in zip(*np.nonzero(mask_grid), strict=True):
        y0, x0 = i * patch - 0.5, j * patch - 0.5
        y1, x1 = y0 + patch, x0 + patch
        if not padded[i, j + 1]:  # above
            segs.append([(x0, y0), (x1, y0)])
        if not padded[i + 2, j + 1]:  # below
            segs.append([(x0, y1), (x1, y1)])
        if not padded[i + 1, j]:  # left
            segs.append([(x0, y0), (x0, y1)])
        if not padded[i + 1, j + 2]:  # right
            segs.append([(x1, y0), (x1, y1)])
    return segs


def _image_axis(ax, image: np.ndarray, title: str) -> None:  # type: ignore[no-untyped-def]
    ax.imshow(image, interpolation="nearest")
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])


def reconstruction_figure(
    true_rgb: Sequence[np.ndarray],
    recon_rgb: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    patch: int,
    titles: Sequence[str],
    interp_rgb: Sequence[np.ndarray] | None = None,
    interp_titles: Sequence[str] | None = None,
) -> bytes:
    """One row per tile: true RGB, the visible input (masked patches grey), the reconstruction
    (prediction in masked patches, input elsewhere) with the visible patches outlined, and,
    when given, the interpolation baseline the same way.
    ``*_rgb``: (H, W, 3) in [0, 1]; ``masks``: (h, w) bool, True = masked."""
    n, cols = len(true_rgb), 3 if interp_rgb is None else 4
    fig = _figure(3.5 * cols, 3.5 * n + 0.3)
    axes = fig.subplots(n, cols, squeeze=False)
    for row, (t, r, m, title) in enumerate(zip(true_rgb, recon_rgb, masks, titles, strict=True)):
        visible = t.copy()
        pixel_mask = np.kron(m, np.ones((patch, patch), dtype=bool)).astype(bool)
        visible[pixel_mask] = 0.5
        _image_axis(axes[row, 0], t, f"{title}\ntrue (R 640, G 550, B 460 nm)")
        _image_axis(
            axes[row, 1], visible, f"student input\n{int(m.sum())} of {m.size} patches masked"
        )
        _image_axis(axes[row, 2], r, "student reconstruction\nvisible input outlined")
        outlined = [axes[row, 0], axes[row, 2]]
        if interp_rgb is not None:
            label = interp_titles[row] if interp_titles else ""
            _image_axis(axes[row, 3], interp_rgb[row], f"interpolation baseline\n{label}")
            outlined.append(axes[row, 3])
        for ax in outlined:
            ax.add_collection(
                LineCollection(mask_outline(~m.astype(bool), patch), colors=OUTLINE, linewidths=1.5)
            )
    return to_png(fig)


def _segments(wavelengths: np.ndarray) -> list[np.ndarray]:
    """Index runs along which a spectrum is drawn as one line: a new run starts where the
    wavelength falls (the VNIR -> SWIR detector switch) or jumps over removed bands."""
    step = np.diff(wavelengths)
    typical = np.median(np.abs(step)) if step.size else 1.0
    cuts = np.flatnonzero((step <= 0) | (step > 3 * typical)) + 1
    return [s for s in np.split(np.arange(len(wavelengths)), cuts) if s.size]


def spectra_figure(
    wavelengths_nm: Sequence[float], true: np.ndarray, recon: np.ndarray, titles: Sequence[str]
) -> bytes:
    """True vs reconstructed spectra of sample pixels, one panel each. ``true``/``recon``:
    (N, C) reflectance (0-1)."""
    w = np.asarray(wavelengths_nm, dtype=np.float64)
    n = true.shape[0]
    cols = 2 if n > 1 else 1
    rows = -(-n // cols)
    fig = _figure(11.0, 3.4 * rows + 0.3)
    axes = fig.subplots(rows, cols, squeeze=False).reshape(-1)
    for k in range(n):
        ax = axes[k]
        for s, seg in enumerate(_segments(w)):
            ax.plot(w[seg], true[k, seg], color="black", lw=1.6, label="true" if s == 0 else None)
            ax.plot(
                w[seg],
                recon[k, seg],
                color="#d62728",
                lw=1.4,
                ls="--",
                label="reconstructed" if s == 0 else None,
            )
        ax.set_title(titles[k])
        ax.set_xlabel("wavelength (nm)")
        ax.set_ylabel("reflectance (0-1)")
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
    for ax in axes[n:]:
        ax.set_visible(False)
    return to_png(fig)


def significance_figure(
    rgb: Sequence[np.ndarray], maps: Mapping[str, Sequence[np.ndarray]], titles: Sequence[str]
) -> bytes:
    """One row per tile: the RGB composite, then each significance map (patch grid) over it."""
    n, names = len(rgb), list(maps)
    fig = _figure(3.6 * (1 + len(names)), 3.4 * n + 0.3)
    axes = fig.subplots(n, 1 + len(names), squeeze=False)
    for row in range(n):
        image = rgb[row]
        size = image.shape[0]
        _image_axis(axes[row, 0], image, f"{titles[row]}\nRGB")
        for col, name in enumerate(names, start=1):
            ax = axes[row, col]
            ax.imshow(image, interpolation="nearest")
            score = np.asarray(maps[name][row], dtype=np.float64)
            shown = ax.imshow(
                score,
                cmap="magma",
                alpha=0.65,
                extent=(-0.5, size - 0.5, size - 0.5, -0.5),
                interpolation="nearest",
            )
            ax.set_title(f"{name} significance\n(per patch)")
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(shown, ax=ax, shrink=0.8, label="energy (a.u.)")
    return to_png(fig)


def curves_figure(
    runs: Mapping[str, Sequence[Mapping[str, float]]],
    keys: Sequence[str] = ("loss", "mse", "ssim", "kld"),
) -> bytes:
    """Training curves, one panel per run: each loss term against the optimizer step (log y)."""
    names = list(runs)
    fig = _figure(5.6 * len(names), 4.0)
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for ax, name in zip(axes, names, strict=True):
        records = runs[name]
        steps = np.array([r["step"] for r in records], dtype=np.float64)
        for key in keys:
            values = np.array([r.get(key, np.nan) for r in records], dtype=np.float64)
            if np.isfinite(values).any():
                ax.plot(
                    steps, values, lw=1.8, marker="o" if len(steps) < 30 else None, ms=3, label=key
                )
        positive = all(v > 0 for r in records for k, v in r.items() if k in keys and np.isfinite(v))
        if positive:
            ax.set_yscale("log")
        ax.set_title(f"{name} training")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss (per term)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(loc="best")
    return to_png(fig)


def ablation_figure(
    cells: Sequence[str], values: Mapping[str, Sequence[float]], units: Mapping[str, str]
) -> bytes:
    """Horizontal bars per ablation cell, one panel per metric (``values[metric]`` per cell)."""
    metrics = list(values)
    fig = _figure(4.2 * len(metrics), 0.42 * len(cells) + 1.6)
    axes = fig.subplots(1, len(metrics), squeeze=False, sharey=True)[0]
    y = np.arange(len(cells))
    for ax, metric in zip(axes, metrics, strict=True):
        v = np.asarray(values[metric], dtype=np.float64)
        ax.barh(y, np.nan_to_num(v), color="#4c72b0")
        ax.set_xlabel(f"{metric} ({units[metric]})" if units.get(metric) else metric)
        ax.grid(axis="x", alpha=0.3)
        finite = v[np.isfinite(v)]
        if finite.size:
            lo, hi = float(finite.min()), float(finite.max())
            pad = 0.1 * (hi - lo) if hi > lo else 0.05 * abs(hi) + 1e-3
            ax.set_xlim(max(0.0, lo - 3 * pad) if lo >= 0 else lo - 3 * pad, hi + pad)
    axes[0].set_yticks(y, list(cells))
    axes[0].invert_yaxis()
    return to_png(fig)
