#!/usr/bin/env python3
"""What a sparse global-attention call costs per key step and per program (issue #5's p-scaling).

    PYTHONPATH=. python scripts/bench_step_cost.py [--model vit_b|vit_h] [--batch 8] [--json out.json]

SAM's global shape (64x64 grid, bf16, q/k/v strided views of one qkv projection) with block masks in
which **every** query block reads exactly ``k`` key blocks (its diagonal plus random others, per head):
no load imbalance, so the GPU time of a call is ``t(k) = t0 + s * k``. Masks of 64-token blocks (one
key-grid row each: the key-row mode's masked loop, one step per block) and of 128-token blocks (two rows)
are timed, for k up to 24 rows (below ``ops.PASS_MIN_KEYS``: no fixed-offset pass), and the dense call.
Three bias variants: ``tables`` (the call as the patched module makes it: terms kernel included),
``terms`` (SAM's einsum terms handed in: no terms kernel, but in the einsum's [B, H, N, gh] layout a key
row's column of rel_h is strided across the queries, where the terms kernel stores it contiguous) and
``nobias``.

Printed per variant: the least-squares fit ``t0`` (ms) and ``s`` (ms per key row), ``t0 / s`` (the
fixed cost of a call in key-row steps), the dense call against ``64 * s``, and the p-scaling
``t(p) / (p * t(1))`` the fit predicts at p = .5, .25 and .094 next to the measured points. GPU time
of a CUDA-graph replay (median of triton's ``do_bench_cudagraph``).

``--sweep M/N/w/s,...`` times forced tile configs on 128-token block masks at p = .094, .25 and .5 (is
the autotuner's pick the fastest?). ``--interleaved ROUNDS`` measures #5's p-scaling on
bench_attention.py's random masks with the dense and sparse calls in alternating rounds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from samsparse.masks import BlockMask  # noqa: E402
from samsparse.relpos import RelPos  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_batch_scaling import alternating_times, time_ms  # noqa: E402
from bench_masks import random_mask  # noqa: E402

CUDA = torch.device("cuda")

MODELS = {"vit_b": (12, 64), "vit_h": (16, 80)}  # heads, head dim
GRID = 64


def exact_mask(h: int, rows_per_block: int, k: int, seed: int, device) -> BlockMask:
    """Every query block reads exactly ``k`` key blocks of ``rows_per_block`` key-grid rows (bench_attention's
    random mask at density k / Mk: the diagonal first, then random key blocks per head)."""
    block = rows_per_block * GRID
    m = GRID * GRID // block
    if not 1 <= k <= m:
        raise ValueError(f"k must be in [1, {m}] for {block}-token blocks, got {k}")
    return random_mask("sequence", h, (GRID, GRID), k / m, seed, device, block=block)


def fit(points):
    """Least squares t = t0 + s * x over [(x, t)]."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    mt = sum(t for _, t in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    s = sum((x - mx) * (t - mt) for x, t in points) / sxx
    return mt - s * mx, s


