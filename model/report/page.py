"""``hyperkd report --run DIR``: one self-contained HTML page (and the same in markdown) per run.

A **run directory** (the layout is the contract in ``docs/run.md``)::

    DIR/
      run.json               {"tiles": URL, ...}: the tile store the run used (required for pictures)
      teacher/               hyperkd train-teacher run (model.safetensors, config.json, metrics.jsonl)
      student/               hyperkd train run (model.safetensors, config.json, metrics.jsonl)
      evaluate/metrics.json  hyperkd evaluate on the test split
      ablation/              hyperkd ablate --out (ablation.csv, ablation.md, cells/)
      downstream/            hyperkd downstream --out (downstream_<task>.json / .md)

Every part but ``run.json`` is optional; the report says what is missing. It writes
``DIR/report.html`` (PNG figures embedded as base64 ``data:`` URIs, inline CSS, no external
resource), ``DIR/report.md`` and the PNGs in ``DIR/report_files/``.

Pictures come from up to ``n_tiles`` tiles of the test split (``val``, then ``train``, when it is
empty), masked like ``hyperkd evaluate`` (its recorded masking and seed), reconstructed by the
student; reflectance is de-normalised with the tile store's statistics (0-1 units).
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import html
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hyperkd.model.evaluate.baselines import in_table_order
from hyperkd.model.evaluate.downstream_results import table as downstream_table
from hyperkd.model.nets.masking import Masking
from hyperkd.model.report import figures
from hyperkd.pipeline.store.guard import check_output

_log = logging.getLogger(__name__)

ABLATION_UNITS = {"PSNR": "dB", "SSIM": "", "SAM": "degrees"}


@dataclass(frozen=True)
class ReportConfig:
    """``hyperkd report``."""

    run: str
    n_tiles: int = 3
    """Tiles shown in the reconstruction and significance figures."""
    n_pixels: int = 4
    """Sample pixels (inside masked patches) whose spectra are plotted."""
    seed: int = 0
    storage_options: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.n_tiles <= 8 or not 1 <= self.n_pixels <= 8:
            raise ValueError("the report shows 1..8 tiles and 1..8 sample pixels")


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class Image:
    name: str
    """File name in ``report_files/``."""
    png: bytes
    caption: str


Block = Text | Table | Image


@dataclass
class Section:
    title: str
    blocks: list[Block] = dataclasses.field(default_factory=list)


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        return "nan" if not np.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


# --- sections -------------------------------------------------------------------------------


def summary_section(run_dir: Path, run: dict[str, Any], student: dict[str, Any] | None) -> Section:
    sec = Section("Run")
    rows = [["run directory", str(run_dir)], ["tile store", str(run.get("tiles", "?"))]]
    rows += [
        [k, _fmt(v)] for k, v in run.items() if k != "tiles" and isinstance(v, str | int | float)
    ]
    if student is not None:
        model, spec = student.get("model", {}), student.get("run", {})
        rows += [
            ["student preset", f"{model.get('preset')} ({model.get('embed_dim')} wide, {model.get('depth')} blocks)"],
            ["tiles / patches", f"{model.get('img_size')} px tiles, {model.get('patch_size')} px patches, {model.get('in_chans')} bands"],
            ["masking", _fmt(spec.get("masking", {}).get("kind"))],
            ["loss", _fmt(spec.get("loss", {}).get("terms"))],
            ["steps", _fmt(spec.get("train", {}).get("steps") or f"{spec.get('train', {}).get('epochs')} epochs")],
        ]  # fmt: skip
        if "teacher" not in run:  # run.json names the teacher already when the flows wrote it
            rows.append(["teacher", _fmt(spec.get("teacher"))])
    sec.blocks.append(Table(["setting", "value"], rows))
    return sec


def _metric_row(name: str, m: dict[str, Any], sfx: str = "") -> list[str]:
    return [
        name,
        _fmt(m.get(f"psnr{sfx}"), 2),
        _fmt(m.get(f"psnr_range{sfx}"), 2),
        _fmt(m.get(f"ssim{sfx}")),
        _fmt(m.get(f"sam{sfx}"), 2),
        _fmt(m.get(f"mse_norm{sfx}"), 4),
    ]


def metrics_section(metrics: dict[str, Any] | None) -> Section:
    sec = Section("Reconstruction metrics")
    if metrics is None:
        sec.blocks.append(
            Text("No evaluate/metrics.json in this run (run hyperkd evaluate --out DIR/evaluate).")
        )
        return sec
    header = ["predictor", "PSNR (dB, peak 1)", "PSNR (dB, band range)", "SSIM", "SAM (degrees)",
              "MSE (normalised)"]  # fmt: skip
    rows = [_metric_row("student, masked patches", metrics)]
    rows += [
        _metric_row(f"baseline: {k}", v) for k, v in in_table_order(metrics.get("baselines", {}))
    ]
    rows += [_metric_row("student, full reconstruction", metrics, "_full")]
    teacher = metrics.get("teacher")
    if teacher:
        rows += [_metric_row("teacher (6 bands), masked patches", teacher)]
        rows += [
            _metric_row(f"teacher space baseline: {k}", v)
            for k, v in in_table_order(teacher.get("baselines", {}))
        ]
    sec.blocks.append(Table(header, rows))
    masking = metrics.get("masking", {})
    sec.blocks.append(
        Text(
            f"{metrics.get('n_tiles', '?')} tiles of the {metrics.get('split', '?')} split, "
            f"{masking.get('kind', '?')} masking at ratio {masking.get('ratio', '?')}; every "
            "baseline is scored on the same tiles and masks. Reflectance 0-1; PSNR with peak 1.0 "
            "and with each band's train-split range as peak; SSIM with each band's range "
            "(docs/run.md)."
        )
    )
    return sec


def curves_section(run_dir: Path) -> Section:
    sec = Section("Training curves")
    runs = {name: _read_jsonl(run_dir / name / "metrics.jsonl") for name in ("student", "teacher")}
    runs = {k: v for k, v in runs.items() if v}
    if not runs:
        sec.blocks.append(Text("No metrics.jsonl under student/ or teacher/."))
        return sec
    caption = "Loss terms against the optimizer step (means over each logging window)."
    sec.blocks.append(Image("curves.png", figures.curves_figure(runs), caption))
    return sec


def ablation_section(run_dir: Path) -> Section:
    sec = Section("Ablation")
    path = run_dir / "ablation" / "ablation.csv"
    if not path.is_file():
        sec.blocks.append(
            Text("No ablation/ablation.csv in this run (hyperkd ablate --out DIR/ablation).")
        )
        return sec
    with path.open() as f:
        rows = list(csv.DictReader(f))
    header = ["cell", "masking", "loss", "PSNR (dB)", "SSIM", "SAM (degrees)", "wall time (s)"]
    keys = ["cell", "masking", "loss", "psnr", "ssim", "sam", "wall_s"]
    sec.blocks.append(Table(header, [[r.get(k, "") for k in keys] for r in rows]))
    values = {
        m.upper(): [float(r[m]) if r.get(m) else float("nan") for r in rows]
        for m in ("psnr", "ssim", "sam")
    }
    png = figures.ablation_figure([r["cell"] for r in rows], values, ABLATION_UNITS)
    sec.blocks.append(
        Image(
            "ablation.png",
            png,
            "Masked-patch metrics per cell on the test split (equal budget, same seeds).",
        )
    )
    return sec


def downstream_section(run_dir: Path) -> Section:
    sec = Section("Downstream tasks")
    paths = sorted((run_dir / "downstream").glob("downstream_*.json"))
    if not paths:
        sec.blocks.append(
            Text(
                "No downstream/downstream_<task>.json in this run (hyperkd downstream --out DIR/downstream)."
            )
        )
    for path in paths:
        result = json.loads(path.read_text())
        header, rows = downstream_table(result)
        sec.blocks.append(
            Text(
                f"{result.get('name', result['task'])} (`{result['label']}`): trained on {result['n_train_pixels']} {result['train_split']} pixels, "
                f"scored on {result['n_eval_pixels']} {result['eval_split']} pixels."
            )
        )
        sec.blocks.append(Table(header, rows))
        sec.blocks.extend(Text(note) for note in result.get("notes", []))
    return sec


def picture_sections(
    run_dir: Path, run: dict[str, Any], cfg: ReportConfig, evaluation: dict[str, Any] | None
) -> list[Section]:
    """Reconstructions, spectra and significance maps from the student and the tile store."""
    from hyperkd.model.report.data import sample_reconstructions

    titles = ("Reconstructions", "Spectra of sample pixels", "Significance maps")
    student_dir = run_dir / "student"
    if not (student_dir / "config.json").is_file() or not run.get("tiles"):
        why = (
            "no finished student run in student/"
            if run.get("tiles")
            else "run.json names no tile store"
        )
        return [Section(t, [Text(f"Not drawn: {why}.")]) for t in titles]
    masking = Masking(**evaluation["masking"]) if evaluation and "masking" in evaluation else None
    data = sample_reconstructions(
        str(student_dir), run["tiles"], n_tiles=cfg.n_tiles, n_pixels=cfg.n_pixels, seed=cfg.seed,
        masking=masking, storage_options=cfg.storage_options,
    )  # fmt: skip
    r, g, b = figures.rgb_bands(data.wavelengths)
    true_rgb, recon_rgb, interp_rgb, names, interp_names = [], [], [], [], []
    for i in range(len(data.tile_ids)):
        t = data.true[i][[r, g, b]].transpose(1, 2, 0)
        limits = figures.stretch_limits(t, data.valid[i])
        true_rgb.append(figures.apply_stretch(t, limits, data.valid[i]))
        recon_rgb.append(
            figures.apply_stretch(
                data.recon[i][[r, g, b]].transpose(1, 2, 0), limits, data.valid[i]
            )
        )
        interp_rgb.append(
            figures.apply_stretch(
                data.interp[i][[r, g, b]].transpose(1, 2, 0), limits, data.valid[i]
            )
        )
        names.append(f"tile {data.tile_ids[i]} ({data.split}), PSNR {data.psnr[i]:.1f} dB")
        interp_names.append(f"PSNR {data.interp_psnr[i]:.1f} dB")
    rgb_note = (
        f"RGB from bands at {data.wavelengths[r]:.0f} / {data.wavelengths[g]:.0f} / {data.wavelengths[b]:.0f} nm, "
        f"2-98 % stretch of the true tile applied to both; {data.masking.kind} masking, ratio {data.masking.ratio}. "
        "PSNR on the masked patches."
    )
    recon_png = figures.reconstruction_figure(
        true_rgb, recon_rgb, data.masks, data.patch_size, names, interp_rgb, interp_names
    )
    spectra: Block = Text("No valid pixel inside a masked patch to plot.")
    if data.pixel_titles:
        png = figures.spectra_figure(
            data.wavelengths, data.pixel_true, data.pixel_recon, data.pixel_titles
        )
        spectra = Image(
            "spectra.png", png, "Pixels inside masked patches: the student never saw them."
        )
    sig_png = figures.significance_figure(true_rgb, data.significance, names)
    return [
        Section(titles[0], [Image("reconstructions.png", recon_png, rgb_note)]),
        Section(titles[1], [spectra]),
        Section(titles[2], [Image("significance.png", sig_png, "Per-patch significance from the tile store, drawn over the RGB composite.")]),
    ]  # fmt: skip


# --- rendering ------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;font-size:16px;max-width:1200px;margin:2em auto;
padding:0 1em;color:#222}h1{font-size:1.8em}h2{font-size:1.35em;border-bottom:1px solid #ccc;padding-bottom:.2em;
margin-top:1.6em}table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #bbb;padding:.3em .7em;
text-align:left}th{background:#f0f0f0}figure{margin:1em 0}img{max-width:100%}figcaption{color:#444;font-size:.95em}
"""


