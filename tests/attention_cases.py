"""Shared attention test cases for the kernel backends (Triton now, CUDA later).

A case is a small frozen record; :func:`make_inputs` turns it into
``q, k, v, mask, rel_pos`` on a device, and :func:`check` compares a backend's
``(out, lse)`` with the float64 reference, with a tolerance relative to
PyTorch's own low-precision error for the same math (SAM's eager attention
computed in the low dtype): ``err <= 2 * err_torch_lowp + atol``.

``INTERPRETER_CASES`` are small enough for ``TRITON_INTERPRET=1`` on a CPU;
``GPU_CASES`` is the full grid (shapes of SAM included) for ``@pytest.mark.gpu``.
This module imports only torch and samsparse (no pytest), so a worker
subprocess can use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from samsparse.masks import BlockMask
from samsparse.relpos import RelPos

__all__ = ["Case", "GPU_CASES", "INTERPRETER_CASES", "check", "make_inputs", "partitioned_windows", "torch_lowp_error"]

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Case:
    """One attention call.

    mask: "none" (dense, no mask), "full" (all-ones BlockMask), "random"
        (random blocks per batch/head, diagonal kept), "broadcast" (one mask for
        the batch), "empty" (random with empty query rows, allow_empty_rows),
        "tiles" (random tiles-layout mask; ``tile`` gives (th, tw)).
    rel: "none", "tables" (gathered tables; the kernel computes the terms) or "terms".
    strided: q, k, v are views of one qkv projection ([B, N, 3, H, D] permuted).
    config: forced (block_m, block_n) tile config, or None for the default/autotune.
    """

    b: int
    h: int
    hkv: int
    grid: tuple[int, int]
    d: int
    dtype: str = "fp32"
    mask: str = "none"
    block: int = 16
    tile: tuple[int, int] = (4, 4)
    rel: str = "tables"
    strided: bool = False
    config: tuple[int, int] | None = None
    seed: int = 0
    density: float = 0.5
    tags: tuple[str, ...] = field(default_factory=tuple)

    @property
    def n(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def id(self) -> str:
        parts = [
            f"b{self.b}h{self.h}" + (f"kv{self.hkv}" if self.hkv != self.h else ""),
            f"{self.grid[0]}x{self.grid[1]}",
            f"d{self.d}",
            self.dtype,
            self.mask + (f"{self.tile[0]}x{self.tile[1]}" if self.mask == "tiles" else f"{self.block}" if self.mask != "none" else ""),
            f"rel-{self.rel}",
        ]
        if self.strided:
            parts.append("strided")
        if self.config:
            parts.append(f"cfg{self.config[0]}x{self.config[1]}")
        if self.density != 0.5:
            parts.append(f"p{self.density}")
        return "-".join(parts)


def _random_blocks(g: torch.Generator, bb: int, hh: int, m: int, p: float) -> torch.Tensor:
    blocks = torch.rand(bb, hh, m, m, generator=g) < p
    return blocks | torch.eye(m, dtype=torch.bool)


def make_inputs(case: Case, device: torch.device | str = "cpu"):
    """q, k, v, mask, rel_pos for ``case`` (inputs drawn on the CPU, then moved)."""
    g = torch.Generator().manual_seed(case.seed)
    dtype = DTYPES[case.dtype]
    b, h, hkv, n, d = case.b, case.h, case.hkv, case.n, case.d
    if case.strided:
        # q from one projection with H heads, k/v with Hkv heads: [B, N, H + 2*Hkv, D]
        qkv = torch.randn(b, n, h + 2 * hkv, d, generator=g).to(dtype).to(device)
        q = qkv[:, :, :h].transpose(1, 2)
        k = qkv[:, :, h : h + hkv].transpose(1, 2)
        v = qkv[:, :, h + hkv :].transpose(1, 2)
    else:
        q = torch.randn(b, h, n, d, generator=g).to(dtype).to(device)
        k = torch.randn(b, hkv, n, d, generator=g).to(dtype).to(device)
        v = torch.randn(b, hkv, n, d, generator=g).to(dtype).to(device)
    mask = None
    m = math.ceil(n / case.block)
    if case.mask == "full":
        mask = BlockMask.full(n, case.block, device=device)
    elif case.mask == "random":
        mask = BlockMask(_random_blocks(g, b, h, m, case.density), case.block, n)
    elif case.mask == "broadcast":
        mask = BlockMask(_random_blocks(g, 1, h, m, case.density), case.block, n)
    elif case.mask == "empty":
        blocks = _random_blocks(g, b, 1, m, case.density)
        blocks[:, :, min(1, m - 1)] = False
        mask = BlockMask(blocks, case.block, n, allow_empty_rows=True)
    elif case.mask == "tiles":
        th, tw = case.tile
        mt = math.ceil(case.grid[0] / th) * math.ceil(case.grid[1] / tw)
        mask = BlockMask(_random_blocks(g, 1, h, mt, case.density), None, None, layout="tiles", grid=case.grid, tile=(th, tw))
    elif case.mask != "none":
        raise ValueError(f"unknown mask kind {case.mask!r}")
    if mask is not None:
        mask = mask.to(device)
    rel_pos = None
    if case.rel != "none":
        gh, gw = case.grid
        # SAM-like magnitudes: rel_pos tables are small learned vectors
        tab_h = (0.5 * torch.randn(2 * gh - 1, d, generator=g)).to(dtype).to(device)
        tab_w = (0.5 * torch.randn(2 * gw - 1, d, generator=g)).to(dtype).to(device)
        rel_pos = RelPos.from_tables(tab_h, tab_w, case.grid)
        if case.rel == "terms":
            rel_h, rel_w = rel_pos.terms(q)
            rel_pos = RelPos(case.grid, case.grid, rel_h=rel_h, rel_w=rel_w)
        elif case.rel != "tables":
            raise ValueError(f"unknown rel kind {case.rel!r}")
    return q, k, v, mask, rel_pos


def _fresh_rel(rel_pos: RelPos | None) -> RelPos | None:
    """A copy that does not share the terms cache (RelPos.terms caches on the object)."""
    if rel_pos is None:
        return None
    return RelPos(rel_pos.q_grid, rel_pos.k_grid, rel_pos.rh, rel_pos.rw, rel_pos.rel_h, rel_pos.rel_w)


def torch_lowp_error(q, k, v, mask, rel_pos, ref: torch.Tensor, ref_lse: torch.Tensor | None = None,
                     scale: float | None = None) -> tuple[float, float]:
    """Max abs errors (output, LSE) of SAM's eager attention computed in q's dtype vs the reference."""
    from samsparse.backends.base import expand_kv

    if q.dtype == torch.float32:
        return 0.0, 0.0
    heads = q.shape[1]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    kk, vv = expand_kv(k, heads), expand_kv(v, heads)
    scores = (q * scale) @ kk.transpose(-2, -1)
    if rel_pos is not None:
        scores = scores + _fresh_rel(rel_pos).bias(q)
    if mask is not None:
        scores = scores.masked_fill(~mask.to_token_mask(q.device), float("-inf"))
    probs = scores.float().softmax(-1).to(q.dtype)  # SAM: softmax of a low-precision tensor
    probs = torch.nan_to_num(probs, nan=0.0)
    out = probs @ vv
    err = float((out.double() - ref.double()).abs().max())
    lse_err = 0.0
    if ref_lse is not None:
        lse = torch.logsumexp(scores.float(), -1)
        fin = torch.isfinite(ref_lse)
        if fin.any():
            lse_err = float((lse[fin].double() - ref_lse[fin].double()).abs().max())
    return err, lse_err


def check(case: Case, q, k, v, mask, rel_pos, out, lse) -> dict:
    """Compare a backend's (out, lse) with the float64 reference; returns a result dict."""
    from samsparse.backends.reference import reference_attention

    ref, ref_lse = reference_attention(q, k, v, mask, _fresh_rel(rel_pos), return_lse=True)
    res: dict = {"case": case.id}
    problems = []
    if tuple(out.shape) != tuple(q.shape) or out.dtype != q.dtype:
        problems.append(f"output {tuple(out.shape)} {out.dtype}, want {tuple(q.shape)} {q.dtype}")
    err = float((out.double() - ref.double()).abs().max())
    if q.dtype == torch.float32:
        tol = 1e-4
        err_torch = lse_err_torch = 0.0
    else:
        err_torch, lse_err_torch = torch_lowp_error(q, k, v, mask, rel_pos, ref, ref_lse)
        tol = 2 * err_torch + (2e-3 if q.dtype == torch.float16 else 1e-2)
    res.update(err=err, err_torch=err_torch, tol=tol)
    if not err <= tol:
        problems.append(f"max abs err {err:.3e} > tol {tol:.3e} (torch low-precision err {err_torch:.3e})")
    fin_ref = torch.isfinite(ref_lse)
    fin = torch.isfinite(lse)
    if not torch.equal(fin_ref.cpu(), fin.cpu()):
        problems.append("LSE finite pattern differs from the reference")
    elif fin_ref.any():
        lse_err = float((lse[fin_ref].double() - ref_lse[fin_ref].double()).abs().max())
        lse_tol = 1e-4 if q.dtype == torch.float32 else 2 * lse_err_torch + 1e-2
        res["lse_err"] = lse_err
        if not lse_err <= lse_tol:
            problems.append(f"LSE max abs err {lse_err:.3e} > {lse_tol:.1e}")
    if (~fin_ref).any():
        if not torch.isneginf(lse[~fin_ref]).all():
            problems.append("empty rows must have LSE -inf")
        rows = (~fin_ref).unsqueeze(-1).expand_as(out)
        if not (out[rows] == 0).all():
            problems.append("empty rows must have output 0")
    res["ok"] = not problems
    res["problems"] = problems
    return res


