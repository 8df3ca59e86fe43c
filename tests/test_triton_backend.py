"""Triton backend on the CPU under TRITON_INTERPRET=1, against the float64 reference.

Triton decides at import time whether its kernels are interpreted, and other
test modules may already have imported it in this pytest process. So the
kernel checks run once, in a fresh subprocess with ``TRITON_INTERPRET=1``
(this file run as a script: ``python tests/test_triton_backend.py --worker
OUT.json``), and each parametrized test asserts on its case's result. The
cases live in ``tests/attention_cases.py`` (shared with the GPU tests).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(ROOT), str(HERE)):  # the worker runs as a script: make samsparse and the cases importable
    if _p not in sys.path:
        sys.path.insert(0, _p)

from attention_cases import INTERPRETER_CASES  # noqa: E402

triton_installed = pytest.mark.skipif(
    __import__("importlib").util.find_spec("triton") is None, reason="triton is not installed"
)

EXTRA_CHECKS = [
    "varlen-dense", "varlen-sparse-headmask", "varlen-gqa-fp16", "compile-fullgraph", "opcheck", "lse-flag",
    "tables-toeplitz-or-not", "windows-in-place", "windows-block", "windows-opcheck",
    "windows-compile", "fixed-offset", "carry-ids", "carry-ids-off", "terms-configs",
]


# ---------------------------------------------------------------------------- worker (subprocess)
def _varlen_check(name: str) -> dict:
    import math

    from samsparse.backends.reference import reference_attention
    from samsparse.backends.triton import triton_varlen_attention
    from samsparse.backends.triton.configs import TileConfig
    from samsparse.masks import BlockMask

    g = torch.Generator().manual_seed(5)
    dtype = torch.float16 if "fp16" in name else torch.float32
    h, hkv, d = (4, 2, 32) if "gqa" in name else (2, 2, 32)
    lens_q = [19, 40, 7]
    lens_k = [19, 33, 50] if "sparse" in name else [25, 40, 9]
    bs = 16
    cu_q = torch.tensor([0] + list(torch.tensor(lens_q).cumsum(0)), dtype=torch.int32)
    cu_k = torch.tensor([0] + list(torch.tensor(lens_k).cumsum(0)), dtype=torch.int32)
    q = torch.randn(sum(lens_q), h, d, generator=g).to(dtype)
    kv = torch.randn(sum(lens_k), 2, hkv, d, generator=g).to(dtype)
    k, v = kv[:, 0], kv[:, 1]  # strided views
    kv_num = kv_idx = head_mask = None
    blocks = None
    if "sparse" in name:
        mq, mk = math.ceil(max(lens_q) / bs), math.ceil(max(lens_k) / bs)
        blocks = torch.rand(len(lens_q), h, mq, mk, generator=g) < 0.5
        blocks[..., 0] = True
        mask = BlockMask(blocks, bs, (mq * bs, mk * bs))
        idx = mask.to_indices()
        kv_num, kv_idx = idx.kv_num_blocks, idx.kv_indices
        head_mask = torch.tensor([0] + [1] * (h - 1), dtype=torch.int32)
    out, lse = triton_varlen_attention(
        q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), kv_num, kv_idx, None, head_mask,
        block_size=bs, return_lse=True, config=TileConfig(16, 16, 4, 1),
    )
    problems = []
    worst = 0.0
    for i in range(len(lens_q)):
        qs, ks = slice(int(cu_q[i]), int(cu_q[i + 1])), slice(int(cu_k[i]), int(cu_k[i + 1]))
        qi = q[qs].transpose(0, 1)[None]
        ki, vi = k[ks].transpose(0, 1)[None], v[ks].transpose(0, 1)[None]
        mask_i = None
        if blocks is not None:
            nq_i, nk_i = lens_q[i], lens_k[i]
            bi = blocks[i : i + 1, :, : math.ceil(nq_i / bs), : math.ceil(nk_i / bs)].clone()
            bi[:, 0] = True  # head 0 is dense (head_mask_type 0)
            mask_i = BlockMask(bi, bs, (nq_i, nk_i), allow_empty_rows=True)
        ref, ref_lse = reference_attention(qi, ki, vi, mask_i, return_lse=True)
        got = out[qs].transpose(0, 1)[None]
        err = float((got.double() - ref.double()).abs().max())
        worst = max(worst, err)
        tol = 1e-4 if dtype == torch.float32 else 1e-2
        if err > tol:
            problems.append(f"sequence {i}: max abs err {err:.3e} > {tol}")
        fin = torch.isfinite(ref_lse[0])
        if not torch.equal(fin, torch.isfinite(lse[:, qs])):
            problems.append(f"sequence {i}: LSE finite pattern differs")
        elif fin.any() and float((lse[:, qs][fin] - ref_lse[0][fin]).abs().max()) > (1e-4 if dtype == torch.float32 else 2e-2):
            problems.append(f"sequence {i}: LSE differs")
    return {"case": name, "ok": not problems, "problems": problems, "err": worst}


def _compile_check() -> dict:
    from attention_cases import Case, make_inputs

    from samsparse.backends.triton.ops import attention

    case = Case(1, 2, 2, (5, 7), 32, mask="random", block=16, rel="tables", seed=3)
    q, k, v, mask, rel_pos = make_inputs(case)
    eager, _ = attention(q, k, v, mask, rel_pos)
    idx = mask.to_indices()

    def fn(q, k, v, kv_num, kv_idx, rh, rw):
        out, lse = torch.ops.samsparse.triton_attention(
            q, k, v, kv_num, kv_idx, None, None, rh, rw, 32 ** -0.5,
            0, 16, 16, 0, 0, 0, 0, 5, 7, 5, 7, 0, 0, 0, 0, 1,  # Toeplitz tables, as attention() passes them
        )
        return out * 2, lse

    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    out, lse = compiled(q, k, v, idx.kv_num_blocks, idx.kv_indices, rel_pos.rh, rel_pos.rw)
    err = float((out / 2 - eager).abs().max())
    problems = [] if err <= 1e-6 else [f"compiled result differs from eager: {err:.3e}"]
    if out.shape != q.shape:
        problems.append(f"compiled output shape {tuple(out.shape)}")
    # the public path (BlockMask / RelPos objects in) traces without a graph break too
    torch._dynamo.reset()
    whole = torch.compile(lambda q, k, v: attention(q, k, v, mask, rel_pos)[0], fullgraph=True, backend="aot_eager")
    err2 = float((whole(q, k, v) - eager).abs().max())
    if err2 > 1e-6:
        problems.append(f"compiled attention() differs from eager: {err2:.3e}")
    err = max(err, err2)
    return {"case": "compile-fullgraph", "ok": not problems, "problems": problems, "err": err}


def _opcheck() -> dict:
    from attention_cases import Case, make_inputs

    case = Case(1, 2, 1, (4, 5), 16, mask="random", block=16, rel="tables", strided=True, seed=4)
    q, k, v, mask, rel_pos = make_inputs(case)
    idx = mask.to_indices()
    args = (
        q, k, v, idx.kv_num_blocks, idx.kv_indices, None, None, rel_pos.rh, rel_pos.rw, 0.25,
        0, 16, 16, 0, 0, 0, 0, 4, 5, 4, 5, 0, 0, 0, 0,
    )
    torch.library.opcheck(
        torch.ops.samsparse.triton_attention.default, args,
        test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"),
    )
    return {"case": "opcheck", "ok": True, "problems": []}


def _lse_flag_check() -> dict:
    from attention_cases import Case, make_inputs

    from samsparse.backends.triton import TritonBackend

    q, k, v, mask, rel_pos = make_inputs(Case(1, 2, 2, (4, 4), 16, mask="none", rel="none"))
    out = TritonBackend().attend(q, k, v)
    both = TritonBackend().attend(q, k, v, return_lse=True)
    ok = isinstance(out, torch.Tensor) and isinstance(both, tuple) and len(both) == 2 and torch.equal(out, both[0])
    return {"case": "lse-flag", "ok": ok, "problems": [] if ok else ["return_lse flag not honoured"]}


def _tables_check() -> dict:
    """Window-sized grid: Toeplitz tables take the in-program terms path, arbitrary tables do not; both exact."""
    from samsparse.backends.reference import reference_attention
    from samsparse.backends.triton import ops
    from samsparse.relpos import RelPos

    g = torch.Generator().manual_seed(8)
    grid, d = (6, 5), 16
    q, k, v = (torch.randn(1, 2, 30, d, generator=g) for _ in range(3))
    problems, worst = [], 0.0
    toeplitz = RelPos.from_tables(0.3 * torch.randn(11, d, generator=g), 0.3 * torch.randn(9, d, generator=g), grid)
    arbitrary = RelPos(grid, grid, rh=0.3 * torch.randn(6, 6, d, generator=g), rw=0.3 * torch.randn(5, 5, d, generator=g))
    for name, rp, want_in_program in (("toeplitz", toeplitz, True), ("arbitrary", arbitrary, False)):
        ops._PLANS.clear()
        out, _ = ops.attention(q, k, v, None, rp)
        ref = reference_attention(q, k, v, None, RelPos(grid, grid, rh=rp.rh, rw=rp.rw))
        err = float((out - ref).abs().max())
        worst = max(worst, err)
        if err > 1e-4:
            problems.append(f"{name} tables: max abs err {err:.2e}")
        used = [key[0].rel_tables for key in ops._PLANS]
        if used != [want_in_program]:
            problems.append(f"{name} tables: in-program terms used = {used}, want [{want_in_program}]")
    return {"case": "tables-toeplitz-or-not", "ok": not problems, "problems": problems, "err": worst}


def _fixed_offset_check(device: str = "cpu") -> dict:
    """Key-row mode in bf16 takes the fixed-offset pass; rows it cannot hold exactly are redone.

    Runs under the interpreter (``device="cpu"``) and, from tests/test_triton_gpu.py, on a GPU.

    Besides ordinary inputs: height terms that span far more than the pass allows (rel_h table x40)
    and a later key row whose logits are far above every logit of step 0 (its keys x30). Masked
    calls keep the running-max loop unless ``SAMSPARSE_TRITON_FIXED_OFFSET=all`` (then with an
    empty query block, which must not be flagged).
    The pass alone would overflow on the two extreme inputs; the redo must give the running-max
    loop's result exactly.
    """
    from unittest import mock

    from samsparse.backends.reference import reference_attention
    from samsparse.backends.triton import ops
    from samsparse.backends.triton.configs import TileConfig
    from samsparse.masks import BlockMask
    from samsparse.relpos import RelPos

    one_row = TileConfig(64, 32, 4, 2)
    g = torch.Generator().manual_seed(21)
    grid, d, n = (4, 32), 32, 128
    q, k, v = (torch.randn(1, 2, n, d, generator=g).bfloat16().to(device) for _ in range(3))
    tab_h, tab_w = (0.3 * torch.randn(r, d, generator=g).to(device) for r in (7, 63))
    k_far = k.clone()
    k_far[:, :, -32:] *= 30
    blocks = torch.rand(1, 2, 2, 2, generator=g) < 0.7
    blocks[:, :, 0, 0] = True
    mask = BlockMask(blocks, 64, n).to(device)
    with_empty = blocks.clone()
    with_empty[:, 1, 1] = False  # head 1: its second query block reads no key
    empty = BlockMask(with_empty, 64, n, allow_empty_rows=True).to(device)
    rows32 = torch.rand(1, 2, 4, 4, generator=g) < 0.6  # one key row per block (SAM's 1x64 tiles)
    rows32[:, :, torch.arange(4), torch.arange(4)] = True
    mask32 = BlockMask(rows32, 32, n).to(device)
    inputs = {  # name: (k, height table, mask, SAMSPARSE_TRITON_FIXED_OFFSET when on)
        "ordinary": (k, tab_h, None, "1"),
        "wide-height-terms": (k, 40 * tab_h, None, "1"),
        "far-later-logits": (k_far, tab_h, None, "1"),
        "sparse (not used by default)": (k, tab_h, mask, "1"),
        "sparse with empty rows (=all)": (k, tab_h, empty, "all"),
        # the default for masks whose query blocks read PASS_MIN_KEYS keys or more (lowered to fit)
        "sparse with long rows": (k, tab_h, mask, "long"),
        "sparse with long rows, a key row per block": (k, tab_h, mask32, "long"),
    }
    problems, worst = [], 0.0
    launcher = ops._ATTN_LAUNCHER
    flagged = []  # programs flagged for the redo launch, per fixed-offset launch

    class Spy:
        def __call__(self, grid, tensors, floats, ints, constexprs, plan_key, device):
            launcher(grid, tensors, floats, ints, constexprs, plan_key, device)
            if constexprs["FIXED_M"]:
                flagged.append(int(tensors[-1].sum()))

    ops._ATTN_LAUNCHER = Spy()
    min_keys, min_queries = ops.PASS_MIN_KEYS, ops.PASS_MIN_QUERIES
    env = mock.patch.dict(os.environ)  # SAMSPARSE_TRITON_FIXED_OFFSET is restored afterwards
    env.start()
    try:
        for name, (kk, th, m, on) in inputs.items():
            outs = {}
            for flag in ("1", "0"):
                os.environ["SAMSPARSE_TRITON_FIXED_OFFSET"] = ("1" if on == "long" else on) if flag == "1" else "0"
                ops.PASS_MIN_KEYS = 64 if on == "long" else min_keys
                ops.PASS_MIN_QUERIES = 1 if on == "long" else min_queries
                ops._PLANS.clear()
                ops._REDO_PLANS.clear()
                flagged.clear()
                # one key row per step (BLOCK_N == grid width): a GPU's default config for this small
                # shape would take two rows per step, which has no fixed-offset pass
                outs[flag] = ops.attention(q, kk, v, m, RelPos.from_tables(th, tab_w, grid), config=one_row)
                used = flag == "1" and (m is None or on in ("all", "long"))
                if used:
                    redone = name in ("wide-height-terms", "far-later-logits")
                    if flagged != [flagged[0]] or (flagged[0] > 0) != redone:
                        problems.append(f"{name}: programs flagged for the redo {flagged}, want {'some' if redone else 'none'}")
                # (FIXED_M, REDO) of the launches: the pass and the redo launch, or one running-max launch
                plans = [*ops._PLANS.values(), *ops._REDO_PLANS.values()]
                launches = sorted((p.constexprs["FIXED_M"], p.constexprs["REDO"]) for p in plans)
                want = [(0, 1), (1, 0)] if used else [(0, 0)]
                if launches != want:
                    problems.append(f"{name}: (FIXED_M, REDO) of the launches {launches}, want {want}")
                # the pass keeps both id lookups per step; the masked running-max loop carries one
                carried = [p.constexprs["CARRY_IDS"] for p in plans]
                if carried != [int(m is not None and not p.constexprs["FIXED_M"]) for p in plans]:
                    problems.append(f"{name}: CARRY_IDS of the launches {carried}")
            out, lse = outs["1"]
            out0, lse0 = outs["0"]
            # the same softmax as the running-max loop, up to fp32 rounding of the partial sums
            diff = float((out.float() - out0.float()).abs().max() / out0.float().abs().max())
            worst = max(worst, diff)
            if not diff <= 1e-2:
                problems.append(f"{name}: rel diff {diff:.2e} from the running-max loop")
            fin = torch.isfinite(lse0)
            if not torch.equal(torch.isfinite(lse), fin) or float((lse[fin] - lse0[fin]).abs().max()) > 1e-3:
                problems.append(f"{name}: LSE differs from the running-max loop's")
            if name != "wide-height-terms":  # (x40 terms rounded to bf16 as SAM's einsum: far from float64)
                ref = reference_attention(q, kk, v, m, RelPos.from_tables(th, tab_w, grid))
                err = float((out.float() - ref.float()).abs().max() / ref.float().abs().max())
                if not err <= 2e-2:
                    problems.append(f"{name}: rel err {err:.2e} against the reference")
            if name in ("wide-height-terms", "far-later-logits") and not torch.equal(out, outs["0"][0]):
                problems.append(f"{name}: not redone by the running-max loop (output differs from it)")
    finally:
        ops._ATTN_LAUNCHER = launcher
        ops.PASS_MIN_KEYS, ops.PASS_MIN_QUERIES = min_keys, min_queries
        env.stop()
        ops._PLANS.clear()
        ops._REDO_PLANS.clear()
    return {"case": "fixed-offset", "ok": not problems,
            "problems": problems, "err": worst}


def _terms_configs_check(device: str = "cpu") -> dict:
    """The terms kernel at the (warps, stages) configs scripts/bench_terms.py times gives the same terms,
    matching float32 einsum terms rounded to the output dtype. Grid 8x12, d=48 (a 32 + 16 split), q a
    strided qkv view."""
    from samsparse.backends.triton import ops
    from samsparse.relpos import RelPos

    g = torch.Generator().manual_seed(9)
    grid, d = (8, 12), 48
    n = grid[0] * grid[1]
    qkv = torch.randn(2, n, 3, 2, d, generator=g).bfloat16().to(device)
    q = qkv.permute(2, 0, 3, 1, 4)[0]
    tab_h, tab_w = (torch.randn(2 * s - 1, d, generator=g).bfloat16().to(device) for s in grid)
    rp = RelPos.from_tables(tab_h, tab_w, grid)
    ref_h, ref_w = RelPos.from_tables(tab_h.float(), tab_w.float(), grid).terms(q.float())
    problems, worst = [], 0.0
    base = None
    # the last config also with rel_h stored by query (the CUDA backend's layout): same values
    for cfg, by_query in (((4, 1), False), ((8, 2), False), ((2, 3), False), ((2, 3), True)):
        rel_h, rel_w = ops.relpos_terms(q, rp.rh, rp.rw, grid, grid, config=cfg, rel_h_by_query=by_query)
        if by_query and rel_h.stride(-1) != 1:
            problems.append(f"rel_h_by_query: rel_h strides {rel_h.stride()}, not row-major")
        got = (rel_h.float().cpu(), rel_w.float().cpu())
        for name, t, ref in (("rel_h", got[0], ref_h), ("rel_w", got[1], ref_w)):
            err = float((t - ref.float().cpu()).abs().max() / ref.abs().max())
            worst = max(worst, err)
            if not err <= 1e-2:
                problems.append(f"{cfg} {name}: rel err {err:.2e} against einsum")
        if base is None:
            base = got
        elif not (torch.equal(got[0], base[0]) and torch.equal(got[1], base[1])):
            problems.append(f"{cfg}: terms differ from the first config's")
    return {"case": "terms-configs", "ok": not problems, "problems": problems, "err": worst}


_CARRY_IDS_CASES = (  # masked with rel-pos, each a mode with a look-ahead: key rows (one and two per step),
    # gathered bias, one-hot tile slices
    "b1h2-4x32-d32-bf16-random64-rel-tables", "b1h2-5x32-d32-fp32-random64-rel-terms-cfg32x64",
    "b1h2-4x32-d32-fp16-random128-rel-tables-cfg16x64", "b1h2-6x20-d32-fp32-random16-rel-tables",
    "b1h2-18x20-d32-fp16-tiles8x16-rel-terms", "b1h2-20x18-d32-fp32-tiles4x8-rel-tables",
)


def _carry_ids_check(device: str = "cpu", off: bool = False) -> dict:
    """Masked running-max loops with a look-ahead take each step's key-block id from the previous step's
    look-ahead (the default); with ``off`` (``SAMSPARSE_TRITON_CARRY_IDS=0``) they look it up twice.
    Either way the cases must match the reference, and every launch must be in the mode asked for."""
    from unittest import mock

    from attention_cases import check, make_inputs

    from samsparse.backends.triton import TritonBackend, ops
    from samsparse.backends.triton.configs import TileConfig

    cases = {c.id: c for c in INTERPRETER_CASES}
    problems, worst, carried = [], 0.0, 0
    with mock.patch.dict(os.environ):
        if off:
            os.environ["SAMSPARSE_TRITON_CARRY_IDS"] = "0"
        else:
            os.environ.pop("SAMSPARSE_TRITON_CARRY_IDS", None)
        ops._PLANS.clear()
        try:
            for cid in _CARRY_IDS_CASES:
                case = cases[cid]
                q, k, v, mask, rel_pos = make_inputs(case, device)
                options = {"config": TileConfig(case.config[0], case.config[1], 4, 1)} if case.config else {}
                out, lse = TritonBackend(options=options).attend(q, k, v, mask, rel_pos, return_lse=True)
                res = check(case, q, k, v, mask, rel_pos, out, lse)
                worst = max(worst, res.get("err", 0.0))
                problems += [f"{cid}: {p}" for p in res["problems"]]
            carried = sum(p.constexprs["CARRY_IDS"] for p in ops._PLANS.values())
        finally:
            ops._PLANS.clear()
    want = 0 if off else len(_CARRY_IDS_CASES)
    if carried != want:
        problems.append(f"{carried} launches had CARRY_IDS=1, want {want} (one per case unless off)")
    return {"case": "carry-ids" + ("-off" if off else ""), "ok": not problems, "problems": problems, "err": worst}


def _windows_check() -> dict:
    """The in-place window kernel against the reference on explicitly partitioned windows."""
    from attention_cases import partitioned_windows

    from samsparse.backends.reference import reference_attention
    from samsparse.backends.triton.configs import TileConfig
    from samsparse.backends.triton.windows import window_attention
    from samsparse.relpos import RelPos

    g = torch.Generator().manual_seed(11)
    problems, worst = [], 0.0
    # (batch, heads, kv heads, grid, window, head dim, dtype, rel-pos, config)
    cases = [
        (2, 2, 2, (9, 11), 4, 16, torch.float32, True, None),  # padding on both sides
        (1, 2, 2, (8, 8), 4, 16, torch.float32, True, TileConfig(16, 16, 4, 1)),  # no padding, several steps
        (1, 4, 2, (7, 5), 3, 24, torch.float32, True, TileConfig(16, 16, 4, 1)),  # GQA, head dim 16 + 8
        (2, 2, 2, (6, 7), 5, 16, torch.float32, False, None),  # no rel-pos
        (1, 2, 2, (9, 10), 4, 16, torch.bfloat16, True, None),
        (1, 2, 2, (5, 9), 4, 32, torch.float16, True, TileConfig(32, 16, 4, 1)),
    ]
    for b, h, hkv, grid, ws, d, dtype, rel, cfg in cases:
        n = grid[0] * grid[1]
        q = torch.randn(b, n, h, d, generator=g).to(dtype).transpose(1, 2)  # strided, like the qkv views
        kv = torch.randn(b, n, 2, hkv, d, generator=g).to(dtype)
        k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
        bias = torch.randn(2, hkv, d, generator=g).to(dtype)
        rp = None
        if rel:
            tables = 0.2 * torch.randn(2, 2 * ws - 1, d, generator=g)
            rp = RelPos.from_tables(tables[0], tables[1], (ws, ws))
            rp.rh, rp.rw = rp.rh.to(dtype), rp.rw.to(dtype)
        out, lse = window_attention(q, k, v, bias[0], bias[1], rp, None, grid, ws, config=cfg)
        qw, kw, vw, padded = partitioned_windows(q, k, v, bias[0], bias[1], grid, ws)
        rp64 = None
        if rp is not None:  # SAM's terms, rounded to the input dtype as its einsum (and the kernel) does
            rel_h, rel_w = rp.terms(qw)
            rp64 = RelPos((ws, ws), (ws, ws), rel_h=rel_h.double(), rel_w=rel_w.double())
        qw, kw, vw = qw.double(), kw.double(), vw.double()
        ref, ref_lse = reference_attention(qw, kw, vw, None, rp64, return_lse=True)
        hp, wp = padded

        def unpart(t):  # [B * nW, H, ws^2, ...] -> [B, H, N, ...] on the grid
            extra = t.shape[3:]
            t = t.reshape(b, hp // ws, wp // ws, h, ws, ws, *extra).permute(0, 3, 1, 4, 2, 5, *range(6, 6 + len(extra)))
            return t.reshape(b, h, hp, wp, *extra)[:, :, : grid[0], : grid[1]].reshape(b, h, n, *extra)

        err = float((out.double() - unpart(ref)).abs().max())
        lse_err = float((lse.double() - unpart(ref_lse[..., None])[..., 0]).abs().max())
        tol = 2e-5 if dtype == torch.float32 else 2e-2
        worst = max(worst, err)
        name = f"B{b} H{h}/{hkv} grid {grid} window {ws} d{d} {dtype} rel={rel}"
        if not err <= tol:
            problems.append(f"{name}: max abs err {err:.2e} > {tol}")
        if not lse_err <= (1e-4 if dtype == torch.float32 else 2e-2):
            problems.append(f"{name}: LSE err {lse_err:.2e}")
    # a bad call is refused at the boundary with the fix in the message
    try:
        window_attention(q, k, v, bias[0][:1], bias[1], None, None, (5, 9), 4)
        problems.append("a k_fill of the wrong shape was accepted")
    except ValueError:
        pass
    return {"case": "windows-in-place", "ok": not problems, "problems": problems, "err": worst}


def _windows_block_check() -> dict:
    """A tiny SAM with padded windows: the in-place encoder equals the original, and uses the kernel."""
    import copy

    from samsparse.backends.triton import ops
    from samsparse.checkpoints import build_tiny_sam
    from samsparse.fast import optimize
    from samsparse.windows import WindowsInPlaceBlock

    sam = build_tiny_sam(img_size=160, seed=3, window_size=3, global_attn_indexes=(1,)).eval()  # 10x10 grid
    with torch.no_grad():
        for name, p in sam.image_encoder.named_parameters():
            if "rel_pos" in name or name.endswith("qkv.bias"):
                p.normal_(0.0, 0.5)  # non-zero bias and rel-pos: the padding keys matter
    original = copy.deepcopy(sam)
    x = torch.randn(2, 3, 160, 160, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = original.image_encoder(x)
    problems = []
    optimize(sam, dtype=None, backend="triton")
    kinds = [type(blk) for blk in sam.image_encoder.blocks]
    if kinds.count(WindowsInPlaceBlock) != len(kinds) - 1:
        problems.append(f"block classes after optimize: {[k.__name__ for k in kinds]}")
    ops._PLANS.clear()
    with torch.no_grad():
        got = sam.image_encoder(x)
    if not any(key[0].window for key in ops._PLANS):
        problems.append("the windowed blocks did not use the in-place kernel")
    err = float((got - want).abs().max() / want.abs().max())
    if not err <= 1e-5:
        problems.append(f"in-place encoder differs from the original: rel err {err:.2e}")
    optimize(sam, dtype=None, backend="triton", windows="partition")
    with torch.no_grad():
        err2 = float((sam.image_encoder(x) - want).abs().max() / want.abs().max())
    if not err2 <= 1e-5:
        problems.append(f"partitioned encoder differs from the original: rel err {err2:.2e}")
    return {"case": "windows-block", "ok": not problems, "problems": problems, "err": max(err, err2)}


def _windows_opcheck() -> dict:
    """The window op's schema, fake tensor and AOT dispatch, and a full-graph compile of it."""
    from samsparse.backends.triton.windows import window_attention

    g = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(1, 2, 35, 16, generator=g) for _ in range(3))
    fill = torch.randn(2, 2, 16, generator=g)
    args = (q, k, v, fill[0], fill[1], None, None, 0.25, 5, 7, 3, 16, 16, 4, 1)
    torch.library.opcheck(
        torch.ops.samsparse.triton_window_attention.default, args,
        test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"),
    )
    eager, _ = window_attention(q, k, v, fill[0], fill[1], None, 0.25, (5, 7), 3)
    torch._dynamo.reset()
    compiled = torch.compile(
        lambda q, k, v: window_attention(q, k, v, fill[0], fill[1], None, 0.25, (5, 7), 3)[0] * 2,
        fullgraph=True, backend="aot_eager",
    )
    err = float((compiled(q, k, v) / 2 - eager).abs().max())
    problems = [] if err <= 1e-6 else [f"compiled window attention differs from eager: {err:.2e}"]
    return {"case": "windows-opcheck", "ok": not problems, "problems": problems, "err": err}


