"""Small launches of every CUDA-kernel path, for compute-sanitizer.

    compute-sanitizer --tool memcheck --error-exitcode 3 python scripts/cuda_memcheck_case.py
    compute-sanitizer --tool racecheck --error-exitcode 3 python scripts/cuda_memcheck_case.py --small
    compute-sanitizer --tool memcheck --error-exitcode 3 python scripts/cuda_memcheck_case.py --wgmma

Covers (the mma.sync kernel): dense without bias, masks in both layouts (partial tiles, empty rows,
broadcast), every bias mode (generic, runs of 16 / 32 / 64), head dims 32, 64,
80, 128, 256 and zero-padded ones (16, 96), GQA, strided inputs, varlen; ``--wgmma``:
the Hopper kernel's calls (SAMSPARSE_CUDA_KERNEL=wgmma, compute capability 9.0). Each
call is checked loosely against the reference so a wrong-but-clean run also
shows. The extension must already be built (cached): run
``python -m samsparse.backends.cuda.build --arch 9.0`` or any GPU call first,
or the sanitizer will time the build too.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
for p in (str(ROOT), str(ROOT / "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)

from attention_cases import Case, make_inputs  # noqa: E402

from samsparse.backends.cuda import CudaBackend, cuda_varlen_attention  # noqa: E402
from samsparse.backends.cuda import backend as ops  # noqa: E402
from samsparse.backends.reference import reference_attention  # noqa: E402
from samsparse.masks import BlockMask  # noqa: E402

CASES = [
    Case(1, 2, 2, (10, 20), 64, "bf16", mask="none", rel="none"),                          # dense, N=200
    Case(2, 2, 2, (14, 14), 64, "bf16", mask="none", rel="terms", strided=True, seed=1),   # SAM window, generic
    Case(1, 2, 2, (4, 64), 64, "fp16", mask="random", block=128, rel="tables", seed=2),    # runs64, split query block
    Case(1, 2, 2, (30, 33), 80, "bf16", mask="tiles", tile=(8, 16), rel="tables", seed=3),  # runs16, partial tiles
    Case(1, 2, 2, (8, 32), 128, "fp16", mask="none", rel="tables", seed=4),                # runs32, d=128
    Case(1, 4, 1, (8, 16), 256, "bf16", mask="broadcast", block=64, rel="tables", seed=5),  # d=256, MQA
    Case(2, 2, 2, (7, 9), 32, "fp16", mask="tiles", tile=(4, 4), rel="none", seed=6),       # tiles, no bias
    Case(2, 2, 2, (5, 7), 16, "bf16", mask="empty", block=16, rel="tables", seed=7),        # empty rows, d=16->32
    Case(1, 4, 2, (9, 11), 96, "fp16", mask="random", block=64, rel="none", seed=8),        # GQA, d=96->128
]
SMALL = [0, 1, 3, 5]
# --wgmma (compute capability 9.0): the Hopper kernel's calls, each with its own tile choice and forced to every tile
WGMMA_CASES = [
    Case(1, 2, 2, (10, 20), 80, "bf16", mask="none", rel="none"),                           # no bias, partial tile
    Case(1, 2, 2, (4, 64), 64, "fp16", mask="random", block=64, rel="tables", seed=11),     # run-64, 64-row tiles
    Case(1, 2, 2, (4, 64), 80, "bf16", mask="random", block=128, rel="terms", seed=12),     # run-64, 128-row tiles
    Case(1, 4, 2, (7, 11), 64, "bf16", mask="empty", block=32, rel="none", seed=13),        # GQA, empty rows
]


def main() -> int:
    if "-h" in sys.argv or "--help" in sys.argv:
        print(__doc__)
        return 0
    if not torch.cuda.is_available():
        print("cuda_memcheck_case.py needs a CUDA GPU (run it under compute-sanitizer on a GPU machine)", file=sys.stderr)
        return 2
    small = "--small" in sys.argv
    cases = [(i, c, "", "1") for i, c in enumerate(CASES)]
    os.environ[ops.KERNEL_ENV] = "mma"  # CASES check the mma.sync kernel (wgmma is the default on Hopper)
    if "--wgmma" in sys.argv:
        if torch.cuda.get_device_capability() != (9, 0):
            print("--wgmma needs a compute capability 9.0 GPU (H100/H200)", file=sys.stderr)
            return 2
        os.environ[ops.KERNEL_ENV] = "wgmma"  # read by every call; calls it does not serve run mma.sync
        # every tile, and each softmax: fixed offset (the default), running max, fixed offset with every CTA redone
        cases = [(i, c, tile, sm) for tile in ("", *ops.WGMMA_TILES) for sm in ("1", "0", "redo")
                 for i, c in enumerate(WGMMA_CASES)]
        small = False
    cb = CudaBackend()
    worst = 0.0
    failures = 0
    for i, case, tile, softmax in cases:
        if small and i not in SMALL:
            continue
        os.environ[ops.WGMMA_TILE_ENV] = tile  # "" = the kernel's own choice
        os.environ[ops.FIXED_OFFSET_ENV] = softmax
        q, k, v, mask, rel_pos = make_inputs(case, "cuda")
        reason = cb.why_not(q, k, v, mask, rel_pos, return_lse=True)
        if reason is not None:
            print(f"{case.id}: REFUSED {reason}", flush=True)
            failures += 1
            continue
        out, lse = cb.attend(q, k, v, mask, rel_pos, return_lse=True)
        torch.cuda.synchronize()
        launch = ops.last_launch()
        mode = f"{launch['bias_mode']} kernel={launch['kernel']} softmax={launch['softmax']}" + (f" tile={tile}" if tile else "")
        ref = reference_attention(q, k, v, mask, rel_pos)
        err = float((out.double() - ref.double()).abs().max())
        worst = max(worst, err)
        bad = not err < 5e-2
        failures += bad
        print(f"{case.id}: mode={mode} max_err={err:.2e}{'  WRONG' if bad else ''}", flush=True)
    # varlen (sparse, GQA, an empty sequence)
    g = torch.Generator().manual_seed(9)
    lens_q, lens_k, bs = [19, 70, 0, 5], [19, 65, 9, 130], 32
    cu_q = torch.tensor([0] + list(torch.tensor(lens_q).cumsum(0)), dtype=torch.int32, device="cuda")
    cu_k = torch.tensor([0] + list(torch.tensor(lens_k).cumsum(0)), dtype=torch.int32, device="cuda")
    q = torch.randn(sum(lens_q), 4, 64, generator=g).half().cuda()
    kv = torch.randn(sum(lens_k), 2, 2, 64, generator=g).half().cuda()
    mq, mk = math.ceil(max(lens_q) / bs), math.ceil(max(lens_k) / bs)
    blocks = torch.rand(4, 4, mq, mk, generator=g) < 0.5
    blocks[..., 0] = True
    idx = BlockMask(blocks, bs, (mq * bs, mk * bs)).to_indices("cuda")
    out = cuda_varlen_attention(q, kv[:, 0], kv[:, 1], cu_q, cu_k, max(lens_q), max(lens_k),
                                idx.kv_num_blocks, idx.kv_indices, block_size=bs)
    torch.cuda.synchronize()
    print(f"varlen: finite={bool(torch.isfinite(out).all())}", flush=True)
    print(f"done: worst max_err={worst:.2e}, failures={failures}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
