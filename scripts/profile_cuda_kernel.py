"""One dense call of the CUDA backend's kernel without bias and one with SAM's rel-pos terms, between
cudaProfilerStart/Stop, for Nsight Compute (vit_b's global shape: B = 8, H = 12, N = 4096, d = 64;
``--d 80 --heads 16`` for vit_h's)::

    ncu --profile-from-start off --section SpeedOfLight --section WarpStateStats ... \\
        python scripts/profile_cuda_kernel.py [--kernel wgmma|mma] [--d 64] [--heads 12]

On compute capability 9.0 the default kernel is the Hopper (wgmma) one; each call profiles every launch it
makes (the fixed-offset pass and the second, running-max launch that returns at once unless a CTA overflowed).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernel", default="wgmma", choices=["wgmma", "mma"], help="SAMSPARSE_CUDA_KERNEL")
    parser.add_argument("--d", type=int, default=64, help="head dim")
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("profile_cuda_kernel.py needs a CUDA GPU", file=sys.stderr)
        return 2
    os.environ["SAMSPARSE_CUDA_KERNEL"] = args.kernel
    from samsparse.backends.cuda import backend as ops
    from samsparse.relpos import RelPos

    grid, n = (64, 64), 4096
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(args.batch, args.heads, n, args.d, device="cuda", dtype=torch.bfloat16, generator=g)
               for _ in range(3))
    tab_h = 0.5 * torch.randn(2 * grid[0] - 1, args.d, device="cuda", generator=g)
    tab_w = 0.5 * torch.randn(2 * grid[1] - 1, args.d, device="cuda", generator=g)
    tables = RelPos.from_tables(tab_h.bfloat16(), tab_w.bfloat16(), grid)
    rel_h, rel_w = RelPos(tables.q_grid, tables.k_grid, tables.rh, tables.rw).terms(q)
    terms = RelPos(grid, grid, rel_h=rel_h, rel_w=rel_w)
    for _ in range(3):  # build, warm up
        ops.attention(q, k, v)
        ops.attention(q, k, v, None, terms)
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    ops.attention(q, k, v)
    ops.attention(q, k, v, None, terms)
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()
    print(ops.last_launch())
    return 0


if __name__ == "__main__":
    sys.exit(main())