def _windows_compile_check() -> dict:
    """torch.compile of an encoder whose windowed blocks read windows in place: no graph break,
    no recompile per layer (both compile scopes), the in-place kernel used, SAM's result."""
    import copy

    from torch._dynamo.testing import CompileCounterWithBackend

    from samsparse.backends.triton import ops
    from samsparse.checkpoints import build_tiny_sam
    from samsparse.fast import optimize

    tiny = build_tiny_sam(embed_dim=64, depth=4, num_heads=4, img_size=128, window_size=3, global_attn_indexes=(1, 3))
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = tiny.image_encoder(x)
    problems, worst = [], 0.0
    for scope, expected in (("encoder", 1), ("blocks", 4)):
        torch._dynamo.reset()
        counter = CompileCounterWithBackend("eager")
        model = optimize(copy.deepcopy(tiny), dtype=None, compile="default", backend="triton",
                         compile_backend=counter, compile_scope=scope)
        ops._PLANS.clear()
        with torch.no_grad():
            out = model.image_encoder(x)
            model.image_encoder(x + 1)
        if counter.frame_count != expected:
            problems.append(f"scope {scope}: {counter.frame_count} graphs, want {expected} (graph breaks or recompiles)")
        if not any(key[0].window for key in ops._PLANS):
            problems.append(f"scope {scope}: the compiled windowed blocks did not use the in-place kernel")
        err = float((out - ref).abs().max())
        worst = max(worst, err)
        if not err <= 1e-5:
            problems.append(f"scope {scope}: differs from the original by {err:.2e}")
    return {"case": "windows-compile", "ok": not problems, "problems": problems, "err": worst}


