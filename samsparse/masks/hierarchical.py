"""Multi-scale masks: each group of heads sees the image at its own scale (``tiles`` layout).

Heads are split into ``G`` groups. Groups ``0 .. G-2`` read local neighbourhoods
of growing radius (group 0 the finest). The last, coarsest group reads the finest
neighbourhood plus a dilated global lattice: key tile rows ``dr`` and columns
``dc`` away from the query tile with ``dr = ph (mod sh)`` and ``dc = pw (mod sw)``,
so every query tile sees tiles across the whole image at stride ``(sh, sw)``. The
phases ``(ph, pw)`` are drawn per head from ``seed``, so the coarse heads look at
different lattices. The radii and strides are chosen to bring the overall density
(tokens, averaged over heads) as close to ``density`` as the tile grid allows.

Every pattern depends only on the tile offset ``(dr, dc)``, through a rule on
``dr`` and a rule on ``dc``; densities are therefore products of 1-D sums over
offsets, computed exactly (edge tiles included) without building ``M x M`` masks.

The scheme needs a few tiles per side to mean anything: on a grid of one or two
tiles (a 14x14 window with an 8x16 tile) every head is nearly dense, and the
closest achievable density is used (with a logged warning).
"""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass

import torch

from .block_mask import BlockMask
from .local import _check_grid_tile, _check_heads, tile_coords, tile_extents, tile_grid, tiles_mask