# ---------------------------------------------------------------------------- interpreter grid
def _interp_cases() -> list[Case]:
    c = []
    # sizes that are not block multiples, both layouts, dense and random masks
    for grid in ((5, 7), (8, 8), (10, 10)):
        c.append(Case(1, 2, 2, grid, 32, mask="none", rel="tables"))
        c.append(Case(2, 2, 2, grid, 32, mask="random", block=16, rel="tables", seed=1))
    c.append(Case(1, 2, 2, (8, 8), 32, mask="random", block=32, rel="terms", seed=2))
    c.append(Case(2, 2, 2, (10, 10), 32, mask="full", block=32, rel="none"))
    c.append(Case(2, 2, 2, (5, 7), 32, mask="empty", block=16, rel="tables", seed=3))
    c.append(Case(1, 2, 2, (8, 8), 32, mask="broadcast", block=16, rel="none", seed=4))
    # tiles layout on a 7x9 grid (edge tiles partial), 4x4 and 3x5 tiles
    c.append(Case(2, 2, 2, (7, 9), 32, mask="tiles", tile=(4, 4), rel="tables", seed=5))
    c.append(Case(1, 2, 2, (7, 9), 64, mask="tiles", tile=(3, 5), rel="terms", seed=6))
    c.append(Case(1, 2, 2, (8, 12), 32, mask="tiles", tile=(4, 8), rel="tables", seed=7, config=(16, 16)))
    c.append(Case(1, 2, 2, (6, 8), 32, mask="tiles", tile=(2, 8), rel="tables", seed=8))  # full-width tiles
    # key-row mode (rel-pos, grid width >= 32, key block = whole rows)
    c.append(Case(1, 2, 2, (3, 32), 32, mask="none", rel="tables", seed=9))
    c.append(Case(1, 2, 2, (4, 32), 32, mask="random", block=64, rel="tables", seed=10))
    c.append(Case(1, 2, 2, (3, 48), 32, mask="random", block=48, rel="terms", seed=11))  # padded rows
    c.append(Case(1, 2, 2, (5, 32), 32, mask="random", block=64, rel="tables", seed=12))  # last block partial
    # two key rows per step (config BLOCK_N = 2 * grid width)
    c.append(Case(1, 2, 2, (3, 32), 32, mask="none", rel="tables", config=(32, 64), seed=26))
    c.append(Case(1, 2, 2, (5, 32), 32, mask="random", block=64, rel="terms", config=(32, 64), seed=27))
    c.append(Case(1, 2, 2, (4, 32), 32, "fp16", mask="random", block=128, rel="tables", config=(16, 64), seed=28))
    # tile-local one-hot bias (tiles layout on a grid too big for the whole-grid one-hots)
    c.append(Case(1, 2, 2, (20, 18), 32, mask="tiles", tile=(4, 8), rel="tables", seed=35))
    c.append(Case(1, 2, 2, (18, 20), 32, "fp16", mask="tiles", tile=(8, 16), rel="terms", seed=36))
    c.append(Case(1, 2, 2, (18, 20), 32, mask="tiles", tile=(8, 16), rel="tables", config=(16, 32), seed=37))
    # gathered bias (grid too wide for the one-hot products, too narrow for key rows)
    c.append(Case(1, 2, 2, (6, 20), 32, mask="random", block=16, rel="tables", seed=29))
    c.append(Case(1, 2, 2, (6, 20), 32, mask="none", rel="terms", seed=30))
    # split query blocks / several steps per key block
    c.append(Case(1, 2, 2, (8, 8), 32, mask="random", block=32, rel="tables", config=(16, 16), seed=13))
    c.append(Case(1, 2, 2, (10, 10), 32, mask="random", block=24, rel="none", config=(16, 16), seed=14))
    # head dims (80 = 64 + 16 split), GQA / MQA, strided views of a qkv projection
    c.append(Case(1, 2, 2, (5, 7), 80, mask="random", block=16, rel="tables", seed=15))
    c.append(Case(1, 2, 2, (8, 8), 64, mask="none", rel="terms", seed=16))
    c.append(Case(1, 4, 2, (5, 7), 32, mask="random", block=16, rel="tables", seed=17))
    c.append(Case(1, 4, 1, (8, 8), 32, mask="broadcast", block=16, rel="none", seed=18))
    c.append(Case(2, 2, 2, (5, 7), 32, mask="random", block=16, rel="tables", strided=True, seed=19))
    c.append(Case(1, 4, 2, (4, 32), 32, mask="none", rel="tables", strided=True, seed=20))
    # half precision
    c.append(Case(1, 2, 2, (8, 8), 32, "fp16", mask="random", block=16, rel="tables", seed=21))
    c.append(Case(1, 2, 2, (7, 9), 80, "fp16", mask="tiles", tile=(3, 5), rel="tables", seed=22))
    c.append(Case(1, 2, 2, (4, 32), 64, "fp16", mask="none", rel="tables", seed=23))
    c.append(Case(1, 2, 2, (5, 7), 32, "bf16", mask="empty", block=16, rel="terms", seed=24))
    c.append(Case(1, 2, 2, (4, 32), 32, "bf16", mask="random", block=64, rel="tables", seed=25))
    # the fixed-offset pass (dense key-row mode, bf16) with a split head dim (80 = 64 + 16)
    c.append(Case(1, 2, 2, (3, 32), 80, "bf16", mask="none", rel="tables", strided=True, seed=38))
    return c


