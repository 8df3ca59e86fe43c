#!/usr/bin/env python3
"""Does a persistent, flattened program loop cut the fixed cost per program of masked attention? (toy A/B)

A masked global call costs t(k) = t0 + s k for k key blocks per query block; on the H200 the intercept
t0 is ~50 us of the kernel's own (vit_b B=8, Triton NOTES) and is what keeps sparse calls from scaling with
density. Before building it into the real kernel, this toy measures the idea in isolation: the same
block-sparse attention loop (online softmax in exp2, bf16 in, fp32 accumulation, no bias) as

- ``grid``: one program per query tile (the shipped kernels' structure);
- ``persist``: a persistent grid (programs = SMs x --per-sm) looping over tiles;
- ``persist+flat``: the same with ``tl.range(..., flatten=True)``, which lets Triton pipeline across tiles
  (it only flattens a loop-invariant inner bound: every tile runs the same k steps, as SAM's recipes
  give; see scripts/probe_triton_flatten.py). On the H200 (Triton 3.6) it computes wrong results;
- ``persist+manual``: the nest flattened by hand: one loop over (tile, step) pairs, Q loaded when a tile
  starts, the running max reset there (the rescale by exp2(-inf) = 0 then clears the sums), the output
  stored on a tile's last step; the pipeliner sees one loop and can prefetch the next tile's K/V.
  (Measured on the H200: one program per tile wins; benchmarks/RESULTS.md, eighteenth run.)

``--set prologue`` asks where the shipped masked kernel's larger intercept (~54 us against this toy's ~22)
comes from: one program per tile, adding the shipped kernel's per-tile extras one at a time: the width
term tile (``+relw``), the height term per step (``+relw+relh``), the key-block ids as one register row
(``+ids row``), the LSE output (``+lse``). Every launch is capped at --maxnreg registers (the shipped
cap of these tiles, 168), so all variants keep 3 CTAs per SM.

Every variant is first checked against a float32 reference; a variant that computes wrong results is
reported and left out of the timing. For k in --steps it times the others (triton.testing.do_bench,
median), fits t = t0 + s k per variant and prints the table and the fits.

    PYTHONPATH=. python scripts/ab_persistent_toy.py [--set persistent|prologue|all] [--steps 4,8,16,32,64]
    TRITON_INTERPRET=1 python scripts/ab_persistent_toy.py --check-only --device cpu --set all   # correctness only
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch
import triton
import triton.language as tl


@triton.jit
def toy_step(q, K, V, base, j, m_i, l_i, acc, relw_tile, h, offs_n, offs_d, qk_scale,
             BN: tl.constexpr, D: tl.constexpr, REL_W: tl.constexpr, REL_H: tl.constexpr):
    """Key block j of a tile: the online softmax update of (m_i, l_i, acc). With REL_W the width term
    tile is added to every step's logits (one FMA per logit); with REL_H the step's height term ``h``
    (one value per query row) goes into the row max, as in the shipped masked kernel."""
    rows = (j * BN + offs_n)[:, None] * D + offs_d[None, :]
    k = tl.load(K + base + rows)
    v = tl.load(V + base + rows)
    if REL_W:
        s = tl.dot(q, tl.trans(k)) * qk_scale + relw_tile
    else:
        s = tl.dot(q, tl.trans(k)) * qk_scale
    if REL_H:
        m_new = tl.maximum(m_i, tl.max(s, 1) + h)
        p = tl.exp2(s - (m_new - h)[:, None])
    else:
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc


@triton.jit
def toy_attention(Q, K, V, O, IDX, NUM, RELW, RELH, LSE, n_tiles, tiles_per_bh, n_steps, qk_scale,
                  PERSIST: tl.constexpr, FLAT: tl.constexpr, N: tl.constexpr, BM: tl.constexpr,
                  BN: tl.constexpr, D: tl.constexpr, KMAX: tl.constexpr, COUNT_LOADED: tl.constexpr = False,
                  MANUAL: tl.constexpr = False, REL_W: tl.constexpr = False, REL_H: tl.constexpr = False,
                  ID_ROW: tl.constexpr = False, LSE_OUT: tl.constexpr = False):
    # COUNT_LOADED: each tile's step count read from NUM[tile] (a masked call's form; Triton then does
    # not flatten the nest, see scripts/probe_triton_flatten.py) instead of the argument n_steps.
    # The shipped masked kernel's per-tile extras, one flag each (the nested loop only): REL_W the width
    # term tile RELW [bh, N, BN] loaded once per tile; REL_H the height term RELH [bh, N // BN, N] (key-row
    # major), one query vector per step loaded a step ahead; ID_ROW the tile's key-block ids loaded as one
    # row and each step's id picked from it (a cross-warp reduction) instead of a scalar load per step;
    # LSE_OUT the log-sum-exp stored per query row.
    offs_m = tl.arange(0, BM)
    offs_n = tl.arange(0, BN)
    offs_d = tl.arange(0, D)
    if PERSIST:
        first, stride = tl.program_id(0), tl.num_programs(0)
    else:
        first, stride = tl.program_id(0), n_tiles
    if MANUAL:  # the nest flattened by hand: one loop over this program's (tile, step) pairs
        mine = tl.cdiv(n_tiles - first, stride)
        q = tl.zeros([BM, D], Q.dtype.element_ty)
        m_i = tl.full([BM], -float("inf"), tl.float32)
        l_i = tl.zeros([BM], tl.float32)
        acc = tl.zeros([BM, D], tl.float32)
        for it in tl.range(0, mine * n_steps):
            t = it % n_steps
            tile = first + (it // n_steps) * stride
            bh = tile // tiles_per_bh
            qb = tile % tiles_per_bh
            base = bh.to(tl.int64) * N * D
            if t == 0:  # a new tile: its Q, and a running max of -inf so alpha = 0 clears l_i and acc
                q = tl.load(Q + base + (qb * BM + offs_m)[:, None] * D + offs_d[None, :])
                m_i = tl.full([BM], -float("inf"), tl.float32)
            j = tl.load(IDX + tile * KMAX + t)
            m_i, l_i, acc = toy_step(q, K, V, base, j, m_i, l_i, acc, 0.0, 0.0, offs_n, offs_d, qk_scale, BN, D,
                                     False, False)
            if t == n_steps - 1:
                out = acc / l_i[:, None]
                tl.store(O + base + (qb * BM + offs_m)[:, None] * D + offs_d[None, :],
                         out.to(O.dtype.element_ty))
        return
    for tile in tl.range(first, n_tiles, stride, flatten=FLAT):
        bh = tile // tiles_per_bh
        qb = tile % tiles_per_bh
        base = bh.to(tl.int64) * N * D
        q = tl.load(Q + base + (qb * BM + offs_m)[:, None] * D + offs_d[None, :])
        steps = n_steps
        if COUNT_LOADED:
            steps = tl.load(NUM + tile)
        m_i = tl.full([BM], -float("inf"), tl.float32)
        l_i = tl.zeros([BM], tl.float32)
        acc = tl.zeros([BM, D], tl.float32)
        q_rows = qb * BM + offs_m
        relw_tile = 0.0
        if REL_W:
            relw_tile = tl.load(RELW + bh.to(tl.int64) * N * BN + q_rows[:, None] * BN + offs_n[None, :])
            relw_tile = relw_tile.to(tl.float32) * 1.4426950408889634
        if ID_ROW:
            offs_k = tl.arange(0, KMAX)
            id_row = tl.load(IDX + tile * KMAX + offs_k)
        relh_base = RELH + bh.to(tl.int64) * (N // BN) * N + q_rows
        h_nxt = 0.0
        if REL_H:  # step 0's height term; each step then loads the next one's
            h_nxt = tl.load(relh_base + tl.load(IDX + tile * KMAX) * N).to(tl.float32) * 1.4426950408889634
        for t in tl.range(0, steps):
            if ID_ROW:
                j = tl.sum(tl.where(offs_k == t, id_row, 0), 0)
            else:
                j = tl.load(IDX + tile * KMAX + t)
            h = h_nxt
            if REL_H:
                if ID_ROW:
                    j1 = tl.sum(tl.where(offs_k == t + 1, id_row, 0), 0)
                else:
                    j1 = tl.load(IDX + tile * KMAX + t + 1, mask=t + 1 < steps, other=0)
                h_nxt = tl.load(relh_base + j1 * N).to(tl.float32) * 1.4426950408889634
            m_i, l_i, acc = toy_step(q, K, V, base, j, m_i, l_i, acc, relw_tile, h, offs_n, offs_d, qk_scale, BN, D,
                                     REL_W, REL_H)
        out = acc / l_i[:, None]
        tl.store(O + base + q_rows[:, None] * D + offs_d[None, :], out.to(O.dtype.element_ty))
        if LSE_OUT:
            tl.store(LSE + tile * BM + offs_m, m_i + tl.log2(l_i))


def build_kernel():
    """The toy kernel (a function so that scripts/probe_triton_flatten.py compiles the same one)."""
    return toy_attention


# the loop structures (--set persistent) and the shipped masked kernel's per-tile extras, added one at a time
# to one program per tile (--set prologue); each variant is its kernel's constexprs
VARIANT_SETS = {
    "persistent": {
        "grid": dict(PERSIST=False, FLAT=False, MANUAL=False),
        "persist": dict(PERSIST=True, FLAT=False, MANUAL=False),
        "persist+flat": dict(PERSIST=True, FLAT=True, MANUAL=False),
        "persist+manual": dict(PERSIST=True, FLAT=False, MANUAL=True),
    },
    "prologue": {
        "grid": dict(PERSIST=False),
        "+relw": dict(PERSIST=False, REL_W=True),
        "+relw+relh": dict(PERSIST=False, REL_W=True, REL_H=True),
        "+ids row": dict(PERSIST=False, REL_W=True, REL_H=True, ID_ROW=True),
        "+lse": dict(PERSIST=False, REL_W=True, REL_H=True, ID_ROW=True, LSE_OUT=True),
    },
}


def key_ids(bh: int, mq: int, mk: int, steps: int, kmax: int, seed: int, device) -> torch.Tensor:
    """[bh * mq, kmax] int32: per query tile, `steps` distinct key blocks (random order), padded with 0."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(bh * mq, kmax, dtype=torch.int32)
    ids[:, :steps] = torch.rand(bh * mq, mk, generator=g).argsort(dim=1)[:, :steps].to(torch.int32)
    return ids.to(device)


