"""Model building blocks: positional tables, presets, masking, official Prithvi layout, losses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hyperkd.model.evaluate.metrics import reconstruction_metrics, tile_metrics
from hyperkd.model.nets.mae import StudentMAE, student_config
from hyperkd.model.nets.masking import Masking, num_masked
from hyperkd.model.nets.pos_embed import interpolate_grid, sincos_2d, sincos_3d
from hyperkd.model.nets.prithvi import (
    PrithviMAE,
    Teacher,
    adapt_pos_table,
    load_prithvi_state_dict,
    teacher_config,
)
from hyperkd.model.train.losses import LossConfig, feature_kld, masked_patch_mse, ssim_map
from hyperkd.model.train.tasks import DistillationTask, TeacherPretrainTask, tokens_to_grid


# --- reference sin-cos tables, transcribed from the numpy originals (terratorch, MAE) ---
def _np_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=float) / (dim / 2.0))
    out = np.einsum("m,d->md", pos.reshape(-1).astype(float), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def _np_3d(dim: int, grid: tuple[int, int, int]) -> np.ndarray:
    t, h, w = grid
    we = np.tile(_np_1d(dim // 16 * 6, np.arange(w)), (t * h, 1))
    he = np.tile(np.repeat(_np_1d(dim // 16 * 6, np.arange(h)), w, axis=0), (t, 1))
    te = np.repeat(_np_1d(dim // 16 * 4, np.arange(t)), h * w, axis=0)
    return np.concatenate([np.zeros((1, dim)), np.concatenate([we, he, te], axis=1)], axis=0)


def _np_2d(dim: int, size: int) -> np.ndarray:
    grid = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32))
    grid = np.stack(grid, axis=0).reshape([2, 1, size, size])
    emb = np.concatenate([_np_1d(dim // 2, grid[0]), _np_1d(dim // 2, grid[1])], axis=1)
    return np.concatenate([np.zeros((1, dim)), emb], axis=0)


def test_sincos_tables_match_the_prithvi_and_mae_references() -> None:
    np.testing.assert_allclose(
        sincos_3d(768, (3, 14, 14)).numpy(), _np_3d(768, (3, 14, 14)), atol=1e-6
    )
    np.testing.assert_allclose(sincos_3d(64, (1, 4, 4)).numpy(), _np_3d(64, (1, 4, 4)), atol=1e-6)
    np.testing.assert_allclose(sincos_2d(64, (4, 4)).numpy(), _np_2d(64, 4), atol=1e-6)
    assert sincos_3d(768, (3, 14, 14)).shape == (589, 768)
    assert torch.all(sincos_3d(32, (1, 2, 2))[0] == 0)  # CLS row


def test_pos_embed_interpolation_resizes_the_grid_and_keeps_cls() -> None:
    stored = sincos_3d(64, (1, 8, 8))[None]  # (1, 65, 64)
    same = interpolate_grid(stored, (1, 8, 8), (8, 8))
    assert torch.equal(same, stored)
    small = interpolate_grid(stored, (1, 8, 8), (4, 4))
    assert small.shape == (1, 17, 64)
    assert torch.equal(small[0, 0], stored[0, 0])
    # align_corners=True: the four corners of the grid survive bicubic resampling exactly.
    grid_in = stored[0, 1:].reshape(8, 8, 64)
    grid_out = small[0, 1:].reshape(4, 4, 64)
    for (i, j), (k, m) in {(0, 0): (0, 0), (0, 7): (0, 3), (7, 0): (3, 0), (7, 7): (3, 3)}.items():
        torch.testing.assert_close(grid_out[k, m], grid_in[i, j], atol=1e-5, rtol=0)
    # An interior point lies between its neighbours, not on any stored row.
    assert not any(torch.allclose(grid_out[1, 1], r, atol=1e-4) for r in stored[0, 1:])
    with pytest.raises(ValueError, match="tokens"):
        interpolate_grid(stored, (1, 4, 4), (2, 2))


def test_adapt_pos_table_recomputes_sincos_and_interpolates_learned_tables() -> None:
    target = sincos_3d(64, (1, 4, 4))[None]
    official = sincos_3d(64, (3, 14, 14))[None]
    assert torch.equal(adapt_pos_table(official, target, frames=3), target)
    learned = official + 0.5 * torch.randn_like(official)
    adapted = adapt_pos_table(learned, target, frames=3)
    assert adapted.shape == target.shape and not torch.allclose(adapted, target)
    expected = interpolate_grid(learned[:, : 1 + 196], (1, 14, 14), (4, 4))
    torch.testing.assert_close(adapted, expected)


def test_the_tiny_decoder_is_sized_by_what_its_head_predicts() -> None:
    """Over all bands it predicts 8*8*218 values per patch; over 16 components 8*8*16."""
    bands = student_config("tiny", img_size=64, patch_size=8, in_chans=218)
    components = student_config("tiny", img_size=64, patch_size=8, in_chans=218, spectral_dim=16)
    assert (bands.decoder_embed_dim, bands.decoder_depth) == (128, 2)
    assert (components.decoder_embed_dim, components.decoder_depth) == (64, 2)
    assert components.embed_dim == bands.embed_dim and components.depth == bands.depth
    small = student_config("small", img_size=64, patch_size=8, in_chans=218, spectral_dim=16)
    assert (small.decoder_embed_dim, small.decoder_depth) == (256, 4)


@pytest.mark.parametrize("preset", ["tiny", "small", "base"])
def test_student_presets_build_with_the_expected_shapes(preset: str) -> None:
    cfg = student_config(preset, img_size=128, patch_size=16, in_chans=218)
    with torch.device("meta"):
        model = StudentMAE(cfg)
    assert model.patch_embed.proj.weight.shape == (cfg.embed_dim, 218, 16, 16)
    assert model.pos_embed.shape == (1, 65, cfg.embed_dim)
    assert len(model.blocks) == cfg.depth and len(model.decoder_blocks) == cfg.decoder_depth
    assert model.decoder_pred.weight.shape == (16 * 16 * 218, cfg.decoder_embed_dim)
    if preset == "base":  # the paper's ViT-B: 12 x 768 x 12 heads, decoder 512 x 8
        assert (cfg.embed_dim, cfg.depth, cfg.num_heads) == (768, 12, 12)
        assert (cfg.decoder_embed_dim, cfg.decoder_depth, cfg.kd_block) == (512, 8, 8)
        assert model.blocks[0].attn.qkv.weight.shape == (2304, 768)


def test_tiny_student_forward_on_32px_tiles_with_8px_patches() -> None:
    torch.manual_seed(0)
    model = StudentMAE(student_config("tiny", img_size=32, patch_size=8, in_chans=13))
    imgs = torch.randn(2, 13, 32, 32)
    patches = model.patchify(imgs)
    assert patches.shape == (2, 16, 8 * 8 * 13)
    assert torch.equal(model.unpatchify(patches), imgs)
    # Channels vary fastest inside a patch vector: the first 13 values are pixel (0, 0).
    assert torch.equal(patches[0, 0, :13], imgs[0, :, 0, 0])
    pm = Masking("random")(2, model.num_patches, generator=torch.Generator().manual_seed(0))
    latent, hidden = model.forward_encoder(imgs, pm, return_block=3)
    assert latent.shape == (2, 1 + 4, 64) and hidden is not None and hidden.shape == (2, 4, 64)
    out = model(imgs, pm)
    assert out["pred"].shape == (2, 16, 8 * 8 * 13) and torch.isfinite(out["loss"])
    with pytest.raises(ValueError, match="13 bands"):
        model.patchify(torch.randn(1, 6, 32, 32))


@pytest.mark.parametrize("preset", ["tiny", "prithvi-eo-1.0-100m", "prithvi-eo-2.0-300m"])
def test_teacher_presets_build_with_the_expected_shapes(preset: str) -> None:
    cfg = teacher_config(preset, img_size=128, patch_size=8)
    with torch.device("meta"):
        model = PrithviMAE(cfg)
    p = cfg.patch_size
    assert model.patch_embed.proj.weight.shape == (cfg.embed_dim, 6, 1, p, p)
    assert model.pos_embed.shape == (1, 1 + (128 // p) ** 2, cfg.embed_dim)
    assert model.decoder_pred.weight.shape == (p * p * 6, cfg.decoder_embed_dim)
    expected = {
        "prithvi-eo-1.0-100m": (768, 12, 16),
        "prithvi-eo-2.0-300m": (1024, 24, 16),
        "tiny": (64, 4, 8),
    }
    assert (cfg.embed_dim, cfg.depth, p) == expected[preset]


def _official_v1_state_dict(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Keys and shapes of Prithvi_EO_V1_100M.pt as listed in method.md §2.3 (T = 3, 224 px)."""
    sd: dict[str, torch.Tensor] = {
        "cls_token": (1, 1, 768),
        "patch_embed.proj.weight": (768, 6, 1, 16, 16),
        "patch_embed.proj.bias": (768,),
        "norm.weight": (768,),
        "norm.bias": (768,),
        "decoder_embed.weight": (512, 768),
        "decoder_embed.bias": (512,),
        "mask_token": (1, 1, 512),
        "decoder_norm.weight": (512,),
        "decoder_norm.bias": (512,),
        "decoder_pred.weight": (1536, 512),
        "decoder_pred.bias": (1536,),
    }
    for prefix, n, d in (("blocks", 12, 768), ("decoder_blocks", 8, 512)):
        for i in range(n):
            for name, shape in {
                "norm1.weight": (d,), "norm1.bias": (d,), "attn.qkv.weight": (3 * d, d),
                "attn.qkv.bias": (3 * d,), "attn.proj.weight": (d, d), "attn.proj.bias": (d,),
                "norm2.weight": (d,), "norm2.bias": (d,), "mlp.fc1.weight": (4 * d, d),
                "mlp.fc1.bias": (4 * d,), "mlp.fc2.weight": (d, 4 * d), "mlp.fc2.bias": (d,),
            }.items():  # fmt: skip
                sd[f"{prefix}.{i}.{name}"] = shape
    out = {k: torch.randn(s, generator=generator) * 0.02 for k, s in sd.items()}
    out["pos_embed"] = sincos_3d(768, (3, 14, 14))[None]
    out["decoder_pos_embed"] = sincos_3d(512, (3, 14, 14))[None]
    return out


