"""Launchers and the ``samsparse::triton_attention`` / ``samsparse::triton_varlen_attention`` custom ops.

Public functions:

- :func:`attention` — samsparse objects in (BlockMask, RelPos), ``(out, lse)`` out.
- :func:`triton_varlen_attention` — packed variable-length sequences
  (``cu_seqlens``), block-sparse per sequence, for the compat API.

Both are registered as ``torch.library`` custom ops with fake (meta)
implementations, so ``torch.compile`` traces them without a graph break; eager
calls run the implementation directly (the dispatcher costs tens of
microseconds per call). The op arguments are tensors / ints / floats only: the
mask enters as its cached index tensors, the rel-pos as its tables or terms.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import operator
import os
from dataclasses import dataclass, fields
from typing import Optional

import torch

from . import configs as _cfg
from .configs import TileConfig, head_dim_split, next_pow2
from ..base import (
    LAYOUT_SEQUENCE,
    LAYOUT_TILES,
    MaskKernelArgs,
    check_varlen_args,
    device_arch as _device_arch,  # module name: offline.record_launches patches it
    empty_outputs,
    empty_varlen_outputs,
    mask_kernel_args,
    resolve_scale,
)

__all__ = ["attention", "triton_varlen_attention", "relpos_terms", "LAYOUT_SEQUENCE", "LAYOUT_TILES"]

LOG2E = 1.4426950408889634
MAX_HEAD_DIM = 256

log = logging.getLogger(__name__)


def _kernels():
    from . import kernel

    return kernel


def _bcast_strides(t: torch.Tensor) -> list[int]:
    """Strides with 0 on size-1 dims (broadcast of B' / H')."""
    return [s if n > 1 else 0 for n, s in zip(t.shape, t.stride())]


def _tracing() -> bool:
    """True under torch.compile / export tracing (then the custom op must be called)."""
    try:
        return torch.compiler.is_compiling()
    except AttributeError:  # pragma: no cover - old torch
        return True


_FAST_LAUNCH_VERSIONS = ("3.6",)  # Triton versions whose launch convention the fast path copies


def _fast_launch_default() -> bool:
    flag = os.environ.get("SAMSPARSE_TRITON_FAST_LAUNCH", "").strip().lower()
    if flag in ("0", "false", "no", "off"):
        return False
    if _kernels().INTERPRET:
        return False
    import triton

    return flag in ("1", "true", "yes", "on") or ".".join(triton.__version__.split(".")[:2]) in _FAST_LAUNCH_VERSIONS


class _Launcher:
    """``kernel[grid](*args, **constexprs)``, minus Triton's per-call argument binding.

    Triton's ``JITFunction.run`` re-derives the specialization of every argument on
    each call (tens of microseconds for ~90 arguments, twice per attention call):
    comparable to the whole kernel for a small batch. The first call of a given
    specialization goes through ``run`` (compiling if needed) and keeps the
    compiled kernel; later calls whose arguments specialize identically (same
    plan, dtypes, 16-byte alignment and integer values) launch it directly, the
    way ``run`` does. Off under the interpreter, for Triton versions other than
    those listed in ``_FAST_LAUNCH_VERSIONS`` (override with
    ``SAMSPARSE_TRITON_FAST_LAUNCH=1``) or with ``SAMSPARSE_TRITON_FAST_LAUNCH=0``.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.cache: dict = {}
        self.enabled: bool | None = None
        self._rt = None

    def __call__(self, grid, tensors: tuple, floats: tuple, ints: tuple, constexprs: dict, plan_key, device) -> None:
        """Launch with positional args ``(*tensors, *floats, *ints)`` then ``constexprs``."""
        if self.enabled is None:
            self.enabled = _fast_launch_default()
        if not self.enabled:
            getattr(_kernels(), self.name)[grid](*tensors, *floats, *ints, **constexprs)
            return
        # Triton specializes tensors on dtype and 16-byte alignment, ints on their value. The
        # alignment part of the key is one flag when every pointer is 16-byte aligned (the usual case)
        ptrs = tuple(map(_DATA_PTR, tensors))
        align = 0 if functools.reduce(operator.or_, ptrs, 0) & 15 == 0 else tuple(p & 15 for p in ptrs)
        key = (plan_key, device, tuple(map(_DTYPE, tensors)), align, ints)
        entry = self.cache.get(key)
        if entry is None:
            fn = getattr(_kernels(), self.name)
            compiled = fn[grid](*tensors, *floats, *ints, **constexprs)
            if compiled is not None and not hasattr(compiled, "result"):
                n = len(tensors) + len(floats) + len(ints)
                tail = tuple(constexprs[name] for name in fn.arg_names[n:])
                self.cache[key] = (compiled, tail)
            return
        compiled, tail = entry
        try:
            if self._rt is None:
                from triton import knobs
                from triton.runtime.driver import driver

                self._rt = (knobs.runtime, driver)
            runtime, driver = self._rt
            full = (*tensors, *floats, *ints, *tail)
            stream = driver.active.get_current_stream(device.index if device.index is not None else 0)
            enter = runtime.launch_enter_hook  # (Triton's launch_metadata is None without this hook)
            meta = compiled.launch_metadata(grid, stream, *full) if enter is not None else None
            compiled.run(
                grid[0], grid[1], 1, stream, compiled.function, compiled.packed_metadata, meta,
                enter, runtime.launch_exit_hook, *full,
            )
        except Exception as exc:  # an unexpected Triton internals change: use the normal path from now on
            log.warning("fast Triton launch failed (%s); using kernel[grid] from now on", exc)
            self.enabled = False
            self.cache.clear()
            getattr(_kernels(), self.name)[grid](*tensors, *floats, *ints, **constexprs)


_DATA_PTR = operator.methodcaller("data_ptr")
_DTYPE = operator.attrgetter("dtype")


_ATTN_LAUNCHER = _Launcher("_attn_fwd")
_TERMS_CONSTEXPRS: dict = {}
_TERMS_LAUNCHER = _Launcher("_relpos_terms")


_NO_CONTEXT = contextlib.nullcontext()


def _device_ctx(t: torch.Tensor):
    """Make t's GPU the current device for the launches (nothing to do when it already is)."""
    if t.is_cuda:
        idx = t.get_device()
        if idx != torch.cuda.current_device():
            return torch.cuda.device(idx)
    return _NO_CONTEXT


