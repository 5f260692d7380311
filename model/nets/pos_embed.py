"""Fixed sin-cos positional embeddings, exactly as Prithvi and MAE build them.

Prithvi (IBM/terratorch ``prithvi_mae.py``, identical in the HF ``Prithvi.py``) uses a 3-D table
over the token grid ``(t, h, w)``: the embedding width ``D`` is split ``w : h : t = 6/16 : 6/16 :
4/16``, each part a 1-D table with ``omega_i = 1 / 10000^(2i / D')`` (first half sin, second half
cos), concatenated as ``[w | h | t]``, tokens ordered ``(t, h, w)`` and the CLS row all zeros.

The student MAE uses MAE's 2-D table (facebookresearch/mae ``util/pos_embed.py``): half the
width for each grid axis, ``[h | w]`` after MAE's meshgrid quirk, CLS row zeros.

Tables are float32 tensors of shape ``(1 + n_tokens, D)`` (with CLS) on the CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """1-D sin-cos table: ``positions`` (M,) -> (M, dim), first half sin, second half cos."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding width must be even, got {dim}")
    # float64 like the numpy reference, so tables match it to the last float32 bit.
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega  # (dim/2,)
    angle = positions.reshape(-1).to(torch.float64)[:, None] * omega[None, :]  # (M, dim/2)
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=1)  # (M, dim)


def sincos_3d(dim: int, grid: tuple[int, int, int], *, cls_token: bool = True) -> torch.Tensor:
    """Prithvi's 3-D table for a token grid ``(t, h, w)``: (``cls`` + t*h*w, dim), float32.

    Rows are ordered ``(t, h, w)`` like the Conv3d patch embedding flattens its output.
    """
    if dim % 16:
        raise ValueError(f"3-D sin-cos embedding width must be a multiple of 16, got {dim}")
    t, h, w = grid
    w_dim, h_dim, t_dim = dim // 16 * 6, dim // 16 * 6, dim // 16 * 4
    w_table = sincos_1d(w_dim, torch.arange(w)).repeat(t * h, 1)  # (t*h*w, w_dim)
    h_table = sincos_1d(h_dim, torch.arange(h)).repeat_interleave(w, dim=0).repeat(t, 1)
    t_table = sincos_1d(t_dim, torch.arange(t)).repeat_interleave(h * w, dim=0)
    table = torch.cat([w_table, h_table, t_table], dim=1)  # (t*h*w, dim)
    if cls_token:
        table = torch.cat([torch.zeros(1, dim, dtype=table.dtype), table], dim=0)
    return table.float()


def sincos_2d(dim: int, grid: tuple[int, int], *, cls_token: bool = True) -> torch.Tensor:
    """MAE's 2-D table for a token grid ``(h, w)``: (``cls`` + h*w, dim), float32, rows (h, w)."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding width must be a multiple of 4, got {dim}")
    h, w = grid
    # MAE builds meshgrid(w, h), so its first half encodes the column (w) index and the second
    # half the row (h) index; kept as is so an MAE-initialised table is reproduced exactly.
    rows = torch.arange(h).repeat_interleave(w)  # (h*w,) row index of each token
    cols = torch.arange(w).repeat(h)  # (h*w,) column index of each token
    table = torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], dim=1)
    if cls_token:
        table = torch.cat([torch.zeros(1, dim, dtype=table.dtype), table], dim=0)
    return table.float()


def infer_grid(n_tokens: int, frames: int = 1) -> tuple[int, int, int]:
    """The square token grid ``(t, h, w)`` of a table with ``n_tokens`` rows after CLS."""
    per_frame, rest = divmod(n_tokens, frames)
    side = round(per_frame**0.5)
    if rest or side * side != per_frame:
        raise ValueError(f"cannot read {n_tokens} tokens as {frames} frame(s) of a square grid")
    return frames, side, side


def interpolate_grid(
    table: torch.Tensor, grid: tuple[int, int, int], new_hw: tuple[int, int]
) -> torch.Tensor:
    """Resize a stored table's spatial grid bicubically (terratorch ``interpolate_pos_encoding``).

    Args:
        table: (1 + t*h*w, D) or (1, 1 + t*h*w, D), CLS row first, rows ordered (t, h, w).
        grid: the stored grid ``(t, h, w)``.
        new_hw: the new spatial grid ``(h', w')``; the frame count is kept.

    Returns:
        (1 + t*h'*w', D) with the same leading batch axis as ``table`` if it had one.
    """
    batched = table.dim() == 3
    rows = table[0] if batched else table  # (1 + t*h*w, D)
    t, h, w = grid
    if rows.shape[0] != 1 + t * h * w:
        raise ValueError(f"table has {rows.shape[0] - 1} tokens, grid {grid} needs {t * h * w}")
    cls_row, tokens = rows[:1], rows[1:]
    dim = tokens.shape[1]
    if (h, w) == tuple(new_hw):
        out = rows
    else:
        maps = tokens.reshape(t, h, w, dim).permute(0, 3, 1, 2)  # (t, D, h, w)
        maps = F.interpolate(maps.float(), size=tuple(new_hw), mode="bicubic", align_corners=True)
        tokens = maps.permute(0, 2, 3, 1).reshape(-1, dim)  # (t*h'*w', D)
        out = torch.cat([cls_row.float(), tokens], dim=0)
    return out[None] if batched else out