def test_official_v1_layout_loads_strictly_with_every_prefix_convention() -> None:
    official = _official_v1_state_dict(torch.Generator().manual_seed(0))
    assert official["pos_embed"].shape == (1, 589, 768)
    model = PrithviMAE(teacher_config("prithvi-eo-1.0-100m", img_size=32))
    assert set(model.state_dict()) == set(official)  # our module *is* the flat layout
    for prefixed in (
        official,
        {f"_timm_module.{k}": v for k, v in official.items()},
        {
            ("decoder." if ("decoder" in k or k == "mask_token") else "encoder.") + k: v
            for k, v in official.items()
        },
    ):
        model.blocks[3].attn.qkv.weight.data.zero_()
        load_prithvi_state_dict(model, prefixed, frames=3)
        assert torch.equal(model.blocks[3].attn.qkv.weight, official["blocks.3.attn.qkv.weight"])
        assert torch.equal(model.decoder_pred.weight, official["decoder_pred.weight"])
        # 32-px tiles: the 3 x 14 x 14 tables are recomputed for the 1 x 2 x 2 grid.
        assert torch.equal(model.pos_embed, sincos_3d(768, (1, 2, 2))[None])
    bad = dict(official)
    bad["blocks.0.mlp.fc1.weight"] = torch.zeros(10, 768)
    with pytest.raises(ValueError, match=r"blocks\.0\.mlp\.fc1\.weight"):
        load_prithvi_state_dict(model, bad)
    del bad["blocks.0.mlp.fc1.weight"]
    with pytest.raises(ValueError, match="missing"):
        load_prithvi_state_dict(model, bad)


