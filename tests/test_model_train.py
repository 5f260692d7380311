"""The trainer: overfitting, exact resume after a kill, torchrun DDP, non-finite losses, runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import torch
from _model_fakes import FakeTiles, collate, shard_loader, write_small_tile_store
from safetensors.torch import load_file

from hyperkd.defaults import OPTIMIZERS
from hyperkd.model.evaluate.reconstruction import evaluate
from hyperkd.model.nets.masking import Masking
from hyperkd.model.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    optimizer_from_tensors,
    optimizer_to_tensors,
)
from hyperkd.model.train.config import (
    DistillConfig,
    EvaluateConfig,
    OptimConfig,
    TeacherPretrainConfig,
    TrainConfig,
)
from hyperkd.model.train.losses import LossConfig
from hyperkd.model.train.runs import load_teacher, run_distill, run_teacher_pretrain
from hyperkd.model.train.trainer import NonFiniteLossError

TESTS = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # The team shares 2 cores: tiny models are far faster single-threaded, and the resume
    # comparison needs the same thread count in every process.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _train(out: Path, steps: int, **kw: object) -> TrainConfig:
    base: dict[str, object] = dict(
        out=str(out), steps=steps, batch_size=2, log_every=1, checkpoint_every=3, progress=False,
        optim=OptimConfig(lr=1e-3),
    )  # fmt: skip
    return TrainConfig(**(base | kw))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny teacher pretrained for a few steps by ``train-teacher``'s code path."""
    out = tmp_path_factory.mktemp("teacher")
    ds = FakeTiles(4, seed=3)
    with torch.device("cpu"):
        torch.set_num_threads(1)
        run_teacher_pretrain(
            TeacherPretrainConfig(tiles="memory", train=_train(out, 4, batch_size=2)),
            dataset=ds,
            loader_factory=shard_loader(ds, 2, seed=0),
        )
    return out


def test_teacher_run_saves_the_official_layout_and_reloads_at_another_tile_size(
    teacher_run: Path,
) -> None:
    config = json.loads((teacher_run / "config.json").read_text())
    assert config["kind"] == "teacher" and config["model"]["preset"] == "tiny"
    weights = load_file(teacher_run / "model.safetensors")
    assert {
        "cls_token",
        "pos_embed",
        "patch_embed.proj.weight",
        "decoder_pred.weight",
        "mask_token",
    } <= set(weights)
    assert weights["patch_embed.proj.weight"].shape == (64, 6, 1, 8, 8)
    teacher = load_teacher(str(teacher_run), img_size=64)  # 8 x 8 tokens instead of 4 x 4
    assert teacher.model.pos_embed.shape == (1, 65, 64)
    torch.testing.assert_close(
        teacher.model.blocks[0].attn.qkv.weight, weights["blocks.0.attn.qkv.weight"]
    )
    with pytest.raises(ValueError, match="normalises teacher bands"):
        load_teacher(
            str(teacher_run),
            img_size=32,
            teacher_mean=[1087.0, 1342.0, 1433.0, 2734.0, 1958.0, 1363.0],
        )


def test_tiny_student_overfits_four_tiles(tmp_path: Path) -> None:
    ds = FakeTiles(4)
    config = DistillConfig(
        tiles="memory",
        train=_train(
            tmp_path,
            120,
            batch_size=4,
            checkpoint_every=1000,
            optim=OptimConfig(lr=2e-3, weight_decay=0.0),
        ),
        masking=Masking("gabor"),
        loss=LossConfig("mse"),
    )
    run_distill(config, dataset=ds, loader_factory=shard_loader(ds, 4, seed=0))
    log = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 121))
    first, last = log[0]["loss"], sum(r["loss"] for r in log[-5:]) / 5
    assert first / last >= 10, (first, last)
    assert {"loss", "mse", "lr", "samples_per_s", "grad_norm"} <= set(log[-1])
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "config.json").is_file()


