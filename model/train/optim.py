"""The trainer's optimizers: AdamW (MAE's recipe), or Muon on the hidden matrices with AdamW on the rest.

Muon (Jordan et al. 2024, ``torch.optim.Muon``) replaces each hidden weight matrix's momentum by
its nearest semi-orthogonal matrix (a Newton-Schulz iteration) before the step, so every
direction of the matrix moves at the same rate. Its update is scaled by ``0.2 sqrt(max(A, B))``
for an ``A x B`` matrix, which matches AdamW's update RMS (Liu et al. 2025, "Muon is scalable
for LLM training"; torch's ``adjust_lr_fn="match_rms_adamw"``), so the learning rate, schedule
and weight decay tuned for AdamW carry over unchanged.

"Hidden" means the 2-D weights inside the transformer blocks (attention and MLP) and the
encoder-to-decoder projection. The patch embedding, the output heads, norms, biases, tokens
and any other parameter stay with AdamW, as Muon's authors prescribe.

:class:`Muon` is torch's algorithm with one batched Newton-Schulz per matrix shape instead of
one per matrix: a tiny ViT's 25 matrices fall into 4 shapes, and on 2 CPU cores torch's loop
took about 13 ms per step against about 3 ms (``benchmarks/optimizers.py``). It runs the
iteration in float32 on the CPU (faster there than bfloat16, and closer) and in bfloat16 on
CUDA, as torch does everywhere.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from hyperkd.model.train.config import OptimConfig

# Quintic Newton-Schulz coefficients of Keller Jordan's Muon (torch.optim.Muon's defaults).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5


def orthogonalise(
    updates: torch.Tensor,
    steps: int = NS_STEPS,
    eps: float = 1e-7,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Approximate ``U V^T`` of each matrix ``U S V^T`` in ``updates`` (n, A, B), batched.

    The quintic iteration pushes every singular value into about [0.7, 1.2] rather than exactly
    1, which Muon's authors found costs nothing. Returns (n, A, B) in ``updates``' dtype;
    ``dtype`` is the iteration's (default: bfloat16 on CUDA, float32 elsewhere).
    """
    a, b, c = NS_COEFFICIENTS
    if dtype is None:
        dtype = torch.bfloat16 if updates.is_cuda else torch.float32
    x = updates.to(dtype)
    wide = x.size(-2) <= x.size(-1)
    if not wide:
        x = x.mT  # (n, B, A): iterate on the short side's Gram matrix
    # Frobenius norm >= spectral norm, so every singular value starts in [0, 1].
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.mT  # (n, short, short)
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b G + c G^2
        x = torch.baddbmm(x, poly, x, beta=a)  # a X + (b G + c G^2) X
    if not wide:
        x = x.mT
    return x.to(updates.dtype)


