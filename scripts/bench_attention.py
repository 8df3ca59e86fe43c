#!/usr/bin/env python
"""Benchmark SAM's global / windowed attention: samsparse's Triton kernel vs the baselines.

Contenders (same inputs: q, k, v are strided views of one qkv projection output
[B, N, 3, H, D]; everything after the projection is timed, rel-pos included):

- ``sam_eager``     SAM's code: reshape, (q*scale) @ k^T, get_rel_pos + einsum
                    rel terms, add, softmax, @ v (materialised N x N scores).
- ``sdpa_bias``     PyTorch SDPA with the bias built in the call from rel_h/rel_w
                    (einsum terms + broadcast add): the best exact PyTorch path.
- ``sdpa_nobias``   SDPA without any bias: a different function, the speed
                    ceiling of a flash kernel on this GPU. Timed on every SDPA
                    backend (cuDNN, flash, memory-efficient), on the strided
                    views of the projection and on contiguous copies; the
                    fastest is the ratio base (on an H100 that is cuDNN).
- ``flex``          FlexAttention (torch.compile'd) with a rel-pos score_mod,
                    dense and with the block mask (einsum terms included).
- ``cuda`` / ``cuda_wgmma`` (``--cuda``) samsparse's CUDA backend: tables in, terms by
                    one einsum, then the mma.sync kernel / the Hopper wgmma kernel
                    (SAMSPARSE_CUDA_KERNEL=wgmma, compute capability 9.0; calls it does
                    not serve run on mma.sync), dense and block-sparse.
- ``ours``          samsparse's Triton backend: tables in, terms computed by our
                    kernel, dense and block-sparse (``ours_terms``: the kernel
                    alone, rel terms handed in precomputed; ``ours_module``: the
                    call a patched SAM block makes between its projections, through
                    ``SparseAttention._attend_heads``: gathered tables kept while its
                    parameters are unchanged, backend choice and input check cached).

Per row: median time (triton.testing.do_bench), TFLOP/s = 4*B*H*N*N*D*density/t,
max error vs a float32 reference (max |out - ref| / max |ref|), time ratios
vs SDPA-no-bias and vs SDPA+bias of the same shape, and for sparse rows the
scaling time(p) / (p * time(dense)): once from the rows' own times, and once from
our graph replays re-timed in alternating rounds (``--scaling-rounds``, default 5:
dense, then each density, per round; the median of the per-round ratios), which
keeps clock drift over the run out of the ratio.

Runs with only torch + triton (+ samsparse from the repo root: ``PYTHONPATH=.``)::

    PYTHONPATH=. python scripts/bench_attention.py --json bench.json --md bench.md
    PYTHONPATH=. python scripts/bench_attention.py --quick          # B=8 H=12 d=64
    PYTHONPATH=. python scripts/bench_attention.py --check-only     # errors, no timing
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    p.add_argument("--quick", action="store_true", help="only B=8, H=12, d=64 (+ its windowed shape)")
    p.add_argument("--check-only", action="store_true", help="check errors of every contender, no timing")
    p.add_argument("--batches", default="1,8", help="comma list of batch sizes (default 1,8)")
    p.add_argument("--models", default="b,h", help="b (H=12, d=64) and/or h (H=16, d=80); default b,h")
    p.add_argument("--densities", default="1,0.5,0.25,0.1")
    p.add_argument("--layouts", default="sequence", help="sparse mask layouts: sequence (block 128), tiles (8x16); comma list")
    p.add_argument("--skip-flex", action="store_true", help="skip FlexAttention (its compile takes a while)")
    p.add_argument("--skip-eager", action="store_true", help="skip SAM eager (slow, memory hungry)")
    p.add_argument("--no-window", action="store_true", help="skip the windowed (14x14) shapes")
    p.add_argument("--cuda", action="store_true",
                   help="add the CUDA backend (mma.sync kernel; and the wgmma kernel on compute capability 9.0)")
    p.add_argument("--keep-cache", action="store_true",
                   help="use the existing autotune cache ($SAMSPARSE_HOME); default: a fresh temporary one, "
                        "so the first-call time includes autotuning")
    p.add_argument("--no-autotune", action="store_true", help="SAMSPARSE_TRITON_AUTOTUNE=0 (default tile configs)")
    p.add_argument("--rep", type=int, default=100, help="do_bench rep (ms)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scaling-rounds", type=int, default=5,
                   help="alternating rounds of ours' dense and sparse graph replays for the p-scaling column (0: off)")
    p.add_argument("--grid", type=int, default=64, help="global token grid side (SAM: 64)")
    p.add_argument("--window", type=int, default=14, help="window side (SAM: 14)")
    p.add_argument("--block", type=int, default=128, help="sequence-layout mask block (tokens)")
    p.add_argument("--tile", default="8x16", help="tiles-layout mask tile (th x tw)")
    p.add_argument("--device", default="cuda", help="cuda; 'cpu' only as a smoke test under TRITON_INTERPRET=1")
    p.add_argument("--json", type=Path, help="write the rows + metadata as JSON here")
    p.add_argument("--md", type=Path, help="write the markdown table here")
    return p.parse_args(argv)


ARGS = parse_args()
if not ARGS.keep_cache:
    os.environ["SAMSPARSE_HOME"] = tempfile.mkdtemp(prefix="samsparse-bench-")
if ARGS.no_autotune:
    os.environ["SAMSPARSE_TRITON_AUTOTUNE"] = "0"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from samsparse.masks import BlockMask  # noqa: E402
from samsparse.relpos import RelPos, gather_rel_pos  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_batch_scaling import alternating_times, sam_block_attention, time_ms  # noqa: E402
from bench_masks import random_mask  # noqa: E402

MODELS = {"b": (12, 64), "h": (16, 80)}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- contenders
def split_qkv(qkv):
    """[B, N, 3, H, D] -> q, k, v strided views [B, H, N, D]."""
    return qkv.permute(2, 0, 3, 1, 4).unbind(0)


def rel_terms(q, rel_pos_h, rel_pos_w, grid):
    """SAM's einsum rel terms from q [B, H, N, D]: rel_h [B, H, N, gh], rel_w [B, H, N, gw]."""
    b, h, n, d = q.shape
    gh, gw = grid
    rh = gather_rel_pos(gh, gh, rel_pos_h)
    rw = gather_rel_pos(gw, gw, rel_pos_w)
    r_q = q.reshape(b, h, gh, gw, d)
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, rh).reshape(b, h, n, gh)
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, rw).reshape(b, h, n, gw)
    return rel_h, rel_w