def _worker(out_path: str, only: set[str] | None) -> None:
    os.environ["TRITON_INTERPRET"] = "1"
    for p in (str(ROOT), str(HERE)):
        if p not in sys.path:
            sys.path.insert(0, p)
    import triton  # noqa: F401  (imported after the env is set)
    from attention_cases import check, make_inputs

    from samsparse.backends.triton import TritonBackend
    from samsparse.backends.triton import kernel as tk
    from samsparse.backends.triton.configs import TileConfig

    results: dict[str, dict] = {}
    if not tk.INTERPRET:
        results["_fatal"] = {"ok": False, "problems": ["kernels are not interpreted (TRITON_INTERPRET not honoured)"]}
    checks = {
        "compile-fullgraph": _compile_check, "opcheck": _opcheck, "lse-flag": _lse_flag_check,
        "tables-toeplitz-or-not": _tables_check, "windows-in-place": _windows_check,
        "windows-block": _windows_block_check, "windows-opcheck": _windows_opcheck,
        "windows-compile": _windows_compile_check, "fixed-offset": _fixed_offset_check,
        "carry-ids": _carry_ids_check, "carry-ids-off": lambda: _carry_ids_check(off=True),
        "terms-configs": _terms_configs_check,
    }
    jobs = [(c.id, c) for c in INTERPRETER_CASES] + [(name, None) for name in EXTRA_CHECKS]
    for name, case in jobs:
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        try:
            if case is None:
                res = _varlen_check(name) if name.startswith("varlen") else checks[name]()
            else:
                q, k, v, mask, rel_pos = make_inputs(case)
                options = {}
                if case.config:
                    options["config"] = TileConfig(case.config[0], case.config[1], 4, 1)
                backend = TritonBackend(options=options)
                reason = backend.why_not(q, k, v, mask, rel_pos, return_lse=True)
                if reason is not None:
                    res = {"ok": False, "problems": [f"why_not: {reason}"]}
                else:
                    out, lse = backend.attend(q, k, v, mask, rel_pos, return_lse=True)
                    res = check(case, q, k, v, mask, rel_pos, out, lse)
        except Exception:
            res = {"ok": False, "problems": [traceback.format_exc()]}
        res["seconds"] = round(time.perf_counter() - t0, 2)
        results[name] = res
        print(f"{name}: {'ok' if res['ok'] else 'FAIL'} ({res['seconds']}s)", file=sys.stderr, flush=True)
    Path(out_path).write_text(json.dumps(results, indent=1))


