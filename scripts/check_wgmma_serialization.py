#!/usr/bin/env python3
"""Which attention kernels does ptxas compile with serialized wgmma? Registers, spills and GPU time per config.

    python scripts/check_wgmma_serialization.py [--json out.json]

For SAM's attention shapes (vit_b d=64 H=12 and vit_h d=80 H=16, B=8, bf16): the windowed blocks
(windows read in place), and the global blocks dense, with a 25% hierarchical mask of 1x64 tiles
and of 8x16 tiles. Each tile config is compiled by Triton; its PTX is passed through ``ptxas -v``
(Triton's own ptxas, sm_90a), whose C7515 warning says that the wgmma instructions of the whole
kernel were serialized (each one waits for the previous one). Also printed: registers, spills
and the GPU time of one call (CUDA-graph replay, median).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from samsparse.backends.triton import ops  # noqa: E402
from samsparse.backends.triton.configs import TileConfig  # noqa: E402
from samsparse.backends.triton.windows import window_attention  # noqa: E402
from samsparse.masks.hierarchical import hierarchical  # noqa: E402
from samsparse.relpos import RelPos  # noqa: E402

CONFIGS = {
    "window": {64: [(64, 32, 4, 3), (128, 32, 8, 3)], 80: [(128, 32, 8, 3), (64, 32, 4, 3)]},
    "dense": {64: [(128, 64, 4, 3), (128, 64, 8, 3), (64, 64, 4, 3)], 80: [(64, 64, 4, 3), (128, 64, 4, 3)]},
    "sparse 1x64": {64: [(64, 64, 4, 3)], 80: [(64, 64, 4, 3)]},
    "sparse 8x16": {64: [(128, 64, 8, 2), (128, 128, 8, 3)], 80: [(128, 64, 4, 3), (128, 128, 8, 2)]},
}


def ptxas_report(compiled) -> dict:
    """ptxas -v on the compiled kernel's PTX: serialized wgmma or not."""
    from triton import knobs

    with tempfile.TemporaryDirectory() as d:
        ptx = os.path.join(d, "kernel.ptx")
        Path(ptx).write_text(compiled.asm["ptx"])
        res = subprocess.run([knobs.nvidia.ptxas.path, "-v", "--gpu-name", "sm_90a", ptx, "-o", os.path.join(d, "k.cubin")],
                             capture_output=True, text=True)
    text = res.stdout + res.stderr
    return {"regs": compiled.n_regs, "spills": compiled.n_spills, "wgmma_serialized": "C7515" in text}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("check_wgmma_serialization.py needs a CUDA GPU", file=sys.stderr)
        return 2
    from triton.testing import do_bench_cudagraph

    rows = []
    torch.manual_seed(0)
    for heads, d in ((12, 64), (16, 80)):
        qkv = torch.randn(8, 4096, 3, heads, d, device="cuda", dtype=torch.bfloat16)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        fill = torch.randn(2, heads, d, device="cuda", dtype=torch.bfloat16)
        win_tables = (0.3 * torch.randn(2, 27, d, device="cuda")).bfloat16()
        glob_tables = (0.3 * torch.randn(2, 127, d, device="cuda")).bfloat16()
        masks = {"dense": None, "sparse 1x64": hierarchical((64, 64), (1, 64), heads, 0.25).to("cuda"),
                 "sparse 8x16": hierarchical((64, 64), (8, 16), heads, 0.25).to("cuda")}
        for kind, per_d in CONFIGS.items():
            for cfg in per_d[d]:
                tc = TileConfig(*cfg)
                if kind == "window":
                    def call(tc=tc):
                        rp = RelPos.from_tables(win_tables[0], win_tables[1], (14, 14))
                        return window_attention(q, k, v, fill[0], fill[1], rp, None, (64, 64), 14, config=tc)
                else:
                    def call(tc=tc, m=masks[kind]):
                        rp = RelPos.from_tables(glob_tables[0], glob_tables[1], (64, 64))
                        return ops.attention(q, k, v, m, rp, None, config=tc)
                ops._ATTN_LAUNCHER.cache.clear()
                call()
                call()  # the second call keeps the compiled kernel in the launcher's cache
                entries = list(ops._ATTN_LAUNCHER.cache.values())
                info = ptxas_report(entries[-1][0]) if entries else {}
                ms = do_bench_cudagraph(call, rep=40, return_mode="median")
                row = {"kind": kind, "head_dim": d, "config": str(tc), "ms": ms, **info}
                rows.append(row)
                print(f"d={d} {kind:12s} {str(tc):17s} {ms:.4f} ms  regs {info.get('regs')} spills {info.get('spills')}  "
                      f"wgmma {'SERIALIZED' if info.get('wgmma_serialized') else 'async'}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