def sam_eager(qkv, rel_pos_h, rel_pos_w, grid, scale):
    """segment_anything's Attention.forward after the qkv projection."""
    b, n, _, h, d = qkv.shape
    q, k, v = qkv.permute(2, 0, 3, 1, 4).reshape(3, b * h, n, d).unbind(0)
    attn = (q * scale) @ k.transpose(-2, -1)
    gh, gw = grid
    rh = gather_rel_pos(gh, gh, rel_pos_h)
    rw = gather_rel_pos(gw, gw, rel_pos_w)
    r_q = q.reshape(b * h, gh, gw, d)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, rh)
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, rw)
    attn = (attn.view(b * h, gh, gw, gh, gw) + rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]).view(b * h, n, n)
    attn = attn.softmax(dim=-1)
    return (attn @ v).view(b, h, n, d)


def sdpa_bias(q, k, v, rel_pos_h, rel_pos_w, grid, scale):
    rel_h, rel_w = rel_terms(q, rel_pos_h, rel_pos_w, grid)
    b, h, n, _ = q.shape
    bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, h, n, n)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)


SDPA_NOBIAS_BACKENDS = ("CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION")


def sdpa_nobias(q, k, v, scale, backend: str | None = None):
    """PyTorch SDPA without bias, on one named backend (None: PyTorch's own choice)."""
    if backend is None:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([getattr(SDPBackend, backend)]):
        return F.scaled_dot_product_attention(q, k, v, scale=scale)


_FLEX_COMPILED = None