KILLED_RUN = """
import os, signal, sys
import torch
torch.set_num_threads(1)
from _model_fakes import FakeTiles, shard_loader
from hyperkd.model.train.runs import run_distill
from test_model_train import _distill_config
ds = FakeTiles(6, seed=1)
def die(step):
    if step == {kill_at}:
        os.kill(os.getpid(), signal.SIGKILL)
run_distill(_distill_config(sys.argv[1], sys.argv[2], resume=False, optimizer=sys.argv[3]),
            dataset=ds, loader_factory=shard_loader(ds, 2, seed=0), on_step=die)
"""


def _distill_config(
    out: str, teacher: str, *, resume: bool, optimizer: str = "adamw"
) -> DistillConfig:
    return DistillConfig(
        tiles="memory",
        teacher=teacher,
        train=_train(Path(out), 8, resume=resume, optim=OptimConfig(lr=1e-3, optimizer=optimizer)),
        masking=Masking("gabor", sample=True, temperature=0.5),
        loss=LossConfig("mse+ssim+kld"),
    )


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_resume_after_sigkill_is_bit_identical_to_an_uninterrupted_run(
    tmp_path: Path, teacher_run: Path, optimizer: str
) -> None:
    ds = FakeTiles(6, seed=1)  # 3 steps per epoch: the kill and the resume cross epochs
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    config = partial(_distill_config, teacher=str(teacher_run), optimizer=optimizer)
    run_distill(config(str(straight), resume=False), dataset=ds,
                loader_factory=shard_loader(ds, 2, seed=0))  # fmt: skip
    env = os.environ | {"PYTHONPATH": str(TESTS), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_RUN.replace("{kill_at}", "5"), str(killed), str(teacher_run),
         optimizer],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not (killed / "model.safetensors").exists()
    checkpoint = latest_checkpoint(killed)
    assert checkpoint is not None and checkpoint.name == "step-00000003"  # steps 4-5 were lost
    with pytest.raises(ValueError, match="--resume"):
        run_distill(config(str(killed), resume=False), dataset=ds,
                    loader_factory=shard_loader(ds, 2, seed=0))  # fmt: skip
    run_distill(config(str(killed), resume=True), dataset=ds,
                loader_factory=shard_loader(ds, 2, seed=0))  # fmt: skip
    a, b = load_file(straight / "model.safetensors"), load_file(killed / "model.safetensors")
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    # The log of the resumed run has each step once, as if nothing happened.
    steps = [
        json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == list(range(1, 9))
    # A resume with other settings is refused.
    other = DistillConfig(tiles="memory", teacher=str(teacher_run), train=_train(killed, 9, resume=True),
                          masking=Masking("gabor"), loss=LossConfig("mse+ssim+kld"))  # fmt: skip
    with pytest.raises(ValueError, match="different settings"):
        run_distill(other, dataset=ds, loader_factory=shard_loader(ds, 2, seed=0))


DDP_RUN = """
import dataclasses, sys, torch
from safetensors.torch import save_file
import hyperkd.model.train.runs as runs
from hyperkd.model.data.dataset import TileDataset
from hyperkd.model.train.distributed import setup_distributed
from test_model_train import _distill_config
env = setup_distributed("cpu")
assert env.world_size == 2, env
captured = {}
real_fit = runs.fit
def spy(task, *a, **k):
    captured["task"] = task
    return real_fit(task, *a, **k)
runs.fit = spy
cfg = _distill_config(sys.argv[1], sys.argv[2], resume=False)
cfg = dataclasses.replace(cfg, tiles=sys.argv[3], train=dataclasses.replace(cfg.train, num_workers=0))
runs.run_distill(cfg, env=env)  # the real tile store through make_loader's DDP sampler
save_file(dict(captured["task"].student.state_dict()), f"{sys.argv[1]}/rank{env.rank}.safetensors")
"""


@pytest.fixture(scope="module")
def tile_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A real Zarr tile store: 32-px tiles, 8-px patches."""
    return write_small_tile_store(str(tmp_path_factory.mktemp("store") / "tiles.zarr"))


def test_two_process_gloo_ddp_through_torchrun_ends_with_equal_weights(
    tmp_path: Path, teacher_run: Path, tile_store: str
) -> None:
    from hyperkd.model.data.dataset import TileDataset

    n_train = len(TileDataset(tile_store, split="train"))
    steps_per_epoch = n_train // 2 // 2  # 2 ranks x batch 2
    assert steps_per_epoch >= 1
    script = tmp_path / "ddp_run.py"
    script.write_text(textwrap.dedent(DDP_RUN))
    env = os.environ | {"PYTHONPATH": str(TESTS), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), str(tmp_path / "run"), str(teacher_run), tile_store],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (load_file(tmp_path / "run" / f"rank{r}.safetensors") for r in (0, 1))
    final = load_file(tmp_path / "run" / "model.safetensors")
    assert all(torch.equal(r0[k], r1[k]) and torch.equal(r0[k], final[k]) for k in r0)
    log = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in log] == list(range(1, 9)) and log[-1]["samples_per_s"] > 0
    # The effective batch is 2 ranks x 2 tiles: each rank reads half of every epoch.
    assert [r["epoch"] for r in log] == [(s - 1) // steps_per_epoch for s in range(1, 9)]


def test_non_finite_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(
    tmp_path: Path,
) -> None:
    ds = FakeTiles(6)
    clean = shard_loader(ds, 2, seed=0)

    def poisoned(epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        for i, batch in enumerate(clean(epoch)):
            if epoch == 1 and i == 1:  # step 5
                batch = dict(batch, student=torch.full_like(batch["student"], float("nan")))
            yield batch

    config = DistillConfig(
        tiles="memory", train=_train(tmp_path, 10, checkpoint_every=2), loss=LossConfig("mse+ssim")
    )
    with pytest.raises(
        NonFiniteLossError,
        match=r"non-finite loss at step 5: .*last good checkpoint kept at .*step-00000004",
    ):
        run_distill(config, dataset=ds, loader_factory=poisoned)
    checkpoint = latest_checkpoint(tmp_path)
    assert checkpoint is not None and checkpoint.name == "step-00000004"
    saved = load_checkpoint(checkpoint)
    assert saved["state"]["step"] == 4
    assert all(torch.isfinite(v).all() for v in saved["model"].values())
    assert not (tmp_path / "model.safetensors").exists() and not (tmp_path / "config.json").exists()


def test_optimizer_state_round_trips_through_safetensors_and_json(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, betas=(0.9, 0.95))
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    tensors, meta = optimizer_to_tensors(opt.state_dict())
    meta = json.loads(json.dumps(meta))
    back = optimizer_from_tensors(tensors, meta)
    fresh = torch.optim.AdamW(model.parameters(), lr=0.5)
    fresh.load_state_dict(back)
    assert fresh.param_groups[0]["betas"] == (0.9, 0.95) and fresh.param_groups[0]["lr"] == 0.1
    for p in model.parameters():
        for k, v in opt.state[p].items():
            assert torch.equal(v, fresh.state[p][k])


def test_evaluate_writes_reflectance_metrics(tmp_path: Path) -> None:
    ds = FakeTiles(4)
    run_distill(DistillConfig(tiles="memory", train=_train(tmp_path / "run", 3), loss=LossConfig("mse")),
                dataset=ds, loader_factory=shard_loader(ds, 2, seed=0))  # fmt: skip
    config = EvaluateConfig(
        checkpoint=str(tmp_path / "run"), tiles="memory", out=str(tmp_path / "eval")
    )
    batches = [collate([ds[i] for i in range(2)]), collate([ds[i] for i in range(2, 4)])]
    result = evaluate(config, dataset=ds, batches=batches, train_batches=lambda: batches)
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved == result and saved["n_tiles"] == 4
    assert set(saved["baselines"]) == {"train_mean", "visible_mean", "interpolation"}
    for key in ("psnr", "ssim", "sam", "psnr_full", "ssim_full", "sam_full"):
        assert isinstance(saved[key], float) and saved[key] == saved[key]  # finite, not NaN
    assert 0 < saved["sam"] < 90 and saved["ssim"] <= 1
    # The same seed gives the same masks, hence the same numbers.
    again = evaluate(config, dataset=ds, batches=batches, train_batches=lambda: batches)
    assert again["psnr"] == result["psnr"]
    with pytest.raises(ValueError, match="bands"):
        evaluate(config, dataset=FakeTiles(2, bands=5), batches=batches)
