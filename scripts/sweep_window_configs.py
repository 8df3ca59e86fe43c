"""Time the Triton attention kernel on SAM's windowed shape for a list of forced tile configs.

    python scripts/sweep_window_configs.py --json out.json

Shape: B*25 windows of 14x14 tokens (vit_b: H=12, d=64; vit_h: H=16, d=80), q/k/v
strided views of one qkv projection, rel-pos tables gathered (terms computed in the
program), bf16. Prints GPU ms per config (CUDA-graph replay via triton.testing.do_bench_cudagraph, no host overhead) and the max error against the reference backend.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from triton.testing import do_bench_cudagraph

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from samsparse.backends.reference import reference_attention  # noqa: E402
from samsparse.backends.triton import configs as tcfg  # noqa: E402
from samsparse.backends.triton import ops  # noqa: E402
from samsparse.relpos import RelPos  # noqa: E402

CONFIGS = [
    (64, 64, 4, 3), (64, 128, 4, 2), (64, 256, 4, 2), (128, 256, 8, 2), (64, 32, 4, 2), (64, 32, 4, 3),
    (64, 32, 4, 4), (64, 32, 8, 3), (64, 16, 4, 3), (128, 32, 8, 3), (128, 32, 8, 2), (32, 32, 2, 3),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--models", default="b,h")
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("sweep_window_configs.py needs a CUDA GPU", file=sys.stderr)
        raise SystemExit(2)
    device = torch.device(args.device)
    rows = []
    for model in args.models.split(","):
        heads, d = (12, 64) if model == "b" else (16, 80)
        torch.manual_seed(0)
        nw = args.batch * 25
        qkv = torch.randn(nw, 196, 3, heads, d, device=device, dtype=torch.bfloat16)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        tab_h = torch.randn(27, d, device=device) * 0.5
        tab_w = torch.randn(27, d, device=device) * 0.5
        rel = RelPos.from_tables(tab_h.bfloat16(), tab_w.bfloat16(), (14, 14))
        rel32 = RelPos.from_tables(tab_h.bfloat16().float(), tab_w.bfloat16().float(), (14, 14))
        ref = reference_attention(q, k, v, None, rel32, compute_dtype=torch.float32).float()
        flops = 4.0 * nw * heads * 196 * 196 * d
        for cfg in CONFIGS:
            if d > 64 and cfg[1] >= 256:
                continue  # not a candidate at d > 64 (see configs.window_candidates)
            tc = tcfg.TileConfig(*cfg)
            try:
                out, _ = ops.attention(q, k, v, None, rel, None, config=tc)
                err = (out.float() - ref).abs().max().item()
                ms = do_bench_cudagraph(lambda: ops.attention(q, k, v, None, rel, None, config=tc), rep=20, return_mode="median")
            except Exception as exc:
                print(f"vit_{model} {tc}: failed {type(exc).__name__}: {str(exc)[:160]}", flush=True)
                continue
            rows.append({"model": model, "config": str(tc), "ms": ms, "tflops": flops / ms / 1e9, "max_err": err})
            print(f"vit_{model} {str(tc):18s} {ms:.4f} ms {flops / ms / 1e9:6.1f} TF/s err {err:.4f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
