"""``hyperkd report`` on what the CLI made: a student run from ``hyperkd train --out``, and a run
directory laid out by ``train --run`` and ``evaluate --run`` (no hand-written JSON).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eval_helpers import _budget, demo_run, torch_threads

from hyperkd.cli import main


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return demo_run(tmp_path_factory.mktemp("demo"))


def test_report_on_a_student_run_made_by_train(
    run: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    # A copy beside the original: config.json holds paths relative to the run directory.
    student = Path(run["student"]).with_name(f"student-copy-{tmp_path.name}")
    shutil.copytree(run["student"], student)
    before = {p.name: p.read_bytes() for p in student.iterdir() if p.is_file()}
    with torch_threads(1):
        assert main(["report", "--run", str(student), "--n-tiles", "1"]) == 0, (
            capsys.readouterr().err
        )
    manifest = json.loads((student / "run.json").read_text())
    assert Path(manifest["tiles"]) == Path(run["tiles"]).resolve()
    assert Path(manifest["teacher"]) == Path(run["teacher"]).resolve()
    html = (student / "report.html").read_text()
    assert "student preset" in html and "data:image/png;base64" in html
    assert all((student / name).read_bytes() == data for name, data in before.items())


def test_train_and_evaluate_write_the_documented_layout(
    run: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "run"
    with torch_threads(1):
        argv = ["train", "--tiles", run["tiles"], "--teacher", run["teacher"], "--run", str(root)]
        assert main([*argv, "--loss", "mse+ssim+kld", *_budget(2)]) == 0
        assert main(["evaluate", "--run", str(root), "--device", "cpu"]) == 0
        assert main(["report", "--run", str(root), "--n-tiles", "1"]) == 0
    err = capsys.readouterr().err
    manifest = json.loads((root / "run.json").read_text())
    assert manifest["tiles"] == run["tiles"], err
    assert (root / "student" / "model.safetensors").is_file()
    assert (root / "teacher" / "config.json").is_file()  # linked to the teacher run
    assert json.loads((root / "evaluate" / "metrics.json").read_text())["n_tiles"] > 0
    assert (root / "report.html").is_file()


def test_a_teacher_run_is_not_a_report_run(
    run: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", "--run", run["teacher"]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(
        "is a teacher run: the report needs a student run or a run directory (docs/run.md)"
    )
