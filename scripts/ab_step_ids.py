"""Same-run A/B of how a sparse step gets its key-block id (Triton key-row mode).

    python scripts/ab_step_ids.py --json out.json

A: the id extracted from the row of ids held in registers (a masked reduction across the
program's warps every step). B (default since the fifth session): every lane loads the step's id
itself (``_step_ids``, an L1 broadcast). Shapes: global attention, B=8, 64x64 tokens, bf16,
rel-pos terms ready; vit_b (H=12, d=64) and vit_h (H=16, d=80); masks: hierarchical with 1x64
tiles at density 0.5 / 0.25 / 0.1. GPU time from CUDA-graph replay, interleaved A/B rounds;
also checks that A and B give identical outputs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("ab_step_ids.py needs a CUDA GPU", file=sys.stderr)
        return 2
    from triton.testing import do_bench_cudagraph

    from samsparse.backends.triton import ops
    from samsparse.masks import parse_recipe
    from samsparse.relpos import RelPos

    dev = torch.device("cuda")
    rows = []
    for model, h, d in (("vit_b", 12, 64), ("vit_h", 16, 80)):
        torch.manual_seed(0)
        g = 64
        q, k, v = torch.randn(8, g * g, 3, h, d, device=dev, dtype=torch.bfloat16).permute(2, 0, 3, 1, 4).unbind(0)
        tab = 0.1 * torch.randn(2, 2 * g - 1, d, device=dev, dtype=torch.bfloat16)
        rel_h, rel_w = RelPos.from_tables(tab[0], tab[1], (g, g)).terms(q)
        rel_pos = RelPos((g, g), (g, g), rel_h=rel_h, rel_w=rel_w)
        for density in (0.5, 0.25, 0.1):
            mask = parse_recipe(f"hierarchical:density={density},tile=1x64").build(grid=(g, g), num_heads=h, device=dev)
            times = {False: [], True: []}
            outs = {}
            for _ in range(args.rounds):
                for loads in (False, True):
                    ops.STEP_ID_LOADS = loads
                    ops._PLANS.clear()
                    ops._ATTN_LAUNCHER.cache.clear()

                    def call(mask=mask):
                        return ops.attention(q, k, v, mask, rel_pos)

                    outs[loads] = call()[0]
                    times[loads].append(do_bench_cudagraph(call, rep=100))
            ops.STEP_ID_LOADS = True
            a, b = statistics.median(times[False]), statistics.median(times[True])
            row = dict(model=model, density=round(mask.density(), 3) if hasattr(mask, "density") else density,
                       reduction_ms=round(a, 4), loads_ms=round(b, 4), speedup=round(a / b, 3),
                       identical=bool(torch.equal(outs[False], outs[True])))
            print(row, flush=True)
            rows.append(row)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