def test_teacher_is_frozen_and_returns_block_features() -> None:
    torch.manual_seed(0)
    teacher = Teacher(PrithviMAE(teacher_config("tiny", img_size=32, patch_size=8)))
    teacher.train()
    assert not teacher.training and not teacher.model.training
    assert not any(p.requires_grad for p in teacher.parameters())
    x = torch.randn(2, 6, 32, 32, requires_grad=True)
    feats = teacher.features(x, 2)
    assert feats.shape == (2, 16, 64) and not feats.requires_grad
    assert not torch.equal(feats, teacher.features(x, 3))
    with pytest.raises(ValueError, match="block 9"):
        teacher.features(x, 9)


@pytest.mark.parametrize("ratio", [0.75, 0.5, 0.9])
def test_guided_masking_masks_exactly_the_top_ratio(ratio: float) -> None:
    g = torch.Generator().manual_seed(1)
    significance = torch.rand(3, 8, 8, generator=g)  # distinct scores
    pm = Masking("gabor", ratio)(3, 64, significance=significance)
    n_mask = round(ratio * 64)
    assert num_masked(64, ratio) == n_mask
    for b in range(3):
        top = set(torch.topk(significance[b].flatten(), n_mask).indices.tolist())
        assert set(torch.nonzero(pm.mask[b]).flatten().tolist()) == top
        assert set(pm.ids_keep[b].tolist()).isdisjoint(top)
    # Deterministic: the same tile is masked the same way every time.
    assert torch.equal(pm.mask, Masking("gabor", ratio)(3, 64, significance=significance).mask)


