"""SAM's windowed attention read in place: the ``samsparse::triton_window_attention`` op.

SAM's windowed blocks zero-pad the ``[B, gh, gw, C]`` token grid to a multiple of
the window, cut it into ``[B * nW, ws, ws, C]`` windows, project all of them
(padding included) with qkv, attend inside each window, project back, and undo
the partition. :func:`window_attention` gives the same attention output from q/k/v
of the *unpadded* grid: the kernel (``WIN`` mode of ``_attn_fwd``) gathers each
window's tokens from the grid, uses the qkv bias as the key and value of every
padding token (a zero token projects to exactly the bias), skips padding queries
and writes the output back on the grid. The partition copies and the projections
of the padding tokens (20% more tokens for SAM's 64x64 grid and 14x14 windows) go away.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .configs import TileConfig
from .ops import (
    LOG2E,
    _device_ctx,
    _Geometry,
    _launch,
    _register_attention_op,
    _run_configured,
    _terms_in_program,
    _tracing,
)
from ..base import LAYOUT_SEQUENCE, check_inputs, empty_outputs, resolve_scale

__all__ = ["window_attention", "window_unsupported_reason"]


def window_unsupported_reason(head_dim: int, dtype: torch.dtype, window: int, rel_pos) -> str | None:
    """Why :func:`window_attention` cannot run this case (None when it can).

    With rel-pos the window's terms are computed inside the program, which needs
    SAM's Toeplitz tables on a window of at most 16x16 (SAM uses 14).
    """
    if window < 1:
        return f"window must be >= 1, got {window}"
    if rel_pos is None:
        return None
    if not rel_pos.has_tables or not rel_pos.toeplitz:
        return "windows in place need the rel-pos tables from RelPos.from_tables (not precomputed terms)"
    if tuple(rel_pos.q_grid) != (window, window) or tuple(rel_pos.k_grid) != (window, window):
        return f"rel-pos grids {rel_pos.q_grid}/{rel_pos.k_grid} are not the {window}x{window} window"
    if not _terms_in_program(LAYOUT_SEQUENCE, 0, False, (window, window), (window, window), head_dim, dtype):
        return f"{window}x{window} windows are too large for the in-program rel-pos terms (at most 16x16)"
    return None


def _window_impl(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_fill: torch.Tensor,
    v_fill: torch.Tensor,
    rh: Optional[torch.Tensor],
    rw: Optional[torch.Tensor],
    scale: float,
    grid_h: int,
    grid_w: int,
    window: int,
    block_m: int,
    block_n: int,
    num_warps: int,
    num_stages: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    b, h, n, d = q.shape
    out, lse = empty_outputs(q)
    if n == 0:
        return out, lse
    # the kernel reads a padding token's row from the fill with K's / V's d-stride: make all of them 1
    k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (k, v))
    k_fill, v_fill = k_fill.contiguous(), v_fill.contiguous()
    n_win = math.ceil(grid_h / window) * math.ceil(grid_w / window)
    has_rel = rh is not None
    geo = _Geometry(
        batch=b * n_win, heads=h, kv_heads=k.shape[1], nq=window * window, nk=window * window, head_dim=d,
        dtype=q.dtype, masked=False, layout=LAYOUT_SEQUENCE, block_q=0, block_k=0, num_q_blocks=0,
        num_k_blocks=0, tile_grid=(1, 1), tile=(1, 1), has_rel=has_rel,
        rel_k_grid=(window, window) if has_rel else (1, 1), rel_tables=has_rel,
        window=(window, math.ceil(grid_w / window), n_win, grid_h, grid_w),
    )
    strides = (q.stride(), k.stride(), v.stride(), out.stride(), lse.stride())
    scale2 = float(scale) * LOG2E
    with _device_ctx(q):

        def run(cfg: TileConfig) -> None:
            _launch(geo, cfg, q, k, v, out, lse, *strides, None, None, None, None, None, None, None, scale2,
                    rh, rw, k_fill, v_fill)

        _run_configured(geo, q.device, run, block_m, block_n, num_warps, num_stages)
    return out, lse


# Op form of :func:`_window_impl` (block_m <= 0: autotuned config); the fake gives the outputs' shapes.
_triton_window_op = _register_attention_op("triton_window_attention", _window_impl)


def _check(q, k, v, k_fill, v_fill, grid: tuple[int, int], window: int) -> None:
    """The common q/k/v checks, then what windows in place add: one grid, the fills, the window."""
    check_inputs(q, k, v, None, None)
    n = q.shape[2]
    if n != grid[0] * grid[1]:
        raise ValueError(f"q has {n} tokens but the grid {grid[0]}x{grid[1]} has {grid[0] * grid[1]}")
    if k.shape[2] != n:
        raise ValueError(f"k, v must cover the same {n} grid tokens as q, got {k.shape[2]}")
    want = (k.shape[1], q.shape[3])
    if tuple(k_fill.shape) != want or tuple(v_fill.shape) != want:
        raise ValueError(f"k_fill / v_fill must be [Hkv, D] = {want}, got {tuple(k_fill.shape)} / {tuple(v_fill.shape)}")
    for name, t in (("k_fill", k_fill), ("v_fill", v_fill)):
        if t.dtype != q.dtype or t.device != q.device:
            raise TypeError(f"{name} is {t.dtype} on {t.device}, q is {q.dtype} on {q.device}: use one dtype and device")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")


def window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_fill: torch.Tensor,
    v_fill: torch.Tensor,
    rel_pos,
    scale: float | None,
    grid: tuple[int, int],
    window: int,
    config: TileConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's windowed attention on the unpadded token grid.

    Args:
        q: [B, H, N, D] with N = grid[0] * grid[1] (tokens row-major); k, v: [B, Hkv, N, D];
            any strides (views of the qkv projection of the unpadded grid).
        k_fill, v_fill: [Hkv, D], the key / value of a padding token (the k / v parts of the
            qkv bias, zeros without a bias).
        rel_pos: None, or a ``RelPos`` from the tables for the ``window`` x ``window`` grid.
        scale: softmax scale (default D ** -0.5).
        grid: (gh, gw), the token grid; it is padded to a multiple of ``window`` as SAM does.
        window: window size (SAM: 14).
        config: force a tile config (skips autotuning).

    Returns:
        out [B, H, N, D] in q's dtype (memory layout [B, N, H, D]) and the natural-log LSE,
        float32 [B, H, N]: for every grid token, attention over the keys of its window.
    """
    _check(q, k, v, k_fill, v_fill, tuple(grid), int(window))
    reason = window_unsupported_reason(q.shape[-1], q.dtype, int(window), rel_pos)
    if reason is not None:
        raise ValueError(reason)
    scale = resolve_scale(q, scale)
    rh = rw = None
    if rel_pos is not None:
        rh, rw = rel_pos.rh.to(q.device), rel_pos.rw.to(q.device)
    c = config or TileConfig(0, 0, 0, 0)
    fn = torch.ops.samsparse.triton_window_attention if _tracing() else _window_impl
    return fn(
        q, k, v, k_fill, v_fill, rh, rw, scale, int(grid[0]), int(grid[1]), int(window),
        c.block_m, c.block_n, c.num_warps, c.num_stages,
    )
