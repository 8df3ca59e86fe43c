#!/usr/bin/env python3
"""Where the time of one optimized encoder call goes: GPU time per kernel, grouped.

    python scripts/profile_encoder.py --model vit_b --batch 8 [--compile default] [--recipe hierarchical:density=0.25]

Runs ``samsparse.optimize`` (random weights), warms up, then records a few calls with
``torch.profiler`` and prints the kernels by total CUDA time, plus a summary by group
(our attention kernels, rel-pos terms, GEMMs, Inductor's fused kernels, the rest).
Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import torch

GROUPS = (
    ("attention (ours)", re.compile(r"_attn_fwd|attn_fwd_kernel")),
    ("rel-pos terms", re.compile(r"_relpos_terms")),
    ("attention (SDPA)", re.compile(r"fmha|flash|sdpa", re.I)),
    ("convolution", re.compile(r"conv|fprop|implicit|nhwc", re.I)),
    ("GEMM", re.compile(r"gemm|xmma|cutlass|nvjet|sm90_|sm80_|ampere|hopper", re.I)),
    ("Inductor fused", re.compile(r"^triton_")),
)


def group_of(name: str) -> str:
    for group, pattern in GROUPS:
        if pattern.search(name):
            return group
    return "other"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vit_b")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--compile", default="default", help="default, reduce-overhead or none")
    p.add_argument("--scope", default="blocks", choices=["blocks", "encoder"])
    p.add_argument("--recipe", default=None, help="mask recipe for the global blocks (default: dense)")
    p.add_argument("--calls", type=int, default=3)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("profile_encoder.py needs a CUDA GPU", file=sys.stderr)
        return 2
    from segment_anything import sam_model_registry

    import samsparse
    from samsparse.benchmark import patch_global_recipe

    sam = sam_model_registry[args.model]().cuda().eval()
    if args.recipe:
        patch_global_recipe(sam, args.recipe)
    compile_mode = None if args.compile == "none" else args.compile
    samsparse.optimize(sam, dtype=torch.bfloat16, compile=compile_mode, example_batch=args.batch,
                       compile_scope=args.scope)
    enc = sam.image_encoder
    x = torch.randn(args.batch, 3, 1024, 1024, device="cuda")
    with torch.no_grad():
        for _ in range(3):
            enc(x)
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(args.calls):
            enc(x)
        end.record()
        torch.cuda.synchronize()
        wall_ms = start.elapsed_time(end) / args.calls
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA], acc_events=True) as prof:
            for _ in range(args.calls):
                enc(x)
            torch.cuda.synchronize()
    per_kernel: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for evt in prof.events():
        if evt.device_type == torch.autograd.DeviceType.CUDA:
            rec = per_kernel[evt.name]
            rec[0] += evt.device_time / 1e3 / args.calls  # ms per encoder call
            rec[1] += 1
    total = sum(v[0] for v in per_kernel.values())
    groups: dict[str, float] = defaultdict(float)
    for name, (ms, _) in per_kernel.items():
        groups[group_of(name)] += ms
    print(f"{args.model} B={args.batch} bf16 compile={args.compile} scope={args.scope} recipe={args.recipe}: "
          f"{wall_ms:.2f} ms per call (events), {total:.2f} ms of kernels ({torch.cuda.get_device_name()})")
    print("\n| group | ms per call | share |\n|---|---|---|")
    for group, ms in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"| {group} | {ms:.3f} | {ms / total:.1%} |")
    print("\n| kernel | group | ms per call | launches per call |\n|---|---|---|---|")
    top = sorted(per_kernel.items(), key=lambda kv: -kv[1][0])[: args.top]
    for name, (ms, n) in top:
        print(f"| `{name[:90]}` | {group_of(name)} | {ms:.3f} | {n / args.calls:.0f} |")
    if args.json:
        args.json.write_text(json.dumps({
            "device": torch.cuda.get_device_name(), "model": args.model, "batch": args.batch,
            "compile": args.compile, "scope": args.scope, "recipe": args.recipe, "wall_ms": wall_ms,
            "kernel_ms": total, "groups": groups,
            "kernels": {k: {"ms": v[0], "launches": v[1] / args.calls} for k, v in per_kernel.items()},
        }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
