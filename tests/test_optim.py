"""The trainer's optimizers: Muon against torch's, which parameters it steps, its checkpoint state."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from hyperkd.model.nets.mae import StudentMAE, student_config
from hyperkd.model.train.checkpoint import optimizer_from_tensors, optimizer_to_tensors
from hyperkd.model.train.config import OptimConfig
from hyperkd.model.train.optim import (
    Muon,
    MuonAdamW,
    build_optimizer,
    hidden_matrices,
    orthogonalise,
)

SHAPES = [(48, 16), (16, 16), (16, 16), (16, 64)]


def _params(seed: int = 0) -> list[nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(s, generator=g) * 0.1) for s in SHAPES]


def _grads(step: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(s, generator=g) for s in SHAPES]


@pytest.mark.parametrize("shape", [(5, 48, 16), (3, 16, 64), (2, 16, 16)])
def test_orthogonalise_leaves_singular_vectors_and_flattens_the_values(
    shape: tuple[int, int, int],
) -> None:
    g = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    out = orthogonalise(g)
    assert out.shape == g.shape and out.dtype == g.dtype
    # The quintic iteration lands every singular value near 1, not exactly on it.
    s = torch.linalg.svdvals(out)
    assert s.min() > 0.5 and s.max() < 1.3, (s.min(), s.max())
    # Its direction is U V^T's, the exact orthogonalisation.
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    exact = u @ vh
    cosine = (out * exact).sum(dim=(-2, -1)) / (out.norm(dim=(-2, -1)) * exact.norm(dim=(-2, -1)))
    assert cosine.min() > 0.95, cosine


def test_orthogonalise_matches_torchs_newton_schulz_per_matrix() -> None:
    from torch.optim._muon import _zeropower_via_newtonschulz

    g = torch.randn(4, 48, 16, generator=torch.Generator().manual_seed(2))
    ours = orthogonalise(g, dtype=torch.bfloat16)
    for i in range(len(g)):
        theirs = _zeropower_via_newtonschulz(g[i], (3.4445, -4.775, 2.0315), 5, 1e-7).float()
        torch.testing.assert_close(ours[i], theirs, atol=2e-2, rtol=0)


def test_muon_steps_like_torchs_muon() -> None:
    """Three steps with weight decay: our batched Muon against ``torch.optim.Muon``."""
    ours_p, theirs_p, start = _params(), _params(), _params()
    ours = Muon(ours_p, lr=0.02, weight_decay=0.05)
    theirs = torch.optim.Muon(theirs_p, lr=0.02, weight_decay=0.05, adjust_lr_fn="match_rms_adamw")
    for step in range(3):
        for ps, opt in ((ours_p, ours), (theirs_p, theirs)):
            for p, grad in zip(ps, _grads(step), strict=True):
                p.grad = grad.clone()
            opt.step()
    for a, b, p0 in zip(ours_p, theirs_p, start, strict=True):
        moved = (b - p0).norm()
        assert moved > 0.01
        # torch runs the iteration in bfloat16, ours in float32 on the CPU: about 1 % apart.
        assert (a - b).norm() / moved < 0.03, ((a - b).norm() / moved, a.shape)
    assert set(ours.state[ours_p[0]]) == {"momentum_buffer"}


def test_muon_refuses_what_is_not_a_matrix() -> None:
    with pytest.raises(ValueError, match="2-D"):
        Muon([nn.Parameter(torch.zeros(3))], lr=0.1)


def _student() -> StudentMAE:
    return StudentMAE(student_config("tiny", img_size=32, patch_size=8, in_chans=12))


def test_muon_takes_the_blocks_matrices_and_adamw_everything_else() -> None:
    model = _student()
    hidden = set(hidden_matrices(model))
    assert hidden and all(("blocks." in n or "decoder_embed" in n) for n in hidden)
    assert not any("patch_embed" in n or "decoder_pred" in n for n in hidden)
    opt = build_optimizer(model, OptimConfig(optimizer="muon"), 1e-3, torch.device("cpu"))
    assert isinstance(opt, MuonAdamW)
    by_id = {id(p): n for n, p in model.named_parameters()}
    muon = {by_id[id(p)] for g in opt.parts["muon"].param_groups for p in g["params"]}
    adamw = {by_id[id(p)] for g in opt.parts["adamw"].param_groups for p in g["params"]}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert muon == hidden and not (muon & adamw) and muon | adamw == trainable
    plain = build_optimizer(model, OptimConfig(), 1e-3, torch.device("cpu"))
    assert isinstance(plain, torch.optim.AdamW)
    with pytest.raises(ValueError, match="unknown optimizer"):
        OptimConfig(optimizer="sgd")


def _step(model: StudentMAE, opt: MuonAdamW, seed: int) -> None:
    x = torch.randn(2, 12, 32, 32, generator=torch.Generator().manual_seed(seed))
    model.forward_features(x).square().mean().backward()
    opt.step()
    opt.zero_grad()


def test_muon_adamw_state_survives_a_checkpoint_bit_for_bit() -> None:
    """Two steps, a save through safetensors + JSON and a reload, then two more: the same
    weights as four uninterrupted steps."""
    torch.manual_seed(0)
    straight = _student()
    resumed = _student()
    resumed.load_state_dict(straight.state_dict())
    config = OptimConfig(optimizer="muon", weight_decay=0.05)
    opt = build_optimizer(straight, config, 1e-3, torch.device("cpu"))
    for seed in range(4):
        _step(straight, opt, seed)  # type: ignore[arg-type]

    first = build_optimizer(resumed, config, 1e-3, torch.device("cpu"))
    for seed in range(2):
        _step(resumed, first, seed)  # type: ignore[arg-type]
    tensors, meta = optimizer_to_tensors(first.state_dict())
    back = optimizer_from_tensors(tensors, json.loads(json.dumps(meta)))
    second = build_optimizer(resumed, config, 1e-3, torch.device("cpu"))
    second.load_state_dict(back)
    for seed in range(2, 4):
        _step(resumed, second, seed)  # type: ignore[arg-type]
    for (name, a), b in zip(
        straight.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