def flex_fn():
    global _FLEX_COMPILED
    if _FLEX_COMPILED is None:
        from torch.nn.attention.flex_attention import flex_attention

        def run(q, k, v, rel_h, rel_w, block_mask, scale, gw: int):
            def score_mod(score, b, h, q_idx, kv_idx):
                return score + rel_h[b, h, q_idx, kv_idx // gw] + rel_w[b, h, q_idx, kv_idx % gw]

            return flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale)

        _FLEX_COMPILED = torch.compile(run, dynamic=False)
    return _FLEX_COMPILED


def flex_block_mask(mask: BlockMask | None, device):
    if mask is None:
        return None
    from torch.nn.attention.flex_attention import BlockMask as FlexBlockMask
    from torch.nn.attention.flex_attention import create_block_mask

    if mask.layout == "sequence":
        idx = mask.to_indices(device)
        return FlexBlockMask.from_kv_blocks(idx.kv_num_blocks, idx.kv_indices, BLOCK_SIZE=mask.block_size[0],
                                            seq_lengths=mask.seq_len)
    qb, kb = mask.token_to_block(device)
    blocks = mask.blocks.to(device)

    def mask_mod(b, h, q_idx, kv_idx):
        return blocks[0, h, qb[q_idx], kb[kv_idx]]

    return create_block_mask(mask_mod, 1, blocks.shape[1], mask.seq_len[0], mask.seq_len[1], device=device)


def flex(q, k, v, rel_pos_h, rel_pos_w, grid, scale, block_mask):
    rel_h, rel_w = rel_terms(q, rel_pos_h, rel_pos_w, grid)
    return flex_fn()(q, k, v, rel_h, rel_w, block_mask, scale, grid[1])


_TRITON = None


def triton_backend():
    global _TRITON
    if _TRITON is None:
        from samsparse.backends.triton import TritonBackend

        _TRITON = TritonBackend()
    return _TRITON


def ours(q, k, v, rel_pos_h, rel_pos_w, grid, scale, mask):
    """samsparse's Triton backend, everything after the projection: table gather, terms kernel, attention."""
    rel_pos = RelPos.from_tables(rel_pos_h, rel_pos_w, grid)
    return triton_backend().attend(q, k, v, mask, rel_pos, scale)


def ours_prebuilt(q, k, v, rel_pos, scale, mask):
    """The same with the gathered tables built beforehand (CUDA-graph replay: no host copies inside)."""
    return triton_backend().attend(q, k, v, mask, rel_pos, scale)


def ours_terms(q, k, v, rel_h, rel_w, grid, scale, mask):
    from samsparse.backends.triton.ops import attention

    return attention(q, k, v, mask, RelPos(grid, grid, rel_h=rel_h, rel_w=rel_w), scale)[0]


def cuda_kernels(device) -> list[str]:
    """The CUDA backend's kernels to time here ([] with the reason logged when the extension is unavailable)."""
    if device.type != "cuda":
        return []
    from samsparse.backends.cuda import build

    reason = build.ensure_loaded()
    if reason is not None:
        log(f"cuda backend skipped: {reason}")
        return []
    return ["mma", "wgmma"] if torch.cuda.get_device_capability(device) == (9, 0) else ["mma"]


def cuda_attend(kernel, q, k, v, rel_pos_h, rel_pos_w, grid, scale, mask):
    """samsparse's CUDA backend with ``kernel`` (``mma`` or ``wgmma``): tables in, einsum terms, attention."""
    from samsparse.backends.cuda import CudaBackend
    from samsparse.backends.cuda.backend import KERNEL_ENV

    os.environ[KERNEL_ENV] = kernel  # read per call; the caller restores it
    return CudaBackend().attend(q, k, v, mask, RelPos.from_tables(rel_pos_h, rel_pos_w, grid), scale)