class Muon(torch.optim.Optimizer):
    """Momentum orthogonalised by Newton-Schulz, for 2-D parameters only.

    The same update as ``torch.optim.Muon(..., nesterov=True, adjust_lr_fn="match_rms_adamw")``:
    ``buf = momentum * buf + (1 - momentum) * grad``, ``u = orthogonalise(grad + momentum *
    (buf - grad))``, ``p *= 1 - lr * weight_decay``, ``p -= lr * 0.2 * sqrt(max(A, B)) * u``.
    Its state is one ``momentum_buffer`` per parameter.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float,
        weight_decay: float = 0.0,
        momentum: float = 0.95,
    ) -> None:
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "momentum": momentum})
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Muon takes 2-D parameters only, got shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        if closure is not None:
            raise ValueError("Muon takes no closure")
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            lr, momentum = group["lr"], group["momentum"]
            grads = [p.grad for p in params]
            for p in params:
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p)
            bufs = [self.state[p]["momentum_buffer"] for p in params]
            torch._foreach_lerp_(bufs, grads, 1 - momentum)
            updates = torch._foreach_lerp(grads, bufs, momentum)  # Nesterov
            if group["weight_decay"]:
                torch._foreach_mul_(params, 1 - lr * group["weight_decay"])
            by_shape: dict[torch.Size, list[int]] = defaultdict(list)
            for i, p in enumerate(params):
                by_shape[p.shape].append(i)
            for shape, index in by_shape.items():
                ortho = orthogonalise(torch.stack([updates[i] for i in index]))  # (n, A, B)
                scale = lr * 0.2 * math.sqrt(max(shape))
                torch._foreach_add_([params[i] for i in index], list(ortho.unbind(0)), alpha=-scale)


def hidden_matrices(module: nn.Module) -> list[str]:
    """Names of ``module``'s trainable hidden matrices: the 2-D weights inside its transformer
    blocks and its encoder-to-decoder projection (what Muon steps)."""
    return [
        name
        for name, p in module.named_parameters()
        if p.requires_grad
        and p.ndim == 2
        and ("blocks." in name or name.endswith("decoder_embed.weight"))
    ]


def param_groups(
    module: nn.Module, weight_decay: float, exclude: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """Weight decay on matrices only; biases, norms and tokens are exempt (MAE/timm).

    Parameters named in ``exclude`` (those another optimizer steps) are left out.
    """
    skip = set(exclude)
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad or name in skip:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") or "token" in name else decay).append(p)
    return [
        {"params": no_decay, "weight_decay": 0.0},
        {"params": decay, "weight_decay": weight_decay},
    ]


class MuonAdamW:
    """Muon on the hidden matrices and AdamW on the rest, stepped as one optimizer.

    ``param_groups`` lists AdamW's groups, then Muon's (the loop sets the lr on all of them).
    ``state_dict`` has torch's layout, AdamW's parameters numbered first, each group tagged with
    its ``optimizer``, so checkpoints store it like a single optimizer's.
    """

    def __init__(self, adamw: torch.optim.AdamW, muon: Muon) -> None:
        self.parts = {"adamw": adamw, "muon": muon}

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for part in self.parts.values() for g in part.param_groups]

    def step(self) -> None:
        for part in self.parts.values():
            part.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts.values():
            part.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        state: dict[int, Any] = {}
        groups: list[dict[str, Any]] = []
        offset = 0
        for kind, part in self.parts.items():
            saved = part.state_dict()
            state.update({index + offset: entry for index, entry in saved["state"].items()})
            for g in saved["param_groups"]:
                groups.append(dict(g, params=[i + offset for i in g["params"]], optimizer=kind))
            offset += sum(len(g["params"]) for g in saved["param_groups"])
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        offset = 0
        for kind, part in self.parts.items():
            groups = [g for g in saved["param_groups"] if g.get("optimizer") == kind]
            if len(groups) != len(part.param_groups):
                raise ValueError(
                    f"checkpoint has {len(groups)} {kind} groups, expected {len(part.param_groups)}"
                )
            count = sum(len(g["params"]) for g in groups)
            own = {
                int(i) - offset: entry
                for i, entry in saved["state"].items()
                if offset <= int(i) < offset + count
            }
            part.load_state_dict(
                {
                    "state": own,
                    "param_groups": [
                        {k: v for k, v in g.items() if k != "optimizer"}
                        | {"params": [i - offset for i in g["params"]]}
                        for g in groups
                    ],
                }
            )
            offset += count


def build_optimizer(
    module: nn.Module, config: OptimConfig, lr: float, device: torch.device
) -> torch.optim.AdamW | MuonAdamW:
    """``config.optimizer`` over ``module``'s trainable parameters, at learning rate ``lr``."""
    # The fused kernel updates every parameter in one pass instead of looping over them:
    # 1.1x the tiny teacher's whole CPU step, 1.05x the demo student's
    # (benchmarks/RESULTS.md); it is also torch's fastest path on CUDA.
    fused = device.type in ("cpu", "cuda")
    hidden = hidden_matrices(module) if config.optimizer == "muon" else []
    adamw = torch.optim.AdamW(
        param_groups(module, config.weight_decay, exclude=hidden),
        lr=lr,
        betas=config.betas,
        fused=fused,
    )
    if config.optimizer == "adamw":
        return adamw
    named = dict(module.named_parameters())
    muon = Muon([named[n] for n in hidden], lr=lr, weight_decay=config.weight_decay)
    return MuonAdamW(adamw, muon)
