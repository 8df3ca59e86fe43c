#!/usr/bin/env python3
"""Host (Python + launch) time per call of the pieces of a patched attention call, on a GPU.

Tiny shapes keep the GPU idle, so the wall time per call is the host time. Also times a
patched SAM attention module end to end (eager) for the vit_b global and window shapes.
Usage: PYTHONPATH=. python scripts/profile_host.py [--cprofile CALLS] [--shapes "tiny,global B=1,window B=8"]

With ``--cprofile CALLS`` it also runs cProfile over that many calls of the vit_b global B=1 call a
patched block makes between its projections (``SparseAttention._attend_heads``, real shape, so the
GPU is busy as in the benchmarks) and prints the functions with the most own time.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from samsparse.attention import SparseAttention  # noqa: E402
from samsparse.backends import get  # noqa: E402
from samsparse.relpos import RelPos  # noqa: E402


def host_us(fn, n=300):
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    host = (time.perf_counter() - t) / n * 1e6
    torch.cuda.synchronize()
    return host


def main() -> int:
    if "-h" in sys.argv or "--help" in sys.argv:
        print(__doc__)
        return 0
    if not torch.cuda.is_available():
        print("profile_host.py needs a CUDA GPU", file=sys.stderr)
        return 2
    dev = "cuda"
    dt = torch.bfloat16
    from samsparse.backends.triton import ops

    rows = []
    shapes = {"tiny": (1, 1, 8, 64), "global B=1": (1, 12, 64, 64), "window B=8": (200, 12, 14, 64)}
    if "--shapes" in sys.argv:  # e.g. --shapes "global B=1,window B=8"
        keep = sys.argv[sys.argv.index("--shapes") + 1].split(",")
        shapes = {k: v for k, v in shapes.items() if k in keep}
    for name, (b, h, g, d) in shapes.items():
        n = g * g
        qkv = torch.randn(b, n, 3, h, d, device=dev, dtype=dt)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        th = torch.randn(2 * g - 1, d, device=dev, dtype=dt)
        tw = torch.randn(2 * g - 1, d, device=dev, dtype=dt)
        rp = RelPos.from_tables(th, tw, (g, g))
        rel_h, rel_w = ops.relpos_terms(q, rp.rh, rp.rw, (g, g), (g, g))
        terms = RelPos((g, g), (g, g), rel_h=rel_h, rel_w=rel_w)
        tb = get("triton")
        rows.append((name, "RelPos.from_tables", host_us(lambda: RelPos.from_tables(th, tw, (g, g)))))
        rows.append((name, "ops.relpos_terms", host_us(lambda: ops.relpos_terms(q, rp.rh, rp.rw, (g, g), (g, g)))))
        rows.append((name, "ops.attention(terms)", host_us(lambda: ops.attention(q, k, v, None, terms, d**-0.5))))
        rows.append((name, "ops.attention(tables)", host_us(lambda: ops.attention(q, k, v, None, rp, d**-0.5))))
        rows.append((name, "backend.attend(tables)", host_us(lambda: tb.attend(q, k, v, None, rp, d**-0.5))))
        rows.append((name, "backend._attend(tables)", host_us(lambda: tb._attend(q, k, v, None, rp, d**-0.5, False))))
        mod = SparseAttention(h * d, h, use_rel_pos=True, input_size=(g, g)).to(dev, dt).eval()
        x = torch.randn(b, g, g, h * d, device=dev, dtype=dt)
        with torch.no_grad():
            qkv_m = mod.qkv(x.reshape(b, n, h * d)).reshape(b, n, 3, h, d).permute(2, 0, 3, 1, 4)
            rows.append((name, "SparseAttention._attend_heads", host_us(lambda: mod._attend_heads(*qkv_m.unbind(0), (g, g)))))
            rows.append((name, "SparseAttention.forward", host_us(lambda: mod(x))))
            rows.append((name, "qkv+proj linears only", host_us(lambda: mod.proj(mod.qkv(x)[..., : h * d]))))
    print(f"fast launch: {os.environ.get('SAMSPARSE_TRITON_FAST_LAUNCH', 'default')}")
    print(f"{'shape':12s} {'piece':28s} host us/call")
    for r in rows:
        print(f"{r[0]:12s} {r[1]:28s} {r[2]:10.1f}")
    if "--cprofile" in sys.argv:
        calls = int(sys.argv[sys.argv.index("--cprofile") + 1])
        profile_attend_heads(calls, dev, dt)
    return 0


def profile_attend_heads(calls: int, dev: str, dt: torch.dtype) -> None:
    """cProfile of ``calls`` vit_b global B=1 ``_attend_heads`` calls (after a warm-up), by own time."""
    import cProfile
    import pstats

    h, g, d = 12, 64, 64
    mod = SparseAttention(h * d, h, use_rel_pos=True, input_size=(g, g)).to(dev, dt).eval()
    qkv = torch.randn(1, g * g, 3, h, d, device=dev, dtype=dt).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    with torch.no_grad():
        for _ in range(50):
            mod._attend_heads(q, k, v, (g, g))
        torch.cuda.synchronize()
        prof = cProfile.Profile()
        t = time.perf_counter()
        prof.enable()
        for _ in range(calls):
            mod._attend_heads(q, k, v, (g, g))
        prof.disable()
        wall = (time.perf_counter() - t) / calls * 1e6
        torch.cuda.synchronize()
    print(f"\ncProfile of {calls} vit_b global B=1 _attend_heads calls: {wall:.1f} us/call under the profiler")
    pstats.Stats(prof).sort_stats("tottime").print_stats(35)


if __name__ == "__main__":
    raise SystemExit(main())
