#!/usr/bin/env python3
"""Sparse-over-dense ratio of the SAM encoder, measured in interleaved rounds.

    python scripts/bench_sparse_ratio.py --model vit_b --batch 8 \
        --variants dense+compile "sparse:hierarchical:density=0.25+compile" --json out.json --md out.md

Every variant is built and compiled first; then each round times all of them in turn, so
clock and thermal drift over the run cannot favour one of them. Each round measures every
variant per call (``--repeat`` synchronised calls, median: latency, including the host's
launch time at the start of each call) and as a stream (``--repeat`` back-to-back calls,
one synchronisation: throughput). Reported for both: per-variant median ms over rounds and
the median of the per-round ratios to the first variant; also the relative deviation of
the embedding from the float32 original, and the first-call time. Variants as in
scripts/bench_encoder.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from samsparse.benchmark import interleaved_ratios  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vit_b")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--variants", nargs="+", default=["dense+compile", "sparse:hierarchical:density=0.25+compile"],
                   help="the first is the baseline of the ratios")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--device", default="cuda", help="cuda (cpu only for a smoke test with --model tiny)")
    p.add_argument("--json")
    p.add_argument("--md")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_sparse_ratio.py needs a CUDA GPU (or --device cpu --model tiny as a smoke test)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    res = interleaved_ratios(args.model, args.variants, batch=args.batch, dtype=args.dtype, device=args.device,
                             rounds=args.rounds, repeat=args.repeat, img_size=1024 if args.model != "tiny" else 64,
                             progress=lambda m: print(m, file=sys.stderr, flush=True))
    res["command"] = " ".join(sys.argv)
    lines = [
        f"device: {res['device']}, torch {torch.__version__}; {res['model']} B={res['batch']} {res['dtype']}, "
        f"{res['rounds']} interleaved rounds x {res['repeat']} calls",
        "",
        "| variant | ms (median of rounds) | x first (median of per-round ratios) | per-round ratios | "
        "stream ms | x first, stream | per-round stream ratios | rel dev | first call s |",
        "|---|---:|---:|---|---:|---:|---|---:|---:|",
    ]
    for name, v in res["variants"].items():
        ratios = " ".join(f"{r:.3f}" for r in v["ratios"])
        stream = " ".join(f"{r:.3f}" for r in v["stream_ratios"])
        lines.append(f"| {name} | {v['ms_median']:.2f} | {v['ratio_median']:.3f} | {ratios} | "
                     f"{v['stream_ms_median']:.2f} | {v['stream_ratio_median']:.3f} | {stream} | {v['rel_dev']:.4f} | "
                     f"{v['first_call_s']:.1f} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    if args.md:
        with open(args.md, "w") as f:
            f.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
