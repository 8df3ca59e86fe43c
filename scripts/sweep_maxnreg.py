"""Time the global attention kernels under Triton register caps (``maxnreg``): an occupancy experiment.

    python scripts/sweep_maxnreg.py --json out.json

Shape: vit_b's global attention, B=8, H=12, 64x64 tokens, d=64, bf16, q/k/v strided views of one
qkv projection, rel-pos terms ready. Masks: dense, 25% hierarchical with 1x64 and 8x16 tiles, each at
its tuned tile configs. For each register cap (none, 232, 200, 168, 128) prints the GPU time (CUDA-graph
replay), the registers and spills of the compiled kernel, and the max difference from the uncapped output.
Result of the fifth session on an H100: no cap helped (see samsparse/backends/triton/NOTES.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CAPS = (None, 232, 200, 168, 128)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("sweep_maxnreg.py needs a CUDA GPU", file=sys.stderr)
        return 2
    from triton.testing import do_bench_cudagraph

    from samsparse.backends.triton import ops
    from samsparse.backends.triton.configs import TileConfig
    from samsparse.masks import parse_recipe
    from samsparse.relpos import RelPos

    torch.manual_seed(0)
    b, h, d, g = 8, 12, 64, 64
    dev = torch.device("cuda")
    q, k, v = torch.randn(b, g * g, 3, h, d, device=dev, dtype=torch.bfloat16).permute(2, 0, 3, 1, 4).unbind(0)
    tab = 0.1 * torch.randn(2, 2 * g - 1, d, device=dev, dtype=torch.bfloat16)
    rel_h, rel_w = RelPos.from_tables(tab[0], tab[1], (g, g)).terms(q)
    rel_pos = RelPos((g, g), (g, g), rel_h=rel_h, rel_w=rel_w)
    cases = [
        ("dense", None, [TileConfig(128, 64, 4, 3), TileConfig(64, 64, 4, 3)]),
        ("1x64", "hierarchical:density=0.25,tile=1x64", [TileConfig(64, 64, 4, 3)]),
        ("8x16", "hierarchical:density=0.25", [TileConfig(128, 64, 8, 2), TileConfig(128, 128, 8, 3)]),
    ]
    make_plan = ops._make_plan
    results = []
    try:
        for name, recipe, configs in cases:
            mask = None if recipe is None else parse_recipe(recipe).build(grid=(g, g), num_heads=h, device=dev)
            for cfg in configs:
                first = None
                for cap in CAPS:

                    def capped(geo, c, scale_pos, cap=cap):
                        plan = make_plan(geo, c, scale_pos)
                        if cap is None:
                            return plan
                        return ops._Plan(plan.grid, plan.ints, dict(plan.constexprs, maxnreg=cap))

                    ops._make_plan = capped
                    ops._PLANS.clear()
                    ops._ATTN_LAUNCHER.cache.clear()

                    def call(mask=mask, cfg=cfg):
                        return ops.attention(q, k, v, mask, rel_pos, None, config=cfg)

                    out = call()[0].float()
                    first = out if first is None else first
                    ms = do_bench_cudagraph(call, rep=200)
                    regs = spills = None
                    for compiled, _tail in ops._ATTN_LAUNCHER.cache.values():
                        regs, spills = compiled.n_regs, compiled.n_spills
                    row = dict(mask=name, config=str(cfg), maxnreg=cap, ms=round(ms, 4), regs=regs, spills=spills,
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