__all__ = ["hierarchical", "HeadScale", "hierarchical_plan"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeadScale:
    """What one head of a :func:`hierarchical` mask reads.

    group: head group (0 = finest). radius: (rh, rw) local radius in tiles.
    stride: (sh, sw) dilated global lattice, or None (local only).
    phase: (ph, pw) offset of the lattice, 0 <= ph < sh, 0 <= pw < sw.
    """

    group: int
    radius: tuple[int, int]
    stride: tuple[int, int] | None = None
    phase: tuple[int, int] = (0, 0)


def _autocorrelation(sizes: torch.Tensor) -> torch.Tensor:
    """A[d + n - 1] = sum_i sizes[i] * sizes[i + d] for d in (-n, n): token pairs at tile offset d."""
    n = sizes.numel()
    out = torch.zeros(2 * n - 1, dtype=torch.float64)
    for d in range(-(n - 1), n):
        a = sizes[max(0, -d) : n - max(0, d)]
        b = sizes[max(0, d) : n - max(0, -d)]
        out[d + n - 1] = (a * b).sum()
    return out


def _group_sizes(num_heads: int, num_groups: int) -> list[int]:
    base, extra = divmod(num_heads, num_groups)
    return [base + (1 if g < extra else 0) for g in range(num_groups)]


def hierarchical_plan(
    grid: tuple[int, int] = (64, 64),
    tile: tuple[int, int] = (8, 16),
    num_heads: int = 12,
    density: float = 0.25,
    num_groups: int | None = None,
    seed: int = 0,
) -> list[HeadScale]:
    """The per-head scales :func:`hierarchical` uses (same arguments); one :class:`HeadScale` per head."""
    grid, tile = _check_grid_tile(grid, tile)
    num_heads = _check_heads(num_heads)
    if isinstance(density, bool) or not isinstance(density, (int, float)) or not 0.0 < density <= 1.0:
        raise ValueError(f"density must be a number in (0, 1], got {density!r}")
    if num_groups is None:
        num_groups = min(num_heads, 3)
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or not 1 <= num_groups <= num_heads:
        raise ValueError(f"num_groups must be an int in [1, num_heads={num_heads}], got {num_groups!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")

    nth, ntw = tile_grid(grid, tile)
    hs, ws = tile_extents(grid, tile)
    # every pattern is a product of a rule on the tile-row offset dr and one on the column
    # offset dc, so its density is a product of 1-D sums: wr[dr] = share of token-row pairs
    # at tile-row offset dr (sums to 1 over dr), likewise wc.
    wr = _autocorrelation(hs) / float(grid[0]) ** 2  # [2nth-1], dr = -(nth-1) .. nth-1
    wc = _autocorrelation(ws) / float(grid[1]) ** 2
    dr = torch.arange(-(nth - 1), nth)
    dc = torch.arange(-(ntw - 1), ntw)
    # band sums: local row part for radius rh = sum_{|dr| <= rh} wr
    band_r = torch.stack([wr[dr.abs() <= r].sum() for r in range(nth)])  # [nth]
    band_c = torch.stack([wc[dc.abs() <= r].sum() for r in range(ntw)])  # [ntw]

    # local candidates, sparsest first; equal densities keep the rounder radius first
    local_all = (band_r[:, None] * band_c[None, :]).tolist()
    radii = sorted(
        ((rh, rw) for rh in range(nth) for rw in range(ntw)),
        key=lambda r: (round(local_all[r[0]][r[1]], 12), abs(r[0] * tile[0] - r[1] * tile[1]), r),
    )
    local_d = [local_all[r[0]][r[1]] for r in radii]
    sizes = _group_sizes(num_heads, num_groups)
    n_coarse = sizes[-1]
    # lattice phases from the seed: uniforms scaled by each stride, so they exist for any stride
    gen = torch.Generator(device="cpu").manual_seed(seed)
    uniforms = torch.rand(n_coarse, 2, generator=gen, dtype=torch.float64)
    sh = torch.arange(1, nth + 1)  # candidate strides
    sw = torch.arange(1, ntw + 1)
    ph = (uniforms[None, :, 0] * sh[:, None]).long()  # [nth, Hc] phase per stride and head
    pw = (uniforms[None, :, 1] * sw[:, None]).long()  # [ntw, Hc]
    on_r = (dr[None, None, :] - ph[..., None]) % sh[:, None, None] == 0  # [nth, Hc, 2nth-1]
    on_c = (dc[None, None, :] - pw[..., None]) % sw[:, None, None] == 0  # [ntw, Hc, 2ntw-1]
    lat_r = (on_r * wr).sum(-1)  # [nth, Hc]
    lat_c = (on_c * wc).sum(-1)  # [ntw, Hc]
    lattice_d = lat_r[:, None, :] * lat_c[None, :, :]  # [nth, ntw, Hc]
    strides = [(a, b) for a in range(1, nth + 1) for b in range(1, ntw + 1)]
    coarse_cache: dict[int, torch.Tensor] = {}

    def coarse_densities(i0: int) -> torch.Tensor:
        # mean density over the coarse heads of (local radii[i0]) | lattice, for every stride:
        # d(A | B) = d(A) + d(B) - d(A & B), and A & B is again a row rule times a column rule
        if i0 not in coarse_cache:
            rh, rw = radii[i0]
            both_r = ((on_r & (dr.abs() <= rh)) * wr).sum(-1)  # [nth, Hc]
            both_c = ((on_c & (dc.abs() <= rw)) * wc).sum(-1)  # [ntw, Hc]
            both = both_r[:, None, :] * both_c[None, :, :]
            coarse_cache[i0] = (lattice_d + local_all[rh][rw] - both).mean(-1).reshape(-1)
        return coarse_cache[i0]

    def nearest_sorted(values: list[float], target: float, lo: int = 0) -> int:
        # index >= lo of the value closest to target in an ascending list (ties: lowest index)
        lo = min(lo, len(values) - 1)
        i = bisect.bisect_left(values, target, lo)
        cands = [bisect.bisect_left(values, values[j], lo) for j in (i - 1, i) if lo <= j < len(values)]
        return min(cands, key=lambda j: (abs(values[j] - target), j))

    best = None
    # per-group targets grow 2x per scale; scan their overall level and keep the closest result.
    # Radii grow strictly from group to group where that costs little accuracy (small grids
    # may need equal radii to get near the target).
    for strict, slack in ((True, 0.0), (False, 0.02)):
        for level in torch.logspace(-4, 0, 97, dtype=torch.float64).tolist():
            targets = [min(1.0, level * 2.0**g) for g in range(num_groups)]
            chosen: list[int] = []
            for g in range(num_groups - 1):
                lo = (chosen[-1] + int(strict)) if chosen else 0
                chosen.append(nearest_sorted(local_d, targets[g], lo))
            i0 = chosen[0] if chosen else nearest_sorted(local_d, targets[-1] / 4)
            cd = coarse_densities(i0)
            si = int(torch.argmin((cd - targets[-1]).abs()))
            total = sum(local_d[i] * sizes[g] for g, i in enumerate(chosen)) + float(cd[si]) * n_coarse
            error = abs(total / num_heads - density)
            if best is None or error + slack < best[0] - 1e-12:
                best = (error + slack, chosen, i0, si, total / num_heads)
    _, chosen, i0, si, achieved = best
    log.debug("hierarchical: %dx%d tiles, target density %.4f, planned %.6f", nth, ntw, density, achieved)
    if abs(achieved - density) > 0.1:
        log.warning(
            "hierarchical: density %.3f is the closest a %dx%d tile grid allows to the requested %.3f",
            achieved, nth, ntw, density,
        )  # fmt: skip

    plan: list[HeadScale] = []
    for g, i in enumerate(chosen):
        plan += [HeadScale(g, radii[i])] * sizes[g]
    a, b = strides[si]
    for p, q in zip(ph[a - 1].tolist(), pw[b - 1].tolist()):
        plan.append(HeadScale(num_groups - 1, radii[i0], (a, b), (p, q)))
    return plan


def hierarchical(
    grid: tuple[int, int] = (64, 64),
    tile: tuple[int, int] = (8, 16),
    num_heads: int = 12,
    density: float = 0.25,
    num_groups: int | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> BlockMask:
    """Multi-scale mask: a different scale per head group (see the module docstring).

    Args:
        grid: (gh, gw) tokens; tile: (th, tw) tokens per tile (``M`` tiles in all).
        num_heads: H' of the result.
        density: target fraction of token pairs read, averaged over heads, in (0, 1];
            the closest density the tile grid allows is used (a warning is logged when
            it is more than 0.1 away).
        num_groups: head groups ``G`` (default ``min(num_heads, 3)``); heads are split
            evenly, earlier (finer) groups take the remainder; the last group is coarse.
        seed: seed of the coarse heads' lattice phases.
        device: device of the blocks.

    Returns:
        BlockMask, layout ``tiles``, blocks bool ``[1, num_heads, M, M]``; the diagonal is
        always set. :func:`hierarchical_plan` returns the per-head radii/strides used.
    """
    plan = hierarchical_plan(grid, tile, num_heads, density, num_groups, seed)
    grid, tile = _check_grid_tile(grid, tile)
    rows, cols = tile_coords(grid, tile, device)
    dr = rows[None, :] - rows[:, None]  # key row - query row, [M, M]
    dc = cols[None, :] - cols[:, None]
    heads = []
    for h in plan:
        pattern = (dr.abs() <= h.radius[0]) & (dc.abs() <= h.radius[1])
        if h.stride is not None:
            pattern |= ((dr - h.phase[0]) % h.stride[0] == 0) & ((dc - h.phase[1]) % h.stride[1] == 0)
        heads.append(pattern)
    return tiles_mask(torch.stack(heads)[None], grid, tile)

