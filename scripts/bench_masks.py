"""Random block masks for the attention benchmarks (bench_attention.py and ab_fixed_offset.py import it).

    PYTHONPATH=. python scripts/bench_masks.py [--kind sequence|tiles] [--heads 12] [--grid 64] [--density 0.25]

Run alone it prints the mask those scripts time for these arguments (its density and key blocks per row).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from samsparse.masks import BlockMask  # noqa: E402


def random_mask(kind: str, h: int, grid, density: float, seed: int, device, block: int = 128, tile=(8, 16)) -> BlockMask:
    """Per-head random key-block selection with the diagonal kept; each query row reads round(p*Mk) blocks."""
    g = torch.Generator().manual_seed(seed)
    n = grid[0] * grid[1]
    th, tw = tile
    if kind == "tiles":
        m = math.ceil(grid[0] / th) * math.ceil(grid[1] / tw)
    else:
        m = math.ceil(n / block)
    keep = max(1, round(density * m))
    score = torch.rand(1, h, m, m, generator=g)
    score += 2.0 * torch.eye(m)  # the diagonal first
    top = score.topk(keep, dim=-1).indices
    blocks = torch.zeros(1, h, m, m, dtype=torch.bool).scatter_(-1, top, True)
    if kind == "tiles":
        return BlockMask(blocks, None, None, layout="tiles", grid=grid, tile=(th, tw)).to(device)
    return BlockMask(blocks, block, n).to(device)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", choices=["sequence", "tiles"], default="sequence")
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--grid", type=int, default=64, help="token grid side (SAM's global blocks: 64)")
    ap.add_argument("--density", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    mask = random_mask(args.kind, args.heads, (args.grid, args.grid), args.density, args.seed, "cpu")
    print(f"{mask!r}\nkey blocks per query block: {mask.key_blocks_per_row():.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
