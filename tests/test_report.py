"""``hyperkd report``: a run directory (docs/run.md) -> self-contained HTML + markdown + PNGs."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
from eval_helpers import ablation, demo_run, torch_threads
from PIL import Image

from hyperkd.cli import main
from hyperkd.model.evaluate.baselines import BASELINES
from hyperkd.model.report import figures

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full run directory: teacher, student, evaluate, ablation, downstream, then the report."""
    run = demo_run(tmp_path_factory.mktemp("demo"))
    abl = ablation(run)
    out = tmp_path_factory.mktemp("run")
    shutil.copytree(run["teacher"], out / "teacher")
    shutil.copytree(run["student"], out / "student")
    shutil.copytree(abl, out / "ablation", symlinks=True)
    (out / "run.json").write_text(
        json.dumps({"tiles": run["tiles"], "teacher": "teacher", "region": "demo"})
    )
    student = str(out / "student")
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                student,
                "--tiles",
                run["tiles"],
                "--out",
                str(out / "evaluate"),
            ]
        )
        == 0
    )
    down = [
        "downstream",
        "--checkpoint",
        student,
        "--data",
        run["tiles"],
        "--out",
        str(out / "downstream"),
    ]
    down += [
        "--finetune-steps",
        "0",
        "--max-train-pixels",
        "2000",
        "--ablation",
        str(out / "ablation"),
    ]
    assert main([*down, "--task", "landcover"]) == 0
    assert main([*down, "--task", "soc"]) == 0
    assert main(["report", "--run", str(out)]) == 0
    return out


def _valid_png(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        size = im.size
    pixels = matplotlib.image.imread(io.BytesIO(data), format="png")
    assert pixels.ndim == 3 and pixels.shape[:2] == (size[1], size[0])
    return size


def test_every_html_image_is_an_embedded_valid_png(run_dir: Path) -> None:
    page = (run_dir / "report.html").read_text()
    sources = re.findall(r"<img src='([^']*)'", page)
    assert len(sources) == 5  # reconstructions, spectra, significance, curves, ablation
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        width, height = _valid_png(base64.b64decode(src.split(",", 1)[1]))
        assert width >= 400 and height >= 300
    # self-contained: nothing fetched from elsewhere
    assert not re.search(r"(src|href)=['\"](?!data:)", page)
    assert "http://" not in page and "https://" not in page


def test_every_markdown_image_exists_and_is_a_valid_png(run_dir: Path) -> None:
    text = (run_dir / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    names = {"reconstructions.png", "spectra.png", "significance.png", "curves.png", "ablation.png"}
    assert {Path(link).name for link in links} == names
    for link in links:
        path = run_dir / link
        assert path.is_file()
        _valid_png(path.read_bytes())
    assert sorted(p.name for p in (run_dir / "report_files").iterdir()) == sorted(names)


def test_report_holds_the_tables(run_dir: Path) -> None:
    text = (run_dir / "report.md").read_text()
    for heading in ("## Run", "## Reconstruction metrics", "## Reconstructions", "## Spectra of sample pixels",
                    "## Significance maps", "## Training curves", "## Ablation", "## Downstream tasks"):  # fmt: skip
        assert heading in text
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
    assert f"| student, masked patches | {metrics['psnr']:.2f} |" in text
    interp = metrics["baselines"]["interpolation"]["psnr"]
    assert f"| baseline: interpolation | {interp:.2f} |" in text  # beside the student
    assert "| baseline: interpolation |" in text.split("## Ablation")[1]  # and the cells
    # the baselines weakest first in both tables, though metrics.json sorts its keys
    for table in text.split("## Ablation")[:2]:
        rows = [line.split(" |")[0] for line in table.splitlines() if "| baseline: " in line]
        assert rows == [f"| baseline: {name}" for name in BASELINES], rows
    assert "| gabor-mse+ssim+kld | gabor | mse+ssim+kld |" in text and "| no-teacher |" in text
    assert "| no-teacher | linear probe |" in text  # the ablation's no-teacher cell as baseline
    assert "| raw-spectra | linear probe |" in text and "R²" in text


def test_report_of_a_bare_run_says_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "run.json").write_text(json.dumps({"tiles": "nowhere.zarr"}))
    assert main(["report", "--run", str(tmp_path)]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "Not drawn: no finished student run in student/." in text
    assert "No evaluate/metrics.json" in text and "No ablation/ablation.csv" in text
    assert "<img" not in (tmp_path / "report.html").read_text()


def test_report_needs_run_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--run", str(tmp_path)]) == 2
    assert "has no run.json" in capsys.readouterr().err
    assert not (tmp_path / "report.html").exists()


def test_mask_outline_traces_the_masked_area() -> None:
    mask = np.array([[True, True], [False, True]])
    segs = figures.mask_outline(mask, patch=4)
    # the L-shaped union of three 4-px patches has a perimeter of 8 patch edges
    assert len(segs) == 8
    assert figures.rgb_bands([460.0, 551.0, 639.0, 900.0]) == (2, 1, 0)


@pytest.mark.slow
def test_report_opens_in_headless_chromium(run_dir: Path, tmp_path: Path) -> None:
    """Chromium renders the page without a console error (uncaught script errors, blocked or
    failed loads are logged as CONSOLE lines with --enable-logging)."""
    if not CHROMIUM.exists():
        pytest.skip("chromium is not installed (Debian package 'chromium')")
    url = (run_dir / "report.html").as_uri()
    base = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0"]  # fmt: skip
    done = subprocess.run(
        [*base, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    console = [
        line for line in done.stderr.splitlines() if ":CONSOLE" in line or "net::ERR" in line
    ]
    assert console == []
    assert "HyperKD run report" in done.stdout and done.stdout.count("<img") == 5
    shot = tmp_path / "report.png"
    cmd = [*base, f"--screenshot={shot}", "--window-size=1280,2000", url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    _valid_png(shot.read_bytes())
