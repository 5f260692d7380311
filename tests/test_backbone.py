"""The student as a backbone: forward_features at any size, timm, terratorch's timm path, S3."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import timm
import torch

from hyperkd.model import StudentBackbone, load_student
from hyperkd.model.nets.mae import StudentMAE, student_config
from hyperkd.model.nets.masking import PatchMask
from hyperkd.model.train.checkpoint import save_run

BANDS, SIZE, PATCH = 12, 32, 8


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_run(out: Path, *, seed: int = 0, preset: str = "tiny") -> Path:
    """A student run directory as ``hyperkd train`` leaves it (random weights, real files)."""
    torch.manual_seed(seed)
    config = student_config(preset, img_size=SIZE, patch_size=PATCH, in_chans=BANDS)
    model = StudentMAE(config)
    run = {
        "kind": "student",
        "model": config.to_dict(),
        "run": {"tiles": "../tiles.zarr", "teacher": None},
        "tile_store": {
            "n_bands": BANDS,
            "student_mean": [900.0 + 50 * b for b in range(BANDS)],
            "student_std": [400.0 + 10 * b for b in range(BANDS)],
            "band_wavelength": [420.0 + 150 * b for b in range(BANDS)],
        },
    }
    save_run(out, model.state_dict(), run)
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("student"))


def reflectance(b: int, h: int, w: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.05 + 0.4 * torch.rand(b, BANDS, h, w, generator=g)


def test_forward_features_at_the_trained_size_is_the_unmasked_encoder(run_dir: Path) -> None:
    backbone = load_student(str(run_dir))
    x = reflectance(2, SIZE, SIZE)
    tokens = backbone.forward_features(x)
    assert tokens.shape == (2, (SIZE // PATCH) ** 2, 64)
    # The training path with nothing masked gives the same tokens.
    n = backbone.mae.num_patches
    keep = torch.arange(n).expand(2, n)
    mask = PatchMask(mask=torch.zeros(2, n), ids_keep=keep, ids_restore=keep)
    with torch.no_grad():
        latent, _ = backbone.mae.forward_encoder(backbone.normalise(x), mask)
    torch.testing.assert_close(tokens, latent[:, 1:], rtol=0, atol=1e-6)
    assert backbone(x).shape == tokens.shape  # model(x) works: no patch_mask needed


@pytest.mark.parametrize("hw", [(SIZE, SIZE), (48, 64)])
def test_forward_features_at_two_sizes_and_the_timm_model_agree(
    run_dir: Path, hw: tuple[int, int]
) -> None:
    backbone = load_student(str(run_dir))
    x = reflectance(2, *hw, seed=hw[1])
    tokens = backbone.forward_features(x)
    h, w = hw[0] // PATCH, hw[1] // PATCH
    assert tokens.shape == (2, h * w, 64) and torch.isfinite(tokens).all()
    vit = timm.create_model(
        "hyperkd_student_tiny",
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(run_dir / "model.safetensors")),
    ).eval()
    with torch.no_grad():
        timm_tokens = vit.forward_features(backbone.normalise(x))[:, 1:]  # drop CLS
    torch.testing.assert_close(timm_tokens, tokens, rtol=0, atol=1e-6)
    emb = backbone.embed(x)
    assert emb.patches.shape == (2, 64, h, w)
    torch.testing.assert_close(emb.patches.flatten(2).transpose(1, 2), tokens)
    torch.testing.assert_close(emb.pooled, tokens.mean(1))


def test_timm_model_carries_the_run_normalisation_not_imagenet(run_dir: Path) -> None:
    vit = timm.create_model(
        "hyperkd_student_tiny",
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(run_dir / "model.safetensors")),
    )
    cfg = timm.data.resolve_data_config({}, model=vit)
    assert cfg["input_size"] == (BANDS, SIZE, SIZE)
    assert cfg["mean"][:2] == pytest.approx((0.09, 0.095)) and len(cfg["std"]) == BANDS
    with pytest.raises(ValueError, match="no published weights"):
        timm.create_model("hyperkd_student_tiny", pretrained=True)
    with pytest.raises(ValueError, match="not 'small'"):
        timm.create_model(
            "hyperkd_student_small",
            pretrained=True,
            pretrained_cfg_overlay=dict(file=str(run_dir / "model.safetensors")),
        )


def test_features_only_is_terratorchs_timm_path(run_dir: Path) -> None:
    """terratorch's ``BACKBONE_REGISTRY.build("timm_hyperkd_student_tiny", ...)`` calls exactly
    ``timm.create_model(name, features_only=True, ...)``; terratorch itself does not install
    under constraints.txt (docs/design/0002-student-as-backbone.md)."""
    feats = timm.create_model(
        "hyperkd_student_tiny",
        pretrained=True,
        features_only=True,
        out_indices=(1, 3),
        pretrained_cfg_overlay=dict(file=str(run_dir / "model.safetensors")),
    ).eval()
    backbone = load_student(str(run_dir))
    x = reflectance(1, 48, 48)
    with torch.no_grad():
        maps = feats(backbone.normalise(x))
    assert [tuple(m.shape) for m in maps] == [(1, 64, 6, 6), (1, 64, 6, 6)]
    assert feats.feature_info.channels() == [64, 64]


def test_normalisation_travels_with_the_checkpoint(run_dir: Path) -> None:
    backbone = load_student(str(run_dir))
    x = reflectance(1, SIZE, SIZE)
    x[0, 3, 5, 7] = float("nan")  # nodata in one band: the whole pixel is invalid
    valid = torch.ones(1, SIZE, SIZE, dtype=torch.bool)
    valid[0, 0, 0] = False
    z = backbone.normalise(x, valid)
    assert (z[0, :, 5, 7] == 0).all() and (z[0, :, 0, 0] == 0).all()
    expected = (x[0, 2, 1, 1] * 10000 - 1000.0) / 420.0
    torch.testing.assert_close(z[0, 2, 1, 1], expected)
    with pytest.raises(ValueError, match="not a multiple of patch size"):
        backbone.forward_features(reflectance(1, 30, 32))
    with pytest.raises(ValueError, match=f"expected \\(B, {BANDS}, H, W\\)"):
        backbone.forward_features(torch.zeros(1, 3, SIZE, SIZE))


def test_load_student_from_s3_on_moto(
    run_dir: Path, s3_bucket: str, s3_server: dict[str, str]
) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(
        key=s3_server["key"],
        secret=s3_server["secret"],
        client_kwargs={"endpoint_url": s3_server["endpoint_url"]},
    )
    url = f"{s3_bucket}/runs/student"
    for name in ("config.json", "model.safetensors"):
        fs.put_file(str(run_dir / name), f"{url}/{name}")
    remote = load_student(url, storage_options=s3_server)
    assert isinstance(remote, StudentBackbone)
    x = reflectance(2, SIZE, SIZE)
    torch.testing.assert_close(
        remote.forward_features(x), load_student(str(run_dir)).forward_features(x)
    )
    with pytest.raises(FileNotFoundError, match="no finished run"):
        load_student(f"{s3_bucket}/runs/missing", storage_options=s3_server)