# ---------------------------------------------------------------------------- pytest side
def _interpreter_jobs() -> list[str]:
    return [c.id for c in INTERPRETER_CASES] + list(EXTRA_CHECKS)


@pytest.fixture(scope="module")
def interp_results():
    """Every interpreter check, run by worker processes (one per core, at most two: the suite's machine
    has two cores and pytest only waits here), merged; ``_wall_seconds`` is the fixture's wall time."""
    jobs = _interpreter_jobs()
    n = max(1, min(2, os.cpu_count() or 1))
    parts = [jobs[i::n] for i in range(n)]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        outs = [Path(tmp) / f"results{i}.json" for i in range(n)]
        procs = [
            subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", str(out), *part], env=env,
                             cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for out, part in zip(outs, parts)
        ]
        results: dict = {}
        for proc, out in zip(procs, outs):
            try:
                stdout, stderr = proc.communicate(timeout=1200)
            except subprocess.TimeoutExpired:
                for p in procs:
                    p.kill()
                pytest.fail("interpreter worker timed out (1200 s)")
            if not out.exists():
                pytest.fail(f"interpreter worker crashed (rc {proc.returncode}):\n{stdout[-4000:]}\n{stderr[-8000:]}")
            results.update(json.loads(out.read_text()))
    results["_wall_seconds"] = time.perf_counter() - t0
    fatal = results.get("_fatal")
    if fatal:
        pytest.fail("; ".join(fatal["problems"]))
    return results


def _assert_result(results: dict, name: str) -> None:
    res = results.get(name)
    assert res is not None, f"no result for {name}"
    assert res["ok"], f"{name}: " + "\n".join(res["problems"]) + f"\n{ {k: v for k, v in res.items() if k != 'problems'} }"


@triton_installed
@pytest.mark.parametrize("case", INTERPRETER_CASES, ids=[c.id for c in INTERPRETER_CASES])
def test_interpreter_matches_reference(interp_results, case):
    _assert_result(interp_results, case.id)


@triton_installed
@pytest.mark.parametrize("name", EXTRA_CHECKS)
def test_interpreter_extra(interp_results, name):
    _assert_result(interp_results, name)


def test_interpreter_budget(interp_results):
    """The interpreter checks stay small: under 300 s of wall time for the suite (two workers) and under
    450 s of work in all (the sum over checks; ~300 s on the slowest 2-core machine seen)."""
    total = sum(r.get("seconds", 0) for k, r in interp_results.items() if not k.startswith("_"))
    wall = interp_results["_wall_seconds"]
    assert wall < 300, f"interpreter checks took {wall:.0f} s of wall time ({total:.0f} s of work); keep the shapes small"
    assert total < 450, f"interpreter checks took {total:.0f} s of work; keep the shapes small"


# ---------------------------------------------------------------------------- no kernels needed
def test_registered_and_reasons(monkeypatch):
    from samsparse import backends
    from samsparse.backends.base import AttentionCall
    from samsparse.backends.triton import TritonBackend, backend as tb

    assert "triton" in backends.names()
    tri = backends.get("triton")
    assert isinstance(tri, TritonBackend) and tri.priority == 30

    def call(**kw):
        base = dict(device=torch.device("cpu"), dtype=torch.float16, batch=1, heads=2, kv_heads=2, nq=8, nk=8,
                    head_dim=64, layout=None, has_rel_pos=False, rel_pos_tables=False, return_lse=False)
        base.update(kw)
        return AttentionCall(**base)

    monkeypatch.setattr(tb, "_interpret_mode", lambda: False)
    assert "CPU" in tri._why_not(call())
    assert "CUDA" in tri._why_not(call(device=torch.device("meta")))
    monkeypatch.setattr(tb, "_interpret_mode", lambda: True)
    assert tri._why_not(call()) is None
    assert tri._why_not(call(layout="tiles", has_rel_pos=True, rel_pos_tables=True)) is None
    assert "head dim" in tri._why_not(call(head_dim=512))
    assert "empty" in tri._why_not(call(nk=0))
    # dtype and availability reasons come from the public why_not
    q = torch.randn(1, 2, 8, 16, dtype=torch.float64)
    assert "dtype" in tri.why_not(q, q, q)
    monkeypatch.setattr(tb.importlib.util, "find_spec", lambda name: None)
    assert "not installed" in tri.is_available()