# ---------------------------------------------------------------------------- rel-pos terms
def relpos_terms(
    q: torch.Tensor, rh: torch.Tensor, rw: torch.Tensor, q_grid: tuple[int, int], k_grid: tuple[int, int],
    config: tuple[int, int] | None = None, rel_h_by_query: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's rel-pos terms from q [B, H, Nq, D] (unscaled) and tables Rh [gh_q, gh_k, D], Rw [gw_q, gw_k, D].

    Returns rel_h [B, H, Nq, gh_k] (stored query-major: each key row's column is
    contiguous, which the key-row loop reads; ``rel_h_by_query``: row-major instead, each
    query's terms contiguous, as the CUDA backend's kernel reads them) and rel_w [B, H, Nq,
    gw_k], in q's dtype (the tables are cast to q's dtype, as SAM's einsum does), accumulated
    in fp32. ``config``: (warps, stages) or (warps, stages, maxnreg) instead of
    :data:`TERMS_CONFIG` (for measuring).
    """
    b, h, nq, d = q.shape
    ghq, gwq = q_grid
    ghk, gwk = k_grid
    if rel_h_by_query:
        rel_h = torch.empty(b, h, nq, ghk, dtype=q.dtype, device=q.device)
    else:
        rel_h = torch.empty(b, h, ghk, nq, dtype=q.dtype, device=q.device).transpose(2, 3)
    rel_w = torch.empty(b, h, nq, gwk, dtype=q.dtype, device=q.device)
    key = (q.dtype, d, tuple(q_grid), tuple(k_grid), config)
    constexprs = _TERMS_CONSTEXPRS.get(key)
    if constexprs is None:
        d1, d2 = head_dim_split(d)
        warps, stages, *cap = config or (*TERMS_CONFIG, _terms_register_cap())
        constexprs = _TERMS_CONSTEXPRS[key] = dict(
            GHQ=ghq, GWQ=gwq, GHK=ghk, GWK=gwk,
            HEAD_DIM=d, D1=d1, D2=d2,
            BLOCK_Q=max(16, next_pow2(max(ghq, gwq))), BLOCK_K=max(16, next_pow2(max(ghk, gwk))),
            IEEE=q.dtype == torch.float32, UPCAST=_kernels().INTERPRET and q.dtype == torch.bfloat16,
            num_warps=warps, num_stages=stages,
        )
        if cap and cap[0]:
            constexprs["maxnreg"] = int(cap[0])
    ints = (*q.stride(), *rh.stride(), *rw.stride(), *rel_h.stride(), *rel_w.stride(), h)
    with _device_ctx(q):
        _launch_with_cap_fallback(_TERMS_LAUNCHER, (ghq + gwq, b * h), ((q, rh, rw, rel_h, rel_w), (), ints),
                                  constexprs, key, q.device)
    return rel_h, rel_w


# (warps, stages) of the terms kernel: the best of warps 2/4/8 x stages 1/2/3 within 1% on the H200; one
# program per query grid row / column (2-8 rows per program, looped, were 0.87-0.96x: tenth run)
TERMS_CONFIG = (4, 1)


def _terms_register_cap() -> int:
    """``maxnreg`` of the terms kernel: opt-in, ``SAMSPARSE_TRITON_TERMS_REGCAP=N`` (an experiment, off by default).

    The kernel is latency-bound at 37.5% occupancy (ncu, eleventh run): 76 registers (d=64) leave 6
    CTAs per SM, 83 (d=80) 5. Compiled offline (Triton 3.6, sm_90), a cap of 64 gives 8 CTAs at d=64 with
    no spills and the same SASS; 72 gives 7 at d=80 with no spills. Timed on the H200 (thirteenth
    session, ``bench_terms.py --maxnreg 64,72 --rounds 3``) neither helped at B=8: vit_b 56.3 us uncapped,
    56.5 at 72, 58.2 at 64; vit_h 97.0, 97.9, 99.3 (B=1 vit_b: 8.7, 8.3, 8.6 us). Hence off.
    """
    return _env_register_cap("SAMSPARSE_TRITON_TERMS_REGCAP", 64)


# ---------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class _Geometry:
    """Static description of one call (everything but the tensors)."""

    batch: int
    heads: int
    kv_heads: int
    nq: int
    nk: int
    head_dim: int
    dtype: torch.dtype
    masked: bool
    layout: int
    block_q: int  # tokens per query block (0: dense, chosen by the config)
    block_k: int
    num_q_blocks: int  # mask Mq (0 when dense)
    num_k_blocks: int  # mask Mk (0 when dense)
    tile_grid: tuple[int, int]
    tile: tuple[int, int]
    has_rel: bool
    rel_k_grid: tuple[int, int]
    varlen: bool = False
    has_head_mask: bool = False
    rel_dtype_ok: bool = True  # rel-pos terms in q's dtype: the one-hot bias products are then exact
    rel_tables: bool = False  # the terms are computed inside the attention program from the tables
    window: tuple[int, ...] = ()  # windows in place: (window, windows per row, windows per image, grid h, grid w)
    long_rows: bool = False  # masked: the query blocks read many key tokens on average (``_long_rows``)

    # A call hashes its geometry ~7 times (tuned config, plan, each launch's compiled-kernel key); the
    # generated hash over 22 fields took ~1.5 us each on a desktop CPU (4-5x that on the GPU machine's host)
    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash(tuple(getattr(self, f.name) for f in fields(self))))

    def __hash__(self) -> int:
        return self._hash

    # (a stored hash must not travel: hashes of dtypes differ between processes)
    def __getstate__(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __setstate__(self, state: dict) -> None:
        for name, value in state.items():
            object.__setattr__(self, name, value)
        self.__post_init__()

    def rel_dot(self) -> int:
        """One-hot bias mode: 1 small key grid (SAM's 14x14 windows), 2 tiles layout with small tiles, 0 off.

        The bias of a step is ``rel_h @ onehot(row) + rel_w @ onehot(col)`` on tensor cores
        (K = 16 each) instead of two gathered loads per logit; the key-row mode is kept where it applies.
        """
        if not self.has_rel or self.rows_block_n() is not None or not self.rel_dtype_ok:
            return 0
        rhp, rwp = (max(16, next_pow2(n)) for n in self.rel_k_grid)
        if rhp + rwp <= 32:
            return 1
        if self.masked and self.layout == LAYOUT_TILES and tuple(self.rel_k_grid) == tuple(self.tile_grid):
            th, tw = self.tile
            if max(16, next_pow2(th)) + max(16, next_pow2(tw)) <= 32:
                return 2
        return 0

    def fixed_offset(self) -> bool:
        """Key-row mode with the softmax offset fixed after step 0 (``kernel._fixed_offset_pass``).

        Dense calls, and masked calls whose query blocks read many key rows (``long_rows``, see
        ``PASS_MIN_KEYS``): with few key steps per program, or 64-row tiles at d=64, the pass's fixed
        cost (step 0's second product, the redo launch) weighs more than its cheaper softmax saves.
        bf16 and fp32 only: their P operand has fp32's exponent range, which the fixed offset's
        partial sums need (fp16's does not).
        ``SAMSPARSE_TRITON_FIXED_OFFSET=0`` turns it off, ``=dense`` keeps it to dense calls, ``=all``
        uses it for every masked call too (to measure them).
        """
        mode = os.environ.get("SAMSPARSE_TRITON_FIXED_OFFSET", "1").strip().lower()
        if mode == "0" or self.rows_block_n() is None or self.dtype not in (torch.bfloat16, torch.float32):
            return False
        return not self.masked or mode == "all" or (self.long_rows and mode != "dense")

    def rows_block_n(self) -> int | None:
        """BLOCK_N of the key-row mode, or None when that mode does not apply."""
        if not self.has_rel or self.layout != LAYOUT_SEQUENCE:
            return None
        gw = self.rel_k_grid[1]
        bn = max(16, next_pow2(gw))
        if gw < 32 or bn > 128 or bn > gw * 1.34:
            return None  # narrow or awkward rows: the gather mode with big tiles is better
        if self.masked and self.block_k % gw != 0:
            return None
        return bn

    def key(self, device: torch.device) -> str:
        return _cfg.shape_key(
            device,
            self.dtype,
            self.head_dim,
            layout=self.layout,
            masked=int(self.masked),
            bq=self.block_q,
            bk=self.block_k,
            tile=f"{self.tile[0]}x{self.tile[1]}",
            rel=f"{int(self.has_rel)}:{self.rel_k_grid[1]}:dot{self.rel_dot()}{':tab' if self.rel_tables else ''}"
            f"{':fx' if self.fixed_offset() else ''}",
            gqa=int(self.heads != self.kv_heads),
            varlen=int(self.varlen),
            nq=self.nq,
            nk=self.nk,
            waves=self._waves(device),
        )

    def _waves(self, device: torch.device) -> str:
        programs = self.batch * self.heads * math.ceil(self.nq / 128)
        sms = 132
        if device.type == "cuda":
            idx = device.index if device.index is not None else torch.cuda.current_device()
            sms = torch.cuda.get_device_properties(idx).multi_processor_count
        if programs <= sms:
            return "lt1"
        if programs <= 4 * sms:
            return "lt4"
        return "many"


@dataclass(frozen=True)
class _Plan:
    """Everything about a launch that depends only on (geometry, tile config): computed once."""

    grid: tuple[int, int]
    ints: tuple[int, ...]  # H, GROUP, Nq, Nk, BQ, BK, NKB, NTW, NWW, NWIN, IGH, IGW
    constexprs: dict


_PLANS: dict = {}
_REDO_PLANS: dict = {}  # the running-max launch that follows a fixed-offset one, by the same key


def _env_register_cap(name: str, example: int, default: int = 0) -> int:
    """A register count from the environment variable ``name``: ``default`` when unset, 0 for "0"."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    if text == "0":
        return 0
    try:
        cap = int(text)
    except ValueError:
        cap = -1
    if not 24 <= cap <= 255:
        raise ValueError(f"{name} must be a register count in [24, 255] (e.g. {example}), or 0 for no cap; "
                         f"got {text!r}")
    return cap


# Key-row kernels on 64-row tiles with 4 warps compile under this register cap by default on Hopper
# (compute capability 9.x; head dims up to 80, 16-bit dtypes: SAM's shapes, checked offline with no
# spills). vit_h's running max there used 177-182 registers (2 CTAs per SM); capped, 168 (3 CTAs): 41.7 ->
# 33.9 us per key row of a 64-token-block mask (H200, vit_h B=8, bench_step_cost.py, two alternating runs
# each, thirteenth session). vit_b's kernels (148-158 registers) and the fixed-offset pass (167) are below
# it already. Not on other GPUs: for sm_80 the same kernels compile to 194-247 registers and, capped, spill
# (4-28 B) with longer key loops (offline, Triton 3.6); untimed there.
KEY_ROW_REGCAP = 168
KEY_ROW_REGCAP_MAX_HEAD_DIM = 80
KEY_ROW_REGCAP_ARCH_MAJOR = 9


def _register_cap(rows: int, rel_dot: int, block_m: int, num_warps: int, head_dim: int, dtype, arch: int) -> int:
    """``maxnreg`` for a plan on a GPU of compute capability ``arch`` (x10; 0: not a GPU), or 0 (no cap).

    - Key-row kernels on 64-row tiles with 4 warps: ``KEY_ROW_REGCAP`` on Hopper for head dims up to
      ``KEY_ROW_REGCAP_MAX_HEAD_DIM`` in 16-bit dtypes. ``SAMSPARSE_TRITON_REGCAP=N`` sets N for every such
      plan (any GPU, head dim or dtype), ``=0`` turns the cap off.
    - ``SAMSPARSE_TRITON_WINDOW_REGCAP=N`` (off by default): the windows' one-hot kernels. At 128, offline,
      M64/N32/w4/s3 139-141 -> 128 registers (3 -> 4 CTAs per SM), M128/N32/w8/s3 141 -> 127 (1 -> 2);
      on the H200 (thirteenth session) neither of the configs the windows use got faster (vit_b
      M64/N32/w4/s3 0.238-0.241 ms either way, vit_h M128/N32/w8/s3 0.386-0.389), and a d=256 window
      kernel failed to compile under it.
    A cap that ptxas cannot meet is dropped at the first launch (``_launch_with_cap_fallback``).
    """
    if rel_dot == 1:
        return _env_register_cap("SAMSPARSE_TRITON_WINDOW_REGCAP", 128)
    if rows == 0 or block_m != 64 or num_warps != 4:
        return 0
    fits = (arch // 10 == KEY_ROW_REGCAP_ARCH_MAJOR and head_dim <= KEY_ROW_REGCAP_MAX_HEAD_DIM
            and dtype in (torch.bfloat16, torch.float16))
    return _env_register_cap("SAMSPARSE_TRITON_REGCAP", KEY_ROW_REGCAP, KEY_ROW_REGCAP if fits else 0)


def _make_plan(geo: _Geometry, cfg: TileConfig, scale_pos: bool, redo: bool = False, arch: int = 0) -> _Plan:
    kern = _kernels()
    b, h = geo.batch, geo.heads
    nq, nk = geo.nq, geo.nk
    d1, d2 = head_dim_split(geo.head_dim)
    rows_bn = geo.rows_block_n()
    rows = 0
    if rows_bn is not None:
        # key-row mode; two rows per step when the config asks for a tile twice as wide
        rows = 1
        gw = geo.rel_k_grid[1]
        two = cfg.block_n >= 2 * gw and rows_bn == gw and 2 * gw <= 128
        if two and (geo.block_k % (2 * gw) == 0 if geo.masked else True):
            rows, rows_bn = 2, 2 * gw
    gw_rel = geo.rel_k_grid[1] if geo.has_rel else 1
    tgh, tgw = geo.tile_grid
    th, tw = geo.tile
    ntw = 1
    tile_rel = False
    rel_dot = geo.rel_dot()
    rgh_rel = geo.rel_k_grid[0] if geo.has_rel else 1

    if geo.masked:
        bq, bk = geo.block_q, geo.block_k
        block_m = min(cfg.block_m, max(16, next_pow2(bq)))
        split_m = math.ceil(bq / block_m)
        if geo.layout == LAYOUT_TILES:
            even_grid = tgh % th == 0 and tgw % tw == 0
            ntw = math.ceil(tgw / tw)
            even_q = bq % block_m == 0 and even_grid and not geo.varlen
            block_n = min(cfg.block_n, max(16, next_pow2(bk)))
            sub_n = math.ceil(bk / block_n)
            even_k = bk % block_n == 0 and even_grid and not geo.varlen
            tile_rel = geo.has_rel and tuple(geo.rel_k_grid) == (tgh, tgw)
        else:
            even_q = bq % block_m == 0 and nq % bq == 0 and not geo.varlen
            if rows:
                block_n = rows_bn
                sub_n = bk // (gw_rel * rows)
                even_k = block_n == gw_rel * rows and nk % bk == 0 and not geo.varlen
            else:
                block_n = min(cfg.block_n, max(16, next_pow2(bk)))
                sub_n = math.ceil(bk / block_n)
                even_k = bk % block_n == 0 and nk % bk == 0 and not geo.varlen
        num_q_blocks = geo.num_q_blocks
        nkb = 0
    else:
        block_m = min(cfg.block_m, max(16, next_pow2(nq)))
        bq = block_m
        split_m = 1
        even_q = nq % bq == 0 and not geo.varlen
        if rows:
            block_n = rows_bn
            bk = gw_rel * rows
            even_k = block_n == bk and nk % bk == 0 and not geo.varlen
        else:
            block_n = min(cfg.block_n, max(16, next_pow2(nk)))
            bk = block_n
            even_k = nk % bk == 0 and not geo.varlen
        sub_n = 1
        nkb = math.ceil(nk / bk)
        num_q_blocks = math.ceil(nq / bq)

    win, nww, nwin, igh, igw = geo.window or (0, 1, 1, 1, 1)
    if win:
        # windows in place: queries and keys are gathered from the image grid, always masked
        even_q = even_k = False
    fixed = rows == 1 and geo.fixed_offset() and not redo
    num_warps = cfg.num_warps
    if block_m < cfg.block_m:
        # a tile cut to fewer query rows (a short sequence, or a mask's 64-token query blocks under a
        # 128-row config) keeps at most 16 rows per warp: 8 warps on 64 rows ran SAM's 64-token-block
        # masks at 47 us per key row against 19.5 us for 128-token blocks (H200, vit_b B=8, eleventh run)
        num_warps = min(cfg.num_warps, max(4, block_m // 16))
    constexprs = dict(
        HEAD_DIM=geo.head_dim, D1=d1, D2=d2,
        EVEN_D1=d1 <= geo.head_dim, EVEN_D2=d1 + d2 <= geo.head_dim,
        LAYOUT=geo.layout, TGH=tgh, TGW=tgw, TH=th, TW=tw,
        RGW=gw_rel, ROWS=rows, TILE_REL=tile_rel,
        REL_DOT=rel_dot, RGH=rgh_rel,
        RHP=max(16, next_pow2(rgh_rel if rel_dot != 2 else th)), RWP=max(16, next_pow2(gw_rel if rel_dot != 2 else tw)),
        REL_TAB=geo.rel_tables, TP=max(16, next_pow2(2 * max(rgh_rel, gw_rel) - 1)),
        SPLIT_M=split_m, SUB_N=sub_n,
        DENSE=not geo.masked, HAS_HEAD_MASK=geo.has_head_mask, HAS_REL=geo.has_rel, VARLEN=geo.varlen,
        EVEN_Q=even_q, EVEN_K=even_k, IEEE=geo.dtype == torch.float32,
        UPCAST=kern.INTERPRET and geo.dtype == torch.bfloat16, SCALE_POS=scale_pos,
        BLOCK_M=block_m, BLOCK_N=block_n,
        MK=geo.num_k_blocks, MK_PAD=max(16, next_pow2(geo.num_k_blocks)), WIN=win,
        FIXED_M=int(fixed), REDO=int(redo),
        # masked running-max loops with a look-ahead reuse its key-block id (1-3% faster on the H200,
        # ninth run); SAMSPARSE_TRITON_CARRY_IDS=0 turns it off. Not in the pass: slower there
        CARRY_IDS=int(not fixed and geo.masked and geo.has_rel and rel_dot != 1
                      and os.environ.get("SAMSPARSE_TRITON_CARRY_IDS", "1").strip() != "0"),
        num_warps=num_warps, num_stages=cfg.num_stages,
    )
    cap = _register_cap(rows, rel_dot, block_m, num_warps, geo.head_dim, geo.dtype, arch)
    if cap:
        constexprs["maxnreg"] = cap
    return _Plan(
        grid=(num_q_blocks * split_m, b * h),
        ints=(h, h // geo.kv_heads, nq, nk, bq, bk, nkb, ntw, nww, nwin, igh, igw),
        constexprs=constexprs,
    )


def _launch(
    geo: _Geometry,
    cfg: TileConfig,
    q, k, v, out, lse, qs, ks, vs, os_, ls,
    kv_num, kv_idx, head_mask, rel_h, rel_w, cu_q, cu_k, qk_scale: float, tab_h=None, tab_w=None,
    k_fill=None, v_fill=None,
) -> None:
    """One launch of the attention kernel for ``geo`` with tile config ``cfg``."""
    arch = _device_arch(q.device)
    key = (geo, cfg, qk_scale > 0, arch)
    plan = _PLANS.get(key)
    if plan is None:
        plan = _PLANS[key] = _make_plan(geo, cfg, qk_scale > 0, arch=arch)
    dummy = q
    flags = None
    if plan.constexprs["FIXED_M"]:
        # the fixed-offset pass flags the programs whose rows it cannot hold exactly; a second launch
        # (running max, same config) recomputes just those (the others return at once)
        flags = torch.empty(plan.grid[0] * plan.grid[1], dtype=torch.int32, device=q.device)
    if kv_num is not None:
        sn = tuple(_bcast_strides(kv_num))
        si = (*_bcast_strides(kv_idx)[:3], kv_idx.stride(3))
    else:
        kv_num = kv_idx = dummy
        sn, si = (0, 0, 0), (0, 0, 0, 0)
    if rel_h is not None:
        sh, sw = rel_h.stride(), rel_w.stride()
    else:
        rel_h = rel_w = dummy
        sh = sw = (0, 0, 0, 0)
    if tab_h is not None:
        st = (*tab_h.stride(), *tab_w.stride())
    else:
        tab_h = tab_w = dummy
        st = (0,) * 6
    tensors = (
        q, k, v, out, lse,
        kv_num, kv_idx, head_mask if head_mask is not None else dummy,
        rel_h, rel_w, tab_h, tab_w,
        cu_q if cu_q is not None else dummy, cu_k if cu_k is not None else dummy,
        k_fill if k_fill is not None else dummy, v_fill if v_fill is not None else dummy,
        flags if flags is not None else dummy,
    )
    sf = k_fill.stride(0) if k_fill is not None else 0
    ints = (*qs, *ks, *vs, *os_, *ls, *sn, *si, *sh, *sw, *st, sf, *plan.ints)
    args = (tensors, (qk_scale,), ints)
    _launch_with_cap_fallback(_ATTN_LAUNCHER, plan.grid, args, plan.constexprs, key, q.device)
    if flags is not None:
        redo = _REDO_PLANS.get(key)
        if redo is None:
            redo = _REDO_PLANS[key] = _make_plan(geo, cfg, qk_scale > 0, redo=True, arch=arch)
        _launch_with_cap_fallback(_ATTN_LAUNCHER, redo.grid, args, redo.constexprs, (*key, "redo"), q.device)


def _launch_with_cap_fallback(launcher: _Launcher, grid, args: tuple, constexprs: dict, key, device) -> None:
    """``launcher(grid, *args, constexprs, key, device)``; if ptxas cannot compile the kernel under its
    register cap (``constexprs["maxnreg"]``), drop the cap from ``constexprs`` (a cached plan's: for good)
    and launch again. Any other error propagates."""
    try:
        launcher(grid, *args, constexprs, key, device)
    except Exception as exc:
        if "maxnreg" not in constexprs or type(exc).__name__ != "PTXASError":
            raise
        cap = constexprs.pop("maxnreg")
        log.warning("kernel %s does not compile under a cap of %d registers (%s); compiling it uncapped "
                    "(set the SAMSPARSE_TRITON_*REGCAP variable to 0 to skip the attempt)",
                    launcher.name, cap, str(exc).splitlines()[0])
        launcher(grid, *args, constexprs, key, device)


def _terms_in_program(layout: int, block_k: int, masked: bool, q_grid, k_grid, head_dim: int, dtype) -> bool:
    """Whether the attention kernel computes the rel-pos terms itself (one-hot bias mode, Toeplitz tables).

    Needs the one-hot bias mode for a small key grid (not the key-row mode) and q grid == k grid; the
    caller also needs tables with ``Rh[a, b] = R[a - b + g - 1]`` (``RelPos.toeplitz``).
    """
    key = (layout, block_k, masked, tuple(q_grid), tuple(k_grid), head_dim, dtype)
    hit = _IN_PROGRAM.get(key)
    if hit is None:
        probe = _Geometry(
            batch=1, heads=1, kv_heads=1, nq=1, nk=1, head_dim=head_dim, dtype=dtype, masked=masked,
            layout=layout, block_q=0, block_k=block_k, num_q_blocks=0, num_k_blocks=0, tile_grid=(1, 1),
            tile=(1, 1), has_rel=True, rel_k_grid=tuple(k_grid),
        )
        hit = _IN_PROGRAM[key] = tuple(q_grid) == tuple(k_grid) and probe.rel_dot() == 1 and max(k_grid) <= 16
    return hit


_IN_PROGRAM: dict = {}

# Masked key-row calls take the fixed-offset pass when their query blocks read at least PASS_MIN_KEYS key
# tokens on average and either hold at least PASS_MIN_QUERIES tokens or the head dim is split (80 = 64 + 16)
# and the 64-row tiles run without KEY_ROW_REGCAP (SAMSPARSE_TRITON_REGCAP=0, fp32, or not Hopper).
# H200, B=8, masks in which every query block reads exactly k key rows (scripts/bench_step_cost.py, twelfth
# run), fixed cost t0 and cost per key row s, pass against running max:
#   vit_b, 128-token query blocks: s 16.2 vs 19.5 us, t0 +38 us: the pass wins from ~12 rows (3% at 16);
#   vit_b, 64-token query blocks: s 19.6 vs 19.5 us (64-row tiles both), t0 +28 us: it never wins;
#   vit_h, 64-token query blocks: s 32.6 vs 42.1 us, t0 +37 us: it wins from ~4 rows (13% at 16);
#     with the running max capped at 168 registers (thirteenth run) s 33.9 us, t0 181 us: even at ~40 rows;
#   vit_h, 128-token query blocks: s 31.0 vs 34.1 us, t0 +33 us: it wins from ~11 rows.
# bench_attention.py's random masks at p = .25 (1024 keys, 128-token blocks): vit_h 7% faster with the pass,
# vit_b within 1% (GPU time). Masks whose average is not known without a host sync keep the running max.
# SAMSPARSE_TRITON_PASS_MIN_KEYS overrides the key threshold (to measure it).
PASS_MIN_KEYS = 1024
PASS_MIN_QUERIES = 128


UNLESS_CAPPED = 2  # _long_rows: the pass, unless the 64-row tiles' register cap applies (``_takes_pass``)


def _long_rows(m: MaskKernelArgs, head_dim: int) -> int:
    """1 when a mask's calls take the fixed-offset pass (see PASS_MIN_KEYS), else 0 (and for dense calls);
    ``UNLESS_CAPPED`` for short query blocks at a split head dim, which the op resolves on its device
    (``_takes_pass``: this runs where ``torch.compile`` traces, the device query does not)."""
    if m.kv_num_blocks is None or m.mean_keys < 1:
        return 0  # dense, or a mask whose average is not known without a host sync
    if m.block_q < PASS_MIN_QUERIES and head_dim_split(head_dim)[1] == 0:
        return 0  # short query blocks: 64-row tiles, where the running max is as fast
    min_keys = os.environ.get("SAMSPARSE_TRITON_PASS_MIN_KEYS", "").strip()
    try:
        threshold = float(min_keys) if min_keys else PASS_MIN_KEYS
    except ValueError:
        raise ValueError(
            f"SAMSPARSE_TRITON_PASS_MIN_KEYS must be a number of key tokens (e.g. 1024), got {min_keys!r}; "
            "unset it for the default"
        ) from None
    if m.mean_keys < threshold:
        return 0
    return 1 if m.block_q >= PASS_MIN_QUERIES else UNLESS_CAPPED


def _takes_pass(long_rows: int, head_dim: int, dtype: torch.dtype, arch: int) -> bool:
    """Whether a masked call with ``_long_rows``'s verdict takes the fixed-offset pass on an sm_<arch> GPU:
    short query blocks at a split head dim keep the running max where their 64-row tiles are register-capped
    (as fast as the pass per row there, with a lower fixed cost)."""
    if long_rows == UNLESS_CAPPED:
        return not _register_cap(rows=1, rel_dot=0, block_m=64, num_warps=4, head_dim=head_dim, dtype=dtype, arch=arch)
    return bool(long_rows)


def _pick_config(geo: _Geometry, device: torch.device, run, override: TileConfig | None) -> TileConfig:
    if override is not None:
        return override
    hit = _TUNED.get((geo, device))
    if hit is not None:
        return hit
    kern = _kernels()
    if kern.INTERPRET or device.type != "cuda":
        return _cfg.INTERPRET_CONFIG
    fallback = _cfg.default_config(geo.head_dim, geo.dtype)
    if not _cfg.autotune_enabled(device):
        return fallback  # not remembered: tuning may be allowed later (e.g. after a graph capture)
    key = geo.key(device)
    rows_bn = geo.rows_block_n()
    if rows_bn is not None and rows_bn == geo.rel_k_grid[1] and 2 * rows_bn <= 128:
        rows_bn = None  # BLOCK_N = 2 * grid width runs two key rows per step: worth timing
    if geo.rel_dot() == 1 and geo.nk <= 256 and geo.dtype != torch.float32:
        configs = _cfg.window_candidates(geo.head_dim)  # whole small windows per program
    else:
        configs = _cfg.candidates(geo.head_dim, geo.dtype, rows_bn)
    chosen = _cfg.lookup_or_tune(key, configs, run, fallback)
    _TUNED[(geo, device)] = chosen
    return chosen


_TUNED: dict = {}  # (geometry, device) -> TileConfig
_GEOMETRIES: dict = {}  # call signature of _attention_impl -> its _Geometry


def _out_of_resources(exc: BaseException) -> bool:
    """Triton's 'the config needs more shared memory / registers than this GPU has' error."""
    return type(exc).__name__ == "OutOfResources" or "out of resource" in str(exc).lower()


def _run_fitting(geo: _Geometry, device: torch.device, run, cfg: TileConfig, forced: bool) -> TileConfig:
    """``run(cfg)``; if the config does not fit this GPU, the largest smaller config that does.

    A default or cached config can need more shared memory than a consumer card has
    (e.g. ~100 KB on sm86 against 228 KB on an H100), and during a CUDA-graph capture
    nothing is autotuned. The config that fits is remembered for this geometry. A config
    the caller forced is run as given (its error is the caller's to see).
    """
    try:
        run(cfg)
        return cfg
    except Exception as exc:
        if forced or not _out_of_resources(exc):
            raise
        first = exc
    for smaller in _cfg.smaller_configs(cfg, geo.head_dim):
        try:
            run(smaller)
        except Exception as exc:
            if _out_of_resources(exc):
                continue
            raise
        log.warning(
            "Triton tile config %s does not fit this GPU (%s); using %s", cfg, str(first).splitlines()[0][:120], smaller
        )
        _TUNED[(geo, device)] = smaller
        return smaller
    raise RuntimeError(
        f"no Triton tile config fits this GPU's shared memory for head dim {geo.head_dim} "
        f"({str(first).splitlines()[0][:160]}); use backend='sdpa' or backend='flex' for this model"
    ) from first


def _override(block_m: int, block_n: int, num_warps: int, num_stages: int) -> TileConfig | None:
    if block_m <= 0:
        return None
    return TileConfig(block_m, max(block_n, 16), max(num_warps, 1), max(num_stages, 1))


def _run_configured(geo: _Geometry, device: torch.device, run, block_m: int, block_n: int, num_warps: int,
                    num_stages: int) -> None:
    """``run`` with the forced config (block_m > 0) or the tuned / default one, fitted to this GPU."""
    override = _override(block_m, block_n, num_warps, num_stages)
    _run_fitting(geo, device, run, _pick_config(geo, device, run, override), override is not None)


# ---------------------------------------------------------------------------- the op
def _attention_impl(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_num_blocks: Optional[torch.Tensor],
    kv_indices: Optional[torch.Tensor],
    rel_h: Optional[torch.Tensor],
    rel_w: Optional[torch.Tensor],
    rh: Optional[torch.Tensor],
    rw: Optional[torch.Tensor],
    scale: float,
    layout: int,
    block_q: int,
    block_k: int,
    tile_grid_h: int,
    tile_grid_w: int,
    tile_h: int,
    tile_w: int,
    rel_q_grid_h: int,
    rel_q_grid_w: int,
    rel_k_grid_h: int,
    rel_k_grid_w: int,
    block_m: int,
    block_n: int,
    num_warps: int,
    num_stages: int,
    rel_toeplitz: int = 0,
    long_rows: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    b, h, nq, d = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    out, lse = empty_outputs(q)
    if nq == 0:
        return out, lse
    has_rel = rel_h is not None or rh is not None
    masked = kv_num_blocks is not None
    with _device_ctx(q):
        in_program = False
        if has_rel and rel_h is None:
            # small grids (SAM's windows): the attention program computes its own terms from the tables
            in_program = bool(rel_toeplitz) and _terms_in_program(
                layout if masked else LAYOUT_SEQUENCE, block_k if masked else 0, masked,
                (rel_q_grid_h, rel_q_grid_w), (rel_k_grid_h, rel_k_grid_w), rh.shape[-1], rh.dtype,
            )
            if not in_program:
                rel_h, rel_w = relpos_terms(q, rh, rw, (rel_q_grid_h, rel_q_grid_w), (rel_k_grid_h, rel_k_grid_w))
        rel_dtype_ok = not has_rel or in_program or (rel_h.dtype == q.dtype and rel_w.dtype == q.dtype)
        # one geometry object per call signature: building the frozen dataclass took ~3.5 us per call
        # (desktop CPU), a tenth of a B=1 call's Python; the lookup ~0.3 us
        gkey = (b, h, hkv, nq, nk, d, q.dtype, masked, layout, block_q, block_k,
                kv_num_blocks.shape[2] if masked else 0, kv_indices.shape[3] if masked else 0,
                tile_grid_h, tile_grid_w, tile_h, tile_w, has_rel, rel_k_grid_h, rel_k_grid_w, rel_dtype_ok, in_program,
                masked and _takes_pass(long_rows, d, q.dtype, _device_arch(q.device) if long_rows == UNLESS_CAPPED else 0))
        geo = _GEOMETRIES.get(gkey)
        if geo is None:
            geo = _Geometry(
                batch=b, heads=h, kv_heads=hkv, nq=nq, nk=nk, head_dim=d, dtype=q.dtype,
                masked=masked, layout=layout if masked else LAYOUT_SEQUENCE,
                block_q=block_q if masked else 0, block_k=block_k if masked else 0,
                num_q_blocks=gkey[11], num_k_blocks=gkey[12],
                tile_grid=(tile_grid_h, tile_grid_w) if layout == LAYOUT_TILES else (1, 1),
                tile=(tile_h, tile_w) if layout == LAYOUT_TILES else (1, 1),
                has_rel=has_rel, rel_k_grid=(rel_k_grid_h, rel_k_grid_w) if has_rel else (1, 1),
                rel_dtype_ok=rel_dtype_ok, rel_tables=in_program, long_rows=gkey[-1],
            )
            if len(_GEOMETRIES) > 256:  # bounded: varying input sizes must not grow memory
                _GEOMETRIES.clear()
            _GEOMETRIES[gkey] = geo
        strides = (q.stride(), k.stride(), v.stride(), out.stride(), lse.stride())
        scale2 = float(scale) * LOG2E

        def run(cfg: TileConfig) -> None:
            _launch(geo, cfg, q, k, v, out, lse, *strides, kv_num_blocks, kv_indices, None, rel_h, rel_w, None, None, scale2,
                    rh if in_program else None, rw if in_program else None)

        _run_configured(geo, q.device, run, block_m, block_n, num_warps, num_stages)
    return out, lse


# Op form of :func:`_attention_impl` (layout 0 = sequence, 1 = tiles; block_m <= 0: autotuned config;
# rel_toeplitz = 1: the tables are ``RelPos.toeplitz``; long_rows = 1: the mask's calls take the fixed-offset
# pass, 2: unless capped, see ``_long_rows`` and ``_takes_pass``); the fake gives the outputs' shapes.
def _register_attention_op(name: str, impl):
    """``impl`` as the custom op ``samsparse::<name>``, whose fake gives ``empty_outputs(q)``'s shapes."""
    op = torch.library.custom_op(f"samsparse::{name}", impl, mutates_args=())

    @op.register_fake
    def _(q, *args, **kwargs):
        return empty_outputs(q)

    return op


_triton_attention_op = _register_attention_op("triton_attention", _attention_impl)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask=None,
    rel_pos=None,
    scale: float | None = None,
    config: TileConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-sparse attention with SAM's rel-pos fused, on the Triton kernel.

    Args:
        q: [B, H, Nq, D]; k, v: [B, Hkv, Nk, D] (H % Hkv == 0); any strides; fp16/bf16/fp32.
        mask: a samsparse ``BlockMask`` (sequence or tiles layout) or None (dense).
        rel_pos: a samsparse ``RelPos`` (terms used if present, else the tables) or None.
        scale: softmax scale (default D ** -0.5).
        config: force a tile config (skips autotuning).

    Returns:
        out [B, H, Nq, D] in q's dtype (memory layout [B, Nq, H, D], so
        ``out.transpose(1, 2).reshape(B, Nq, H * D)`` is free) and the natural-log
        LSE, float32 [B, H, Nq] (-inf and output 0 for a query that reads no key).

    The caller validates shapes (see ``samsparse.backends.base.check_inputs``).
    """
    scale = resolve_scale(q, scale)
    m = mask_kernel_args(mask, q.device)
    rel_h = rel_w = rh = rw = None
    qg, kg = (0, 0), (0, 0)
    toeplitz = 0
    if rel_pos is not None:
        qg, kg = tuple(rel_pos.q_grid), tuple(rel_pos.k_grid)
        ready = rel_pos.ready_terms(q)  # (not terms cached by RelPos.terms for another q)
        if ready is not None:
            rel_h, rel_w = _on(ready[0], q.device), _on(ready[1], q.device)
        else:
            rh, rw = _on(rel_pos.rh, q.device), _on(rel_pos.rw, q.device)
            toeplitz = int(rel_pos.toeplitz)
    c = config or TileConfig(0, 0, 0, 0)
    # eager calls skip the dispatcher (tens of microseconds); traced code sees the custom op
    fn = torch.ops.samsparse.triton_attention if _tracing() else _attention_impl
    return fn(
        q, k, v, m.kv_num_blocks, m.kv_indices, rel_h, rel_w, rh, rw, scale,
        m.layout, m.block_q, m.block_k, *m.tile_grid, *m.tile, qg[0], qg[1], kg[0], kg[1],
        c.block_m, c.block_n, c.num_warps, c.num_stages, toeplitz, _long_rows(m, q.shape[-1]),
    )


def _on(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    return t if t.device == device else t.to(device)


# ---------------------------------------------------------------------------- varlen
def _varlen_impl(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    kv_num_blocks: Optional[torch.Tensor],
    kv_indices: Optional[torch.Tensor],
    head_mask_type: Optional[torch.Tensor],
    scale: float,
    block_q: int,
    block_k: int,
    block_m: int,
    block_n: int,
    num_warps: int,
    num_stages: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    total_q, h, d = q.shape
    hkv = k.shape[1]
    batch = cu_seqlens_q.shape[0] - 1
    out, lse = empty_varlen_outputs(q)
    if total_q == 0 or batch <= 0:
        return out, lse
    masked = kv_num_blocks is not None
    mq = math.ceil(max_seqlen_q / block_q) if masked else 0
    geo = _Geometry(
        batch=batch, heads=h, kv_heads=hkv, nq=max_seqlen_q, nk=max_seqlen_k, head_dim=d, dtype=q.dtype,
        masked=masked, layout=LAYOUT_SEQUENCE, block_q=block_q if masked else 0, block_k=block_k if masked else 0,
        num_q_blocks=mq, num_k_blocks=kv_indices.shape[3] if masked else 0, tile_grid=(1, 1), tile=(1, 1), has_rel=False, rel_k_grid=(1, 1),
        varlen=True, has_head_mask=masked and head_mask_type is not None,
    )
    # packed [total, H, D] seen as [B=1 stride 0, H, token, D]; LSE [H, total]
    qs = (0, q.stride(1), q.stride(0), q.stride(2))
    ks = (0, k.stride(1), k.stride(0), k.stride(2))
    vs = (0, v.stride(1), v.stride(0), v.stride(2))
    os_ = (0, out.stride(1), out.stride(0), out.stride(2))
    ls = (0, lse.stride(0), lse.stride(1))
    cu_q = cu_seqlens_q.to(torch.int32)
    cu_k = cu_seqlens_k.to(torch.int32)
    kv_num = kv_num_blocks.to(torch.int32) if masked else None
    kv_idx = kv_indices.to(torch.int32) if masked else None
    hm = head_mask_type.to(torch.int32) if geo.has_head_mask else None
    scale2 = float(scale) * LOG2E

    def run(cfg: TileConfig) -> None:
        _launch(geo, cfg, q, k, v, out, lse, qs, ks, vs, os_, ls, kv_num, kv_idx, hm, None, None, cu_q, cu_k, scale2)

    with _device_ctx(q):
        _run_configured(geo, q.device, run, block_m, block_n, num_warps, num_stages)
    return out, lse


# Op form of :func:`_varlen_impl`: (out [total_q, H, D], lse [H, total_q]).
_triton_varlen_op = torch.library.custom_op("samsparse::triton_varlen_attention", _varlen_impl, mutates_args=())


@_triton_varlen_op.register_fake
def _(q, *args, **kwargs):
    return empty_varlen_outputs(q)


def triton_varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    kv_num_blocks: torch.Tensor | None,
    kv_indices: torch.Tensor | None,
    scale: float | None = None,
    head_mask_type: torch.Tensor | None = None,
    *,
    block_size: int | tuple[int, int] = 128,
    return_lse: bool = False,
    config: TileConfig | None = None,
):
    """Block-sparse attention over packed variable-length sequences.

    Args:
        q: [total_q, H, D]; k, v: [total_k, Hkv, D] (H % Hkv == 0), sequences packed
            back to back; fp16/bf16/fp32; any strides.
        cu_seqlens_q, cu_seqlens_k: int [B + 1] cumulative sequence starts (on q's device).
        max_seqlen_q, max_seqlen_k: the longest sequence (sizes the launch; no host sync).
        kv_num_blocks: int32 [B', H', Mq] with B' in {1, B}, H' in {1, H} and
            Mq = ceil(max_seqlen_q / block_q) — key blocks read per query block of
            each sequence (block ids count from the start of that sequence's keys);
            None for dense attention.
        kv_indices: int32 [B', H', Mq, Mk] — the key-block ids, valid ones first.
        scale: softmax scale (default D ** -0.5).
        head_mask_type: optional int [H]: 0 = dense for that head, nonzero = use
            the block mask (all heads use the mask when None).
        block_size: (bq, bk) tokens per mask block (int for both), default 128.
        return_lse: also return the natural-log LSE, float32 [H, total_q].

    Returns:
        out [total_q, H, D] in q's dtype (and the LSE with ``return_lse``). Queries
        whose block reads no key get output 0 and LSE -inf.
    """
    bq, bk = check_varlen_args(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, kv_num_blocks, kv_indices, block_size)
    if q.shape[2] > MAX_HEAD_DIM:
        raise NotImplementedError(f"head dim {q.shape[2]} > {MAX_HEAD_DIM} is not supported by the Triton kernel")
    scale = resolve_scale(q, scale)
    c = config or TileConfig(0, 0, 0, 0)
    fn = torch.ops.samsparse.triton_varlen_attention if _tracing() else _varlen_impl
    out, lse = fn(
        q, k, v, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q), int(max_seqlen_k),
        kv_num_blocks, kv_indices, head_mask_type, scale, bq, bk,
        c.block_m, c.block_n, c.num_warps, c.num_stages,
    )
    return (out, lse) if return_lse else out