# ---------------------------------------------------------------------------- masks and reference
@torch.no_grad()
def reference(q, k, v, rel_pos_h, rel_pos_w, grid, scale, mask: BlockMask | None):
    """float32 reference (rel terms in fp32), one batch element at a time."""
    out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    tm = mask.to_token_mask(q.device) if mask is not None else None
    rph, rpw = rel_pos_h.float(), rel_pos_w.float()
    for i in range(q.shape[0]):
        qi, ki, vi = q[i : i + 1].float(), k[i : i + 1].float(), v[i : i + 1].float()
        rel_h, rel_w = rel_terms(qi, rph, rpw, grid)
        s = (qi @ ki.transpose(-2, -1)) * scale
        s = (s.view(*s.shape[:3], grid[0], grid[1]) + rel_h[..., :, None] + rel_w[..., None, :]).flatten(3)
        if tm is not None:
            s = s.masked_fill(~tm[min(i, tm.shape[0] - 1) : min(i, tm.shape[0] - 1) + 1], float("-inf"))
        out[i : i + 1] = s.softmax(-1) @ vi
        del s
    return out


def rel_err(out, ref) -> float:
    return float((out.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


# ---------------------------------------------------------------------------- timing
def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def bench(fn, rep: int) -> float:
    """Median time (ms) by triton.testing.do_bench on CUDA; a plain loop on the CPU (smoke test)."""
    return time_ms(fn, rep, torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def host_us(fn, iters: int = 20) -> float:
    """Host (CPU) time per call without waiting for the GPU: launch overhead."""
    if not torch.cuda.is_available():
        return float("nan")
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    t1 = time.perf_counter()
    sync()
    return (t1 - t0) / iters * 1e6


def run_shape(label, b, h, d, grid, dtype, densities, layouts, args, rows, device):
    n = grid[0] * grid[1]
    scale = d ** -0.5
    g = torch.Generator(device="cpu").manual_seed(args.seed)
    qkv = torch.randn(b, n, 3, h, d, generator=g).to(device, dtype)
    # SAM-like rel-pos tables (small learned vectors)
    rel_pos_h = (0.1 * torch.randn(2 * grid[0] - 1, d, generator=g)).to(device, dtype)
    rel_pos_w = (0.1 * torch.randn(2 * grid[1] - 1, d, generator=g)).to(device, dtype)
    q, k, v = split_qkv(qkv)
    flops_dense = 4.0 * b * h * n * n * d
    log(f"== {label}: B={b} H={h} N={n} d={d} {dtype}")

    refs = {}

    def get_ref(mask_key, mask):
        if mask_key not in refs:
            refs[mask_key] = reference(q, k, v, rel_pos_h, rel_pos_w, grid, scale, mask)
        return refs[mask_key]

    shape_rows = []

    def add(contender, fn, density=1.0, mask=None, mask_key="dense", layout="-", graph_fn=None):
        row = {"shape": label, "B": b, "H": h, "N": n, "d": d, "dtype": str(dtype).replace("torch.", ""),
               "contender": contender, "layout": layout, "density": round(density, 4)}
        try:
            out = fn()
            sync()
            row["max_rel_err"] = rel_err(out, get_ref(mask_key, mask))
            del out
            if not args.check_only:
                t = bench(fn, args.rep)
                row["ms"] = t
                row["tflops"] = flops_dense * density / (t * 1e-3) / 1e12
                if contender.startswith("ours"):
                    row["host_us"] = host_us(fn)
                if graph_fn is not None and device.type == "cuda":
                    try:  # GPU time alone (no host overhead): the call replayed from a CUDA graph
                        from triton.testing import do_bench_cudagraph

                        row["graph_ms"] = float(do_bench_cudagraph(graph_fn, rep=max(20, args.rep // 4), return_mode="median"))
                    except Exception as exc:
                        row["graph_error"] = f"{type(exc).__name__}: {str(exc)[:120]}"
        except Exception as exc:  # report and go on: the table is still printed
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            log(f"  {contender} {layout} p={density}: FAILED\n{traceback.format_exc(limit=3)}")
        if device.type == "cuda":
            torch.cuda.empty_cache()
        shape_rows.append(row)
        log(f"  {contender:14s} {layout:9s} p={density:<5.3g} " + (
            f"{row.get('ms', float('nan')):8.3f} ms  {row.get('tflops', float('nan')):7.1f} TFLOP/s  err {row.get('max_rel_err', float('nan')):.2e}"
            if "error" not in row else row["error"]))
        return row

    # baselines; the no-bias ceiling is a different function: its error is against a no-bias reference
    with torch.no_grad():
        refs["nobias"] = torch.cat([
            F.scaled_dot_product_attention(q[i:i + 1].float(), k[i:i + 1].float(), v[i:i + 1].float(), scale=scale)
            for i in range(b)
        ])
    # the no-bias ceiling is the fastest SDPA path on this GPU: every backend, on the strided views
    # of the projection and on contiguous copies (made outside the timing)
    qc, kc, vc = (t.contiguous() for t in (q, k, v))
    for backend in SDPA_NOBIAS_BACKENDS if device.type == "cuda" else (None,):
        for inputs, (qq, kk, vv) in (("strided", (q, k, v)), ("contig", (qc, kc, vc))):
            add("sdpa_nobias", lambda: sdpa_nobias(qq, kk, vv, scale, backend), mask_key="nobias",
                layout=f"{(backend or 'default').split('_')[0].lower()}/{inputs}")
    del qc, kc, vc
    add("sdpa_bias", lambda: sdpa_bias(q, k, v, rel_pos_h, rel_pos_w, grid, scale))
    if not args.skip_eager:
        add("sam_eager", lambda: sam_eager(qkv, rel_pos_h, rel_pos_w, grid, scale))
    rp_pre = RelPos.from_tables(rel_pos_h, rel_pos_w, grid)  # for graph replay (table gather outside)
    alternate = {}  # ours' graph replays, re-timed in alternating rounds for the p-scaling column
    graph = lambda mask=None: ours_prebuilt(q, k, v, rp_pre, scale, mask)  # noqa: E731
    alternate["dense"] = (add("ours", lambda: ours(q, k, v, rel_pos_h, rel_pos_w, grid, scale, None), graph_fn=graph),
                          graph)
    # what a patched SAM block pays per call between its projections
    block = sam_block_attention(q.shape[1], q.shape[-1], rel_pos_h, rel_pos_w, grid)
    add("ours_module", lambda: block._attend_heads(q, k, v, grid))
    rel_h, rel_w = rel_terms(q, rel_pos_h, rel_pos_w, grid)
    add("ours_terms", lambda: ours_terms(q, k, v, rel_h, rel_w, grid, scale, None))
    if not args.skip_flex:
        add("flex", lambda: flex(q, k, v, rel_pos_h, rel_pos_w, grid, scale, None))
    # the wgmma kernel serves key rows of 64 (SAM's global grid); elsewhere it would time mma.sync again
    kernels = [kern for kern in (cuda_kernels(device) if args.cuda else []) if kern == "mma" or grid[1] == 64]
    saved_kernel = os.environ.get("SAMSPARSE_CUDA_KERNEL")
    for kern in kernels:
        name = "cuda" if kern == "mma" else "cuda_wgmma"
        add(name, lambda kern=kern: cuda_attend(kern, q, k, v, rel_pos_h, rel_pos_w, grid, scale, None))

    for layout in layouts:
        for p in densities:
            if p >= 1.0:
                continue
            tile = tuple(int(x) for x in args.tile.lower().split("x"))
            mask = random_mask(layout, h, grid, p, args.seed + int(p * 1000), device, args.block, tile)
            dens = mask.density()
            key = f"{layout}-{p}"
            graph_p = lambda mask=mask: graph(mask)  # noqa: E731
            row = add("ours", lambda: ours(q, k, v, rel_pos_h, rel_pos_w, grid, scale, mask), dens, mask, key, layout,
                      graph_fn=graph_p)
            alternate[key] = (row, graph_p)
            for kern in kernels:
                name = "cuda" if kern == "mma" else "cuda_wgmma"
                add(name, lambda kern=kern, mask=mask: cuda_attend(kern, q, k, v, rel_pos_h, rel_pos_w, grid, scale, mask),
                    dens, mask, key, layout)
            if not args.skip_flex:
                try:
                    fbm = flex_block_mask(mask, device)
                    add("flex", lambda: flex(q, k, v, rel_pos_h, rel_pos_w, grid, scale, fbm), dens, mask, key, layout)
                except Exception as exc:
                    shape_rows.append({"shape": label, "contender": "flex", "layout": layout, "density": dens,
                                       "error": f"block mask: {type(exc).__name__}: {exc}"[:200]})
    if saved_kernel is None:
        os.environ.pop("SAMSPARSE_CUDA_KERNEL", None)
    else:
        os.environ["SAMSPARSE_CUDA_KERNEL"] = saved_kernel
    alternating_scaling(alternate, args, device)
    # ratios against this shape's baselines
    base = {r["contender"]: r for r in shape_rows if r.get("density") == 1.0 and "ms" in r and r["contender"] != "sdpa_nobias"}
    ceilings = [r for r in shape_rows if r["contender"] == "sdpa_nobias" and "ms" in r]
    if ceilings:
        best = min(ceilings, key=lambda r: r["ms"])
        best["note"] = "best SDPA (ratio base)"
        base["sdpa_nobias"] = best
    t_nobias = base.get("sdpa_nobias", {}).get("ms")
    t_bias = base.get("sdpa_bias", {}).get("ms")
    for r in shape_rows:
        if "ms" not in r:
            continue
        if t_nobias:
            r["x_sdpa_nobias"] = t_nobias / r["ms"]
            r["tflops_vs_ceiling"] = r["tflops"] / base["sdpa_nobias"]["tflops"]
        if t_bias:
            r["x_sdpa_bias"] = t_bias / r["ms"]
        dense = base.get(r["contender"]) if r.get("layout", "-") != "-" else None
        if dense and r["density"] < 1.0:
            r["scaling"] = r["ms"] / (r["density"] * dense["ms"])
    rows.extend(shape_rows)
    del qkv, q, k, v, refs
    if device.type == "cuda":
        torch.cuda.empty_cache()


def first_call(device, dtype, b, h, d, side=64):
    """Wall time of the very first call of our op in this process (compile + autotune)."""
    grid = (side, side)
    n = grid[0] * grid[1]
    qkv = torch.randn(b, n, 3, h, d, device=device, dtype=dtype)
    q, k, v = split_qkv(qkv)
    rph = 0.1 * torch.randn(2 * grid[0] - 1, d, device=device, dtype=dtype)
    rpw = 0.1 * torch.randn(2 * grid[1] - 1, d, device=device, dtype=dtype)
    sync()
    t0 = time.perf_counter()
    ours(q, k, v, rph, rpw, grid, d ** -0.5, None)
    sync()
    t1 = time.perf_counter()
    ours(q, k, v, rph, rpw, grid, d ** -0.5, None)
    sync()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


# ---------------------------------------------------------------------------- report
COLUMNS = [
    ("shape", "shape", "{}"), ("contender", "contender", "{}"), ("layout", "layout", "{}"), ("density", "density", "{:.3f}"),
    ("ms", "time ms", "{:.3f}"), ("tflops", "TFLOP/s", "{:.1f}"), ("max_rel_err", "max rel err", "{:.1e}"),
    ("x_sdpa_nobias", "x SDPA-nobias", "{:.2f}"), ("x_sdpa_bias", "x SDPA+bias", "{:.2f}"),
    ("scaling", "t(p)/(p t(1))", "{:.2f}"), ("scaling_alt", "t(p)/(p t(1)) alternating", "{:.2f}"), ("host_us", "host us", "{:.0f}"), ("graph_ms", "graph ms", "{:.3f}"),
]


def alternating_scaling(alternate: dict, args, device) -> None:
    """t(p)/(p t(1)) of ours from graph replays timed in alternating rounds (dense, then each density, per
    round; median of the per-round ratios): drift over the run cancels out of each ratio, which the
    sequential "scaling" column does not guarantee. The replays are the rows' graph calls (``rp_pre`` holds
    tables only, so the terms kernel runs in each)."""
    if args.scaling_rounds < 1 or args.check_only or "dense" not in alternate:
        return
    # (on the CPU, a smoke test: plain calls instead of graph replays)
    fns = {key: fn for key, (row, fn) in alternate.items() if "ms" in row}
    if "dense" not in fns or len(fns) < 2:
        return
    times = alternating_times(fns, args.scaling_rounds, max(20, args.rep // 4), device)
    for key, per_round in times.items():
        if key == "dense":
            continue
        row = alternate[key][0]
        ratios = sorted(t / (row["density"] * d) for t, d in zip(per_round, times["dense"]))
        row["scaling_alt"] = ratios[len(ratios) // 2]
        row["scaling_alt_range"] = [ratios[0], ratios[-1]]


def markdown(rows) -> str:
    lines = ["| " + " | ".join(c[1] for c in COLUMNS) + " | note |", "|" + "---|" * (len(COLUMNS) + 1)]
    for r in rows:
        cells = []
        for key, _, fmt in COLUMNS:
            val = r.get(key)
            cells.append("" if val is None else (fmt.format(val) if not isinstance(val, str) else val))
        cells.append(r.get("error", r.get("note", "")))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(args) -> int:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_attention.py needs a CUDA GPU (or --device cpu with TRITON_INTERPRET=1 as a smoke test)", file=sys.stderr)
        return 2
    import triton

    dtype = DTYPES[args.dtype]
    meta = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (TRITON_INTERPRET smoke test)",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "dtype": args.dtype,
        "autotune_cache": os.environ.get("SAMSPARSE_HOME", "~/.cache/samsparse"),
    }
    batches = [8] if args.quick else [int(x) for x in args.batches.split(",")]
    models = ["b"] if args.quick else [m.strip() for m in args.models.split(",")]
    densities = [float(x) for x in args.densities.split(",")]
    layouts = [x.strip() for x in args.layouts.split(",") if x.strip()]
    rows: list[dict] = []

    h0, d0 = MODELS[models[0]]
    try:
        fc, second = first_call(device, dtype, batches[-1], h0, d0, args.grid)
        meta["first_call_s"] = fc
        meta["second_call_s"] = second
        log(f"first call of ours (compile{'' if args.no_autotune else ' + autotune'}, fresh process): {fc:.2f} s; second call {second * 1e3:.2f} ms")
    except Exception:
        meta["first_call_error"] = traceback.format_exc(limit=5)
        log(f"first call FAILED:\n{meta['first_call_error']}")

    for m in models:
        h, d = MODELS[m]
        for b in batches:
            try:
                run_shape(f"vit_{m} B={b} global", b, h, d, (args.grid, args.grid), dtype, densities, layouts, args, rows, device)
            except Exception:
                log(f"shape vit_{m} B={b} FAILED:\n{traceback.format_exc()}")
                rows.append({"shape": f"vit_{m} B={b} global", "contender": "-", "error": traceback.format_exc(limit=1)[-200:]})
    if not args.no_window:
        win_args = argparse.Namespace(**{**vars(args), "skip_flex": True})
        for m in models:
            h, d = MODELS[m]
            for b in batches:
                try:
                    run_shape(f"vit_{m} B={b} window", b * 25, h, d, (args.window, args.window), dtype, [1.0], [], win_args, rows, device)
                except Exception:
                    log(f"window vit_{m} B={b} FAILED:\n{traceback.format_exc()}")

    table = markdown(rows)
    header = (
        f"device: {meta['device']}; torch {meta['torch']}; triton {meta['triton']}; {args.dtype}; "
        f"first call of ours: {meta.get('first_call_s', float('nan')):.2f} s\n"
        "x SDPA-nobias / x SDPA+bias: time of that baseline (same shape) / time of the row (>1 = faster); "
        "t(p)/(p t(1)): sparse time over density-scaled dense time of the same contender; "
        "host us: Python/launch time per call; graph ms: the call replayed from a CUDA graph (GPU time only); "
        "max rel err: max|out-ref|/max|ref| vs a float32 reference (sdpa_nobias: vs a no-bias reference)\n"
    )
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    if args.md:
        args.md.write_text(header + "\n" + table + "\n")
    print(header)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