def test_head_dim_split_covers_and_is_pow2():
    from samsparse.backends.triton.configs import head_dim_split

    for d in range(1, 257):
        d1, d2 = head_dim_split(d)
        assert d1 + d2 >= d and d1 >= 16 and (d1 & (d1 - 1)) == 0
        assert d2 == 0 or (d2 >= 16 and (d2 & (d2 - 1)) == 0 and d1 < d)
    assert head_dim_split(80) == (64, 16)
    assert head_dim_split(64) == (64, 0)


def test_smaller_configs_shrink_and_keep_two_stages_for_split_head_dims():
    from samsparse.backends.triton.configs import TileConfig, smaller_configs

    start = TileConfig(64, 64, 4, 3)
    plain = smaller_configs(start, 64)
    assert TileConfig(64, 64, 4, 1) in plain and plain[-1] == TileConfig(16, 16, 4, 1)
    for d in (80, 48, 96):  # split in two parts: no 1-stage config (wrong at d=80 on an H100)
        split = smaller_configs(start, d)
        assert split and all(c.num_stages >= 2 for c in split), (d, split)
        assert all(c.num_stages >= 2 for c in smaller_configs(TileConfig(64, 64, 4, 1), d))
    for seq in (plain, split):  # never larger than the previous one in tiles
        for a, b in zip(seq, seq[1:]):
            assert (b.block_m, b.block_n) <= (a.block_m, a.block_n) or b.block_m < a.block_m


def test_autotune_cache_roundtrip(tmp_path, monkeypatch):
    from samsparse.backends.triton import configs

    monkeypatch.setenv("SAMSPARSE_HOME", str(tmp_path))
    configs.CACHE.clear_memory()
    calls = []

    def run(cfg):
        calls.append(cfg)
        if cfg.block_m == 64:
            raise RuntimeError("out of resources")

    pytest.importorskip("triton")
    try:
        import triton.testing  # noqa: F401
    except Exception:
        pytest.skip("triton.testing unavailable")
    # a fake do_bench: the cache logic is what is tested here
    monkeypatch.setattr("triton.testing.do_bench", lambda fn, **kw: (fn(), 1.0)[1])
    cands = [configs.TileConfig(128, 64, 8, 3), configs.TileConfig(64, 64, 4, 3)]
    best = configs.lookup_or_tune("k1", cands, run, configs.TileConfig(32, 32, 4, 1))
    assert best == cands[0]
    assert configs.cache_path() == tmp_path / "triton" / "autotune.json"
    data = json.loads(configs.cache_path().read_text())
    assert data["k1"]["config"]["block_m"] == 128
    configs.CACHE.clear_memory()
    n = len(calls)
    assert configs.lookup_or_tune("k1", cands, run, cands[1]) == cands[0]
    assert len(calls) == n, "a cached key must not be timed again"
    configs.CACHE.clear_memory()


def test_shipped_tuning_is_read_after_the_user_cache(tmp_path, monkeypatch):
    """The packaged H100 configs answer a cold lookup; the user's own entry wins; the switch turns them off."""
    from samsparse.backends.triton import configs

    shipped_files = sorted((Path(configs.__file__).parent / "tuned").glob("*.json"))
    assert shipped_files, "the package must ship its measured tile configs"
    shipped = json.loads(shipped_files[0].read_text())
    key, entry = next(iter(shipped.items()))
    assert "|triton" in key and entry["ms"], "a shipped entry names its GPU/Triton version and keeps its timings"
    expected = configs.TileConfig(**entry["config"])

    def never(cfg):
        raise AssertionError("a shipped key must not be tuned")

    monkeypatch.setenv("SAMSPARSE_HOME", str(tmp_path))
    configs.CACHE.clear_memory()
    try:
        assert configs.lookup_or_tune(key, [configs.TileConfig(16, 16, 4, 1)], never, configs.TileConfig(16, 16, 4, 1)) == expected
        # the user's cache wins over the shipped entry
        mine = configs.TileConfig(32, 32, 4, 1)
        (tmp_path / "triton").mkdir(parents=True, exist_ok=True)
        configs.cache_path().write_text(json.dumps({key: {"config": {"block_m": 32, "block_n": 32, "num_warps": 4, "num_stages": 1}, "ms": {}}}))
        configs.CACHE.clear_memory()
        assert configs.CACHE.get(key) == mine
        # switched off: the key is unknown again
        configs.cache_path().unlink()
        monkeypatch.setenv("SAMSPARSE_TRITON_SHIPPED", "0")
        configs.CACHE.clear_memory()
        assert configs.CACHE.get(key) is None
    finally:
        configs.CACHE.clear_memory()


def test_fixed_offset_classes_start_from_the_shipped_running_max_choice(tmp_path, monkeypatch):
    """A key-row class of the fixed-offset kernel (':fx' key: dense, or masked with long rows) not
    recorded for a GPU takes the shipped choice of the same geometry instead of tuning cold on the
    first call."""
    from samsparse.backends.triton import configs

    shipped = {}
    for path in sorted((Path(configs.__file__).parent / "tuned").glob("*.json")):
        shipped.update(json.loads(path.read_text()))
    dense_rows = [k for k in shipped if ":dot0|" in k]
    assert any("|masked=0|" in k for k in dense_rows), "the shipped tuning covers SAM's dense global classes"
    assert any("|masked=1|" in k for k in dense_rows), "and a masked key-row class (H100)"
    aliases = configs.fixed_offset_aliases(shipped)
    assert sorted(aliases) == sorted(k.replace(":dot0|", ":dot0:fx|") for k in dense_rows)
    # the op's own keys for vit_b's dense global call and for a mask with long rows are such keys
    from samsparse.backends.triton import ops

    geo = ops._Geometry(
        batch=8, heads=12, kv_heads=12, nq=4096, nk=4096, head_dim=64, dtype=torch.bfloat16, masked=False,
        layout=0, block_q=0, block_k=0, num_q_blocks=0, num_k_blocks=0, tile_grid=(1, 1), tile=(1, 1),
        has_rel=True, rel_k_grid=(64, 64),
    )
    assert geo.fixed_offset() and ":dot0:fx|" in geo.key(torch.device("cpu"))
    masked = dataclasses.replace(geo, masked=True, block_q=64, block_k=64, num_q_blocks=64, num_k_blocks=64)
    assert not masked.fixed_offset() and ":fx|" not in masked.key(torch.device("cpu"))
    long_rows = dataclasses.replace(masked, long_rows=True)
    assert long_rows.fixed_offset() and ":dot0:fx|" in long_rows.key(torch.device("cpu"))
    monkeypatch.setenv("SAMSPARSE_TRITON_FIXED_OFFSET", "dense")
    assert geo.fixed_offset() and not long_rows.fixed_offset()
    monkeypatch.setenv("SAMSPARSE_TRITON_FIXED_OFFSET", "all")
    assert masked.fixed_offset()
    monkeypatch.delenv("SAMSPARSE_TRITON_FIXED_OFFSET")
    f16 = dataclasses.replace(long_rows, dtype=torch.float16)
    assert not f16.fixed_offset()

    def never(cfg):
        raise AssertionError("an aliased key must not be tuned")

    monkeypatch.setenv("SAMSPARSE_HOME", str(tmp_path))
    configs.CACHE.clear_memory()
    try:
        for key in dense_rows:
            fx = key.replace(":dot0|", ":dot0:fx|")
            # a recorded fixed-offset choice wins over the alias of the running-max one
            want = configs.TileConfig(**shipped[fx if fx in shipped else key]["config"])
            assert configs.lookup_or_tune(fx, [configs.TileConfig(16, 16, 4, 1)], never, configs.TileConfig(16, 16, 4, 1)) == want
        recorded = [k for k in shipped if ":dot0:fx|" in k and k.replace(":dot0:fx|", ":dot0|") in shipped
                    and shipped[k]["config"] != shipped[k.replace(":dot0:fx|", ":dot0|")]["config"]]
        assert recorded, "a shipped class with its own fixed-offset choice (H200, 128-token blocks)"
    finally:
        configs.CACHE.clear_memory()


class _FakeOutOfResources(RuntimeError):
    pass


_FakeOutOfResources.__name__ = "OutOfResources"  # what Triton raises when a config needs too much shared memory