def test_sampled_guided_masking_varies_but_prefers_significant_patches() -> None:
    significance = torch.arange(64.0).reshape(1, 8, 8)  # patch index = significance rank
    masking = Masking("wavelet", 0.5, sample=True, temperature=0.5)
    g = torch.Generator().manual_seed(0)
    masks = torch.stack(
        [masking(1, 64, significance=significance, generator=g).mask[0] for _ in range(200)]
    )
    assert (masks.sum(1) == 32).all()  # exactly r% every draw
    assert len({tuple(m.tolist()) for m in masks}) > 100  # not the same set every epoch
    rate = masks.mean(0)
    assert rate[48:].mean() > 0.9 and rate[:16].mean() < 0.1
    # Random masking ignores significance; guided masking without a map is a clear error.
    with pytest.raises(ValueError, match="significance_wavelet"):
        masking(1, 64)
    with pytest.raises(ValueError, match="unknown masking"):
        Masking("sobel")


def test_random_masking_is_uniform_and_exact() -> None:
    pm = Masking("random", 0.75)(4, 16, generator=torch.Generator().manual_seed(0))
    assert (pm.mask.sum(1) == 12).all() and pm.ids_keep.shape == (4, 4)
    restored = torch.gather(
        torch.cat([pm.ids_keep, torch.zeros(4, 12, dtype=torch.long)], 1), 1, pm.ids_restore
    )
    for b in range(4):  # kept indices land back on their own grid slots
        for k in pm.ids_keep[b].tolist():
            assert restored[b, k] == k


def test_ssim_and_kld_basics() -> None:
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(ssim_map(x, x, 1.0), torch.ones_like(x))
    assert ssim_map(x, torch.rand(2, 3, 16, 16), 1.0).mean() < 0.5
    s = torch.randn(2, 5, 32)
    assert float(feature_kld(s, s, 1.0)) == pytest.approx(0.0, abs=1e-6)
    t = torch.randn(2, 5, 32)
    assert float(feature_kld(s, t, 1.0)) > 0
    # Scale-free: the projection cannot shrink the KLD by scaling its output.
    assert float(feature_kld(10 * s, t, 1.0)) == pytest.approx(
        float(feature_kld(s, t, 1.0)), rel=1e-4
    )
    with pytest.raises(ValueError, match="unknown loss"):
        LossConfig(terms="l1")


def test_masked_mse_ignores_visible_patches_and_invalid_pixels() -> None:
    target = torch.zeros(1, 4, 2 * 2 * 3)
    pred = target.clone()
    pred[0, 0] = 10.0  # a visible patch: must not count
    pred[0, 1, :3] = 2.0  # pixel 0 of a masked patch, all 3 bands
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0]])
    assert float(masked_patch_mse(pred, target, mask)) == pytest.approx(4 * 3 / 12 / 3)
    valid = torch.ones(1, 4, 4, dtype=torch.bool)
    assert float(masked_patch_mse(pred, target, mask, valid)) == pytest.approx(4 / 12)
    valid[0, 1, 0] = False  # the erroneous pixel is nodata
    assert float(masked_patch_mse(pred, target, mask, valid)) == 0.0


def test_metrics_on_reflectance_scale() -> None:
    mean, std = [1000.0, 2000.0, 3000.0], [500.0, 500.0, 1000.0]
    target = torch.randn(2, 3, 16, 16)
    mask_img = torch.zeros(2, 1, 16, 16)
    mask_img[..., :8, :] = 1
    perfect = reconstruction_metrics(target, target, mask_img, None, mean, std)
    assert math.isinf(float(perfect["psnr"][0])) or float(perfect["psnr"][0]) > 100
    torch.testing.assert_close(perfect["ssim"], torch.ones(2))
    assert float(perfect["sam"].abs().max()) < 0.1
    # A reflectance error of exactly 0.01 everywhere gives PSNR 40 dB against the 1.0 peak.
    pred = target + torch.tensor([100.0, 100.0, 100.0]).view(1, 3, 1, 1) / torch.tensor(std).view(
        1, 3, 1, 1
    )
    out = reconstruction_metrics(pred, target, mask_img, None, mean, std)
    torch.testing.assert_close(out["psnr"], torch.full((2,), 40.0), atol=1e-3, rtol=0)
    torch.testing.assert_close(out["psnr_full"], torch.full((2,), 40.0), atol=1e-3, rtol=0)
    # SAM of a scaled spectrum is zero; an orthogonal one is 90 degrees.
    a = torch.zeros(1, 2, 4, 4)
    a[:, 0] = 1
    b = torch.zeros(1, 2, 4, 4)
    b[:, 1] = 1
    ones = torch.ones(1, 1, 4, 4)
    assert float(tile_metrics(a, 2 * a, ones)["sam"][0]) == pytest.approx(0.0, abs=1e-3)
    assert float(tile_metrics(a, b, ones)["sam"][0]) == pytest.approx(90.0)


