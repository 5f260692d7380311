"""Controls for HyperKD's claims: a randomly initialised teacher, and guided masks that change
across epochs with a temperature between random and deterministic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _model_fakes import FakeTiles, shard_loader

from hyperkd.model.nets.masking import Masking, top_r_overlap
from hyperkd.model.train.config import DistillConfig, OptimConfig, TrainConfig
from hyperkd.model.train.losses import LossConfig
from hyperkd.model.train.runs import load_teacher, run_distill


def test_random_teacher_is_seeded_untrained_and_frozen() -> None:
    a = load_teacher("random:tiny", img_size=32, patch_size=8, seed=3)
    b = load_teacher("random:tiny", img_size=32, patch_size=8, seed=3)
    c = load_teacher("random:tiny", img_size=32, patch_size=8, seed=4)
    w = "blocks.0.attn.qkv.weight"
    assert torch.equal(a.model.state_dict()[w], b.model.state_dict()[w])
    assert not torch.equal(a.model.state_dict()[w], c.model.state_dict()[w])
    assert a.config.patch_size == 8 and not any(p.requires_grad for p in a.parameters())
    assert a.features(torch.randn(2, 6, 32, 32)).shape == (2, 16, a.embed_dim)
    with pytest.raises(ValueError, match="unknown teacher preset"):
        load_teacher("random:nope", img_size=32, patch_size=8)


def test_student_distils_from_a_random_teacher(tmp_path: Path) -> None:
    ds = FakeTiles(4)
    config = DistillConfig(
        tiles="memory",
        train=TrainConfig(
            out=str(tmp_path / "run"),
            steps=3,
            batch_size=2,
            log_every=1,
            checkpoint_every=100,
            progress=False,
            device="cpu",
            optim=OptimConfig(lr=1e-3),
        ),
        teacher="random:tiny",
        masking=Masking("gabor", sample=True),
        loss=LossConfig("mse+ssim+kld"),
    )
    run_distill(config, dataset=ds, loader_factory=shard_loader(ds, 2, seed=0))
    log = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert len(log) == 3 and all(r["kld"] > 0 for r in log)
    run = json.loads((tmp_path / "run" / "config.json").read_text())
    assert run["run"]["teacher"] == "random:tiny" and run["teacher"]["preset"] == "tiny"


def _significance(n: int = 16, grid: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, grid, grid, generator=g) * 3 + 1  # top ~3x the bottom, like the demo


def test_sampled_guided_masks_change_across_epochs_deterministic_ones_do_not() -> None:
    sig = _significance()
    gen = torch.Generator().manual_seed(0)
    sampled = Masking("gabor", 0.75, sample=True, temperature=1.0)
    first = sampled(16, 64, significance=sig, generator=gen).mask
    second = sampled(16, 64, significance=sig, generator=gen).mask  # the next epoch's draw
    assert (first != second).any(dim=1).float().mean() > 0.9  # nearly every tile changes
    top = Masking("gabor", 0.75)
    assert torch.equal(
        top(16, 64, significance=sig, generator=gen).mask,
        top(16, 64, significance=sig, generator=gen).mask,
    )


def test_temperature_spans_random_to_deterministic() -> None:
    sig = _significance()
    gen = torch.Generator().manual_seed(1)
    overlap = {
        t: top_r_overlap(Masking("gabor", 0.75, sample=True, temperature=t), sig, generator=gen)
        for t in (0.01, 0.3, 1.0, 100.0)
    }
    assert overlap[0.01] == pytest.approx(1.0, abs=0.01)
    assert overlap[0.01] > overlap[0.3] > overlap[1.0] > overlap[100.0]
    assert overlap[100.0] == pytest.approx(0.75, abs=0.03)
    assert top_r_overlap(Masking("random", 0.75), sig, generator=gen) == pytest.approx(
        0.75, abs=0.03
    )
    assert top_r_overlap(Masking("gabor", 0.75), sig) == 1.0