def test_config_that_does_not_fit_falls_back_to_a_smaller_one(monkeypatch, caplog):
    """A default/cached config too big for the GPU is replaced by the largest smaller one that fits (and remembered)."""
    pytest.importorskip("triton")
    from samsparse.backends.triton import ops
    from samsparse.backends.triton.configs import TileConfig

    launched = []

    def fake_launch(geo, cfg, *args, **kwargs):
        launched.append(cfg)
        if cfg.block_m * cfg.block_n * cfg.num_stages > 64 * 64 * 2:
            raise _FakeOutOfResources("out of resource: shared memory, Required: 229376, Hardware limit: 101376")

    big = TileConfig(128, 64, 8, 3)
    monkeypatch.setattr(ops, "_launch", fake_launch)
    monkeypatch.setattr(ops, "_pick_config", lambda geo, device, run, override: override or big)
    monkeypatch.setattr(ops, "_TUNED", {})
    q = k = v = torch.randn(1, 2, 64, 32)
    with caplog.at_level("WARNING", logger=ops.__name__):
        ops.attention(q, k, v)
    assert launched[0] == big
    chosen = launched[-1]
    assert chosen.block_m * chosen.block_n * chosen.num_stages <= 64 * 64 * 2
    assert list(ops._TUNED.values()) == [chosen], "the config that fits is remembered for the geometry"
    assert "does not fit this GPU" in caplog.text

    # a forced config is the caller's choice: its error propagates
    with pytest.raises(_FakeOutOfResources):
        ops.attention(q, k, v, config=big)

    # other errors are never swallowed
    def broken(geo, cfg, *args, **kwargs):
        raise ValueError("a real bug")

    monkeypatch.setattr(ops, "_launch", broken)
    with pytest.raises(ValueError, match="a real bug"):
        ops.attention(q, k, v)

    # nothing fits: a clear error naming the way out
    def never(geo, cfg, *args, **kwargs):
        raise _FakeOutOfResources("out of resource: shared memory")

    monkeypatch.setattr(ops, "_launch", never)
    with pytest.raises(RuntimeError, match="backend='sdpa'"):
        ops.attention(q, k, v)


def test_kernel_resources_compares_against_a_git_revision():
    """``scripts/kernel_resources.py --against HEAD``: both revisions compile offline, one line per launch."""
    import importlib.util
    import shutil

    if importlib.util.find_spec("triton") is None or shutil.which("git") is None:
        pytest.skip("needs triton and git")
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "kernel_resources.py"), "--models", "vit_b", "--kinds", "dense",
         "--config", "64/64/4/3", "--against", "HEAD"],
        capture_output=True, text=True, env=env, timeout=900,
    )
    if res.returncode != 0 and "NVIDIA backend is needed" in res.stderr:
        pytest.skip("this Triton build has no NVIDIA backend tools")
    assert res.returncode == 0, res.stderr[-3000:]
    tail = res.stdout.split("HEAD -> working tree")[-1].strip().splitlines()
    kernels = [line.split()[3] for line in tail[1:]]
    assert kernels == ["terms", "fixed-offset", "redo"], res.stdout[-2000:]
    assert all("regs " in line and "->" in line for line in tail[1:])


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--worker":
        _worker(sys.argv[2], set(sys.argv[3:]) or None)
    else:
        print("usage: python tests/test_triton_backend.py --worker OUT.json [CASE_ID ...]", file=sys.stderr)
        sys.exit(2)


_OFFLINE_PROBE = r"""
import json, torch
from samsparse.backends.triton import offline, ops
from samsparse.backends.triton.configs import TileConfig
from samsparse.relpos import RelPos

attn_launcher, device_arch = ops._ATTN_LAUNCHER, ops._device_arch
qkv = torch.empty(1, 256, 3, 2, 32, dtype=torch.bfloat16)
q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
rp = RelPos.from_tables(torch.zeros(15, 32, dtype=torch.bfloat16), torch.zeros(63, 32, dtype=torch.bfloat16), (8, 32))
launches = offline.record_launches(lambda: ops.attention(q, k, v, None, rp, None, TileConfig(64, 32, 4, 2)))
rows = []
for launch in launches:
    rep = offline.compile_launch(launch, 90)
    rows.append([launch.kernel, launch.constexprs.get("FIXED_M", 0), launch.constexprs.get("REDO", 0), rep.registers,
                 rep.instructions, rep.opcodes.get("HGMMA", 0), rep.spill_store_bytes,
                 launch.constexprs.get("maxnreg", 0), rep.ctas_per_sm, rep.cta_limit])
sm80 = offline.record_launches(lambda: ops.attention(q, k, v, None, rp, None, TileConfig(64, 32, 4, 2)), 80)
print(json.dumps({"rows": rows, "caps_sm80": [l.constexprs.get("maxnreg", 0) for l in sm80],
                  "launcher_restored": ops._ATTN_LAUNCHER is attn_launcher and ops._device_arch is device_arch}))
"""


def _run_offline_probe(probe: str, **extra_env: str):
    """Run ``probe`` in a fresh process with the kernels compiled, not interpreted (environment plus
    ``extra_env``); its last stdout line, as JSON. Skips without triton or without Triton's NVIDIA tools."""
    import importlib.util

    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET" and not k.endswith("_REGCAP")}
    env.update(extra_env)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=600)
    if res.returncode != 0 and "NVIDIA backend is needed" in res.stderr:
        pytest.skip("this Triton build has no NVIDIA backend tools")
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_offline_compile_reports_what_ptxas_made_of_each_launch():
    """``offline``: a dense key-row call (one key row per step) records its three launches without
    running them, and each compiles for sm_90 without a GPU: registers, SASS (wgmma in the attention kernels)."""
    out = _run_offline_probe(_OFFLINE_PROBE)
    assert out["launcher_restored"]
    assert out["caps_sm80"] == [0, 0, 0], "planned for sm_80, no launch has the Hopper-only default cap"
    kernels = [(r[0], r[1], r[2]) for r in out["rows"]]
    assert kernels == [("_relpos_terms", 0, 0), ("_attn_fwd", 1, 0), ("_attn_fwd", 0, 1)], kernels
    for name, _, _, regs, n_sass, n_hgmma, spills, cap, ctas, limit in out["rows"]:
        assert 16 <= regs <= 255 and n_sass > 100, (name, regs, n_sass)
        # the key-row kernels on 64-row, 4-warp tiles compile under KEY_ROW_REGCAP by default, with no spills
        assert spills == 0 and cap == (168 if name == "_attn_fwd" else 0) and ctas >= 1 and limit
    assert all(r[5] > 0 for r in out["rows"][1:]), "the attention kernels (BLOCK_M 64) have no wgmma in their sm_90 SASS"


def test_ctas_per_sm_counts_hopper_occupancy_limits():
    """``offline.ctas_per_sm``: registers go per warp in units of 256 (8 per thread), so 4-warp CTAs fit
    3 per SM up to 168 registers and 2 from 169; shared memory and warps limit too."""
    from samsparse.backends.triton.offline import ctas_per_sm

    assert ctas_per_sm(168, 4, 70 * 1024) == (3, "registers")
    assert ctas_per_sm(169, 4, 70 * 1024) == (2, "registers")
    assert ctas_per_sm(255, 4, 80 * 1024) == (2, "registers")
    assert ctas_per_sm(76, 4, 16 * 1024) == (6, "registers")  # the rel-pos terms kernel (37.5% occupancy)
    assert ctas_per_sm(64, 4, 100 * 1024) == (2, "shared memory")
    assert ctas_per_sm(16, 32, 0) == (2, "warps")
    assert ctas_per_sm(16, 1, 0) == (32, "CTA slots")


def test_offline_compile_applies_the_register_cap():
    """SAMSPARSE_TRITON_REGCAP reaches the compiler: capped at 96, the key-row attention kernels of a
    64-row, 4-warp plan compile to at most 96 registers (sm_90, offline), and the report counts CTAs per SM."""
    rows = _run_offline_probe(_OFFLINE_PROBE, SAMSPARSE_TRITON_REGCAP="96")["rows"]
    attn = [r for r in rows if r[0] == "_attn_fwd"]
    assert attn and all(r[7] == 96 and r[3] <= 96 for r in attn), rows
    assert [r[7] for r in rows if r[0] != "_attn_fwd"] == [0], "the terms kernel has its own cap"


_ONE_STEP_PROBE = r"""
import json, torch
from samsparse.backends.triton import offline, ops
from samsparse.backends.triton.configs import TileConfig

qkv = torch.empty(1, 64, 3, 2, 80, dtype=torch.bfloat16)  # 64 keys: one step of 64, or two of 32
q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
rows = {}
for bn in (64, 32):
    (launch,) = offline.record_launches(lambda: ops.attention(q, k, v, None, None, None, TileConfig(64, bn, 4, 3)))
    nkb = launch.args[-12 + 6]
    if bn == 32:  # the same kernel (BLOCK_N 64) launched with two key steps instead of one
        launch.constexprs["BLOCK_N"] = 64
        launch.args = (*launch.args[:-12 + 5], 64, 2, *launch.args[-12 + 7:])
        nkb = 2
    rep = offline.compile_launch(launch, 90)
    rows[nkb] = [rep.loop_instructions, rep.sass.split("Function", 1)[-1]]
print(json.dumps(rows))
"""


def test_a_dense_call_of_one_key_step_compiles_to_the_looped_kernel():
    """Triton would specialize a key-step count of 1 into a loop-free kernel, which computed wrong
    results on an H200 at some configs; the count is not specialized, so one step compiles (sm_90,
    offline) to the same SASS as two steps: a loop."""
    rows = _run_offline_probe(_ONE_STEP_PROBE)
    assert rows["1"][0] > 100, "one key step compiled without a key loop"
    assert rows["1"] == rows["2"], "one and two key steps compile to different kernels"