def reference(q, k, v, ids, steps, bm, bn, scale, relw=None, relh=None) -> torch.Tensor:
    """float32 attention over the toy's mask; ``relw`` [bh, N, BN] / ``relh`` [bh, N // BN, N]: the bias
    ``relw[q, key % BN] + relh[key // BN, q]`` (natural-log units), as the REL_W / REL_H kernels add it."""
    bh, n, d = q.shape
    mq = n // bm
    allowed = torch.zeros(bh, mq, n // bn, dtype=torch.bool)
    tiles = ids.view(bh, mq, -1)[..., :steps].long().cpu()
    allowed.scatter_(2, tiles, True)
    mask = allowed.repeat_interleave(bm, 1).repeat_interleave(bn, 2).to(q.device)
    s = (q.float() @ k.float().transpose(1, 2)) * scale
    if relw is not None:
        s = s + relw.float().repeat(1, 1, n // bn)
    if relh is not None:
        s = s + relh.float().transpose(1, 2).repeat_interleave(bn, 2)
    s = s.masked_fill(~mask, float("-inf"))
    return torch.softmax(s, dim=-1) @ v.float()


def grids(n_tiles: int, device: torch.device, per_sm: int, variants: dict) -> dict[str, tuple[int]]:
    """Launch grid per variant (computed once, outside the timed calls)."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 2
    return {name: (min(n_tiles, sms * per_sm),) if cx["PERSIST"] else (n_tiles,) for name, cx in variants.items()}


def run(kernel, constexprs, grid, q, k, v, o, ids, relw, relh, lse, steps, bm, bn, num_warps, num_stages, maxnreg=0):
    bh, n, d = q.shape
    mq = n // bm
    if maxnreg and q.is_cuda:
        constexprs = {**constexprs, "maxnreg": maxnreg}
    kernel[grid](q, k, v, o, ids, ids, relw, relh, lse, bh * mq, mq, steps, d ** -0.5 * 1.4426950408889634,
                 N=n, BM=bm, BN=bn, D=d, KMAX=ids.shape[1], num_warps=num_warps, num_stages=num_stages, **{"FLAT": False, **constexprs})
    return o


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bh", type=int, default=96, help="batch x heads (vit_b B=8: 96)")
    ap.add_argument("--n", type=int, default=4096, help="tokens (SAM's global blocks: 4096)")
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--bm", type=int, default=64, help="query rows per tile (SAM's 1x64 recipes: 64)")
    ap.add_argument("--bn", type=int, default=64)
    ap.add_argument("--steps", default="4,8,16,32,64", help="key blocks per query tile")
    ap.add_argument("--per-sm", type=int, default=3, help="persistent programs per SM")
    ap.add_argument("--warps", type=int, default=4)
    ap.add_argument("--stages", type=int, default=3)
    ap.add_argument("--maxnreg", type=int, default=168,
                    help="register cap of every launch (the shipped cap of 64-row key-row tiles: 168; 0: none)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--set", choices=[*VARIANT_SETS, "all"], default="persistent",
                    help="persistent: the loop structures; prologue: the shipped kernel's per-tile extras one at a time")
    ap.add_argument("--check-only", action="store_true", help="correctness of every variant, no timing")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("ab_persistent_toy.py needs a CUDA GPU (or --check-only --device cpu under TRITON_INTERPRET=1)",
              file=sys.stderr)
        return 2
    if args.check_only and args.device == "cpu":  # a size the interpreter runs in seconds
        args.bh, args.n, args.bm, args.bn, args.d = 2, 128, 32, 32, 32
    kernel = build_kernel()
    dev = torch.device(args.device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(args.bh, args.n, args.d, generator=g).to(dev, dtype) for _ in range(3))
    o = torch.empty_like(q)
    mq, mk = args.n // args.bm, args.n // args.bn
    relw = torch.randn(args.bh, args.n, args.bn, generator=g).to(dev, dtype)
    relh = torch.randn(args.bh, mk, args.n, generator=g).to(dev, dtype)
    lse = torch.empty(args.bh, args.n, device=dev, dtype=torch.float32)
    steps_list = [s for s in (int(x) for x in args.steps.split(",")) if s <= mk] or [mk]
    sets = list(VARIANT_SETS) if args.set == "all" else [args.set]
    variants = {name: cx for set_name in sets for name, cx in VARIANT_SETS[set_name].items()}
    grid = grids(args.bh * mq, dev, args.per_sm, variants)
    # correctness: every variant at the smallest and largest k
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    wrong = set()
    for steps in sorted({steps_list[0], steps_list[-1]}):
        ids = key_ids(args.bh, mq, mk, steps, mk, steps, dev)
        refs = {}
        for variant, cx in variants.items():
            bias = (cx.get("REL_W", False), cx.get("REL_H", False))
            if bias not in refs:
                refs[bias] = reference(q, k, v, ids, steps, args.bm, args.bn, args.d ** -0.5,
                                       relw if bias[0] else None, relh if bias[1] else None)
            ref = refs[bias]
            out = run(kernel, cx, grid[variant], q, k, v, o, ids, relw, relh, lse, steps, args.bm, args.bn,
                      args.warps, args.stages, args.maxnreg)
            err = float((out.float() - ref).abs().max() / ref.abs().max())
            if not err <= tol:
                wrong.add(variant)
            print(f"check {variant:14s} k={steps:3d}: max rel err {err:.2e}{'  WRONG' if err > tol else ''}")
    if wrong:
        print(f"WRONG RESULTS (max rel err > {tol}): {', '.join(sorted(wrong))}; left out of the timing",
              file=sys.stderr)
    if args.check_only or "grid" in wrong:
        return 1 if wrong else 0
    timed = [variant for variant in variants if variant not in wrong]
    from triton.testing import do_bench

    times = {variant: [] for variant in timed}
    print(f"\n{torch.cuda.get_device_name(dev)}; bh={args.bh} n={args.n} d={args.d} tiles {args.bm}x{args.bn}; "
          f"persistent programs = SMs x {args.per_sm}; register cap {args.maxnreg or 'none'}; ms (median)")
    print("k     " + "".join(f"{v:>16s}" for v in timed))
    for steps in steps_list:
        ids = key_ids(args.bh, mq, mk, steps, mk, steps, dev)
        row = []
        for variant in timed:
            ms = do_bench(lambda: run(kernel, variants[variant], grid[variant], q, k, v, o, ids, relw, relh, lse, steps,
                                      args.bm, args.bn, args.warps, args.stages, args.maxnreg), rep=100)
            times[variant].append(ms)
            row.append(ms)
        print(f"{steps:<6d}" + "".join(f"{t:16.4f}" for t in row))
    if len(steps_list) >= 2:
        print("\nfit t = t0 + s k (least squares):")
        for variant, ts in times.items():
            slope, t0 = statistics.linear_regression(steps_list, ts)
            print(f"  {variant:14s} t0 = {t0 * 1e3:7.1f} us, s = {slope * 1e3:6.2f} us per key block")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
