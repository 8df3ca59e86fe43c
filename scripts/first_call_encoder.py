#!/usr/bin/env python3
"""Wall time of the first encoder call through ``samsparse.optimize``: every compile and tuning step included.

Builds segment_anything's encoder (random weights), then times
``samsparse.optimize(sam, dtype, compile=...)`` plus the first forward pass of a batch,
and the second pass. Run it in a fresh process; for a fully cold measurement point the
caches at empty folders first:

    SAMSPARSE_HOME=$(mktemp -d) TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) TRITON_CACHE_DIR=$(mktemp -d) \\
        python scripts/first_call_encoder.py --model vit_b --batch 8

``SAMSPARSE_TRITON_AUTOTUNE=0`` (no tile search) and ``SAMSPARSE_TRITON_SHIPPED=0`` (ignore the
tile configs shipped for known GPUs) separate the parts. Prints one line and, with ``--json``,
writes it as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vit_b", choices=["vit_b", "vit_l", "vit_h"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    p.add_argument("--compile", default="default", help="optimize(compile=...): default, reduce-overhead or none")
    p.add_argument("--scope", default="blocks", choices=["blocks", "encoder"], help="optimize(compile_scope=...)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("first_call_encoder.py needs a CUDA GPU", file=sys.stderr)
        return 2
    from segment_anything import sam_model_registry

    import samsparse

    sam = sam_model_registry[args.model]().cuda().eval()
    x = torch.randn(args.batch, 3, 1024, 1024, device="cuda")
    compile_mode = None if args.compile == "none" else args.compile
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    samsparse.optimize(
        sam, dtype=DTYPES[args.dtype], compile=compile_mode, example_batch=args.batch, compile_scope=args.scope
    )
    torch.cuda.synchronize()
    t_opt = time.perf_counter()
    with torch.no_grad():
        sam.image_encoder(x)
    torch.cuda.synchronize()
    t1 = time.perf_counter()
    with torch.no_grad():
        sam.image_encoder(x)
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    env = {k: os.environ[k] for k in sorted(os.environ) if k.startswith(("SAMSPARSE_", "TORCHINDUCTOR_CACHE", "TRITON_CACHE"))}
    row = {
        "device": torch.cuda.get_device_name(),
        "model": args.model,
        "batch": args.batch,
        "dtype": args.dtype,
        "compile": args.compile,
        "scope": args.scope,
        "first_call_s": round(t1 - t0, 2),
        "optimize_s": round(t_opt - t0, 2),  # patch, cast, eager warm-up (our kernels compiled)
        "compiled_first_call_s": round(t1 - t_opt, 2),  # Dynamo + Inductor
        "second_call_ms": round((t2 - t1) * 1e3, 2),
        "env": env,
    }
    print(f"{args.model} B={args.batch} {args.dtype} optimize(compile={args.compile!r}) + first call: "
          f"{row['first_call_s']:.1f} s (optimize {row['optimize_s']:.1f} s, compiled first call "
          f"{row['compiled_first_call_s']:.1f} s; scope {args.scope}); second call {row['second_call_ms']:.1f} ms ({row['device']})")
    if args.json:
        args.json.write_text(json.dumps(row, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