def test_fast_launcher_reuses_a_compiled_kernel_only_for_the_same_specialization(monkeypatch):
    """The fast launch path (GPU only, so faked here): the first call of a specialization goes through
    ``kernel[grid]``; later calls with the same plan, dtypes, 16-byte alignment and ints launch the kept
    kernel directly, with Triton's launch metadata only when a launch hook is set; a misaligned
    pointer, another dtype or another int value is a new specialization."""
    from types import SimpleNamespace

    from samsparse.backends.triton import ops

    compiles, runs = [], []

    class Compiled:
        function, packed_metadata = "fn", "meta"

        def launch_metadata(self, grid, stream, *args):
            return ("metadata", grid)

        def run(self, gx, gy, gz, stream, function, packed, meta, enter, leave, *args):
            runs.append((gx, gy, stream, meta, enter, args))

    class Jit:
        arg_names = ["A", "B", "x", "n", "C"]

        def __getitem__(self, grid):
            def launch(*args, **constexprs):
                compiles.append((grid, args, constexprs))
                return Compiled()
            return launch

    monkeypatch.setattr(ops, "_kernels", lambda: SimpleNamespace(fake=Jit()))
    runtime = SimpleNamespace(launch_enter_hook=None, launch_exit_hook=None)
    driver = SimpleNamespace(active=SimpleNamespace(get_current_stream=lambda idx: 7))
    launcher = ops._Launcher("fake")
    launcher.enabled = True
    launcher._rt = (runtime, driver)
    dev = torch.device("cpu")
    a = torch.zeros(64, dtype=torch.float16)
    b = torch.zeros(64, dtype=torch.float32)

    def call(x, y, n=3):
        launcher((2, 5), (x, y), (0.5,), (n,), {"C": 4}, "plan", dev)

    call(a, b)
    assert len(compiles) == 1 and not runs
    call(a, b)
    assert len(compiles) == 1 and len(runs) == 1
    gx, gy, stream, meta, enter, args = runs[0]
    assert (gx, gy, stream, meta, enter) == (2, 5, 7, None, None)
    assert args[0] is a and args[1] is b and args[2:] == (0.5, 3, 4)  # tensors, floats, ints, constexpr tail
    hook = lambda metadata: None  # noqa: E731
    runtime.launch_enter_hook = hook
    call(a, b)
    assert runs[-1][3] == ("metadata", (2, 5)) and runs[-1][4] is hook
    runtime.launch_enter_hook = None
    call(a[1:], b)  # 2 bytes off a 16-byte boundary: Triton specializes on that
    call(a, b.half())  # another dtype
    call(a, b, n=4)  # another int value
    assert len(compiles) == 4 and len(runs) == 2
    call(a[1:], b)
    assert len(compiles) == 4 and len(runs) == 3 and runs[-1][5][0].data_ptr() == a[1:].data_ptr()


def _plan_constexprs(cfg, grid=(64, 64), d: int = 64, block: int = 0, rel: bool = True, rel_tables: bool = False,
                     batch: int = 8, heads: int = 12, arch: int = 90) -> dict:
    """``ops._make_plan``'s constexprs for bf16 self-attention over a ``grid`` of tokens on an sm_<arch> GPU:
    dense (``block`` 0) or a sequence-layout mask of ``block``-token blocks, with SAM's rel-pos over the grid
    when ``rel``."""
    from samsparse.backends.triton import ops

    n = grid[0] * grid[1]
    nb = n // block if block else 0
    geo = ops._Geometry(
        batch=batch, heads=heads, kv_heads=heads, nq=n, nk=n, head_dim=d, dtype=torch.bfloat16, masked=block > 0,
        layout=0, block_q=block, block_k=block, num_q_blocks=nb, num_k_blocks=nb, tile_grid=(1, 1), tile=(1, 1),
        has_rel=rel, rel_k_grid=grid if rel else (1, 1), rel_tables=rel_tables,
    )
    return ops._make_plan(geo, cfg, True, arch=arch).constexprs


def test_plan_cuts_warps_of_cut_tiles_and_keeps_one_key_step():
    """A one-hot call over at most 64 keys runs its one key step: the plan used to split it in two,
    against wrong results on an H200 that came from a kernel compiled without its key loop (``NKB == 1``
    specialized); the kernel now declares ``do_not_specialize=["NKB"]`` (offline test above) and the GPU
    tests of those cases passed without the split. A tile cut to fewer query rows keeps at most 16 rows
    per warp (8 warps on 64 rows were 2.4x slower per key row on masks of 64-token blocks)."""
    from samsparse.backends.triton.configs import TileConfig

    def plan(grid, cfg: TileConfig, d: int = 80, rel: bool = True):
        c = _plan_constexprs(cfg, grid, d, rel=rel, rel_tables=rel, batch=1, heads=2)
        assert c["REL_DOT"] == (1 if rel else 0)
        return c["BLOCK_M"], c["BLOCK_N"], c["num_warps"]

    assert plan((8, 8), TileConfig(128, 256, 8, 2), d=64, rel=False) == (64, 64, 4)  # cut to 64 tokens
    assert plan((16, 16), TileConfig(128, 256, 8, 2), d=64, rel=False) == (128, 256, 8)
    assert plan((4, 4), TileConfig(64, 32, 4, 3), d=64, rel=False) == (16, 16, 4)
    assert plan((8, 8), TileConfig(64, 64, 4, 3)) == (64, 64, 4)  # one key step
    assert plan((4, 12), TileConfig(64, 128, 4, 2)) == (64, 64, 4)
    assert plan((8, 8), TileConfig(64, 64, 8, 2), d=64) == (64, 64, 8)  # not cut: the config's warps
    assert plan((14, 14), TileConfig(64, 256, 4, 2)) == (64, 256, 4)  # SAM's windows in one step
    assert plan((16, 16), TileConfig(128, 64, 8, 3)) == (128, 64, 8)


def test_plan_cuts_warps_for_masks_of_64_token_query_blocks():
    """SAM's 1x64-tile recipes have 64-token query blocks: a 128-row config runs them on 64-row tiles
    with at most 4 warps (8 warps there were 2.4x slower per key row on an H200)."""
    from samsparse.backends.triton.configs import TileConfig

    def plan(block: int, cfg: TileConfig):
        c = _plan_constexprs(cfg, block=block)
        return c["BLOCK_M"], c["num_warps"], c["ROWS"]

    assert plan(64, TileConfig(128, 64, 8, 3)) == (64, 4, 1)
    assert plan(128, TileConfig(128, 64, 8, 3)) == (128, 8, 1)
    assert plan(64, TileConfig(64, 64, 4, 3)) == (64, 4, 1)


def test_masks_take_the_fixed_offset_pass_with_long_rows_in_big_blocks_or_split_head_dims(monkeypatch):
    """The pass runs a mask's calls when its query blocks read >= 1024 keys on average and either fill
    128-row tiles or the head dim is split (vit_h's 80) with 64-row tiles uncapped: with 64-token query
    blocks at d=64 its key rows cost what the running max's do and it only adds its fixed cost; at d=80
    it was 23% cheaper per row than the uncapped running max (H200, twelfth run) and costs the same as
    the running max under the default 168-register cap on Hopper (thirteenth run)."""
    from samsparse.backends.base import MaskKernelArgs
    from samsparse.backends.triton import ops

    monkeypatch.delenv("SAMSPARSE_TRITON_PASS_MIN_KEYS", raising=False)
    monkeypatch.delenv("SAMSPARSE_TRITON_REGCAP", raising=False)
    index = torch.zeros(1, 1, 1, dtype=torch.int32)  # (a mask's index form; only its presence matters here)

    def long_rows(block_q: int, keys: float, d: int = 64, dtype=torch.bfloat16, arch: int = 90) -> int:
        verdict = ops._long_rows(MaskKernelArgs(index, index[..., None], block_q=block_q, block_k=block_q,
                                                mean_keys=keys), d)  # (where torch.compile traces)
        return int(ops._takes_pass(verdict, d, dtype, arch))  # (in the op, on its device)

    assert long_rows(128, 1024.0) == 1 and long_rows(256, 4096.0) == 1
    assert long_rows(128, 1000.0) == 0
    assert long_rows(64, 4096.0) == 0  # vit_b's 1x64-tile recipes keep the running max at any density
    # vit_h's 1x64-tile recipes too: its running max on 64-row tiles is capped at 168 registers by default
    assert long_rows(64, 1068.5, d=80) == 0 and long_rows(128, 1068.5, d=80) == 1
    assert long_rows(64, 1068.5, d=80, dtype=torch.float32) == 1  # fp32: no cap, the pass wins there
    assert long_rows(64, 1068.5, d=80, arch=80) == 1  # no default cap off Hopper either
    monkeypatch.setenv("SAMSPARSE_TRITON_REGCAP", "0")  # uncapped, the pass wins at d=80 from ~4 rows
    assert long_rows(64, 1068.5, d=80) == 1 and long_rows(64, 380.0, d=80) == 0  # vit_h's 25% / 10% recipes
    monkeypatch.delenv("SAMSPARSE_TRITON_REGCAP")
    assert long_rows(128, 0.0) == 0  # a mask whose average is not known (built per call on the GPU)
    assert ops._long_rows(MaskKernelArgs(), 80) == 0  # dense calls: the pass is their default
    monkeypatch.setenv("SAMSPARSE_TRITON_PASS_MIN_KEYS", "1792")  # the eleventh session's threshold
    assert long_rows(128, 1024.0) == 0 and long_rows(128, 2048.0) == 1
    monkeypatch.setenv("SAMSPARSE_TRITON_PASS_MIN_KEYS", "lots")
    with pytest.raises(ValueError, match="SAMSPARSE_TRITON_PASS_MIN_KEYS must be a number"):
        long_rows(128, 1024.0)


