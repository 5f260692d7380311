"""A fixed spectral basis (``spectral_basis="fixed"``): the loss on k components is the band-space
MSE, exactly; the basis stays frozen; the train split is cached at k + 1 channels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _model_fakes import FakeTiles, shard_loader
from bench_helpers import benchmark_ratios
from safetensors.torch import load_file
from tile_helpers import labelled_store

from hyperkd.cli import main
from hyperkd.model.data.dataset import TileDataset
from hyperkd.model.data.memory import MemoryTiles, fits_in_memory, tile_bytes
from hyperkd.model.nets.mae import StudentMAE, student_config
from hyperkd.model.nets.masking import Masking
from hyperkd.model.train.config import DistillConfig, TrainConfig
from hyperkd.model.train.distributed import setup_distributed
from hyperkd.model.train.losses import LossConfig, feature_kld, masked_patch_mse
from hyperkd.model.train.runs import load_teacher, run_distill
from hyperkd.model.train.split import cache_train_split, component_cache, train_pixels
from hyperkd.model.train.tasks import DistillationTask, valid_patches

BANDS, SIZE, PATCH, K = 12, 32, 8, 3


def _student(basis: str = "fixed", seed: int = 0) -> StudentMAE:
    torch.manual_seed(seed)
    student = StudentMAE(
        student_config(
            "tiny", img_size=SIZE, patch_size=PATCH, in_chans=BANDS, spectral_dim=K,
            spectral_basis=basis,
        )
    )  # fmt: skip
    g = torch.Generator().manual_seed(1)
    student.init_spectral_basis(torch.randn(2000, BANDS, generator=g))  # full rank: residuals
    return student


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return {
        "student": torch.randn(3, BANDS, SIZE, SIZE, generator=g),
        "valid": torch.rand(3, SIZE, SIZE, generator=g) > 0.3,
    }


def test_the_component_loss_is_the_band_space_mse_with_its_gradients() -> None:
    student = _student()
    task = DistillationTask(student, Masking("random"), LossConfig("mse"))
    assert task.component_loss
    batch = _batch()
    patch_mask = task.make_mask(batch, torch.Generator().manual_seed(0))
    components, residual = student.project_bands(batch["student"])
    assert components.shape == (3, K, SIZE, SIZE) and residual.shape == (3, SIZE, SIZE)
    assert float(residual.mean()) > 1.0  # 12 random bands do not fit in 3 components

    # The reference: MAE's band-space MSE on the full (B, L, P*P*C) prediction.
    latent, _ = student.forward_encoder(batch["student"], patch_mask)
    pred = student.forward_decoder(latent, patch_mask.ids_restore)
    valid = valid_patches(batch["valid"], PATCH)
    reference = masked_patch_mse(pred, student.patchify(batch["student"]), patch_mask.mask, valid)
    reference.backward()
    expected_grad = student.decoder_pred.weight.grad.clone()
    student.zero_grad()

    projected = {"student_components": components, "student_residual": residual}
    for form in (batch, projected | {"valid": batch["valid"]}):
        loss = task(form, patch_mask)["loss"]
        torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)
        loss.backward()
        torch.testing.assert_close(
            student.decoder_pred.weight.grad, expected_grad, rtol=1e-4, atol=1e-7
        )
        student.zero_grad()


def test_distillation_without_ssim_keeps_the_component_loss() -> None:
    """``mse+kld``: the component MSE plus the KLD equals the band-space MSE plus the same KLD
    (the teacher sees its own six bands, the student's block-k tokens are unchanged)."""
    student = _student()
    teacher = load_teacher("random:tiny", img_size=SIZE, patch_size=PATCH, seed=3)
    task = DistillationTask(student, Masking("random"), LossConfig("mse+kld"), teacher)
    assert task.component_loss
    batch = _batch() | {"teacher": torch.randn(3, 6, SIZE, SIZE)}
    patch_mask = task.make_mask(batch, torch.Generator().manual_seed(0))
    out = task(batch, patch_mask)
    latent, hidden = student.forward_encoder(
        batch["student"], patch_mask, return_block=student.config.kd_block
    )
    pred = student.forward_decoder(latent, patch_mask.ids_restore)
    valid = valid_patches(batch["valid"], PATCH)
    mse = masked_patch_mse(pred, student.patchify(batch["student"]), patch_mask.mask, valid)
    student_kd, teacher_kd = task._kd_tokens(batch["teacher"], hidden, patch_mask)
    kld = feature_kld(student_kd, teacher_kd, 1.0)
    assert float(kld) > 0
    torch.testing.assert_close(out["kld"], kld.detach())
    torch.testing.assert_close(out["loss"], mse + kld, rtol=1e-5, atol=1e-6)


def test_ssim_losses_and_learned_bases_stay_in_band_space() -> None:
    assert not DistillationTask(
        _student(), Masking("random"), LossConfig("mse+ssim")
    ).component_loss
    learned = _student("learned")
    assert not DistillationTask(learned, Masking("random"), LossConfig("mse")).component_loss
    with pytest.raises(ValueError, match="spectral_basis='fixed'"):
        learned.project_bands(_batch()["student"])
    with pytest.raises(ValueError, match="unknown spectral basis"):
        StudentMAE(
            student_config("tiny", img_size=SIZE, patch_size=PATCH, in_chans=BANDS,
                           spectral_dim=K, spectral_basis="pca")
        )  # fmt: skip
    train = TrainConfig(out="x", steps=1)
    with pytest.raises(ValueError, match="needs spectral_dim"):
        DistillConfig(tiles="t", train=train, spectral_basis="fixed")


def test_training_leaves_the_fixed_basis_at_the_principal_components(tmp_path: Path) -> None:
    ds = FakeTiles(4, bands=BANDS)
    run = tmp_path / "run"
    config = DistillConfig(
        tiles="memory",
        train=TrainConfig(out=str(run), steps=3, batch_size=2, log_every=1, checkpoint_every=100, progress=False),
        masking=Masking("random"),
        loss=LossConfig("mse"),
        spectral_dim=K,
        spectral_basis="fixed",
    )  # fmt: skip
    run_distill(config, dataset=ds, loader_factory=shard_loader(ds, 2, seed=0))
    state = load_file(run / "model.safetensors")
    start = _student()
    start.init_spectral_basis(train_pixels(ds))
    for name in ("spectral_embed.weight", "spectral_embed.bias", "spectral_pred.weight"):
        torch.testing.assert_close(state[name], start.state_dict()[name], rtol=0, atol=0)
    assert not torch.equal(state["decoder_pred.weight"], start.state_dict()["decoder_pred.weight"])
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["spectral_basis"] == "fixed"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    return labelled_store(tmp_path_factory.mktemp("basis"))


def test_the_cache_holds_components_and_residuals_not_bands(store: str, tmp_path: Path) -> None:
    dataset = TileDataset(store, split="train")
    info = dataset.info
    student = StudentMAE(
        student_config("tiny", img_size=info.tile_size, patch_size=info.patch_size,
                       in_chans=info.n_bands, spectral_dim=K, spectral_basis="fixed")
    )  # fmt: skip
    student.init_spectral_basis(train_pixels(dataset))
    task = DistillationTask(student, Masking("random"), LossConfig("mse"))
    config = DistillConfig(
        tiles=store, train=TrainConfig(out=str(tmp_path / "r"), steps=1), spectral_dim=K,
        spectral_basis="fixed",
    )  # fmt: skip
    cached, factory = cache_train_split(
        config, setup_distributed("cpu"), dataset, None, fields=task.batch_fields,
        **component_cache(task),
    )  # fmt: skip
    assert isinstance(cached, MemoryTiles) and factory is not None
    # Only what the task reads is kept and batched: no bands, labels, teacher or maps.
    assert set(cached.tiles) == {"student_components", "student_residual", "valid"}
    assert cached.tiles["student_components"].shape[1:] == (K, info.tile_size, info.tile_size)
    components, residual = student.project_bands(dataset[0]["student"][None])
    torch.testing.assert_close(cached[0]["student_components"], components[0])
    torch.testing.assert_close(cached[0]["student_residual"], residual[0])
    batch = next(iter(factory(0)))
    assert task(batch, task.make_mask(batch))["loss"].isfinite()
    # The cache budget counts k + 1 channels, so a split too big at C bands can still fit.
    per_tile = tile_bytes(info, student_channels=K + 1)
    assert per_tile < tile_bytes(info)
    kept = tile_bytes(info, student_channels=K + 1, fields=task.batch_fields)
    t = info.tile_size
    assert kept == 4 * (K + 1) * t * t + t * t  # components + residual, and the valid mask
    budget = len(dataset) * per_tile
    assert fits_in_memory(dataset, budget, student_channels=K + 1)
    assert not fits_in_memory(dataset, budget)


def test_cli_trains_a_fixed_basis_and_refuses_one_without_components(
    store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "student"
    base = ["train", "--tiles", store, "--steps", "2", "--batch-size", "2", "--loss", "mse",
            "--masking", "random", "--device", "cpu"]  # fmt: skip
    assert main([*base, "--out", str(out), "--spectral-dim", "4", "--spectral-basis", "fixed"]) == 0
    assert json.loads((out / "config.json").read_text())["model"]["spectral_basis"] == "fixed"
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "x"), "--spectral-basis", "fixed"]) == 2
    err = capsys.readouterr().err.strip()
    assert "spectral_dim" in err and "\n" not in err
    assert not (tmp_path / "x").exists()


