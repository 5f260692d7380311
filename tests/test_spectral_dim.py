"""The student's spectral factorisation (``spectral_dim``): PCA start, folding, training, loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from _model_fakes import FakeTiles, shard_loader

import hyperkd.model.nets.timm_student  # noqa: F401  (registers hyperkd_student_*)
from hyperkd.model.nets.backbone import load_student
from hyperkd.model.nets.mae import StudentMAE, fold_spectral_embed, student_config
from hyperkd.model.nets.masking import Masking
from hyperkd.model.train.config import DistillConfig, TrainConfig
from hyperkd.model.train.losses import LossConfig
from hyperkd.model.train.runs import run_distill

BANDS, SIZE, PATCH = 12, 32, 8


def _low_rank_pixels(n: int = 500, rank: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, rank, generator=g) @ torch.randn(rank, BANDS, generator=g) + 0.5


def test_pca_start_round_trips_spectra_of_that_rank() -> None:
    student = StudentMAE(
        student_config("tiny", img_size=SIZE, patch_size=PATCH, in_chans=BANDS, spectral_dim=3)
    )
    pixels = _low_rank_pixels()
    student.init_spectral_basis(pixels)
    imgs = pixels[:480].T.reshape(1, BANDS, 16, 30)  # (1, C, H, W)
    with torch.no_grad():
        components = student.embed_bands(imgs)  # (1, 3, H, W)
        back = student.spectral_pred(components.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    assert components.shape == (1, 3, 16, 30)
    torch.testing.assert_close(back, imgs, atol=1e-4, rtol=1e-4)


def test_forward_shapes_and_refusals() -> None:
    student = StudentMAE(
        student_config("tiny", img_size=SIZE, patch_size=PATCH, in_chans=BANDS, spectral_dim=4)
    )
    imgs = torch.randn(2, BANDS, SIZE, SIZE)
    out = student(
        imgs, Masking("random")(2, student.num_patches, generator=torch.Generator().manual_seed(0))
    )
    assert out["pred"].shape == (2, 16, PATCH * PATCH * BANDS) and torch.isfinite(out["loss"])
    assert student.forward_features(imgs).shape == (2, 16, student.config.embed_dim)
    with pytest.raises(ValueError, match="spectral_dim 12"):
        student_config("tiny", img_size=SIZE, patch_size=PATCH, in_chans=BANDS, spectral_dim=BANDS)
    with pytest.raises(ValueError, match="spectral_dim > 0"):
        StudentMAE(
            student_config("tiny", img_size=SIZE, patch_size=PATCH, in_chans=BANDS)
        ).init_spectral_basis(_low_rank_pixels())


def test_folded_embedding_gives_a_plain_vit_the_same_tokens() -> None:
    factorised = StudentMAE(
        student_config("tiny", img_size=SIZE, patch_size=PATCH, in_chans=BANDS, spectral_dim=4)
    ).eval()
    factorised.init_spectral_basis(_low_rank_pixels(rank=6))
    encoder = {
        k: v for k, v in factorised.state_dict().items() if not k.startswith(("decoder", "mask_"))
    }
    folded = fold_spectral_embed(encoder)
    assert (
        folded["patch_embed.proj.weight"].shape[1] == BANDS
        and "spectral_embed.weight" not in folded
    )
    plain = StudentMAE(
        student_config("tiny", img_size=SIZE, patch_size=PATCH, in_chans=BANDS)
    ).eval()
    missing, unexpected = plain.load_state_dict(folded, strict=False)
    assert not unexpected and all(k.startswith(("decoder", "mask_")) for k in missing)
    imgs = torch.randn(2, BANDS, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(
            plain.forward_features(imgs), factorised.forward_features(imgs), atol=1e-5, rtol=1e-5
        )
    assert fold_spectral_embed(plain.state_dict()) is not None  # plain students pass through


def test_trained_factorised_student_loads_in_the_library_and_in_timm(tmp_path: Path) -> None:
    ds = FakeTiles(4, bands=BANDS)
    run = tmp_path / "run"
    config = DistillConfig(
        tiles="memory",
        train=TrainConfig(out=str(run), steps=2, batch_size=2, log_every=1, checkpoint_every=100, progress=False),
        masking=Masking("random"),
        loss=LossConfig("mse"),
        spectral_dim=3,
    )  # fmt: skip
    run_distill(config, dataset=ds, loader_factory=shard_loader(ds, 2, seed=0))
    backbone = load_student(str(run))
    assert backbone.config.spectral_dim == 3
    x = torch.randn(1, BANDS, SIZE, SIZE)
    vit = timm.create_model(
        "hyperkd_student_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(run / "model.safetensors"))
    ).eval()  # fmt: skip
    with torch.no_grad():
        ours = backbone.forward_features(x)
        theirs = vit.forward_features(backbone.normalise(x))[:, 1:, :]  # drop CLS
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)