INTERPRETER_CASES: list[Case] = _interp_cases()


# ---------------------------------------------------------------------------- GPU grid
def _gpu_cases() -> list[Case]:
    c = []
    for dtype in ("fp16", "bf16", "fp32"):
        for d in (32, 64, 80, 128, 256):
            c.append(Case(2, 4, 4, (10, 10), d, dtype, mask="random", block=32, rel="tables", seed=d))
            c.append(Case(2, 4, 4, (14, 14), d, dtype, mask="none", rel="tables", seed=d + 1))  # SAM window
    for dtype in ("fp16", "bf16"):
        for mask, block in (("none", 128), ("full", 128), ("random", 128), ("broadcast", 64), ("empty", 128)):
            for rel in ("tables", "terms", "none"):
                c.append(Case(2, 3, 3, (32, 32), 64, dtype, mask=mask, block=block, rel=rel, seed=block))
        for tile in ((8, 16), (4, 4), (3, 5), (16, 16)):
            c.append(Case(1, 4, 4, (32, 32), 64, dtype, mask="tiles", tile=tile, rel="tables", seed=tile[0]))
        c.append(Case(1, 4, 4, (30, 33), 80, dtype, mask="tiles", tile=(8, 16), rel="tables", seed=31))
        # SAM windows as the encoder calls them (many windows, strided q/k/v), gathered-bias grid
        c.append(Case(50, 12, 12, (14, 14), 64, dtype, mask="none", rel="tables", strided=True, seed=32))
        c.append(Case(2, 4, 4, (14, 14), 64, dtype, mask="random", block=49, rel="terms", seed=33))
        c.append(Case(2, 4, 4, (12, 24), 64, dtype, mask="none", rel="tables", seed=34))
        # SAM global attention shapes (64x64 grid)
        c.append(Case(1, 12, 12, (64, 64), 64, dtype, mask="none", rel="tables", strided=True, seed=40))
        c.append(Case(1, 16, 16, (64, 64), 80, dtype, mask="random", block=128, rel="tables", strided=True, seed=41, density=0.25))
        c.append(Case(1, 16, 16, (64, 64), 80, dtype, mask="none", rel="tables", strided=True, seed=43))  # vit_h dense
        c.append(Case(1, 4, 4, (64, 64), 64, dtype, mask="tiles", tile=(8, 16), rel="terms", seed=42, density=0.25))
        # GQA / MQA, odd sizes, forced configs (split query blocks, several key steps)
        c.append(Case(2, 8, 2, (17, 19), 64, dtype, mask="random", block=64, rel="tables", seed=50))
        c.append(Case(2, 8, 1, (17, 19), 128, dtype, mask="none", rel="none", seed=51))
        c.append(Case(2, 4, 4, (16, 64), 64, dtype, mask="random", block=256, rel="tables", config=(64, 64), seed=52))
        c.append(Case(2, 4, 4, (12, 40), 64, dtype, mask="random", block=120, rel="tables", seed=53))
        c.append(Case(2, 4, 4, (20, 20), 64, dtype, mask="random", block=100, rel="none", config=(64, 64), seed=54))
    return c


