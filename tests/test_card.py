"""A finished run directory: model card, STAC MLM item (validated offline), 0644, relative paths."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from _model_fakes import FakeTiles, shard_loader
from safetensors.torch import load_file
from stac_validate import validate

from hyperkd.model.nets.masking import Masking
from hyperkd.model.train.card import model_card
from hyperkd.model.train.checkpoint import write_card
from hyperkd.model.train.config import DistillConfig, TrainConfig
from hyperkd.model.train.losses import LossConfig
from hyperkd.model.train.runs import run_distill

EVALUATION = {
    "psnr": 31.5, "ssim": 0.91, "sam": 2.5, "split": "test", "n_tiles": 4,
    "baselines": {
        "train-mean": {"psnr": 21.0, "ssim": 0.40, "sam": 9.0},
        "visible-mean": {"psnr": 24.0, "ssim": 0.55, "sam": 7.5},
    },
}  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A tiny student trained for 2 steps, with umask 022 (mkstemp ignores it: 0600)."""
    root = tmp_path_factory.mktemp("runs")
    out, old_umask, threads = root / "student", os.umask(0o022), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ds = FakeTiles(4)
        config = DistillConfig(
            tiles=str(root / "tiles.zarr"),
            train=TrainConfig(
                out=str(out), steps=2, batch_size=2, log_every=1, checkpoint_every=1,
                progress=False,
            ),
            masking=Masking("random"),
            loss=LossConfig("mse"),
        )  # fmt: skip
        run_distill(config, dataset=ds, loader_factory=shard_loader(ds, 2, seed=0))
    finally:
        os.umask(old_umask)
        torch.set_num_threads(threads)
    yield out


def test_every_run_output_is_readable_by_group_and_others(run_dir: Path) -> None:
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    names = {p.relative_to(run_dir).as_posix() for p in files}
    assert {"model.safetensors", "config.json", "README.md", "item.json"} <= names
    assert any(n.endswith("optimizer.safetensors") for n in names)
    modes = {p.relative_to(run_dir).as_posix(): oct(p.stat().st_mode & 0o777) for p in files}
    assert set(modes.values()) == {"0o644"}, modes
    folders = [p for p in (run_dir / "checkpoints").iterdir() if p.is_dir()]
    assert folders and {oct(p.stat().st_mode & 0o777) for p in folders} == {"0o755"}


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def test_config_json_holds_relative_paths_only(run_dir: Path) -> None:
    config = json.loads((run_dir / "config.json").read_text())
    assert config["run"]["tiles"] == "../tiles.zarr"
    assert config["run"]["train"]["out"] == "."
    absolute = [s for s in _strings(config) if s.startswith("/") or str(run_dir) in s]
    assert absolute == []


def test_model_card_front_matter_and_sections(run_dir: Path) -> None:
    text = (run_dir / "README.md").read_text()
    _, front, body = text.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["license"] == "apache-2.0" and "hyperspectral" in meta["tags"]
    log = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert meta["metrics"]["train_loss"] == pytest.approx(log[-1]["loss"])
    for section in ("## Use", "## Training data", "## Bands, wavelengths and normalisation",
                    "## Metrics", "## Limitations", "## Intended use"):  # fmt: skip
        assert section in body
    rows = [line for line in body.splitlines() if line.startswith("| band_")]
    assert len(rows) == 8 and rows[0].startswith("| band_001 | 420 | 1000.0 | 500.0 |")
    assert "Not evaluated yet" in body


def test_mlm_item_validates_offline_and_describes_the_model(run_dir: Path) -> None:
    item = json.loads((run_dir / "item.json").read_text())
    checked = validate(item)
    assert any("/mlm/" in uri for uri in checked) and any("item-spec" in uri for uri in checked)
    props = item["properties"]
    weights = load_file(run_dir / "model.safetensors")
    assert props["mlm:total_parameters"] == sum(v.numel() for v in weights.values())
    (model_input,) = props["mlm:input"]
    assert model_input["input"]["shape"] == [-1, 8, 32, 32]
    assert len(model_input["bands"]) == 8 == len(props["bands"])
    assert props["bands"][1]["eo:center_wavelength"] == pytest.approx(0.430)
    assert model_input["value_scaling"][1] == {"type": "z-score", "mean": 0.11, "stddev": 0.05}
    assert props["mlm:output"][0]["result"]["shape"] == [-1, 16, 64]
    assert props["mlm:hyperparameters"]["optimizer"] == "adamw"
    assert item["assets"]["weights"]["href"] == "./model.safetensors"


def test_card_shows_metrics_beside_baselines(run_dir: Path, tmp_path: Path) -> None:
    config = json.loads((run_dir / "config.json").read_text())
    weights = load_file(run_dir / "model.safetensors")
    body = model_card(config, weights, None, EVALUATION)
    assert "| metric | this model | train-mean | visible-mean |" in body
    assert "| psnr | 31.5 | 21 | 24 |" in body and "| sam | 2.5 | 9 | 7.5 |" in body
    copy = tmp_path / "run"
    copy.mkdir()
    (copy / "metrics.jsonl").write_text((run_dir / "metrics.jsonl").read_text())
    write_card(copy, weights, config, EVALUATION)
    item = json.loads((copy / "item.json").read_text())
    validate(item)
    assert item["properties"]["hyperkd:metrics"]["psnr"] == 31.5
    assert (
        yaml.safe_load((copy / "README.md").read_text().split("---\n")[1])["metrics"]["psnr"]
        == 31.5
    )


def test_card_command_adds_evaluation_metrics(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from hyperkd.cli import main

    copy = tmp_path / "run"
    copy.mkdir()
    for name in ("config.json", "model.safetensors", "metrics.jsonl"):
        (copy / name).write_bytes((run_dir / name).read_bytes())
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps(EVALUATION))
    assert main(["card", "--checkpoint", str(copy), "--metrics", str(metrics)]) == 0
    assert "| psnr | 31.5 | 21 | 24 |" in (copy / "README.md").read_text()
    assert oct((copy / "item.json").stat().st_mode & 0o777) == "0o644"
    metrics.write_text("[1, 2]")
    assert main(["card", "--checkpoint", str(copy), "--metrics", str(metrics)]) == 2
    assert "holds no JSON object" in capsys.readouterr().err
