"""Time the global attention kernels under Triton register caps (``maxnreg``): an occupancy experiment.

    python scripts/sweep_maxnreg.py --json out.json

Shape: SAM's global attention (``--model vit_b``: H=12, d=64; ``vit_h``: H=16, d=80), B=8, 64x64 tokens,
bf16, q/k/v strided views of one qkv projection, rel-pos terms ready. Masks: dense, hierarchical recipes
with 1x64 and 8x16 tiles (vit_h: 1x64 at 25% and 10%; the running max, capped at 168 registers by
default since the thirteenth session: "none" removes that cap), each at its tuned tile configs. For each
register cap (``--caps``, default none, 232, 200, 168, 136, 128) prints the GPU time (CUDA-graph
replay), the registers and spills of the compiled kernel, and the max difference from the uncapped output. ``scripts/kernel_resources.py --maxnreg N``
shows offline what a cap does to registers, spills and CTAs per SM.
Result of the fifth session on an H100 (vit_b, before the fixed-offset pass): no cap helped (see
samsparse/backends/triton/NOTES.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CAPS = "none,232,200,168,136,128"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", default=None)
    p.add_argument("--model", choices=("vit_b", "vit_h"), default="vit_b")
    p.add_argument("--caps", default=CAPS, help="comma list of register caps, 'none' for uncapped (first: the baseline)")
    args = p.parse_args(argv)
    caps = [None if c.strip() == "none" else int(c) for c in args.caps.split(",") if c.strip()]
    if not torch.cuda.is_available():
        print("sweep_maxnreg.py needs a CUDA GPU", file=sys.stderr)
        return 2
    from triton.testing import do_bench_cudagraph

    from samsparse.backends.triton import ops
    from samsparse.backends.triton.configs import TileConfig
    from samsparse.masks import parse_recipe
    from samsparse.relpos import RelPos

    torch.manual_seed(0)
    b, g = 8, 64
    h, d = (12, 64) if args.model == "vit_b" else (16, 80)
    dev = torch.device("cuda")
    q, k, v = torch.randn(b, g * g, 3, h, d, device=dev, dtype=torch.bfloat16).permute(2, 0, 3, 1, 4).unbind(0)
    tab = 0.1 * torch.randn(2, 2 * g - 1, d, device=dev, dtype=torch.bfloat16)
    rel_h, rel_w = RelPos.from_tables(tab[0], tab[1], (g, g)).terms(q)
    rel_pos = RelPos((g, g), (g, g), rel_h=rel_h, rel_w=rel_w)
    cases = [
        ("dense", None, [TileConfig(128, 64, 4, 3), TileConfig(64, 64, 4, 3)]),
        # s2 as well: 40 KB of shared memory, so a cap to 128 registers would fit 4 CTAs per SM (s3: 3)
        ("1x64", "hierarchical:density=0.25,tile=1x64", [TileConfig(64, 64, 4, 3), TileConfig(64, 64, 4, 2)]),
    ]
    if args.model == "vit_b":
        cases.append(("8x16", "hierarchical:density=0.25", [TileConfig(128, 64, 8, 2), TileConfig(128, 128, 8, 3)]))
    else:
        cases.append(("1x64 10%", "hierarchical:density=0.1,tile=1x64", [TileConfig(64, 64, 4, 3)]))
    make_plan = ops._make_plan
    results = []
    try:
        for name, recipe, configs in cases:
            mask = None if recipe is None else parse_recipe(recipe).build(grid=(g, g), num_heads=h, device=dev)
            for cfg in configs:
                first = None
                for cap in caps:

                    def capped(geo, c, scale_pos, redo=False, arch=0, cap=cap):
                        plan = make_plan(geo, c, scale_pos, redo=redo, arch=arch)
                        constexprs = {k: v for k, v in plan.constexprs.items() if k != "maxnreg"}  # (default cap)
                        if cap is not None:
                            constexprs["maxnreg"] = cap
                        return ops._Plan(plan.grid, plan.ints, constexprs)

                    ops._make_plan = capped
                    ops._PLANS.clear()
                    ops._ATTN_LAUNCHER.cache.clear()

                    def call(mask=mask, cfg=cfg):
                        return ops.attention(q, k, v, mask, rel_pos, None, config=cfg)

                    out = call()[0].float()
                    first = out if first is None else first
                    ms = do_bench_cudagraph(call, rep=200)
                    # every kernel of the call (the fixed-offset pass and its redo launch, or one running max)
                    regs = [c.n_regs for c, _tail in ops._ATTN_LAUNCHER.cache.values()]
                    spills = [c.n_spills for c, _tail in ops._ATTN_LAUNCHER.cache.values()]
                    row = dict(model=args.model, mask=name, config=str(cfg), maxnreg=cap, ms=round(ms, 4), regs=regs,
                               spills=spills,
                               max_diff=float((out - first).abs().max()))
                    print(row, flush=True)
                    results.append(row)
    finally:
        ops._make_plan = make_plan
    if args.json:
        Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