GPU_CASES: list[Case] = _gpu_cases()


def with_dtype(case: Case, dtype: str) -> Case:
    return replace(case, dtype=dtype)


def partitioned_windows(q, k, v, k_fill, v_fill, grid, window):
    """q/k/v [B, H, N, D] of a grid -> the [B * nW, H, window^2, D] windows SAM attends over
    (padding tokens: query 0, key / value the fill [Hkv, D]); also returns the padded grid."""

    def part(t, fill):
        b, h, _, d = t.shape
        x = t.reshape(b, h, grid[0], grid[1], d)
        ph, pw = -grid[0] % window, -grid[1] % window
        x = F.pad(x, (0, 0, 0, pw, 0, ph))
        if fill is not None:
            real = F.pad(torch.ones(grid, dtype=torch.bool, device=t.device), (0, pw, 0, ph))
            x = torch.where(real[None, None, :, :, None], x, fill.to(x.dtype)[None, :, None, None, :])
        hp, wp = grid[0] + ph, grid[1] + pw
        x = x.reshape(b, h, hp // window, window, wp // window, window, d).permute(0, 2, 4, 1, 3, 5, 6)
        return x.reshape(-1, h, window * window, d), (hp, wp)

    (qw, padded), (kw, _), (vw, _) = part(q, None), part(k, k_fill), part(v, v_fill)
    return qw, kw, vw, padded
