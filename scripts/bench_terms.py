#!/usr/bin/env python3
"""Tile configs of the rel-pos terms kernel (``kernel._relpos_terms``), timed on SAM's global shapes.

    PYTHONPATH=. python scripts/bench_terms.py [--json out.json] [--quick]

For vit_b (B=8 and B=1, H=12, d=64) and vit_h (B=8, H=16, d=80) on the 64x64 grid, bf16, q a strided
view of a qkv projection: each (warps, stages) is timed as GPU time of a CUDA-graph replay (median) and checked against float32 einsum terms rounded to bf16. Prints the
time, the DRAM rate it implies (q read once, rel_h and rel_w written once) and the ratio to the
shipped ``ops.TERMS_CONFIG``. ``--maxnreg 64,72`` also times the shipped config under those register
caps (more CTAs per SM: the kernel is latency-bound), ``--rounds N`` times everything N times in
alternating rounds and reports medians.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from samsparse.backends.triton import ops  # noqa: E402
from samsparse.relpos import RelPos  # noqa: E402

SHAPES = {"vit_b B=8": (8, 12, 64), "vit_h B=8": (8, 16, 80), "vit_b B=1": (1, 12, 64)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--quick", action="store_true", help="warps 4 and 8, stages 1 and 2")
    ap.add_argument("--maxnreg", default="", help="comma list of register caps also timed for the shipped config "
                    "(e.g. 64,72: more CTAs per SM), in alternating rounds with it")
    ap.add_argument("--rounds", type=int, default=1, help="time the configs this many times, alternating (medians)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_terms.py needs a CUDA GPU", file=sys.stderr)
        return 2
    from triton.testing import do_bench_cudagraph

    grid = 64
    if args.quick:
        configs = [(w, s) for w in (4, 8) for s in (1, 2)]
    else:
        configs = list(itertools.product((2, 4, 8), (1, 2, 3)))
    shipped = tuple(ops.TERMS_CONFIG)
    if shipped not in configs:
        configs.insert(0, shipped)
    configs += [(*shipped, int(c)) for c in args.maxnreg.split(",") if c.strip()]
    rows = []
    g = torch.Generator(device="cpu").manual_seed(0)
    for label, (b, h, d) in SHAPES.items():
        n = grid * grid
        qkv = torch.randn(b, n, 3, h, d, generator=g).to("cuda", torch.bfloat16)
        q = qkv.permute(2, 0, 3, 1, 4)[0]
        tab_h, tab_w = (0.5 * torch.randn(2 * grid - 1, d, generator=g)).cuda(), (0.5 * torch.randn(2 * grid - 1, d, generator=g)).cuda()
        rp = RelPos.from_tables(tab_h, tab_w, (grid, grid))
        ref_h, ref_w = RelPos.from_tables(tab_h.bfloat16().float(), tab_w.bfloat16().float(), (grid, grid)).terms(q.float())
        ref_h, ref_w = ref_h.bfloat16().float(), ref_w.bfloat16().float()
        nbytes = q.numel() * 2 + 2 * b * h * n * grid * 2
        samples, errs = {}, {}
        for _ in range(max(1, args.rounds)):
            for cfg in configs:
                if cfg in errs and cfg not in samples:
                    continue  # failed in an earlier round
                try:
                    if cfg not in errs:
                        rel_h, rel_w = ops.relpos_terms(q, rp.rh, rp.rw, (grid, grid), (grid, grid), config=cfg)
                        torch.cuda.synchronize()
                        scale = float(ref_h.abs().max())
                        errs[cfg] = max(float((rel_h.float() - ref_h).abs().max()),
                                        float((rel_w.float() - ref_w).abs().max())) / scale
                    ms = float(do_bench_cudagraph(
                        lambda cfg=cfg: ops.relpos_terms(q, rp.rh, rp.rw, (grid, grid), (grid, grid), config=cfg)))
                except Exception as exc:  # a config that does not compile or fit: report it, go on
                    print(f"{label} {cfg}: failed ({type(exc).__name__}: {str(exc)[:120]})", flush=True)
                    errs.setdefault(cfg, float("nan"))
                    continue
                samples.setdefault(cfg, []).append(ms)
        times = {cfg: sorted(ms)[len(ms) // 2] for cfg, ms in samples.items()}
        for cfg, ms in times.items():
            rows.append(dict(shape=label, config=list(cfg), ms=ms, rounds=samples[cfg], gb_per_s=nbytes / ms / 1e6,
                             max_rel_err=errs[cfg]))
        base = times.get(shipped)
        for cfg, ms in sorted(times.items(), key=lambda kv: kv[1]):
            err = errs[cfg]
            cap = f" maxnreg {cfg[2]}" if len(cfg) > 2 else ""
            print(f"{label:10s} warps {cfg[0]} stages {cfg[1]}{cap}: {ms * 1e3:7.1f} us "
                  f"{nbytes / ms / 1e6:6.0f} GB/s  x{base / ms if base else float('nan'):.3f} shipped  err {err:.1e}",
                  flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "shipped": list(shipped),
                                               "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