def test_distillation_compares_teacher_tokens_on_the_student_grid() -> None:
    torch.manual_seed(0)
    tokens = torch.arange(4.0).reshape(1, 4, 1)  # a 2 x 2 teacher grid
    up = tokens_to_grid(tokens, (2, 2), (4, 4))
    assert up.shape == (1, 16, 1) and float(up[0, 0, 0]) == 0.0 and float(up[0, -1, 0]) == 3.0
    student = StudentMAE(student_config("tiny", img_size=32, patch_size=8, in_chans=10))
    teacher = Teacher(
        PrithviMAE(teacher_config("prithvi-eo-1.0-100m", img_size=32))
    )  # 16-px patches
    task = DistillationTask(student, Masking("gabor"), LossConfig(), teacher)
    batch = {
        "student": torch.randn(2, 10, 32, 32),
        "teacher": torch.randn(2, 6, 32, 32),
        "significance_gabor": torch.rand(2, 4, 4),
        "valid": torch.ones(2, 32, 32, dtype=torch.bool),
    }
    out = task(batch, task.make_mask(batch))
    assert set(out) == {"loss", "mse", "ssim", "kld"}
    assert all(torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    assert task.kd_proj is not None and task.kd_proj.weight.grad is not None
    assert not any(k.startswith("teacher.") for k in task.trainable_state_dict())
    assert all(p.grad is None for p in task.teacher.parameters())  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="needs a teacher"):
        DistillationTask(student, Masking("random"), LossConfig("mse+ssim+kld"))


def test_a_task_names_every_batch_field_it_reads() -> None:
    """A cached train split keeps a task's ``batch_fields`` only, so they must be all it reads."""
    torch.manual_seed(0)
    tiny = dict(img_size=32, patch_size=8)
    full = StudentMAE(student_config("tiny", in_chans=10, **tiny))
    component = StudentMAE(
        student_config("tiny", in_chans=10, spectral_dim=3, spectral_basis="fixed", **tiny)
    )
    component.init_spectral_basis(torch.rand(500, 10))
    images = torch.rand(2, 10, 32, 32)
    components, residual = component.project_bands(images)
    sample = {
        "student": images,
        "student_components": components,
        "student_residual": residual,
        "teacher": torch.rand(2, 6, 32, 32),
        "significance_gabor": torch.rand(2, 4, 4),
        "significance_wavelet": torch.rand(2, 4, 4),
        "valid": torch.ones(2, 32, 32, dtype=torch.bool),
        "label_landcover": torch.zeros(2, 32, 32, dtype=torch.int64),
        "tile_id": torch.arange(2),
    }
    teacher = Teacher(PrithviMAE(teacher_config("tiny", **tiny)))
    tasks = {
        ("student", "valid", "significance_gabor", "teacher"): DistillationTask(
            full, Masking("gabor"), LossConfig(), teacher
        ),
        ("student_components", "student_residual", "valid"): DistillationTask(
            component, Masking("random"), LossConfig("mse")
        ),
        ("teacher", "valid"): TeacherPretrainTask(
            PrithviMAE(teacher_config("tiny", **tiny)), Masking("random")
        ),
    }
    for fields, task in tasks.items():
        assert sorted(task.batch_fields) == sorted(fields)
        batch = {k: sample[k] for k in task.batch_fields}
        assert task(batch, task.make_mask(batch))["loss"].isfinite()
        for missing in set(fields) - {"valid"}:  # valid is optional: all pixels count
            partial = {k: v for k, v in batch.items() if k != missing}
            with pytest.raises(KeyError, match=missing):
                task(partial, task.make_mask(partial))


def test_a_student_refuses_tiles_it_was_not_trained_on() -> None:
    from types import SimpleNamespace

    from hyperkd.model.train.runs import check_student_fits

    student = StudentMAE(student_config("tiny", img_size=32, patch_size=8, in_chans=10))
    fits = SimpleNamespace(n_bands=10, tile_size=32, patch_size=8)
    check_student_fits(student, fits, "tiles.zarr")
    for wrong in ({"n_bands": 12}, {"tile_size": 64}, {"patch_size": 16}):
        info = SimpleNamespace(**(vars(fits) | wrong))
        with pytest.raises(ValueError, match="the student was trained on 10, 32 and 8"):
            check_student_fits(student, info, "tiles.zarr")
