"""CUDA backend: build-free checks on any machine, kernel compile checks with nvcc, and GPU correctness.

CPU part (always runs):
- registration, priority, readable ``why_not`` / availability reasons without a GPU;
- the build helpers (cache dir, keys, arch lists, error extraction) and the fake
  implementation of the custom op (what ``torch.compile`` traces);
- a tile-level model of the kernel (same tiling, token tables, bias modes and
  online softmax as ``csrc/fwd_kernel.cuh``, in float64) against the reference,
  which checks the index arithmetic and shared-memory bounds of every bias mode;
- nvcc compiles of two kernel translation units (no torch headers) for sm_90 and
  sm_80 (skipped without nvcc), and a syntax check of the torch binding.

GPU part (``@pytest.mark.gpu``, skipped without CUDA): the shared case grid of
``tests/attention_cases.py`` (fp16/bf16; fp32 must be refused with a reason),
varlen, torch.compile, opcheck, and selection by ``auto``.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(ROOT), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from attention_cases import GPU_CASES, Case, check, make_inputs  # noqa: E402

from samsparse.backends.cuda import backend as ops  # noqa: E402  (kernel geometry mirrors, ops)
from samsparse.backends.cuda import build  # noqa: E402
from samsparse.backends.reference import reference_attention  # noqa: E402
from samsparse.masks import BlockMask  # noqa: E402
from samsparse.relpos import RelPos  # noqa: E402

CSRC = ROOT / "samsparse" / "backends" / "cuda" / "csrc"
HAS_GPU = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8
gpu = pytest.mark.gpu
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="needs an sm_80+ CUDA GPU")
HOPPER = HAS_GPU and torch.cuda.get_device_capability() == (9, 0)
needs_hopper = pytest.mark.skipif(not HOPPER, reason="needs a compute capability 9.0 GPU (H100/H200)")


# ============================================================================ CPU: registration and reasons
def test_registered_between_triton_and_flex():
    # auto order follows measured speed: the Triton kernel is faster with SAM's rel-pos on an H100
    from samsparse import backends
    from samsparse.backends.cuda import CudaBackend

    assert "cuda" in backends.names()
    cb = backends.get("cuda")
    assert isinstance(cb, CudaBackend)
    if "triton" in backends.names():
        assert cb.priority < backends.get("triton").priority
    assert cb.priority > backends.get("flex").priority


def test_import_builds_nothing():
    # importing the package (done above) must not have tried to build or load anything
    info = build.build_info()
    if not HAS_GPU:
        assert not info["loaded"] and not info["built"]


@pytest.mark.skipif(HAS_GPU, reason="checks the no-GPU reasons")
def test_reasons_without_gpu():
    from samsparse import backends

    cb = backends.get("cuda")
    reason = cb.is_available()
    assert reason and ("CUDA" in reason or "GPU" in reason), reason
    q = torch.randn(1, 2, 16, 64, dtype=torch.float16)
    assert cb.why_not(q, q, q) == reason
    assert backends.select(q, q, q).name != "cuda"
    row = [r for r in backends.backend_table() if r["name"] == "cuda"][0]
    assert row["available"] is False and row["why_not"] == reason
    # and no build was attempted
    assert not build.build_info()["built"]


def test_why_not_call_checks():
    from samsparse.backends.base import AttentionCall
    from samsparse.backends.cuda import CudaBackend

    cb = CudaBackend()

    def call(**kw):
        base = dict(device=torch.device("cuda"), dtype=torch.float16, batch=1, heads=2, kv_heads=2, nq=8, nk=8,
                    head_dim=64, layout=None, has_rel_pos=False, rel_pos_tables=False, return_lse=False)
        base.update(kw)
        return AttentionCall(**base)

    assert cb._why_not(call()) is None
    assert cb._why_not(call(head_dim=80, layout="tiles", has_rel_pos=True)) is None
    assert "CUDA tensors" in cb._why_not(call(device=torch.device("cpu")))
    assert "head dim" in cb._why_not(call(head_dim=20))
    assert "head dim" in cb._why_not(call(head_dim=512))
    q = torch.randn(1, 2, 8, 16, dtype=torch.float32)
    reason = cb.why_not(q, q, q)
    assert reason and ("dtype" in reason or "GPU" in reason or "CUDA" in reason)


def test_head_dims_and_smem_formula():
    assert [ops.kernel_head_dim(d) for d in (8, 16, 32, 40, 64, 72, 80, 88, 128, 136, 256)] == [
        32, 32, 32, 64, 64, 80, 80, 128, 128, 256, 256]
    assert ops.kernel_head_dim(12) == 0 and ops.kernel_head_dim(264) == 0
    # SAM global attention (d=64/80, 64x64 grid with rel-pos) must fit two CTAs per H100 SM
    for d in (64, 80):
        assert 2 * ops.smem_bytes(d, (64, 64)) <= 227 * 1024
    # every config fits an A100 without rel-pos, and with SAM-sized grids
    for d in ops.KERNEL_HEAD_DIMS:
        assert ops.smem_bytes(d) <= 163 * 1024
        assert ops.smem_bytes(d, (64, 64)) <= 227 * 1024


# ============================================================================ CPU: build helpers
def test_cache_dir_and_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMSPARSE_HOME", str(tmp_path))
    assert build.cache_root() == tmp_path / "ext"
    monkeypatch.delenv("SAMSPARSE_HOME")
    assert build.cache_root() == Path("~/.cache/samsparse/ext").expanduser()
    assert build._norm_archs("9.0") == ["9.0"]
    assert build._norm_archs("8.0;9.0 sm_90 90") == ["8.0", "9.0"]
    with pytest.raises(ValueError):
        build._norm_archs("hopper")
    k90, k8090 = build.build_key(["9.0"]), build.build_key(["8.0", "9.0"])
    assert k90 != k8090 and len(k90) == 16
    assert build._build_dir(["8.0", "9.0"]).name.endswith("_80_90")
    names = {p.name for p in build.sources()}
    assert "binding.cpp" in names and "dispatch.cu" in names
    assert {f"fwd_{t}_hd{d}.cu" for t in ("fp16", "bf16") for d in ops.KERNEL_HEAD_DIMS} <= names


def test_cached_build_lookup(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMSPARSE_HOME", str(tmp_path))
    d = build._build_dir(["8.0", "9.0"])
    d.mkdir(parents=True)
    assert build._cached_build_for("9.0") is None
    (d / f"{d.name}.so").write_bytes(b"")
    assert build._cached_build_for("9.0") == d / f"{d.name}.so"
    assert build._cached_build_for("8.0") == d / f"{d.name}.so"
    assert build._cached_build_for("8.6") is None
    stale = tmp_path / "ext" / "samsparse_cuda_0000000000000000_90"
    stale.mkdir()
    (stale / f"{stale.name}.so").write_bytes(b"")
    assert build._cached_build_for("9.0") == d / f"{d.name}.so"  # other sources: ignored


def test_first_error_line():
    text = (
        "Error building extension 'x': [1/3] nvcc ... -c a.cu\nFAILED: a.cuda.o\n"
        "/p/fwd_kernel.cuh(12): error: identifier \"foo\" is undefined\n1 error detected\nninja: build stopped: subcommand failed.\n"
    )
    assert build._first_error_line(text) == '/p/fwd_kernel.cuh(12): error: identifier "foo" is undefined'
    assert build._first_error_line("something odd\nlast line") == "last line"


def test_build_error_is_readable(monkeypatch, tmp_path):
    monkeypatch.setenv("SAMSPARSE_HOME", str(tmp_path))
    monkeypatch.setattr(build, "nvcc_path", lambda: None)
    assert "nvcc not found" in build.toolchain_problem()
    if torch.version.cuda is not None:
        with pytest.raises(build.BuildError, match="nvcc not found"):
            build.build_extension(verbose=False)


def test_build_at_most_once(monkeypatch):
    calls = []
    monkeypatch.setattr(build, "_state", {"tried": False, "loaded": False, "error": None, "path": None,
                                          "seconds": None, "built": False})
    monkeypatch.setattr(build, "environment_problem", lambda: calls.append(1) or "no CUDA GPU (test)")
    assert build.ensure_loaded() == "no CUDA GPU (test)"
    assert build.ensure_loaded() == "no CUDA GPU (test)"
    assert len(calls) == 1
    assert build.availability_reason() == "no CUDA GPU (test)"
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        build.require()


# ============================================================================ CPU: fake implementation (torch.compile)
def test_fake_impl_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.empty(2, 3, 50, 64, dtype=torch.bfloat16)
        k = torch.empty(2, 1, 70, 64, dtype=torch.bfloat16)
        out, lse = torch.ops.samsparse.cuda_attention(
            q, k, k, None, None, None, None, 0.125, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        assert out.shape == q.shape and out.dtype == q.dtype and lse.shape == (2, 3, 50) and lse.dtype == torch.float32
        assert out.transpose(1, 2).is_contiguous()
        qp = torch.empty(100, 4, 32, dtype=torch.float16)
        kp = torch.empty(90, 2, 32, dtype=torch.float16)
        cu = torch.zeros(3, dtype=torch.int32)
        o2, l2 = torch.ops.samsparse.cuda_varlen_attention(qp, kp, kp, cu, cu, 60, 50, None, None, 0.2, 128, 128)
        assert o2.shape == qp.shape and l2.shape == (4, 100)


def test_compile_traces_without_running():
    from torch.fx.experimental.proxy_tensor import make_fx

    def fn(q, k, v):
        out, lse = torch.ops.samsparse.cuda_attention(q, k, v, None, None, None, None, 0.125,
                                                     0, 0, 0, 0, 0, 0, 0, 0, 0)
        return out * 2, lse

    q = torch.randn(1, 2, 16, 64, dtype=torch.float16)
    gm = make_fx(fn, tracing_mode="fake")(q, q, q)
    assert "samsparse.cuda_attention" in gm.code


# ============================================================================ CPU: tile model of the kernel
def _model_attention(q, k, v, mask=None, rel_pos=None, scale=None, fold_height=False, block_m=None):
    """The kernel's algorithm at tile level, in float64 (mirror of csrc/fwd_kernel.cuh).

    Same CTA tiling, query/key token tables, bias-mode choice (run_fwd_hd), bias
    lookups in the staged rel-pos rows (with the kernel's strides, clamps and bounds),
    masks and base-2 online softmax. Returns (out, lse, modes used).

    ``fold_height``: the run-64 softmax of the Hopper kernel (csrc/fwd_sm90.cuh): the logits
    take only the width term (x = s * scale + rel_w), the tile's one height value per row
    enters through the row max (m = max(x) + rel_h) and the exponent's offset. ``block_m``: query rows
    per CTA other than the mma.sync kernel's (the Hopper kernel's 64-row tiles).
    """
    b, h, nq, d = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    scale = d ** -0.5 if scale is None else scale
    kd = ops.kernel_head_dim(d)
    bm, bn, _ = ops._CFG[kd]
    bm = block_m or bm
    # ---- ops.attention (Python)
    layout, bq, bk, tgh, tgw, th, tw = 0, 0, 0, 0, 0, 0, 0
    kv_num = kv_idx = None
    if mask is not None:
        idx = mask.to_indices("cpu")
        kv_num, kv_idx = idx.kv_num_blocks, idx.kv_indices
        bq, bk = mask.block_size
        if mask.layout == "tiles":
            (tgh, tgw), (th, tw) = mask.grid, mask.tile
            if tw >= tgw:
                layout, bq, bk, tgh, tgw, th, tw = 0, th * tgw, th * tgw, 0, 0, 0, 0
            else:
                layout = 1
    rel_h = rel_w = None
    rgh = rgw = 0
    if rel_pos is not None:
        rel_h, rel_w = rel_pos.terms(q.double(), torch.float64)
        rgh, rgw = rel_pos.k_grid
    # ---- run_fwd_hd (host)
    dense = kv_num is None
    if dense:
        layout, bq, bk, split_m, sub_n = 0, bm, bn, 1, 1
        num_q_tiles = math.ceil(nq / bm)
    else:
        split_m, sub_n = math.ceil(bq / bm), math.ceil(bk / bn)
        num_q_tiles = kv_num.shape[2] * split_m
    ntw = math.ceil(tgw / tw) if layout == 1 else 1

    def runs_fit(w):
        if w > bn or bn % w:
            return False
        if layout == 0:
            return rgw == w and (dense or bk % w == 0) and nk == rgh * rgw
        return tw == w and rgh == tgh and rgw == tgw

    def block_token(blk, n_in, bsz, n_tokens):
        """Token of position n_in of mask block blk (-1 when padding), as the kernel's block_token()."""
        if n_in >= bsz:
            return -1
        if layout == 0:
            tok = blk * bsz + n_in
            return tok if tok < n_tokens else -1
        tr, tc = divmod(blk, ntw)
        r, c = divmod(n_in, tw)
        row, col = tr * th + r, tc * tw + c
        return row * tgw + col if row < tgh and col < tgw else -1

    if rel_h is None:
        mode = 0
    else:
        mode = next((w for w in (64, 32, 16) if runs_fit(w)), 1)
    W = mode if mode >= 16 else 1
    n_runs = bn // W if mode >= 16 else 1
    Sh = ((max(rgh, 1) + 15) // 16) * 16 + 8
    Sw = ((max(rgw, 1) + max(16, W) - 1) // max(16, W)) * max(16, W) + 8
    # ---- kernel
    LOG2E, LN2 = 1.4426950408889634, 0.6931471805599453
    mult = scale * LOG2E if mode == 0 else LOG2E
    out = torch.zeros(b, h, nq, d, dtype=torch.float64)
    lse = torch.full((b, h, nq), float("-inf"), dtype=torch.float64)
    qd, kd_, vd = q.double(), k.double(), v.double()
    group = h // hkv
    ar_n = torch.arange(bn)
    for bb in range(b):
        for hh in range(h):
            for qt in range(num_q_tiles):
                qb, qs = divmod(qt, split_m)
                if layout == 0 and qb * bq + qs * bm >= nq:
                    continue
                qtok = torch.tensor([block_token(qb, qs * bm + m, bq, nq) for m in range(bm)])
                qv = qtok >= 0
                Q = torch.zeros(bm, d, dtype=torch.float64)
                Q[qv] = qd[bb, hh, qtok[qv]]
                relh_s = torch.zeros(bm, Sh, dtype=torch.float64)
                relw_s = torch.zeros(bm, Sw, dtype=torch.float64)
                if mode:
                    relh_s[qv, :rgh] = rel_h[bb, hh, qtok[qv]]
                    relw_s[qv, :rgw] = rel_w[bb, hh, qtok[qv]]
                if dense:
                    n_steps = math.ceil(nk / bn)
                else:
                    kb, kh = (bb if kv_num.shape[0] > 1 else 0), (hh if kv_num.shape[1] > 1 else 0)
                    n_steps = int(kv_num[kb, kh, qb]) * sub_n
                m_i = torch.full((bm,), float("-inf"), dtype=torch.float64)
                l_i = torch.zeros(bm, dtype=torch.float64)
                acc = torch.zeros(bm, d, dtype=torch.float64)
                for t in range(n_steps):
                    j = t if dense else int(kv_idx[kb, kh, qb, t // sub_n])
                    sub = t % sub_n
                    toks = torch.tensor([block_token(j, sub * bn + n, bk, nk) for n in range(bn)])
                    kvv = toks >= 0
                    K = torch.zeros(bn, d, dtype=torch.float64)
                    V = torch.zeros(bn, d, dtype=torch.float64)
                    K[kvv] = kd_[bb, hh // group, toks[kvv]]
                    V[kvv] = vd[bb, hh // group, toks[kvv]]
                    s = Q @ K.T
                    # tile geometry (uniform scalars)
                    row0 = col0 = 0
                    nruns, colcut = n_runs, W
                    if layout == 0:
                        t0 = j * bk + sub * bn
                        n_valid = min(bn, bk - sub * bn, nk - t0)
                        full = n_valid == bn
                        if mode >= 16:
                            assert t0 % W == 0, "run tiles must start on a key-grid row"
                            row0, nruns = t0 // W, n_valid // W
                    else:
                        tr, tc = divmod(j, ntw)
                        n0 = sub * bn
                        full = n0 + bn <= bk and (tr + 1) * th <= tgh and (tc + 1) * tw <= tgw
                        if mode >= 16:
                            row0, col0 = tr * th + n0 // W, tc * W
                            nruns = min(n_runs, (bk - n0) // W, tgh - row0)
                            colcut = min(W, tgw - col0)
                    if mode == 0:
                        if not full:
                            ok = (ar_n < n_valid) if layout == 0 else kvv
                            s[:, ~ok] = float("-inf")
                        x = s
                    elif mode == 1:
                        ok = kvv
                        kr = torch.where(ok, toks // max(rgw, 1), 0)
                        kc = torch.where(ok, toks % max(rgw, 1), 0)
                        assert int(kr.max()) < Sh and int(kc.max()) < Sw
                        bias = relh_s[:, kr] + relw_s[:, kc]
                        x = torch.where(ok[None], s * scale + bias, torch.tensor(float("-inf"), dtype=torch.float64))
                    else:
                        r = ar_n // W
                        c = ar_n % W
                        ok = (r < nruns) & (c < colcut)
                        hidx = torch.clamp(row0 + r, max=rgh - 1)
                        widx = col0 + c
                        assert int(widx.max()) + 1 < Sw + 1 and int(hidx.max()) < Sh, "staged rel-pos read out of bounds"
                        # every valid column of a run tile is the key the loader fetched
                        rows_tok = (row0 + r) * rgw + col0 + c
                        assert torch.equal(rows_tok[ok], toks[ok]) and bool((toks[~ok] < 0).all()), "run geometry"
                        bias = relh_s[:, hidx] + relw_s[:, widx]
                        x = torch.where(ok[None], s * scale + bias, torch.tensor(float("-inf"), dtype=torch.float64))
                    height = torch.zeros(bm, dtype=torch.float64)
                    if fold_height and mode == 64:
                        height = relh_s[:, min(row0, rgh - 1)]  # one key-grid row per tile
                        x = x - height[:, None]  # the kernel never adds it to the logits
                    mx = x.max(1).values + height  # -inf stays -inf
                    m_new = torch.maximum(m_i, mx)
                    m_use = torch.where(torch.isinf(m_new) & (m_new < 0), torch.zeros_like(m_new), m_new)
                    alpha = torch.exp2((m_i - m_use) * mult)
                    p = torch.exp2(x * mult + ((height - m_use) * mult)[:, None])
                    l_i = l_i * alpha + p.sum(1)
                    acc = acc * alpha[:, None] + p @ V
                    m_i = m_new
                empty = ~(l_i > 0)
                o = torch.where(empty[:, None], torch.zeros_like(acc), acc / torch.where(empty, 1.0, l_i)[:, None])
                ls = torch.where(empty, torch.tensor(float("-inf"), dtype=torch.float64),
                                 (m_i * mult + torch.log2(torch.where(empty, 1.0, l_i))) * LN2)
                out[bb, hh, qtok[qv]] = o[qv]
                lse[bb, hh, qtok[qv]] = ls[qv]
    return out, lse, mode


MODEL_CASES = [
    # dense, sequence layout, rel-pos key rows of 64 (runs64) / 32 / 16 / odd widths (generic)
    Case(1, 2, 2, (4, 64), 64, mask="none", rel="tables"),
    Case(1, 1, 1, (6, 32), 32, mask="none", rel="terms", seed=1),
    Case(1, 1, 1, (5, 16), 80, mask="none", rel="tables", seed=2),
    Case(1, 2, 2, (14, 14), 64, mask="none", rel="tables", seed=3),  # SAM window: N=196
    Case(1, 2, 1, (7, 9), 128, mask="none", rel="none", seed=4),
    # masks: random / broadcast / empty rows, blocks smaller and larger than the tiles
    Case(2, 2, 2, (10, 10), 32, mask="random", block=32, rel="tables", seed=5),
    Case(1, 2, 2, (4, 64), 64, mask="random", block=128, rel="tables", seed=6),
    Case(1, 2, 2, (8, 32), 64, mask="random", block=256, rel="tables", seed=7),
    Case(1, 2, 2, (12, 40), 64, mask="random", block=120, rel="tables", seed=8),
    Case(2, 2, 2, (5, 7), 64, mask="empty", block=16, rel="terms", seed=9),
    Case(1, 4, 2, (8, 16), 256, mask="broadcast", block=64, rel="tables", seed=10),
    # tiles layout: runs16 with partial edge tiles, generic tiles, full-width tiles
    Case(1, 2, 2, (30, 33), 80, mask="tiles", tile=(8, 16), rel="tables", seed=11),
    Case(1, 2, 2, (32, 32), 64, mask="tiles", tile=(8, 16), rel="terms", seed=12),
    Case(1, 2, 2, (7, 9), 64, mask="tiles", tile=(3, 5), rel="tables", seed=13),
    Case(1, 2, 2, (7, 9), 64, mask="tiles", tile=(4, 4), rel="none", seed=14),
    Case(1, 2, 2, (6, 8), 32, mask="tiles", tile=(2, 8), rel="tables", seed=15),
    Case(1, 2, 2, (16, 64), 64, mask="tiles", tile=(4, 64), rel="tables", seed=16),
    Case(1, 2, 2, (16, 40), 64, mask="tiles", tile=(4, 32), rel="tables", seed=17),
]


@pytest.mark.parametrize("case", MODEL_CASES, ids=[c.id for c in MODEL_CASES])
def test_tile_model_matches_reference(case):
    q, k, v, mask, rel_pos = make_inputs(case)
    ref, ref_lse = reference_attention(q, k, v, mask, rel_pos, return_lse=True)
    out, lse, mode = _model_attention(q, k, v, mask, rel_pos)
    assert float((out - ref.double()).abs().max()) < 1e-5  # ref is rounded to fp32
    fin = torch.isfinite(ref_lse)
    assert torch.equal(fin, torch.isfinite(lse))
    if fin.any():
        assert float((lse[fin] - ref_lse[fin].double()).abs().max()) < 1e-5


FOLD_CASES = [c for c in MODEL_CASES if c.grid[1] == 64 and c.mask in ("none", "random")] + [
    Case(1, 2, 2, (3, 64), 80, mask="empty", block=64, rel="terms", seed=18),
]


@pytest.mark.parametrize("block_m", [128, 64])
@pytest.mark.parametrize("case", FOLD_CASES, ids=[c.id for c in FOLD_CASES])
def test_tile_model_with_folded_height_term_matches_reference(case, block_m):
    """The wgmma kernel's run-64 softmax (height term through the row max) is the same attention, on its
    128- and 64-row tiles."""
    q, k, v, mask, rel_pos = make_inputs(case)
    ref, ref_lse = reference_attention(q, k, v, mask, rel_pos, return_lse=True)
    out, lse, mode = _model_attention(q, k, v, mask, rel_pos, fold_height=True, block_m=block_m)
    assert mode == 64
    assert float((out - ref.double()).abs().max()) < 1e-5
    fin = torch.isfinite(ref_lse)
    assert torch.equal(fin, torch.isfinite(lse))
    if fin.any():
        assert float((lse[fin] - ref_lse[fin].double()).abs().max()) < 1e-5


def test_tile_model_covers_every_bias_mode():
    modes = set()
    for case in MODEL_CASES:
        q, k, v, mask, rel_pos = make_inputs(case)
        if case.n > 700:
            continue
        modes.add(_model_attention(q[:, :1], k[:, :1], v[:, :1], _head0(mask), _rel_head0(rel_pos))[2])
    assert {0, 1, 16, 32, 64} <= modes, modes


def _head0(mask):
    if mask is None or mask.blocks.shape[1] == 1:
        return mask
    return BlockMask(mask.blocks[:, :1], mask.block_size, mask.seq_len, layout=mask.layout, grid=mask.grid,
                     tile=mask.tile, allow_empty_rows=mask.allow_empty_rows)


def _rel_head0(rel_pos):
    if rel_pos is None or rel_pos.rel_h is None:
        return rel_pos
    return RelPos(rel_pos.q_grid, rel_pos.k_grid, rel_h=rel_pos.rel_h[:, :1], rel_w=rel_pos.rel_w[:, :1])


# ============================================================================ CPU: nvcc compile checks
def _nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").exists():
            return str(Path(home) / "bin" / "nvcc")
    return None


@pytest.mark.skipif(_nvcc() is None, reason="nvcc not found")
@pytest.mark.parametrize("unit,arch", [("fwd_bf16_hd64.cu", "90"), ("fwd_fp16_hd80.cu", "80"), ("fwd_bf16_hd80.cu", "90a")])
def test_kernel_unit_compiles(tmp_path, unit, arch):
    """One kernel translation unit (all its bias modes; no torch headers) compiles for sm_90 / sm_80,
    and for sm_90a with the Hopper kernels (wgmma): spills bounded, no ptxas serialization of their wgmma."""
    cmd = [
        _nvcc(), *build.standalone_nvcc_flags(), "-Xptxas=-v",
        f"-gencode=arch=compute_{arch},code=sm_{arch}", "-I", str(CSRC), "-c", str(CSRC / unit),
        "-o", str(tmp_path / "unit.o"),
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, f"nvcc failed:\n{proc.stderr[-6000:]}"
    assert "error" not in proc.stderr.lower().replace("0 errors", "")
    kernels = proc.stderr.count("Compiling entry function")
    assert kernels >= 4, proc.stderr[-3000:]
    spills = [int(x) for x in re.findall(r"(\d+) bytes spill stores", proc.stderr)]
    assert max(spills, default=0) <= 128, f"register spills: {spills}"
    assert seconds < 120
    if arch == "90a":
        # ptxas -v: per kernel "Compiling entry function '<name>'", then its spill line
        blocks = proc.stderr.split("Compiling entry function")[1:]
        hopper = [b for b in blocks if "attn_fwd_sm90_kernel" in b.split("\n", 1)[0]]
        # no bias and run-64 bias; tiles m64w4, m128w8 and m128w4, each with the fixed-offset and the
        # running-max softmax
        assert len(hopper) == 12, "the Hopper kernel: 2 bias modes x 6 (tile, softmax) variants"
        for b in hopper:
            spill = int(re.search(r"(\d+) bytes spill stores", b).group(1))
            assert spill <= 96, b[:600]  # d = 80 run-64 on m128w8 tiles, running max: 8 B (nvcc 13.0)
            if "Lb1E" in b.split("\n", 1)[0]:
                assert spill == 0, b[:600]  # the fixed-offset kernels: the default path
        # ptxas serialised the wgmma pipeline (C7513: registers defined, C7514: accumulators read, C7515: ...)
        assert not re.search(r"C751[0-9]\) Potential Performance Loss", proc.stderr), proc.stderr[-2000:]


def test_builds_for_9_0_compile_sm_90a():
    assert build.compile_archs(["8.0", "9.0"]) == ["8.0", "9.0a"]
    assert build.compile_archs(["9.0+PTX"]) == ["9.0a", "9.0+PTX"]
    assert build.compile_archs(["8.6", "8.0"]) == ["8.6", "8.0"]


def test_kernel_variant_choice(monkeypatch):
    dev = torch.device("cuda", 0)
    arch = {"cuda": 90}
    monkeypatch.setattr(ops, "device_arch", lambda device: arch.get(device.type, 0))
    monkeypatch.delenv(ops.KERNEL_ENV, raising=False)
    assert ops.kernel_variant(dev) == 1  # the Hopper kernel by default on compute capability 9.0
    monkeypatch.setenv(ops.KERNEL_ENV, "mma")
    assert ops.kernel_variant(dev) == 0
    monkeypatch.setenv(ops.KERNEL_ENV, "wgmma")
    assert ops.kernel_variant(dev) == 1
    assert ops.kernel_variant(torch.device("cpu")) == 0
    arch["cuda"] = 80
    assert ops.kernel_variant(dev) == 0  # sm_90a code runs on compute capability 9.0 only
    monkeypatch.setenv(ops.KERNEL_ENV, "hopper")
    with pytest.raises(ValueError, match="SAMSPARSE_CUDA_KERNEL"):
        ops.kernel_variant(dev)
    monkeypatch.setenv(ops.KERNEL_ENV, "wgmma")
    arch["cuda"] = 90
    monkeypatch.delenv(ops.FIXED_OFFSET_ENV, raising=False)
    monkeypatch.setenv(ops.WGMMA_TILE_ENV, "m64w4")
    assert ops._kernel_args(dev) == [1, 1, 1]  # the fixed-offset softmax by default
    monkeypatch.setenv(ops.WGMMA_TILE_ENV, "M128W4")
    monkeypatch.setenv(ops.FIXED_OFFSET_ENV, "0")
    assert ops._kernel_args(dev) == [1, 3, 0]
    monkeypatch.setenv(ops.FIXED_OFFSET_ENV, "Redo")
    assert ops._kernel_args(dev) == [1, 3, 2]
    monkeypatch.setenv(ops.FIXED_OFFSET_ENV, "yes")
    with pytest.raises(ValueError, match="SAMSPARSE_CUDA_FIXED_OFFSET"):
        ops._kernel_args(dev)
    monkeypatch.setenv(ops.FIXED_OFFSET_ENV, "1")
    monkeypatch.setenv(ops.WGMMA_TILE_ENV, "128")
    with pytest.raises(ValueError, match="SAMSPARSE_CUDA_WGMMA_TILE"):
        ops._kernel_args(dev)


def test_rel_h_layout_switch(monkeypatch):
    """SAMSPARSE_CUDA_REL_H_LAYOUT picks how terms computed from the tables store rel_h (by query unless
    'row'); anything else is a usage error naming the variable and its values."""
    monkeypatch.delenv(ops.REL_H_LAYOUT_ENV, raising=False)
    assert ops.rel_h_by_query() is True
    monkeypatch.setenv(ops.REL_H_LAYOUT_ENV, " Row ")
    assert ops.rel_h_by_query() is False
    monkeypatch.setenv(ops.REL_H_LAYOUT_ENV, "query")
    assert ops.rel_h_by_query() is True
    monkeypatch.setenv(ops.REL_H_LAYOUT_ENV, "column")
    with pytest.raises(ValueError, match="SAMSPARSE_CUDA_REL_H_LAYOUT.*query.*row"):
        ops.rel_h_by_query()


_LAYOUT_PROGRAM = r"""
#include "fwd_sm90.cuh"
#include <cstdio>
using namespace samsparse::fwd::sm90;
int main() {
  using Op = Operands<HEAD_DIM, 128>;
  const uint32_t base = 5 * 1024;  // the kernel aligns its base to 1024 bytes
  const int chunks = HEAD_DIM / 8, ksteps = HEAD_DIM > 64 ? 5 : 4, panels = HEAD_DIM > 64 ? 2 : 1;
  for (int r = 0; r < 128; ++r)
    for (int c = 0; c < chunks; ++c) std::printf("q %d %d %u\n", r, c, Op::q_chunk(base, r, c));
  for (int v = 0; v < 2; ++v)
    for (int st = 0; st < (v ? kVStages : kKStages); ++st)
      for (int r = 0; r < 64; ++r)
        for (int c = 0; c < chunks; ++c) std::printf("kv %d %d %d %d %u\n", st, v, r, c, Op::kv_chunk(base, st, v, r, c));
  for (int b = 0; b < 2; ++b)
    for (int ks = 0; ks < ksteps; ++ks) std::printf("qd %d %d %llu\n", b, ks, (unsigned long long)Op::q_desc(base, b, ks));
  for (int st = 0; st < 2; ++st)
    for (int ks = 0; ks < ksteps; ++ks) std::printf("kd %d %d %llu\n", st, ks, (unsigned long long)Op::k_desc(base, st, ks));
  for (int st = 0; st < kVStages; ++st)
    for (int pn = 0; pn < panels; ++pn)
      for (int kk = 0; kk < 4; ++kk) std::printf("vd %d %d %d %llu\n", st, pn, kk, (unsigned long long)Op::v_desc(base, st, pn, kk));
  return 0;
}
"""


def _swizzled(addr: int, width: int) -> int:
    """Physical shared address of a logical one under the 128- / 32-byte swizzle (16-byte units)."""
    return addr ^ ((((addr >> 7) & (7 if width == 128 else 1))) << 4)


def _read_operand(mem: dict, desc: int, rows: int, cols: int, mn_major: bool) -> list:
    """What wgmma reads through ``desc`` (PTX ISA matrix-descriptor and canonical swizzled layouts):
    K-major: rows x 16 (row i: 8-row group i // 8 at SBO, row i % 8 of the atom, k contiguous);
    MN-major (transposed B): 16 keys x cols (key k: 8-key group at the group stride, cols contiguous)."""
    start = (desc & 0x3FFF) << 4
    lbo, sbo = ((desc >> 16) & 0x3FFF) << 4, ((desc >> 32) & 0x3FFF) << 4
    assert (desc >> 49) & 7 == 0, "base offset must be 0 (atoms aligned)"
    width = {1: 128, 3: 32}[desc >> 62]
    out = []
    if not mn_major:
        for i in range(rows):
            out.append([mem.get(_swizzled(start + (i // 8) * sbo + (i % 8) * width + 2 * k, width)) for k in range(16)])
    else:
        assert lbo == sbo, "one swizzle atom wide: both offsets carry the 8-key group stride"
        for k in range(16):
            out.append([mem.get(_swizzled(start + (k // 8) * sbo + (k % 8) * width + 2 * n, width)) for n in range(cols)])
    return out


@pytest.mark.skipif(_nvcc() is None, reason="nvcc not found")
@pytest.mark.parametrize("d", [64, 80])
def test_wgmma_layouts_read_back_the_written_tiles(tmp_path, d):
    """The Hopper kernel's cp.async placement (Operands::q_chunk / kv_chunk) and its wgmma descriptors
    (q_desc / k_desc / v_desc), run on the host, agree: reading every operand through its descriptor as
    the PTX ISA lays out swizzled matrices gives back exactly the Q / K / V elements each product needs."""
    src = tmp_path / "layout.cu"
    src.write_text(_LAYOUT_PROGRAM)
    exe = tmp_path / "layout"
    proc = subprocess.run([_nvcc(), "-std=c++17", f"-DHEAD_DIM={d}", "-I", str(CSRC), str(src), "-o", str(exe)],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60, check=True).stdout.split("\n")
    mem, qd, kd, vd = {}, {}, {}, {}
    for ln in filter(None, lines):
        f = ln.split()
        if f[0] in ("q", "kv"):
            key = ("q", int(f[1]), int(f[2])) if f[0] == "q" else ("kv", int(f[1]), int(f[2]), int(f[3]), int(f[4]))
            addr = int(f[-1])
            assert addr % 16 == 0
            *tile, row, ch = key
            for e in range(8):  # a chunk: 8 consecutive 16-bit elements of one row
                assert addr + 2 * e not in mem, f"two elements at {addr + 2 * e}"
                mem[addr + 2 * e] = (*tile, row, ch * 8 + e)
        elif f[0] == "qd":
            qd[int(f[1]), int(f[2])] = int(f[3])
        elif f[0] == "kd":
            kd[int(f[1]), int(f[2])] = int(f[3])
        else:
            vd[int(f[1]), int(f[2]), int(f[3])] = int(f[4])
    ksteps = 5 if d > 64 else 4
    for (blk, ks), desc in qd.items():  # A of S = Q K^T: 64 rows of block blk, columns 16 ks ...
        got = _read_operand(mem, desc, 64, 16, mn_major=False)
        assert got == [[("q", 64 * blk + i, 16 * ks + k) for k in range(16)] for i in range(64)], (blk, ks)
    for (st, ks), desc in kd.items():  # B of S = Q K^T: the stage's 64 keys, columns 16 ks ...
        got = _read_operand(mem, desc, 64, 16, mn_major=False)
        assert got == [[("kv", st, 0, i, 16 * ks + k) for k in range(16)] for i in range(64)], (st, ks)
    for (st, pn, kk), desc in vd.items():  # B of O += P V: keys 16 kk ..., the panel's columns
        cols = 64 if pn == 0 else 16
        got = _read_operand(mem, desc, 16, cols, mn_major=True)
        assert got == [[("kv", st, 1, 16 * kk + k, 64 * pn + n) for n in range(cols)] for k in range(16)], (st, pn, kk)
    assert len(qd) == 2 * ksteps and len(kd) == 2 * ksteps and len(vd) == 3 * (2 if d > 64 else 1) * 4


@pytest.mark.skipif(_nvcc() is None, reason="nvcc not found")
def test_wgmma_selftest_unit_compiles(tmp_path):
    cmd = [_nvcc(), "-std=c++17", "-O1", "-gencode=arch=compute_90a,code=sm_90a", "-gencode=arch=compute_80,code=sm_80",
           "-I", str(CSRC), "-c", str(CSRC / "wgmma_selftest.cu"), "-o", str(tmp_path / "selftest.o")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.skipif(_nvcc() is None, reason="nvcc not found")
def test_dispatch_unit_compiles(tmp_path):
    cmd = [_nvcc(), "-std=c++17", "-O1", "-gencode=arch=compute_90,code=sm_90", "-I", str(CSRC), "-c",
           str(CSRC / "dispatch.cu"), "-o", str(tmp_path / "dispatch.o")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]


def _torch_includes() -> list[str]:
    from torch.utils import cpp_extension

    return cpp_extension.include_paths()


@pytest.mark.skipif(shutil.which("g++") is None, reason="no g++")
def test_binding_syntax(tmp_path):
    cuda_inc = [p for p in (os.environ.get("CUDA_HOME", ""), "/usr/local/cuda") if p and (Path(p) / "include" / "cuda_runtime.h").exists()]
    if not cuda_inc or torch.version.cuda is None:
        pytest.skip("CUDA headers or CUDA torch not available")
    std = "-std=c++20" if tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 10) else "-std=c++17"
    cmd = ["g++", std, "-fsyntax-only", "-I", str(CSRC), f"-I{cuda_inc[0]}/include"]
    cmd += [f"-I{p}" for p in _torch_includes()]
    cmd.append(str(CSRC / "binding.cpp"))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    if proc.returncode != 0 and std == "-std=c++17" and "c++20" in proc.stderr:
        proc = subprocess.run([c if c != std else "-std=c++20" for c in cmd], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]


# ============================================================================ GPU
def run_case(case: Case, device="cuda") -> dict:
    """Run one shared case on the CUDA backend and compare with the reference (a result dict)."""
    from samsparse.backends.cuda import CudaBackend

    q, k, v, mask, rel_pos = make_inputs(case, device)
    cb = CudaBackend()
    reason = cb.why_not(q, k, v, mask, rel_pos, return_lse=True)
    if case.dtype == "fp32":
        return {"case": case.id, "ok": reason is not None and "dtype" in reason,
                "problems": [] if reason else ["fp32 must be refused with a dtype reason"], "skipped": True}
    if reason is not None:
        return {"case": case.id, "ok": False, "problems": [f"why_not: {reason}"]}
    out, lse = cb.attend(q, k, v, mask, rel_pos, return_lse=True)
    torch.cuda.synchronize()
    res = check(case, q, k, v, mask, rel_pos, out, lse)
    res["mode"] = ops.last_launch()["bias_mode"]
    return res


@gpu
@needs_gpu
@pytest.mark.parametrize("case", GPU_CASES, ids=[c.id for c in GPU_CASES])
@pytest.mark.parametrize("kernel", ["mma", "wgmma"])
def test_gpu_matches_reference(case, kernel, monkeypatch):
    """The shared grid on the mma.sync kernel and, on compute capability 9.0, under the default (wgmma: the
    Hopper kernel for the calls it serves, mma.sync for the rest)."""
    if kernel == "wgmma" and not HOPPER:
        pytest.skip("the wgmma kernel needs a compute capability 9.0 GPU")
    monkeypatch.setenv(ops.KERNEL_ENV, kernel)
    res = run_case(case)
    assert res["ok"], f"{case.id}: " + "; ".join(res["problems"]) + f" {res}"


@gpu
@needs_gpu
def test_gpu_extra_cases():
    """Shapes beyond the shared grid: SAM windows batch, padded head dims, strided outputs, no-rel tiles."""
    cases = [
        Case(8, 4, 4, (14, 14), 64, "bf16", mask="none", rel="terms", strided=True, seed=60),
        Case(2, 2, 2, (9, 11), 16, "fp16", mask="random", block=16, rel="tables", seed=61),  # d=16 -> 32
        Case(2, 2, 2, (9, 11), 96, "bf16", mask="none", rel="tables", seed=62),  # d=96 -> 128
        Case(1, 2, 2, (16, 64), 64, "fp16", mask="tiles", tile=(4, 64), rel="tables", seed=63),
        Case(1, 2, 2, (16, 40), 64, "bf16", mask="tiles", tile=(4, 32), rel="tables", seed=64),
        Case(1, 2, 2, (8, 32), 128, "fp16", mask="none", rel="tables", seed=65),  # runs32, d=128
        Case(1, 2, 2, (8, 16), 256, "bf16", mask="random", block=64, rel="tables", seed=66),  # runs16, d=256
        Case(1, 2, 2, (7, 9), 64, "fp16", mask="tiles", tile=(4, 4), rel="none", seed=67),
    ]
    bad = [r for r in map(run_case, cases) if not r["ok"]]
    assert not bad, bad


# Calls the wgmma kernel serves (head dim 64/80, sequence layout, no bias or 64-wide key rows)
WGMMA_CASES = [
    c for c in GPU_CASES
    if ops.kernel_head_dim(c.d) in (64, 80) and c.dtype != "fp32" and c.mask != "tiles" and (c.rel == "none" or c.grid[1] == 64)
] + [
    Case(2, 2, 2, (64, 64), 64, "bf16", mask="random", block=64, rel="tables", seed=70, density=0.25),  # SAM 1x64
    Case(2, 2, 2, (64, 64), 80, "fp16", mask="random", block=64, rel="terms", strided=True, seed=71),
    Case(1, 2, 2, (8, 64), 80, "bf16", mask="empty", block=64, rel="tables", seed=72),
    Case(2, 4, 2, (16, 64), 64, "fp16", mask="none", rel="tables", seed=73),  # GQA, 1024 keys
    Case(1, 2, 2, (9, 15), 80, "bf16", mask="none", rel="none", seed=74),  # partial tiles
    Case(1, 2, 1, (7, 11), 64, "fp16", mask="random", block=32, rel="none", seed=75),  # bk < tile
]


@gpu
@needs_hopper
@pytest.mark.parametrize("d", [64, 80])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_gpu_wgmma_selftest_one_tile(d, dtype):
    """The Hopper kernel's layouts and wgmma wrappers on one tile (S = Q K^T, O = round(S) V)."""
    res = ops.wgmma_selftest(d, dtype)
    assert res["s_err"] < 1e-3, f"S = Q K^T wrong (K-major layouts / descriptors): {res['s_err']}"
    assert res["o_err"] < 1e-2, f"O = P V wrong (V's MN-major layout / P fragments): {res['o_err']}"


@gpu
@needs_hopper
@pytest.mark.parametrize("case", WGMMA_CASES, ids=[c.id for c in WGMMA_CASES])
@pytest.mark.parametrize("tile", ["", "m64w4", "m128w8", "m128w4"])
def test_gpu_wgmma_matches_reference(case, tile, monkeypatch):
    monkeypatch.setenv(ops.KERNEL_ENV, "wgmma")
    monkeypatch.setenv(ops.WGMMA_TILE_ENV, tile)
    res = run_case(case)
    assert res["ok"], f"{case.id}: " + "; ".join(res["problems"]) + f" {res}"
    assert ops.last_launch()["kernel"] == "wgmma", ops.last_launch()


WGMMA_TABLE_CASES = [c for c in WGMMA_CASES if c.rel == "tables"]


@gpu
@needs_hopper
@pytest.mark.parametrize("case", WGMMA_TABLE_CASES, ids=[c.id for c in WGMMA_TABLE_CASES])
@pytest.mark.parametrize("tile", ["", "m128w4"])
def test_gpu_wgmma_rel_h_by_key_row(case, tile, monkeypatch):
    """Terms from the tables with rel_h stored key-row-major (SAMSPARSE_CUDA_REL_H_LAYOUT=row, the A/B
    layout): the kernel reads them through their strides and matches the reference."""
    monkeypatch.setenv(ops.KERNEL_ENV, "wgmma")
    monkeypatch.setenv(ops.WGMMA_TILE_ENV, tile)
    monkeypatch.setenv(ops.REL_H_LAYOUT_ENV, "row")
    res = run_case(case)
    assert res["ok"], f"{case.id}: " + "; ".join(res["problems"]) + f" {res}"
    assert ops.last_launch()["kernel"] == "wgmma", ops.last_launch()


@gpu
@needs_hopper
@pytest.mark.parametrize("case", WGMMA_CASES, ids=[c.id for c in WGMMA_CASES])
@pytest.mark.parametrize("tile", ["", "m128w4"])
def test_gpu_wgmma_softmax_modes(case, tile, monkeypatch):
    """The Hopper kernel's running-max softmax (SAMSPARSE_CUDA_FIXED_OFFSET=0) and the fixed-offset pass
    followed by a forced second pass in every CTA (=redo) both match the reference; the forced second pass
    is the running-max pass, bit for bit (so the restart leaves no state behind). On the default tiles and
    on m128w4 (two 64-row blocks per warpgroup, its own fixed-offset step)."""
    from samsparse.backends.cuda import CudaBackend

    cb = CudaBackend()
    monkeypatch.setenv(ops.KERNEL_ENV, "wgmma")
    monkeypatch.setenv(ops.WGMMA_TILE_ENV, tile)
    outs = {}
    for mode in ("0", "redo"):
        monkeypatch.setenv(ops.FIXED_OFFSET_ENV, mode)
        q, k, v, mask, rel_pos = make_inputs(case, device="cuda")
        out, lse = cb.attend(q, k, v, mask, rel_pos, return_lse=True)
        torch.cuda.synchronize()
        res = check(case, q, k, v, mask, rel_pos, out, lse)
        assert res["ok"], f"{case.id} mode {mode}: " + "; ".join(res["problems"]) + f" {res}"
        assert ops.last_launch()["kernel"] == "wgmma", ops.last_launch()
        outs[mode] = (out, lse)
    assert torch.equal(outs["0"][0], outs["redo"][0])
    assert torch.equal(outs["0"][1], outs["redo"][1])


@gpu
@needs_gpu
def test_gpu_extension_errors_raise_instead_of_crashing(tmp_path):
    """A call the extension refuses (here a geom list of the wrong length) comes back as its reason, raised
    as RuntimeError by the Python side: the op returns it instead of throwing (a c10::Error thrown out of
    the extension killed the process on the H200 machine). Run in a subprocess, so a crash fails this test
    instead of the session."""
    script = tmp_path / "bad_call.py"
    script.write_text(
        "import torch\n"
        "from samsparse.backends.cuda import build\n"
        "build.require()\n"
        "q = torch.zeros(1, 1, 64, 64, device='cuda', dtype=torch.bfloat16)\n"
        "lse = torch.zeros(1, 1, 64, device='cuda')\n"
        "from samsparse.backends.cuda.backend import _raise_refusal\n"
        "try:\n"
        "    _raise_refusal(torch.ops.samsparse_cuda.fwd(q, q, q, q.clone(), lse, None, None, None, None, None, None,\n"
        "                                               0.125, [0] * 18))\n"
        "except RuntimeError as exc:\n"
        "    print('raised:', str(exc).splitlines()[0])\n"
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                              filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))))
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    assert "raised:" in proc.stdout and "geom must have 13 to 16 ints" in proc.stdout, proc.stdout


@gpu
@needs_hopper
@pytest.mark.parametrize("tile", ["m64w4", "m128w8"])
@pytest.mark.parametrize("d", [64, 80])
def test_gpu_wgmma_fixed_offset_overflow_takes_the_second_pass(d, tile, monkeypatch):
    """Logits that climb far above step 0's maximum (keys growing along the sequence: ~80-90 nats more at
    the end) overflow the fixed-offset sums (2^64 reached): those CTAs run again with the running max, so
    the result stays finite and right, and equals the running-max kernel's where every CTA ran again."""
    from samsparse.backends.cuda import CudaBackend

    cb = CudaBackend()
    monkeypatch.setenv(ops.KERNEL_ENV, "wgmma")
    monkeypatch.setenv(ops.WGMMA_TILE_ENV, tile)
    g = torch.Generator().manual_seed(90 + d)
    b, h, n = 2, 2, 1024
    q = torch.randn(b, h, n, d, generator=g).abs()
    k = torch.randn(b, h, n, d, generator=g).abs() * torch.linspace(0.0, 16.0, n).view(1, 1, n, 1)
    v = torch.randn(b, h, n, d, generator=g)
    q, k, v = (t.to(torch.bfloat16).cuda() for t in (q, k, v))
    ref = reference_attention(q.float(), k.float(), v.float(), None, None)
    outs = {}
    for mode in ("1", "0"):
        monkeypatch.setenv(ops.FIXED_OFFSET_ENV, mode)
        out = cb.attend(q, k, v, None, None)
        torch.cuda.synchronize()
        assert ops.last_launch()["kernel"] == "wgmma", ops.last_launch()
        assert torch.isfinite(out).all(), f"mode {mode}: non-finite output"
        err = float((out.float() - ref).abs().max() / ref.abs().max())
        assert err < 2e-2, f"mode {mode}: max rel err {err}"
        outs[mode] = out
    # step 0 sees keys ~0, the last ones ~16x larger in every dimension: every CTA overflows and runs again
    assert torch.equal(outs["1"], outs["0"])


def _varlen_case(dtype=torch.float16, sparse=True, h=4, hkv=2, d=64):
    g = torch.Generator().manual_seed(5)
    lens_q, lens_k, bs = [19, 140, 7, 0], [19, 133, 250, 5], 64
    cu_q = torch.tensor([0] + list(torch.tensor(lens_q).cumsum(0)), dtype=torch.int32)
    cu_k = torch.tensor([0] + list(torch.tensor(lens_k).cumsum(0)), dtype=torch.int32)
    q = torch.randn(sum(lens_q), h, d, generator=g).to(dtype).cuda()
    kv = torch.randn(sum(lens_k), 2, hkv, d, generator=g).to(dtype).cuda()
    k, v = kv[:, 0], kv[:, 1]
    blocks = None
    if sparse:
        mq, mk = math.ceil(max(lens_q) / bs), math.ceil(max(lens_k) / bs)
        blocks = torch.rand(len(lens_q), h, mq, mk, generator=g) < 0.5
        blocks[..., 0] = True
    return q, k, v, cu_q, cu_k, lens_q, lens_k, bs, blocks


@gpu
@needs_gpu
@pytest.mark.parametrize("kernel", ["mma", "wgmma"])
@pytest.mark.parametrize("sparse", [False, True])
def test_gpu_varlen(sparse, kernel, monkeypatch):
    from samsparse.backends.cuda import cuda_varlen_attention

    if kernel == "wgmma" and not HOPPER:
        pytest.skip("the wgmma kernel needs a compute capability 9.0 GPU")
    monkeypatch.setenv(ops.KERNEL_ENV, kernel)

    q, k, v, cu_q, cu_k, lens_q, lens_k, bs, blocks = _varlen_case(sparse=sparse)
    kv_num = kv_idx = None
    if blocks is not None:
        idx = BlockMask(blocks, bs, (blocks.shape[2] * bs, blocks.shape[3] * bs)).to_indices("cuda")
        kv_num, kv_idx = idx.kv_num_blocks, idx.kv_indices
    out, lse = cuda_varlen_attention(q, k, v, cu_q.cuda(), cu_k.cuda(), max(lens_q), max(lens_k), kv_num, kv_idx,
                                     block_size=bs, return_lse=True)
    assert ops.last_launch()["kernel"] == kernel
    for i in range(len(lens_q)):
        qs, ks = slice(int(cu_q[i]), int(cu_q[i + 1])), slice(int(cu_k[i]), int(cu_k[i + 1]))
        if lens_q[i] == 0:
            continue
        qi, ki, vi = q[qs].transpose(0, 1)[None], k[ks].transpose(0, 1)[None], v[ks].transpose(0, 1)[None]
        mask_i = None
        if blocks is not None:
            bi = blocks[i : i + 1, :, : math.ceil(lens_q[i] / bs), : math.ceil(lens_k[i] / bs)]
            mask_i = BlockMask(bi.cuda(), bs, (lens_q[i], lens_k[i]), allow_empty_rows=True)
        ref, ref_lse = reference_attention(qi, ki, vi, mask_i, return_lse=True)
        got = out[qs].transpose(0, 1)[None]
        err = float((got.double() - ref.double()).abs().max())
        assert err < 1e-2, f"sequence {i}: max abs err {err}"
        fin = torch.isfinite(ref_lse[0])
        assert torch.equal(fin, torch.isfinite(lse[:, qs]))
        if fin.any():
            assert float((lse[:, qs][fin] - ref_lse[0][fin]).abs().max()) < 2e-2


def test_rel_terms_keeps_given_terms_and_uses_einsum_off_gpu():
    """The kernel's terms: the caller's as they are; from the tables on the CPU (or while tracing) SAM's einsum."""
    from samsparse.relpos import RelPos

    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 16, 8, generator=g)
    rp = RelPos.from_tables(torch.randn(7, 8, generator=g), torch.randn(7, 8, generator=g), (4, 4))
    rel_h, rel_w = ops.rel_terms(rp, q)
    ref_h, ref_w = RelPos(rp.q_grid, rp.k_grid, rp.rh, rp.rw).terms(q)
    assert torch.equal(rel_h, ref_h) and torch.equal(rel_w, ref_w)
    given = RelPos((4, 4), (4, 4), rel_h=ref_h.clone(), rel_w=ref_w.clone())
    got = ops.rel_terms(given, q)
    assert got[0] is given.rel_h and got[1] is given.rel_w


@gpu
@needs_gpu
@pytest.mark.parametrize("d", [64, 80])
def test_gpu_tables_take_the_triton_terms_kernel(d):
    """Whole calls from rel-pos tables compute the terms with the Triton backend's kernel (one launch) and
    agree with the kernel fed SAM's einsum terms."""
    from samsparse.relpos import RelPos

    assert ops._triton_terms_kernel() is not None  # Triton is available on every GPU test machine
    g = torch.Generator(device="cuda").manual_seed(0)
    b, h, grid = 2, 3, (16, 16)
    n = grid[0] * grid[1]
    qkv = torch.randn(b, n, 3, h, d, device="cuda", dtype=torch.bfloat16, generator=g)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # SAM's strided views
    rp = RelPos.from_tables((0.3 * torch.randn(2 * grid[0] - 1, d, device="cuda", generator=g)).bfloat16(),
                            (0.3 * torch.randn(2 * grid[1] - 1, d, device="cuda", generator=g)).bfloat16(), grid)
    rel_h, rel_w = ops.rel_terms(rp, q)
    assert rel_h.stride(-1) == 1  # stored by query: a row's height terms share cache lines across key steps
    ref_h, ref_w = RelPos(rp.q_grid, rp.k_grid, rp.rh, rp.rw).terms(q)
    assert float((rel_h.float() - ref_h.float()).abs().max()) <= 0.02 * float(ref_h.float().abs().max())
    assert float((rel_w.float() - ref_w.float()).abs().max()) <= 0.02 * float(ref_w.float().abs().max())
    out, _ = ops.attention(q, k, v, None, rp)
    ref, _ = ops.attention(q, k, v, None, RelPos(grid, grid, rel_h=ref_h, rel_w=ref_w))
    assert float((out.float() - ref.float()).abs().max()) < 2e-2


@gpu
@needs_gpu
def test_gpu_compile_fullgraph_and_opcheck():
    case = Case(1, 2, 2, (8, 8), 64, "bf16", mask="random", block=16, rel="terms", seed=3)
    q, k, v, mask, rel_pos = make_inputs(case, "cuda")
    eager, _ = ops.attention(q, k, v, mask, rel_pos)
    idx = mask.to_indices("cuda")

    def fn(q, k, v, kv_num, kv_idx, rh, rw):
        out, lse = torch.ops.samsparse.cuda_attention(q, k, v, kv_num, kv_idx, rh, rw, 64 ** -0.5,
                                                     0, 16, 16, 0, 0, 0, 0, 8, 8)
        return out * 2, lse

    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    out, _ = compiled(q, k, v, idx.kv_num_blocks, idx.kv_indices, rel_pos.rel_h, rel_pos.rel_w)
    assert float((out / 2 - eager).abs().max()) == 0.0
    args = (q, k, v, idx.kv_num_blocks, idx.kv_indices, rel_pos.rel_h, rel_pos.rel_w, 0.125,
            0, 16, 16, 0, 0, 0, 0, 8, 8)
    torch.library.opcheck(torch.ops.samsparse.cuda_attention.default, args,
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


@gpu
@needs_gpu
def test_gpu_auto_order_and_lse_flag():
    from samsparse import backends

    q, k, v, mask, rel_pos = make_inputs(Case(1, 2, 2, (8, 8), 64, "fp16", mask="none", rel="tables"), "cuda")
    # auto follows measured speed: Triton first where it runs, else this backend
    triton_ok = "triton" in backends.names() and backends.get("triton").why_not(q, k, v, None, rel_pos) is None
    assert backends.select(q, k, v, None, rel_pos).name == ("triton" if triton_ok else "cuda")
    assert backends.select(q, k, v, None, rel_pos, exclude=("reference", "triton")).name == "cuda"
    out = backends.get("cuda").attend(q, k, v)
    both = backends.get("cuda").attend(q, k, v, return_lse=True)
    assert isinstance(out, torch.Tensor) and torch.equal(out, both[0])
    # fp32 falls back to another backend
    assert backends.select(q.float(), k.float(), v.float()).name != "cuda"


# ============================================================================ CPU: fragment layouts (PTX semantics)
def test_fragment_layouts_model():
    """The kernel's ldmatrix lane addresses + mma.m16n8k16 fragments + P->A repacking, emulated per lane.

    Uses the PTX ISA definitions of ldmatrix (.x4, .trans) and of the m16n8k16 A/B/C
    fragments, with the same address formulas as fwd_kernel.cuh (a_lane, k_lane and
    the per-tile offsets), and checks S = Q K^T and O = P V for one warp.
    """
    import numpy as np

    rng = np.random.default_rng(0)
    D, NB, STRIDE = 32, 32, 32 + 8  # head dim, keys in the tile, padded smem row (elements)
    Q = rng.standard_normal((16, D))
    K = rng.standard_normal((NB, D))
    V = rng.standard_normal((NB, D))
    sQ = np.zeros((16, STRIDE)); sQ[:, :D] = Q
    sK = np.zeros((NB, STRIDE)); sK[:, :D] = K
    sV = np.zeros((NB, STRIDE)); sV[:, :D] = V

    def ldsm_x4(smem, lane_elem_addr, trans=False):
        """regs[lane][i] = (lo, hi) per PTX: lane l gives the row address of matrix l >> 3, row l & 7."""
        flat = smem.reshape(-1)
        rows = {}
        for lane in range(32):
            rows[(lane >> 3, lane & 7)] = lane_elem_addr(lane)
        regs = [[None] * 4 for _ in range(32)]
        for lane in range(32):
            g, t = lane >> 2, lane & 3
            for i in range(4):
                if not trans:
                    base = rows[(i, g)]
                    regs[lane][i] = (flat[base + 2 * t], flat[base + 2 * t + 1])
                else:
                    regs[lane][i] = (flat[rows[(i, 2 * t)] + g], flat[rows[(i, 2 * t + 1)] + g])
        return regs

    def mma(c, a, b0, b1):
        """c[lane] (4 floats) += A (16x16 from a[lane] regs) @ B (16x8 from b regs), per PTX fragments."""
        A = np.zeros((16, 16)); B = np.zeros((16, 8))
        for lane in range(32):
            g, t = lane >> 2, lane & 3
            (A[g, 2 * t], A[g, 2 * t + 1]) = a[lane][0]
            (A[g + 8, 2 * t], A[g + 8, 2 * t + 1]) = a[lane][1]
            (A[g, 2 * t + 8], A[g, 2 * t + 9]) = a[lane][2]
            (A[g + 8, 2 * t + 8], A[g + 8, 2 * t + 9]) = a[lane][3]
            (B[2 * t, g], B[2 * t + 1, g]) = b0[lane]
            (B[2 * t + 8, g], B[2 * t + 9, g]) = b1[lane]
        Cm = A @ B
        for lane in range(32):
            g, t = lane >> 2, lane & 3
            c[lane] += np.array([Cm[g, 2 * t], Cm[g, 2 * t + 1], Cm[g + 8, 2 * t], Cm[g + 8, 2 * t + 1]])

    def a_lane(lane):  # fwd_kernel.cuh: ((lane & 7) + ((lane >> 3) & 1) * 8) * kStride + (lane >> 4) * 8
        return ((lane & 7) + ((lane >> 3) & 1) * 8) * STRIDE + (lane >> 4) * 8

    def k_lane(lane):  # ((lane & 7) + (lane >> 4) * 8) * kStride + ((lane >> 3) & 1) * 8
        return ((lane & 7) + (lane >> 4) * 8) * STRIDE + ((lane >> 3) & 1) * 8

    NT, KS, DT, PK = NB // 8, D // 16, D // 8, NB // 16
    s = [[np.zeros(4) for _ in range(32)] for _ in range(NT)]
    for ks in range(KS):
        a = ldsm_x4(sQ, lambda l: a_lane(l) + ks * 16)
        for np_ in range(NT // 2):
            bb = ldsm_x4(sK, lambda l: k_lane(l) + np_ * 16 * STRIDE + ks * 16)
            mma(s[2 * np_], a, [r[0] for r in bb], [r[1] for r in bb])
            mma(s[2 * np_ + 1], a, [r[2] for r in bb], [r[3] for r in bb])
    S = np.zeros((16, NB))
    for nt in range(NT):
        for lane in range(32):
            g, t = lane >> 2, lane & 3
            S[g, nt * 8 + 2 * t: nt * 8 + 2 * t + 2] = s[nt][lane][0:2]
            S[g + 8, nt * 8 + 2 * t: nt * 8 + 2 * t + 2] = s[nt][lane][2:4]
    assert np.allclose(S, Q @ K.T)
    # P = S (any values) repacked as the A operand, V through ldmatrix.trans
    acc = [[np.zeros(4) for _ in range(32)] for _ in range(DT)]
    for kk in range(PK):
        a = [[tuple(s[2 * kk][l][0:2]), tuple(s[2 * kk][l][2:4]), tuple(s[2 * kk + 1][l][0:2]),
              tuple(s[2 * kk + 1][l][2:4])] for l in range(32)]
        for dp in range(DT // 2):
            bb = ldsm_x4(sV, lambda l: a_lane(l) + kk * 16 * STRIDE + dp * 16, trans=True)
            mma(acc[2 * dp], a, [r[0] for r in bb], [r[1] for r in bb])
            mma(acc[2 * dp + 1], a, [r[2] for r in bb], [r[3] for r in bb])
    O = np.zeros((16, D))
    for dt in range(DT):
        for lane in range(32):
            g, t = lane >> 2, lane & 3
            O[g, dt * 8 + 2 * t: dt * 8 + 2 * t + 2] = acc[dt][lane][0:2]
            O[g + 8, dt * 8 + 2 * t: dt * 8 + 2 * t + 2] = acc[dt][lane][2:4]
    assert np.allclose(O, S @ V)


def _header_enums() -> dict[str, dict[str, int]]:
    text = (CSRC / "fwd_params.h").read_text()
    enums = {}
    for name, body in re.findall(r"enum\s+(\w+)\s*:\s*int\s*\{(.*?)\};", text, flags=re.S):
        enums[name] = {k: int(v) for k, v in re.findall(r"(\w+)\s*=\s*(-?\d+)", re.sub(r"//[^\n]*", "", body))}
    return enums


def test_python_tables_match_the_kernel_enums():
    """backend.py's tables mirror fwd_params.h's enums by hand: a value added or renumbered in one place
    and not the other would send the wrong tile / softmax to the kernel or misreport last_launch()."""
    enums = _header_enums()
    assert set(enums) >= {"BiasMode", "KernelVariant", "WgmmaTile", "SoftmaxMode"}, enums
    tiles = {k[len("kWgmma"):].lower(): v for k, v in enums["WgmmaTile"].items()}
    assert tiles == ops.WGMMA_TILES
    softmax = {v: k[len("kSoftmax"):].lower() for k, v in enums["SoftmaxMode"].items()}
    assert softmax == {v: name.replace("+", "") for v, name in ops.SOFTMAX_NAMES.items()}
    assert set(ops.SOFTMAX_MODES.values()) == set(softmax)
    bias = {v: k[len("kBias"):].lower() for k, v in enums["BiasMode"].items()}
    assert bias == {v: name.replace("runs", "run") for v, name in ops.BIAS_MODE_NAMES.items()}
    assert set(enums["KernelVariant"].values()) == set(ops.KERNEL_NAMES)
    assert enums["KernelVariant"]["kVariantSm90"] == next(v for v, n in ops.KERNEL_NAMES.items() if n == "wgmma")
