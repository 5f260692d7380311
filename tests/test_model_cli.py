"""``hyperkd train-teacher`` -> ``train`` -> ``evaluate`` on a real (small) Zarr tile store."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from _model_fakes import write_small_tile_store
from safetensors.torch import load_file

from hyperkd.cli import main
from hyperkd.model.train.runs import load_teacher


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiles(tmp_path_factory: pytest.TempPathFactory) -> str:
    return write_small_tile_store(str(tmp_path_factory.mktemp("store") / "tiles.zarr"))


class Payload:
    """An arbitrary pickled object: weights-only loading must refuse to build it."""


FAST = [
    "--batch-size",
    "4",
    "--num-workers",
    "0",
    "--no-progress",
    "--log-every",
    "1",
    "--lr",
    "1e-3",
]


def test_train_teacher_then_distill_then_evaluate(
    tiles: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    teacher, student, evaluation = tmp_path / "teacher", tmp_path / "student", tmp_path / "eval"
    assert (
        main(["train-teacher", "--tiles", tiles, "--out", str(teacher), "--steps", "3", *FAST]) == 0
    )
    assert "patch_embed.proj.weight" in load_file(teacher / "model.safetensors")
    assert json.loads((teacher / "config.json").read_text())["kind"] == "teacher"
    distill = ["train", "--tiles", tiles, "--teacher", str(teacher), "--out", str(student)]
    distill += ["--steps", "4", "--masking", "gabor", "--loss", "mse+ssim+kld", *FAST]
    assert main(distill) == 0
    log = [json.loads(line) for line in (student / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4] and {"mse", "ssim", "kld", "loss"} <= set(
        log[0]
    )
    config = json.loads((student / "config.json").read_text())
    assert (
        config["kind"] == "student"
        and config["model"]["in_chans"] == config["tile_store"]["n_bands"]
    )
    assert config["run"]["masking"]["kind"] == "gabor" and config["teacher"]["preset"] == "tiny"
    assert main(["evaluate", "--checkpoint", str(student), "--tiles", tiles, "--split", "test",
                 "--out", str(evaluation), "--device", "cpu"]) == 0  # fmt: skip
    metrics = json.loads((evaluation / "metrics.json").read_text())
    assert {"psnr", "ssim", "sam"} <= set(metrics) and metrics["n_tiles"] > 0
    assert all(metrics[k] == metrics[k] for k in ("psnr", "ssim", "sam"))  # not NaN
    assert "PSNR" in capsys.readouterr().out


def test_teacher_from_a_pt_file_loads_weights_only(tmp_path: Path) -> None:
    from hyperkd.model.nets.prithvi import PrithviMAE, teacher_config

    model = PrithviMAE(teacher_config("tiny", img_size=32, patch_size=8))
    torch.save(
        {"model": {f"_timm_module.{k}": v for k, v in model.state_dict().items()}},
        tmp_path / "t.pt",
    )
    teacher = load_teacher(str(tmp_path / "t.pt"), img_size=64, preset="tiny")
    assert torch.equal(teacher.model.blocks[1].mlp.fc1.weight, model.blocks[1].mlp.fc1.weight)

    torch.save({"model": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="not unpickled"):
        load_teacher(str(tmp_path / "evil.pt"), img_size=32, preset="tiny")


def test_cli_errors_are_one_line(
    tiles: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "x")
    assert (
        main(["train", "--tiles", tiles, "--out", out, "--steps", "2", "--loss", "mse+ssim+kld"])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("hyperkd train: error:") and "--teacher" in err and "\n" not in err
    assert (
        main(
            [
                "train",
                "--tiles",
                tiles,
                "--out",
                out,
                "--steps",
                "1",
                "--teacher",
                str(tmp_path / "none"),
                *FAST,
            ]
        )
        == 2
    )
    assert "no teacher at" in capsys.readouterr().err
    assert (
        main(
            ["evaluate", "--checkpoint", str(tmp_path / "nothing"), "--tiles", tiles, "--out", out]
        )
        == 2
    )
    assert "no run directory" in capsys.readouterr().err
    assert not Path(out, "model.safetensors").exists()