def test_the_benchmark_runs_and_prints_its_ratios() -> None:
    args = ["--batches", "2", "4", "--tiles", "4", "--tile", "32", "--bands", "40", "--rank", "4",
            "--steps", "1", "--repeats", "1"]  # fmt: skip
    ratios = benchmark_ratios("spectral_basis.py", args)
    assert set(ratios) == {"b2/fixed_vs_learned", "b4/fixed_vs_learned",
                           "b4_fixed_per_sample_vs_b2_learned"}  # fmt: skip
    assert all(v > 0 for v in ratios.values())


@pytest.mark.slow
def test_the_compiled_component_step_equals_the_eager_one() -> None:
    """``--compile`` (the default on CUDA) traces the component loss with its gradients."""
    student = _student()
    task = DistillationTask(student, Masking("random"), LossConfig("mse"))
    components, residual = student.project_bands(_batch()["student"])
    batch = {"student_components": components, "student_residual": residual}
    mask = task.make_mask(batch, torch.Generator().manual_seed(0))
    eager = task(batch, mask)["loss"]
    compiled = torch.compile(task)(batch, mask)["loss"]
    assert compiled.requires_grad
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
    weight = student.decoder_pred.weight
    (grad_eager,) = torch.autograd.grad(eager, weight)
    (grad_compiled,) = torch.autograd.grad(compiled, weight)
    torch.testing.assert_close(grad_compiled, grad_eager, rtol=1e-3, atol=1e-6)
