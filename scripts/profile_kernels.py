#!/usr/bin/env python3
"""One call of each attention kernel on SAM's shapes, for Nsight Compute (ncu).

Warms every contender up first (compile, autotune, extension build), then runs one
call of each between ``cudaProfilerStart`` / ``cudaProfilerStop`` inside an NVTX range
named after the contender, so that

    ncu --profile-from-start off --clock-control none --nvtx \\
        --section SpeedOfLight --section Occupancy --section WarpStateStats ... \\
        python scripts/profile_kernels.py

profiles exactly those launches (and nothing from warm-up or autotuning). Without ncu
it prints the CUDA-event time of each call.

Contenders (``--only`` picks a subset): triton_global, triton_window, cuda_global,
cuda_window (vit_b shapes, B=8, bf16, rel-pos from the tables), sdpa_global and
sdpa_window (PyTorch SDPA without bias, the flash kernel: the reference point), and
triton_sparse25 / triton_sparse09 (the global shape with a mask in which every 64-token
query block reads exactly 16 / 6 key rows: densities .25 and .094, the masked key-row loop).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from samsparse.backends import get  # noqa: E402
from samsparse.relpos import RelPos  # noqa: E402

SHAPES = {"global": (8, 12, 64, 64), "window": (200, 12, 14, 64)}  # (batch, heads, grid side, head dim)


def make_inputs(shape: str, dtype: torch.dtype, device: str):
    b, h, g, d = SHAPES[shape]
    gen = torch.Generator(device="cpu").manual_seed(0)
    qkv = torch.randn(b, g * g, 3, h, d, generator=gen).to(device, dtype)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # strided views, as SAM's projection gives them
    th = (0.1 * torch.randn(2 * g - 1, d, generator=gen)).to(device, dtype)
    tw = (0.1 * torch.randn(2 * g - 1, d, generator=gen)).to(device, dtype)
    return q, k, v, th, tw, (g, g), d**-0.5


SPARSE_ROWS = {"sparse25": 16, "sparse09": 6}  # key rows per query block of the sparse contenders


def contender(name: str, dtype: torch.dtype, device: str):
    backend, shape = name.split("_")
    mask = None
    if shape in SPARSE_ROWS:
        from bench_step_cost import exact_mask

        mask = exact_mask(SHAPES["global"][1], 1, SPARSE_ROWS[shape], seed=0, device=device)
        shape = "global"
    q, k, v, th, tw, grid, scale = make_inputs(shape, dtype, device)
    if backend == "sdpa":
        qc, kc, vc = (t.contiguous() for t in (q, k, v))
        return lambda: F.scaled_dot_product_attention(qc, kc, vc, scale=scale)
    impl = get(backend)

    def run():
        return impl.attend(q, k, v, mask, RelPos.from_tables(th, tw, grid), scale)

    return run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    names = ["triton_global", "triton_window", "cuda_global", "cuda_window", "sdpa_global", "sdpa_window"]
    sparse = ["triton_sparse25", "triton_sparse09"]
    p.add_argument("--only", nargs="*", default=names, choices=names + sparse)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("profile_kernels.py needs a CUDA GPU", file=sys.stderr)
        return 2
    runs = {}
    for name in args.only:
        try:
            fn = contender(name, torch.bfloat16, "cuda")
            for _ in range(3):
                fn()
            torch.cuda.synchronize()
            runs[name] = fn
        except Exception as exc:  # a backend that is unavailable here is reported, not fatal
            print(f"{name}: skipped ({type(exc).__name__}: {exc})")
    torch.cuda.cudart().cudaProfilerStart()
    for name, fn in runs.items():
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.nvtx.range_push(name)
        start.record()
        fn()
        end.record()
        torch.cuda.nvtx.range_pop()
        torch.cuda.synchronize()
        print(f"{name}: {start.elapsed_time(end):.3f} ms (one call; under ncu this includes replay)")
    torch.cuda.cudart().cudaProfilerStop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
