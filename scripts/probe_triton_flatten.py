#!/usr/bin/env python3
"""Does Triton's ``tl.range(..., flatten=True)`` flatten a persistent attention loop nest? (offline, no GPU)

A persistent kernel for masked calls (one program running query tiles back to back, so the next tile's
loads overlap the current tile's last steps) is the remaining idea for the per-program fixed cost that
keeps sparse calls from scaling with density (samsparse/backends/triton/NOTES.md). Triton flattens a
loop nest into one software-pipelined loop when asked (``flatten=True`` on the outer loop). This script
compiles the toy persistent block-sparse attention loop of scripts/ab_persistent_toy.py (online softmax,
key-block ids per tile, store after the inner loop) for sm_90 twice, with and without ``flatten``, for two inner trip counts: one loaded
per tile from the mask (``kv_num[tile]``, what a masked call has) and one passed as a kernel argument (a
uniform bound, e.g. the mask's longest row), and says whether flattening changed the PTX.

    python scripts/probe_triton_flatten.py

Run offline (2026-12-03) with Triton 3.6.0 (the GPU machines') and 3.8.0: the PTX is identical with and
without ``flatten`` when the trip count is loaded per tile, and changes (1962 -> 2181 lines on 3.6, 2991 ->
3274 on 3.8) when it is an argument: Triton transforms the nest only with a loop-invariant bound, so a
persistent masked kernel would run every tile to a common bound (no idle steps for SAM's recipes, whose
query blocks all read the same number of key blocks; idle, masked steps for ragged masks). Whether the
flattened loop overlaps one tile's epilogue with the next tile's loads is a GPU question.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def compile_ptx(flat: bool, count_loaded: bool, arch: int) -> str:
    """PTX of scripts/ab_persistent_toy.py's persistent kernel (64-row tiles, d = 64, bf16) for sm_<arch>."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from ab_persistent_toy import build_kernel

    sig = {"Q": "*bf16", "K": "*bf16", "V": "*bf16", "O": "*bf16", "IDX": "*i32", "NUM": "*i32", "RELW": "*bf16",
           "RELH": "*bf16", "LSE": "*fp32", "n_tiles": "i32", "tiles_per_bh": "i32", "n_steps": "i32",
           "qk_scale": "fp32"}
    constexprs = {"PERSIST": True, "FLAT": flat, "N": 4096, "BM": 64, "BN": 64, "D": 64, "KMAX": 64,
                  "COUNT_LOADED": count_loaded}
    sig.update({name: "constexpr" for name in constexprs})
    # pointers 16-byte aligned, as Triton's launcher specializes them at run time (without it nothing is pipelined)
    aligned = {(i,): [["tt.divisibility", 16]] for i, kind in enumerate(sig.values()) if kind.startswith("*")}
    src = ASTSource(fn=build_kernel(), signature=sig, constexprs=constexprs, attrs=aligned)
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
    print(f"triton {triton.__version__}, sm_{args.arch}")
    for loaded, what in ((True, "trip count loaded per tile"), (False, "trip count a kernel argument")):
        plain = compile_ptx(False, loaded, args.arch)
        flat = compile_ptx(True, loaded, args.arch)
        verdict = "flattened (PTX differs)" if plain != flat else "not flattened (same PTX)"
        print(f"{what:30s} {len(plain.splitlines()):5d} -> {len(flat.splitlines()):5d} PTX lines: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
