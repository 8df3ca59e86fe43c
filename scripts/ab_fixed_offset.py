#!/usr/bin/env python3
"""A/B of the global kernel's fixed-offset softmax against its running-max softmax, same run.

    python scripts/ab_fixed_offset.py [--json out.json]

For SAM's global attention (64x64 grid, bf16; vit_b H=12 d=64 at B=8 and B=1, vit_h H=16 d=80 at
B=8), dense, each tile config is timed with ``SAMSPARSE_TRITON_FIXED_OFFSET=0`` (running max) and
``=1`` (the fixed-offset pass plus its redo launch, ``kernel._fixed_offset_pass``), from ready
rel-pos terms and from the tables (terms kernel included), as GPU time of a CUDA-graph replay
(median), against SDPA without bias (PyTorch's choice, cuDNN on Hopper) on contiguous q/k/v.
Two stress inputs show what the redo launch costs: q and k x3 (wide logits) and the height
table x12 (height terms swinging ~100 nats across key rows, so every program is redone).
Errors are against a float32 reference with float32 rel-pos terms (first batch element). With
``--sparse`` also vit_b B=8 under random block masks (the pass is forced on with ``=all``); with
``--quick`` only the three dense shapes at two configs each (no stress inputs), for comparing kernel
revisions in one GPU call.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from samsparse.backends.triton import ops  # noqa: E402
from samsparse.masks import BlockMask  # noqa: E402
from samsparse.backends.triton.configs import TileConfig  # noqa: E402
from samsparse.relpos import RelPos, gather_rel_pos  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_masks import random_mask  # noqa: E402


def set_mode(fixed: str) -> None:
    os.environ["SAMSPARSE_TRITON_FIXED_OFFSET"] = fixed
    ops._PLANS.clear()
    ops._REDO_PLANS.clear()
    ops._ATTN_LAUNCHER.cache.clear()


def reference(q, k, v, rph, rpw, grid: int, scale: float, mask: BlockMask | None = None) -> torch.Tensor:
    """float32 attention of the first batch element with SAM's bias (terms in float32)."""
    qi, ki, vi = q[:1].float(), k[:1].float(), v[:1].float()
    _, h, n, d = qi.shape
    rh, rw = gather_rel_pos(grid, grid, rph.float()), gather_rel_pos(grid, grid, rpw.float())
    r_q = qi.reshape(1, h, grid, grid, d)
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, rh).reshape(1, h, n, grid)
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, rw).reshape(1, h, n, grid)
    s = (qi @ ki.transpose(-2, -1)) * scale
    s = (s.view(1, h, n, grid, grid) + rel_h[..., :, None] + rel_w[..., None, :]).flatten(3)
    if mask is not None:
        s = s.masked_fill(~mask.to_token_mask("cuda")[:1], float("-inf"))
    return s.softmax(-1) @ vi


def run_shape(label, b, h, d, configs, rows, qk_mult=1.0, rel_mult=1.0, grid=64, density=1.0):
    from triton.testing import do_bench_cudagraph

    torch.manual_seed(0)
    n = grid * grid
    qkv = torch.randn(b, n, 3, h, d, device="cuda", dtype=torch.bfloat16)
    qkv[:, :, :2] *= qk_mult
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # strided views, as SAM's projection gives them
    rph = torch.randn(2 * grid - 1, d, device="cuda", dtype=torch.bfloat16) * 0.3 * rel_mult
    rpw = torch.randn(2 * grid - 1, d, device="cuda", dtype=torch.bfloat16) * 0.3
    scale = d**-0.5
    tables = RelPos.from_tables(rph, rpw, (grid, grid))  # (terms never computed on this one: the kernel runs)
    rel_h, rel_w = RelPos.from_tables(rph, rpw, (grid, grid)).terms(q)
    terms = RelPos((grid, grid), (grid, grid), rel_h=rel_h, rel_w=rel_w)
    qc, kc, vc = (t.contiguous() for t in (q, k, v))
    sdpa = float(do_bench_cudagraph(lambda: F.scaled_dot_product_attention(qc, kc, vc, scale=scale)))
    mask = None if density >= 1.0 else random_mask("sequence", h, (grid, grid), density, int(density * 1000), "cuda")
    on = "1" if mask is None else "all"  # (by default only masks with long rows take the pass: force it)
    ref = reference(q, k, v, rph, rpw, grid, scale, mask)
    flops = 4 * b * h * n * n * d * (1.0 if mask is None else mask.density())
    print(f"{label}: SDPA without bias {sdpa:.4f} ms", flush=True)
    for cfg in configs:
        times = {}
        for fixed in (0, 1):
            set_mode(on if fixed else "0")
            out = ops.attention(q, k, v, mask, terms, scale, cfg)[0]
            err = float((out[:1].float() - ref).abs().max() / ref.abs().max())
            t_terms = float(do_bench_cudagraph(lambda: ops.attention(q, k, v, mask, terms, scale, cfg)))
            t_tables = float(do_bench_cudagraph(lambda: ops.attention(q, k, v, mask, tables, scale, cfg)))
            times[fixed] = t_tables
            regs = [getattr(c, "n_regs", None) for c, _ in ops._ATTN_LAUNCHER.cache.values()]
            name = f"M{cfg.block_m}/N{cfg.block_n}/w{cfg.num_warps}/s{cfg.num_stages}"
            rows.append(dict(shape=label, density=density, config=name, fixed_offset=fixed, ms_terms_ready=t_terms,
                             ms_tables=t_tables, sdpa_nobias_ms=sdpa, max_rel_err=err, registers=regs))
            print(f"  {name} fixed={fixed}: terms ready {t_terms:.4f} ms ({flops / t_terms / 1e9:.0f} TFLOP/s, "
                  f"x{sdpa / t_terms:.3f} SDPA)  tables {t_tables:.4f} ms (x{sdpa / t_tables:.3f})  "
                  f"err {err:.2e}  registers {regs}", flush=True)
        print(f"  -> fixed offset {times[0] / times[1]:.3f}x (tables)", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--sparse", action="store_true",
                    help="also vit_b B=8 with random masks at p = .5, .25, .1 (the pass forced on with =all)")
    ap.add_argument("--quick", action="store_true",
                    help="SAM's three dense shapes only, two configs each, no stress inputs")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("ab_fixed_offset.py needs a CUDA GPU", file=sys.stderr)
        return 2
    os.environ.setdefault("SAMSPARSE_TRITON_AUTOTUNE", "0")
    c = TileConfig
    rows: list[dict] = []
    run_shape("vit_b B=8", 8, 12, 64, [c(128, 64, 4, 3), c(64, 64, 4, 3)] + [c(64, 64, 4, 4)] * (not args.quick), rows)
    if not args.quick:
        run_shape("vit_b B=8, q and k x3", 8, 12, 64, [c(64, 64, 4, 3)], rows, qk_mult=3.0)
        run_shape("vit_b B=8, height table x12 (all redone)", 8, 12, 64, [c(64, 64, 4, 3)], rows, rel_mult=12.0)
    run_shape("vit_h B=8", 8, 16, 80, [c(128, 64, 4, 3), c(64, 64, 4, 3)], rows)
    run_shape("vit_b B=1", 1, 12, 64, [c(128, 64, 4, 3), c(64, 64, 4, 3)], rows)
    if args.sparse:
        for p in (0.5, 0.25, 0.1):
            run_shape(f"vit_b B=8 p={p}", 8, 12, 64, [c(64, 64, 4, 3), c(128, 64, 4, 3)], rows, density=p)
    os.environ.pop("SAMSPARSE_TRITON_FIXED_OFFSET", None)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