def test_register_caps_default_and_overrides(monkeypatch):
    """Key-row plans on 64-row tiles with 4 warps get ``maxnreg=KEY_ROW_REGCAP`` (168) by default on Hopper at
    head dims up to 80 in 16-bit dtypes (vit_h's running max there compiles to 177-182 registers offline: 2 CTAs per
    SM, 3 at 168; 41.7 -> 33.9 us per key row on the H200) and no other plan does;
    SAMSPARSE_TRITON_REGCAP=N sets N for every such plan, =0 removes the cap;
    SAMSPARSE_TRITON_WINDOW_REGCAP=N caps the windows' one-hot plans (off by default); a bad value says
    what it wants."""
    from samsparse.backends.triton.configs import TileConfig

    def plan(block: int, cfg: TileConfig, masked: bool = True, grid=(64, 64), d: int = 80, arch: int = 90):
        return _plan_constexprs(cfg, grid, d, block=block if masked else 0, heads=16, arch=arch)

    m64 = TileConfig(64, 64, 4, 3)
    monkeypatch.delenv("SAMSPARSE_TRITON_REGCAP", raising=False)
    monkeypatch.delenv("SAMSPARSE_TRITON_WINDOW_REGCAP", raising=False)
    assert plan(64, m64)["maxnreg"] == 168  # vit_h's 1x64-tile masks
    # measured on Hopper only: sm_80's kernels use 194-247 registers and spill under 168 (offline)
    assert "maxnreg" not in plan(64, m64, arch=80) and "maxnreg" not in plan(64, m64, arch=0)
    assert plan(128, m64)["maxnreg"] == 168  # 128-token blocks on 64-row tiles
    assert plan(0, m64, masked=False)["maxnreg"] == 168  # dense on 64-row tiles
    assert plan(64, m64, d=64)["maxnreg"] == 168  # vit_b (a no-op there: 148-158 registers)
    assert "maxnreg" not in plan(64, m64, d=128)  # not checked offline: no cap by default
    assert "maxnreg" not in plan(128, TileConfig(128, 64, 4, 3))  # 128-row tiles: the cap would spill
    assert "maxnreg" not in plan(64, TileConfig(64, 64, 8, 3))
    assert "maxnreg" not in plan(0, m64, masked=False, grid=(14, 14))  # windows (one-hot bias mode): their own
    monkeypatch.setenv("SAMSPARSE_TRITON_REGCAP", "160")
    assert plan(64, m64)["maxnreg"] == 160 and plan(64, m64, d=128)["maxnreg"] == 160
    assert plan(64, m64, arch=80)["maxnreg"] == 160  # an explicit cap applies on any GPU
    monkeypatch.setenv("SAMSPARSE_TRITON_REGCAP", "0")
    assert "maxnreg" not in plan(64, m64)
    monkeypatch.setenv("SAMSPARSE_TRITON_WINDOW_REGCAP", "128")
    assert plan(0, m64, masked=False, grid=(14, 14))["maxnreg"] == 128
    assert plan(0, TileConfig(128, 32, 8, 3), masked=False, grid=(14, 14))["maxnreg"] == 128
    assert "maxnreg" not in plan(64, m64)  # the global kernels keep SAMSPARSE_TRITON_REGCAP's
    monkeypatch.setenv("SAMSPARSE_TRITON_REGCAP", "many")
    with pytest.raises(ValueError, match="SAMSPARSE_TRITON_REGCAP must be a register count"):
        plan(64, m64)


def test_launch_drops_a_register_cap_ptxas_cannot_meet(caplog):
    """A kernel whose cap ptxas rejects (a d=256 window kernel under 128 registers did, on the H200) is
    launched again without it, with a warning, and its cached constexprs keep no cap; other errors, and
    any error of an uncapped kernel, propagate untouched."""
    from samsparse.backends.triton import ops

    class PTXASError(RuntimeError):  # (the name Triton's compile error has)
        pass

    class Launcher:
        name = "_attn_fwd"

        def __init__(self, error):
            self.calls, self.error = [], error

        def __call__(self, grid, tensors, floats, ints, constexprs, key, device):
            self.calls.append(dict(constexprs))
            if "maxnreg" in constexprs:
                raise self.error

    launcher = Launcher(PTXASError("PTXAS error: Insufficient registers (128)\nmore"))
    constexprs = dict(BLOCK_M=64, maxnreg=128)
    with caplog.at_level("WARNING", logger=ops.__name__):
        ops._launch_with_cap_fallback(launcher, (1, 1), ((), (), ()), constexprs, "k", None)
    assert [c.get("maxnreg") for c in launcher.calls] == [128, None] and "maxnreg" not in constexprs
    assert "_attn_fwd does not compile under a cap of 128 registers" in caplog.text
    ops._launch_with_cap_fallback(launcher, (1, 1), ((), (), ()), constexprs, "k", None)
    assert len(launcher.calls) == 3  # once dropped, the cap is not tried again

    other = Launcher(ValueError("not a compile error"))
    with pytest.raises(ValueError):
        ops._launch_with_cap_fallback(other, (1, 1), ((), (), ()), dict(maxnreg=128), "k", None)

    class AlwaysFails(Launcher):
        def __call__(self, *args):
            raise self.error

    with pytest.raises(PTXASError):  # no cap to drop: the compile error is the caller's to see
        ops._launch_with_cap_fallback(AlwaysFails(PTXASError("boom")), (1, 1), ((), (), ()), {}, "k", None)


def test_terms_register_cap_is_opt_in(monkeypatch):
    """SAMSPARSE_TRITON_TERMS_REGCAP=N gives the rel-pos terms kernel ``maxnreg=N`` (offline: 64 registers
    at d=64 fit 8 CTAs per SM instead of 6, no spills); unset, none; a (warps, stages, cap) config caps
    one measurement; a bad value says what it wants. Launches are recorded, not run."""
    from samsparse.backends.triton import ops

    seen = []
    monkeypatch.setattr(ops, "_TERMS_LAUNCHER", lambda grid, tensors, floats, ints, cx, key, dev: seen.append(cx))
    monkeypatch.setattr(ops, "_TERMS_CONSTEXPRS", {})
    q = torch.zeros(1, 2, 64, 32, dtype=torch.bfloat16)
    rh = rw = torch.zeros(8, 8, 32, dtype=torch.bfloat16)

    def cap_of(config=None):
        ops._TERMS_CONSTEXPRS.clear()
        ops.relpos_terms(q, rh, rw, (8, 8), (8, 8), config=config)
        return seen[-1].get("maxnreg")

    monkeypatch.delenv("SAMSPARSE_TRITON_TERMS_REGCAP", raising=False)
    assert cap_of() is None
    assert cap_of((4, 1, 72)) == 72 and cap_of((4, 1)) is None
    monkeypatch.setenv("SAMSPARSE_TRITON_TERMS_REGCAP", "64")
    assert cap_of() == 64
    monkeypatch.setenv("SAMSPARSE_TRITON_TERMS_REGCAP", "lots")
    with pytest.raises(ValueError, match="SAMSPARSE_TRITON_TERMS_REGCAP must be a register count"):
        cap_of()


def test_plan_keys_hash_by_value():
    """The geometry and tile config key the plan, tuning and compiled-kernel caches with a stored or plain
    tuple hash (cheaper per call than the generated one): equal values must still hash and compare equal,
    and any field change must make a different key."""
    from samsparse.backends.triton import ops
    from samsparse.backends.triton.configs import TileConfig

    def geo(**kw):
        base = dict(batch=1, heads=12, kv_heads=12, nq=4096, nk=4096, head_dim=64, dtype=torch.bfloat16, masked=False,
                    layout=0, block_q=0, block_k=0, num_q_blocks=0, num_k_blocks=0, tile_grid=(1, 1), tile=(1, 1),
                    has_rel=True, rel_k_grid=(64, 64))
        return ops._Geometry(**{**base, **kw})

    a = geo()
    cache = {(a, TileConfig(128, 64, 4, 3)): "plan"}
    assert cache[(geo(), TileConfig(128, 64, 4, 3))] == "plan"
    for changed in (geo(batch=8), geo(dtype=torch.float16), geo(long_rows=True), dataclasses.replace(a, nk=1024)):
        assert changed != a and (changed, TileConfig(128, 64, 4, 3)) not in cache
    assert dataclasses.replace(geo(batch=8), batch=1) == a and hash(dataclasses.replace(geo(batch=8), batch=1)) == hash(a)
    assert (a, TileConfig(64, 64, 4, 3)) not in cache
    import copy
    import pickle

    for clone in (pickle.loads(pickle.dumps(a)), copy.deepcopy(a)):
        assert clone == a and hash(clone) == hash(a) and cache[(clone, TileConfig(128, 64, 4, 3))] == "plan"