def interleaved(args, backend, q, k, v, tables, scale, h) -> int:
    """t(p) / (p t(1)) per round, dense and sparse calls alternating (masks of bench_masks.random_mask)."""
    masks = {1.0: None}
    for p in (0.5, 0.25, 0.1):
        masks[p] = random_mask("sequence", h, (GRID, GRID), p, seed=int(p * 1000), device="cuda")
    fns = {}
    for p, mask in masks.items():
        def fn(mask=mask):
            return backend.attend(q, k, v, mask, tables, scale)

        fn()  # compile + tune outside the timing
        fns[p] = fn
    torch.cuda.synchronize()
    times = alternating_times(fns, args.interleaved, 50, CUDA)
    for r in range(args.interleaved):
        print(f"round {r + 1}: " + ", ".join(f"p={p}: {times[p][r]:.4f} ms" for p in masks), flush=True)
    out = {"model": args.model, "B": args.batch, "rounds": []}
    for r in range(args.interleaved):
        dense = times[1.0][r]
        out["rounds"].append({str(p): times[p][r] / (masks[p].density() * dense) for p in masks if p < 1.0})
    med = {}
    for p in masks:
        if p < 1.0:
            vals = sorted(rr[str(p)] for rr in out["rounds"])
            med[p] = vals[len(vals) // 2]
            print(f"{args.model} B={args.batch} p={masks[p].density():.3f}: t(p)/(p t(1)) median {med[p]:.3f} "
                  f"(rounds {' '.join(f'{x:.3f}' for x in (rr[str(p)] for rr in out['rounds']))})", flush=True)
    out["median"] = {str(p): v for p, v in med.items()}
    out["ms"] = {str(p): t for p, t in times.items()}
    out["density"] = {str(p): (1.0 if m is None else m.density()) for p, m in masks.items()}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


def sweep(args, q, k, v, tables, scale, h) -> int:
    """Each forced config on the sparse shapes of bench_attention.py (128-token blocks): is the
    autotuner's pick the fastest?"""
    from samsparse.backends.triton import ops
    from samsparse.backends.triton.configs import TileConfig

    rows_out = []
    masks = {kk: exact_mask(h, 2, kk, seed=kk, device="cuda") for kk in (3, 8, 16)}
    for text in args.sweep.split(","):
        cfg = TileConfig(*(int(x) for x in text.split("/")))
        for kk, mask in masks.items():
            def fn(mask=mask, cfg=cfg):
                return ops.attention(q, k, v, mask, tables, scale, config=cfg)

            fn()
            torch.cuda.synchronize()
            ms = time_ms(fn, 50, CUDA, graph=True)
            rows_out.append({"config": text, "key_blocks": kk, "density": kk / 32, "ms": ms})
            print(f"{text:14s} {kk:2d} of 32 blocks (p={kk / 32:.3f}): {ms:.4f} ms", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"sweep": rows_out, "gpu": torch.cuda.get_device_name()}, indent=1))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="vit_b")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--variants", default="tables,terms,nobias")
    ap.add_argument("--json", help="write the rows and fits here")
    ap.add_argument("--interleaved", type=int, metavar="ROUNDS",
                    help="instead: #5's p-scaling t(p) / (p t(1)) with bench_attention.py's random 128-token block "
                         "masks (p = .5, .25, .1), the dense and sparse calls timed in alternating rounds (GPU "
                         "clock drift cancels out of each round's ratio)")
    ap.add_argument("--sweep", help="instead: time these forced tile configs (M/N/w/s, comma list) at 128-token "
                    "block masks of 3, 8 and 16 blocks per query block (p = .094, .25, .5), tables in")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_step_cost.py needs a CUDA GPU", file=sys.stderr)
        return 2
    from samsparse.backends.triton import TritonBackend

    backend = TritonBackend()
    h, d = MODELS[args.model]
    b, n = args.batch, GRID * GRID
    gen = torch.Generator().manual_seed(0)
    qkv = torch.randn(b, n, 3, h, d, generator=gen).to("cuda", torch.bfloat16)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    tab_h = (0.1 * torch.randn(2 * GRID - 1, d, generator=gen)).to("cuda", torch.bfloat16)
    tab_w = (0.1 * torch.randn(2 * GRID - 1, d, generator=gen)).to("cuda", torch.bfloat16)
    tables = RelPos.from_tables(tab_h, tab_w, (GRID, GRID))
    # the terms variant's terms from another RelPos: RelPos.terms caches them on its object for this q,
    # and the kernels then take them instead of running the terms kernel (the eleventh run's first
    # step-cost and alternating-rounds numbers were made that way: no terms kernel in any variant)
    rel_h, rel_w = RelPos.from_tables(tab_h, tab_w, (GRID, GRID)).terms(q)
    if tables.ready_terms(q) is not None:
        raise RuntimeError("the tables variant must run the terms kernel: its RelPos holds terms for q")
    rel = {"tables": tables, "terms": RelPos((GRID, GRID), (GRID, GRID), rel_h=rel_h, rel_w=rel_w), "nobias": None}
    scale = d**-0.5

    if args.interleaved:
        return interleaved(args, backend, q, k, v, tables, scale, h)
    if args.sweep:
        return sweep(args, q, k, v, tables, scale, h)

    cases = [(rows, kk) for rows, ks in ((1, (1, 2, 4, 8, 16, 24)), (2, (1, 2, 4, 8, 12))) for kk in ks]
    rows_out, fits = [], {}
    for variant in args.variants.split(","):
        rp = rel[variant]
        timed = {}
        for rows, kk in [(0, GRID)] + cases:
            mask = None if rows == 0 else exact_mask(h, rows, kk, seed=kk, device="cuda")
            def fn(mask=mask, rp=rp):
                return backend.attend(q, k, v, mask, rp, scale)

            fn()  # compile + tune outside the graph
            torch.cuda.synchronize()
            ms = time_ms(fn, 50, CUDA, graph=True)
            key_rows = GRID if rows == 0 else rows * kk
            timed[(rows, kk)] = ms
            rows_out.append({"model": args.model, "B": b, "variant": variant, "rows_per_block": rows,
                             "key_blocks": kk, "key_rows": key_rows, "ms": ms})
            print(f"{variant:7s} {'dense' if rows == 0 else f'{rows} row/blk x {kk:2d}':>14s} "
                  f"({key_rows:2d} key rows): {ms:.4f} ms", flush=True)
        dense = timed[(0, GRID)]
        for rows in (1, 2):
            pts = [(rows * kk, t) for (r, kk), t in timed.items() if r == rows]
            t0, s = fit(pts)
            pred = {p: (t0 + s * p * GRID) / (p * dense) for p in (0.5, 0.25, 0.094)}
            fits[f"{variant}/{rows}row"] = {"t0_ms": t0, "s_ms_per_row": s, "t0_in_steps": t0 / s * rows,
                                            "dense_over_64s": dense / (GRID * s), "dense_ms": dense,
                                            "predicted_scaling": pred}
            print(f"{variant:7s} {rows} row/blk: t0 {t0 * 1e3:.1f} us, s {s * 1e3:.2f} us/row "
                  f"(t0 = {t0 / s:.1f} rows), dense {dense:.4f} ms = {dense / (GRID * s):.3f} x 64 s; "
                  "fit t(p)/(p t(1)): " + ", ".join(f"p={p}: {r:.2f}" for p, r in pred.items()), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows_out, "fits": fits,
                                               "gpu": torch.cuda.get_device_name()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
