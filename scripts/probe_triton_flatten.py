#!/usr/bin/env python3
"""Does Triton's ``tl.range(..., flatten=True)`` flatten a persistent attention loop nest? (offline, no GPU)

A persistent kernel for masked calls (one program running query tiles back to back, so the next tile's
loads overlap the current tile's last steps) is the remaining idea for the per-program fixed cost that
keeps sparse calls from scaling with density (samsparse/backends/triton/NOTES.md). Triton flattens a
loop nest into one software-pipelined loop when asked (``flatten=True`` on the outer loop). This script
compiles a toy persistent block-sparse attention loop (online softmax, key-block ids per tile, store
after the inner loop) for sm_90 twice, with and without ``flatten``, for two inner trip counts: one loaded
per tile from the mask (``kv_num[tile]``, what a masked call has) and one passed as a kernel argument (a
uniform bound, e.g. the mask's longest row), and says whether flattening changed the PTX.

    python scripts/probe_triton_flatten.py

Run offline (2026-12-03) with Triton 3.6.0 (the GPU machines') and 3.8.0: the PTX is identical with and
without ``flatten`` when the trip count is loaded per tile, and changes (2632 -> 2934 lines on 3.6, 4115 ->
4545 on 3.8) when it is an argument: Triton transforms the nest only with a loop-invariant bound, so a
persistent masked kernel would run every tile to a common bound (no idle steps for SAM's recipes, whose
query blocks all read the same number of key blocks; idle, masked steps for ragged masks). Whether the
flattened loop overlaps one tile's epilogue with the next tile's loads is a GPU question.
"""

from __future__ import annotations

import argparse
import sys


def build_toy():
    import triton
    import triton.language as tl

    @triton.jit
    def toy(Q, K, V, O, NUM, IDX, n_tiles, n_bound, FLAT: tl.constexpr, BOUND_ARG: tl.constexpr,
            BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr, MK: tl.constexpr):
        pid = tl.program_id(0)
        nprog = tl.num_programs(0)
        offs_m = tl.arange(0, BM)
        offs_n = tl.arange(0, BN)
        offs_d = tl.arange(0, D)
        for tile in tl.range(pid, n_tiles, nprog, flatten=FLAT):
            q = tl.load(Q + (tile * BM + offs_m)[:, None] * D + offs_d[None, :])
            n = tl.load(NUM + tile)
            if BOUND_ARG:
                n = n_bound
            m_i = tl.full([BM], -float("inf"), tl.float32)
            l_i = tl.zeros([BM], tl.float32)
            acc = tl.zeros([BM, D], tl.float32)
            for t in tl.range(0, n):
                j = tl.load(IDX + tile * MK + t)
                k = tl.load(K + (j * BN + offs_n)[:, None] * D + offs_d[None, :])
                v = tl.load(V + (j * BN + offs_n)[:, None] * D + offs_d[None, :])
                s = tl.dot(q, tl.trans(k))
                m_new = tl.maximum(m_i, tl.max(s, 1))
                p = tl.exp2(s - m_new[:, None])
                alpha = tl.exp2(m_i - m_new)
                l_i = l_i * alpha + tl.sum(p, 1)
                acc = acc * alpha[:, None] + tl.dot(p.to(tl.bfloat16), v)
                m_i = m_new
            tl.store(O + (tile * BM + offs_m)[:, None] * D + offs_d[None, :], (acc / l_i[:, None]).to(tl.bfloat16))

    return toy


def compile_ptx(toy, flat: bool, bound_arg: bool, arch: int) -> str:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = {"Q": "*bf16", "K": "*bf16", "V": "*bf16", "O": "*bf16", "NUM": "*i32", "IDX": "*i32", "n_tiles": "i32",
           "n_bound": "i32", "FLAT": "constexpr", "BOUND_ARG": "constexpr", "BM": "constexpr", "BN": "constexpr",
           "D": "constexpr", "MK": "constexpr"}
    src = ASTSource(fn=toy, signature=sig,
                    constexprs={"FLAT": flat, "BOUND_ARG": bound_arg, "BM": 128, "BN": 64, "D": 64, "MK": 64})
    kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": 4, "num_stages": 3})
    return kernel.asm["ptx"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90, help="compute capability to compile for (default 90)")
    args = ap.parse_args(argv)
    try:
        import triton
    except ImportError:
        print("probe_triton_flatten.py needs triton", file=sys.stderr)
        return 2
    toy = build_toy()
    print(f"triton {triton.__version__}, sm_{args.arch}")
    for bound_arg, what in ((False, "trip count loaded per tile"), (True, "trip count a kernel argument")):
        plain = compile_ptx(toy, False, bound_arg, args.arch)
        flat = compile_ptx(toy, True, bound_arg, args.arch)
        verdict = "flattened (PTX differs)" if plain != flat else "not flattened (same PTX)"
        print(f"{what:30s} {len(plain.splitlines()):5d} -> {len(flat.splitlines()):5d} PTX lines: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
