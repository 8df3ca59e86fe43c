#!/usr/bin/env python3
"""End-to-end SAM image-encoder benchmark: original vs patched, same run, same weights.

Example (GPU):
    python scripts/bench_encoder.py --models vit_b vit_h --batch 1 8 --dtype bf16 \
        --json out/encoder.json --md out/encoder.md

Rows per (model, batch): original eager fp32, original eager in --dtype, SDPA+bias
(patched with the sdpa backend: the best exact PyTorch path), patched dense
(fastest backend), and sparse recipes on the global blocks. Ratios are images/s
over the original eager encoder in --dtype, measured in this run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from samsparse.benchmark import bench_encoder, markdown_table  # noqa: E402

DEFAULT_RECIPES = ["hierarchical:density=0.5", "hierarchical:density=0.25", "hierarchical:density=0.1"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["vit_b", "vit_h"])
    p.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--recipes", nargs="*", default=DEFAULT_RECIPES, help="sparse recipes for the global blocks")
    p.add_argument("--all-blocks-recipes", nargs="*", default=[], help="recipes applied to every block")
    p.add_argument("--compile", action="store_true", help="also time original+compile and dense+compile")
    p.add_argument("--extra-variants", nargs="*", default=[], help="more variants, e.g. 'sparse:hierarchical:density=0.25+compile'")
    p.add_argument("--no-fp32", action="store_true", help="skip the original fp32 row")
    p.add_argument("--img-size", type=int, default=1024)
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--device", default=None)
    p.add_argument("--json", default=None)
    p.add_argument("--md", default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    variants = ["original", "sdpa", "dense"] + [f"sparse:{r}" for r in args.recipes]
    variants += [f"sparse:{r}@all" for r in args.all_blocks_recipes]
    if args.compile:
        variants += ["original+compile", "dense+compile"]
    variants += args.extra_variants
    rows = []
    for model in args.models:
        if not args.no_fp32 and args.dtype != "fp32":
            rows += bench_encoder(model, args.batch, "fp32", device, ["original"], args.img_size, repeat=max(5, args.repeat // 4),
                                  progress=lambda s: print(f"[fp32] {s}", file=sys.stderr, flush=True))
        rows += bench_encoder(model, args.batch, args.dtype, device, variants, args.img_size, repeat=args.repeat,
                              progress=lambda s: print(s, file=sys.stderr, flush=True))
    meta = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "triton": getattr(__import__("triton"), "__version__", None) if device.type == "cuda" else None,
        "command": " ".join([os.path.basename(sys.argv[0])] + (argv if argv is not None else sys.argv[1:])),
    }
    table = markdown_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": [r.to_dict() for r in rows]}, f, indent=1)
    if args.md:
        with open(args.md, "w") as f:
            f.write(f"device: {meta['device']}, torch {meta['torch']}, triton {meta['triton']}\n\n{table}\n")
    print(f"device: {meta['device']}, torch {meta['torch']}, triton {meta['triton']}")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