def render_html(title: str, sections: list[Section]) -> str:
    """One HTML page, no external resources."""
    out = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
    ]
    out.append(f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>")
    for sec in sections:
        out.append(f"<h2>{html.escape(sec.title)}</h2>")
        for block in sec.blocks:
            if isinstance(block, Text):
                out.append(f"<p>{html.escape(block.text)}</p>")
            elif isinstance(block, Table):
                head = "".join(f"<th>{html.escape(h)}</th>" for h in block.header)
                body = "".join(
                    "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                    for row in block.rows
                )
                out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            else:
                data = base64.b64encode(block.png).decode("ascii")
                alt = html.escape(block.caption, quote=True)
                out.append(
                    f"<figure><img src='data:image/png;base64,{data}' alt='{alt}'>"
                    f"<figcaption>{html.escape(block.caption)}</figcaption></figure>"
                )
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def render_markdown(title: str, sections: list[Section], files_dir: str) -> str:
    """The same content in markdown, images linked from ``files_dir``."""
    out = [f"# {title}", ""]
    for sec in sections:
        out += [f"## {sec.title}", ""]
        for block in sec.blocks:
            if isinstance(block, Text):
                out += [block.text, ""]
            elif isinstance(block, Table):
                out.append("| " + " | ".join(h or " " for h in block.header) + " |")
                out.append("|" + "---|" * len(block.header))
                out += [
                    "| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"
                    for row in block.rows
                ]
                out.append("")
            else:
                out += [
                    f"![{block.caption}]({files_dir}/{block.name})",
                    "",
                    f"*{block.caption}*",
                    "",
                ]
    return "\n".join(out).rstrip() + "\n"


def write_report(cfg: ReportConfig) -> dict[str, Path]:
    """Build the report of ``cfg.run``; returns the paths written (``html``, ``markdown``, ``files``)."""
    run_dir = Path(cfg.run)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run directory at {run_dir}")
    run = _read_json(run_dir / "run.json")
    if run is None:
        raise ValueError(f"{run_dir} is not a run directory: it has no run.json (see docs/run.md)")
    student = _read_json(run_dir / "student" / "config.json")
    evaluation = _read_json(run_dir / "evaluate" / "metrics.json")
    sections = [summary_section(run_dir, run, student), metrics_section(evaluation)]
    sections += picture_sections(run_dir, run, cfg, evaluation)
    sections += [curves_section(run_dir), ablation_section(run_dir), downstream_section(run_dir)]
    title = f"HyperKD run report: {run_dir.resolve().name}"
    files = run_dir / "report_files"
    check_output(files, "files")  # never a file or a store of another kind
    files.mkdir(exist_ok=True)
    for stale in files.glob("*.png"):
        stale.unlink()
    for sec in sections:
        for block in sec.blocks:
            if isinstance(block, Image):
                (files / block.name).write_bytes(block.png)
    (run_dir / "report.md").write_text(render_markdown(title, sections, files.name))
    (run_dir / "report.html").write_text(render_html(title, sections))
    _log.info("report written to %s", run_dir / "report.html")
    return {"html": run_dir / "report.html", "markdown": run_dir / "report.md", "files": files}
