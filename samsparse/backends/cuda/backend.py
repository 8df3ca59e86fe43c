"""The ``cuda`` backend: samsparse's hand-written CUDA kernel behind the common contract.

Also defines the ``samsparse::cuda_attention`` / ``samsparse::cuda_varlen_attention``
custom ops. Both wrap the extension's ``samsparse_cuda::fwd`` (which writes into
buffers allocated here) in ``torch.library`` custom ops with fake implementations,
so ``torch.compile`` traces them without a graph break. The extension is loaded
(and compiled on first use, see :mod:`.build`) only when a real GPU call runs,
never at import or while tracing.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Optional

import torch

from ..base import (
    LAYOUT_SEQUENCE,
    LAYOUT_TILES,
    AttentionCall,
    Backend,
    check_varlen_args,
    device_arch,
    empty_outputs,
    empty_varlen_outputs,
    mask_kernel_args,
    resolve_scale,
)

__all__ = [
    "CudaBackend",
    "LAYOUT_SEQUENCE",
    "LAYOUT_TILES",
    "KERNEL_HEAD_DIMS",
    "attention",
    "cuda_varlen_attention",
    "kernel_head_dim",
    "smem_bytes",
    "last_launch",
    "kernel_variant",
    "wgmma_selftest",
]

KERNEL_HEAD_DIMS = (32, 64, 80, 128, 256)

# Mirror of Cfg<D> in csrc/fwd_kernel.cuh: (block_m, block_n, Q kept in registers).
_CFG = {32: (128, 64, True), 64: (128, 64, False), 80: (128, 64, False), 128: (128, 32, False), 256: (64, 32, False)}


def kernel_head_dim(d: int) -> int:
    """The compiled head dim that serves ``d`` (zero-padded), 0 if none (d must be a multiple of 8)."""
    if d <= 0 or d % 8:
        return 0
    for k in KERNEL_HEAD_DIMS:
        if d <= k:
            return k
    return 0


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def smem_bytes(d: int, rel_grid: tuple[int, int] | None = None) -> int:
    """Shared memory per CTA (upper bound over bias modes), mirror of ``SmemLayout<D>::bytes``."""
    kd = kernel_head_dim(d)
    if kd == 0:
        raise ValueError(f"head dim {d} has no kernel")
    bm, bn, qregs = _CFG[kd]
    stride = kd + 8
    n = (4 * bn * stride + (0 if qregs else bm * stride)) * 2 + (bm + 6 * bn) * 4
    if rel_grid is not None:
        rgh, rgw = rel_grid
        n += bm * ((_round_up(max(rgh, 1), 16) + 8) + (_round_up(max(rgw, 1), 64) + 8)) * 2
    return n


def device_smem_limit(device: torch.device) -> int:
    """Opt-in shared memory per block of ``device`` (bytes)."""
    props = torch.cuda.get_device_properties(device)
    limit = getattr(props, "shared_memory_per_block_optin", None)
    if limit:
        return int(limit)
    major = props.major
    return {8: 163 * 1024, 9: 227 * 1024}.get(major, 99 * 1024)


def _raise_refusal(reason: str) -> None:
    """The extension's ops return why they refused a call (empty: done) instead of throwing; the binding
    builds the reason without ostreams (see binding.cpp: on the H200 machine a number streamed through an
    ostream inside an extension, as ``TORCH_CHECK`` does, killed the process)."""
    if reason:
        raise RuntimeError(reason)


def last_launch() -> dict:
    """Bias mode, shared memory, kernel (``"mma"`` or ``"wgmma"``) and the Hopper kernel's softmax
    (``"running"``, ``"fixed"``, ``"fixed+redo"``; see :func:`softmax_mode`) of the last launch in this thread."""
    from . import build

    build.require()
    mode, smem, variant, softmax = torch.ops.samsparse_cuda.last_launch()
    return {"bias_mode": BIAS_MODE_NAMES.get(int(mode), str(mode)), "smem_bytes": int(smem),
            "kernel": KERNEL_NAMES.get(int(variant), str(variant)),
            "softmax": SOFTMAX_NAMES.get(int(softmax), "running" if int(softmax) == -1 else str(softmax))}


KERNEL_ENV = "SAMSPARSE_CUDA_KERNEL"
WGMMA_TILE_ENV = "SAMSPARSE_CUDA_WGMMA_TILE"
FIXED_OFFSET_ENV = "SAMSPARSE_CUDA_FIXED_OFFSET"
REL_H_LAYOUT_ENV = "SAMSPARSE_CUDA_REL_H_LAYOUT"
_REL_H_LAYOUTS = ("query", "row")
# Mirrors of csrc/fwd_params.h's enums (test_python_tables_match_the_kernel_enums checks them against the header).
# SoftmaxMode, by the SAMSPARSE_CUDA_FIXED_OFFSET value that asks for it, and by name (the mma.sync
# kernel reports -1: running)
SOFTMAX_MODES = {"0": 0, "1": 1, "redo": 2}
SOFTMAX_NAMES = {0: "running", 1: "fixed", 2: "fixed+redo"}
# WgmmaTile: query rows per CTA and warps
WGMMA_TILES = {"m64w4": 1, "m128w8": 2, "m128w4": 3}
# BiasMode and KernelVariant, as last_launch() reports them
BIAS_MODE_NAMES = {0: "none", 1: "generic", 16: "runs16", 32: "runs32", 64: "runs64"}
KERNEL_NAMES = {0: "mma", 1: "wgmma"}
_KERNEL_CHOICES = ("mma", "wgmma")


def _env_choice(name: str, default: str, choices, usage: str) -> str:
    """The value of environment switch ``name`` (trimmed, lower case; unset or empty: ``default``), one of
    ``choices``; anything else raises ValueError naming the variable and ``usage``."""
    choice = os.environ.get(name, default).strip().lower() or default
    if choice not in choices:
        raise ValueError(f"{name}={choice!r}: {usage}")
    return choice


def kernel_variant(device: torch.device) -> int:
    """Kernel the extension is asked for on ``device``: 1 (wgmma, fwd_sm90.cuh) or 0 (mma.sync).

    On compute capability 9.0 devices the default, ``SAMSPARSE_CUDA_KERNEL=wgmma``, takes the Hopper
    kernel for the calls it serves (head dims 64 and 80 in the sequence layout, without bias or with
    SAM's global rel-pos); the mma.sync kernel runs every other call, and every call on other GPUs.
    ``SAMSPARSE_CUDA_KERNEL=mma`` keeps every call on the mma.sync kernel (for A/B timings).
    """
    choice = _env_choice(KERNEL_ENV, "wgmma", _KERNEL_CHOICES, f"use one of {', '.join(_KERNEL_CHOICES)}")
    return 1 if choice == "wgmma" and device_arch(device) == 90 else 0


def wgmma_selftest(head_dim: int = 64, dtype: torch.dtype = torch.bfloat16, device: str = "cuda", seed: int = 0) -> dict:
    """One 64-row tile through the Hopper kernel's shared-memory layouts and wgmma wrappers.

    Runs S = Q K^T and O = round(S) V (no softmax) for random Q, K, V [64, head_dim] (head dim 64 or
    80, float16/bfloat16) on a compute capability 9.0 GPU and compares them with float32 products of the
    same inputs. Returns ``{"s_err", "o_err"}`` (max abs error relative to the largest reference value)
    and the raw ``s``, ``o`` tensors; a wrong S points at the K-major layouts, a right S with a wrong O
    at V's MN-major layout or P's register fragments, d = 80 alone at the second panel.
    """
    from . import build

    build.require()
    g = torch.Generator(device="cpu").manual_seed(seed)
    q, k, v = (torch.randn(64, head_dim, generator=g).to(device=device, dtype=dtype) for _ in range(3))
    s = torch.empty(64, 64, device=device, dtype=torch.float32)
    o = torch.empty(64, head_dim, device=device, dtype=torch.float32)
    _raise_refusal(torch.ops.samsparse_cuda.wgmma_selftest(q, k, v, s, o))
    s_ref = q.float() @ k.float().T
    o_ref = s_ref.to(dtype).float() @ v.float()
    s_err = float((s - s_ref).abs().max() / s_ref.abs().max())
    o_err = float((o - o_ref).abs().max() / o_ref.abs().max())
    return {"s_err": s_err, "o_err": o_err, "s": s, "o": o}


def softmax_mode() -> int:
    """The Hopper kernel's softmax, from ``SAMSPARSE_CUDA_FIXED_OFFSET``: ``1`` (default) the fixed-offset
    softmax (step 0's row max as every step's offset, row sums from the tensor cores; a CTA whose row sums
    reach 2^64 runs again with the running max), ``0`` the running max everywhere (A/B timings), ``redo``
    the fixed offset with every CTA running again (tests of that second pass)."""
    return SOFTMAX_MODES[_env_choice(FIXED_OFFSET_ENV, "1", SOFTMAX_MODES, "use 1 (default), 0 or redo")]


def rel_h_by_query() -> bool:
    """How the terms computed from rel-pos tables store rel_h [B, H, Nq, gh_k], from
    ``SAMSPARSE_CUDA_REL_H_LAYOUT``: ``query`` (default) each query's terms contiguous (a row's terms share one
    cache line across the key steps), ``row`` each key row's terms contiguous over the queries (the Triton
    backend's own layout: one step's loads of a warp coalesce). The kernel reads either through strides; the
    switch is for A/B timings."""
    return _env_choice(REL_H_LAYOUT_ENV, "query", _REL_H_LAYOUTS, "use query (default) or row") == "query"


def _kernel_args(device: torch.device) -> list[int]:
    """The extension's kernel fields: [variant, wgmma tile, softmax mode] (tile: 0 the kernel's rule, else
    one of ``WGMMA_TILES`` forced by ``SAMSPARSE_CUDA_WGMMA_TILE``, for A/B timings; softmax mode: see
    :func:`softmax_mode`)."""
    variant = kernel_variant(device)
    tile = _env_choice(WGMMA_TILE_ENV, "", ("", *WGMMA_TILES),
                       f"use one of {', '.join(WGMMA_TILES)} (or leave it unset)")
    return [variant, WGMMA_TILES.get(tile, 0), softmax_mode()]


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """t itself if the kernel can read it in place (16-byte rows), else a contiguous copy."""
    ok = (
        t.stride(-1) == 1
        and t.data_ptr() % 16 == 0
        and all(s % 8 == 0 or n == 1 for s, n in zip(t.stride()[:-1], t.shape[:-1]))
    )
    if ok:
        return t
    return torch.empty_like(t, memory_format=torch.contiguous_format).copy_(t)


# ---------------------------------------------------------------------------- the op
def _no_keys(out: torch.Tensor, lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The result when no query can read a key: output 0, LSE -inf (the kernel is not launched)."""
    return out.zero_(), lse.fill_(float("-inf"))


@torch.library.custom_op("samsparse::cuda_attention", mutates_args=())
def _cuda_attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_num_blocks: Optional[torch.Tensor],
    kv_indices: Optional[torch.Tensor],
    rel_h: Optional[torch.Tensor],
    rel_w: Optional[torch.Tensor],
    scale: float,
    layout: int,
    block_q: int,
    block_k: int,
    tile_grid_h: int,
    tile_grid_w: int,
    tile_h: int,
    tile_w: int,
    rel_k_grid_h: int,
    rel_k_grid_w: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    out, lse = empty_outputs(q)
    nk = k.shape[2]
    if out.numel() == 0 and lse.numel() == 0:
        return out, lse
    if nk == 0 or q.shape[3] == 0:
        return _no_keys(out, lse)
    from . import build

    build.require()
    masked = kv_num_blocks is not None
    geom = [
        int(layout) if masked else LAYOUT_SEQUENCE,
        int(block_q), int(block_k),
        int(kv_num_blocks.shape[2]) if masked else 0,
        int(tile_grid_h), int(tile_grid_w), int(tile_h), int(tile_w),
        int(rel_k_grid_h) if rel_h is not None else 0, int(rel_k_grid_w) if rel_h is not None else 0,
        0, 0, 0, *_kernel_args(q.device),
    ]
    with torch.cuda.device(q.device):
        _raise_refusal(torch.ops.samsparse_cuda.fwd(
            _aligned(q), _aligned(k), _aligned(v), out, lse,
            kv_num_blocks, kv_indices, rel_h, rel_w, None, None, float(scale), geom,
        ))
    return out, lse


@_cuda_attention_op.register_fake
def _(q, *args, **kwargs):
    return empty_outputs(q)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask=None, rel_pos=None, scale: float | None = None):
    """Block-sparse attention with SAM's rel-pos fused, on the CUDA kernel.

    Args:
        q: [B, H, Nq, D]; k, v: [B, Hkv, Nk, D] (H % Hkv == 0); fp16/bf16; D a multiple
            of 8 up to 256; any strides (rows that are not 16-byte aligned are copied).
        mask: a samsparse ``BlockMask`` (sequence or tiles layout) or None (dense).
        rel_pos: a samsparse ``RelPos`` (its terms, or terms computed from its tables in
            q's dtype: see :func:`rel_terms`) or None.
        scale: softmax scale (default D ** -0.5), must be positive.

    Returns:
        out [B, H, Nq, D] in q's dtype (memory layout [B, Nq, H, D]) and the natural-log
        LSE, float32 [B, H, Nq] (-inf with output 0 for a query that reads no key).

    The caller validates shapes (``samsparse.backends.base.check_inputs``).
    """
    scale = resolve_scale(q, scale)
    m = mask_kernel_args(mask, q.device)
    rel_h = rel_w = None
    kg = (0, 0)
    if rel_pos is not None:
        kg = tuple(rel_pos.k_grid)
        rel_h, rel_w = rel_terms(rel_pos, q)
        if rel_h.dtype != q.dtype:
            rel_h, rel_w = rel_h.to(q.dtype), rel_w.to(q.dtype)
    return torch.ops.samsparse.cuda_attention(
        q, k, v, m.kv_num_blocks, m.kv_indices, rel_h, rel_w, scale,
        m.layout, m.block_q, m.block_k, *m.tile_grid, *m.tile, kg[0], kg[1],
    )


def rel_terms(rel_pos, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """rel_h [B, H, Nq, gh_k] and rel_w [B, H, Nq, gw_k] (q's dtype, any strides) for the kernel.

    The caller's (or cached) terms as they are; from the tables, the Triton backend's terms kernel where it
    runs (real CUDA tensors: one launch instead of SAM's two einsums, whose copies of a strided q cost
    ~0.3 ms at vit_b B = 8 on an H200), else SAM's einsum (``RelPos.terms``: CPU, tracing, no Triton).
    """
    ready = rel_pos.ready_terms(q)
    if ready is not None:
        return ready
    if rel_pos.has_tables and q.is_cuda and not _is_fake(q):
        terms_kernel = _triton_terms_kernel()
        if terms_kernel is not None:
            rh, rw = rel_pos.rh.to(q.device), rel_pos.rw.to(q.device)  # (no copy when already there)
            # rel_h stored by query by default: the kernel reads one height term per row and key step, and a
            # row's 64 terms then share one cache line across the steps (rel_h_by_query)
            return terms_kernel(q, rh, rw, tuple(rel_pos.q_grid), tuple(rel_pos.k_grid),
                                rel_h_by_query=rel_h_by_query())
    return rel_pos.terms(q)


@functools.lru_cache(maxsize=None)
def _triton_terms_kernel():
    """``samsparse.backends.triton.ops.relpos_terms`` when the Triton backend is available, else None."""
    try:
        from ..registry import get

        if get("triton").is_available() is None:
            from ..triton.ops import relpos_terms

            return relpos_terms
    except Exception:  # noqa: BLE001  (no Triton, or it cannot run here: SAM's einsum instead)
        pass
    return None


# ---------------------------------------------------------------------------- varlen
@torch.library.custom_op("samsparse::cuda_varlen_attention", mutates_args=())
def _cuda_varlen_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    kv_num_blocks: Optional[torch.Tensor],
    kv_indices: Optional[torch.Tensor],
    scale: float,
    block_q: int,
    block_k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    total_q, h, d = q.shape
    out, lse = empty_varlen_outputs(q)
    batch = cu_seqlens_q.shape[0] - 1
    if total_q == 0 or batch <= 0:
        return out, lse
    if k.shape[0] == 0:
        return _no_keys(out, lse)
    from . import build

    build.require()
    masked = kv_num_blocks is not None
    mq = math.ceil(max_seqlen_q / block_q) if masked else 0
    geom = [LAYOUT_SEQUENCE, int(block_q), int(block_k), mq, 0, 0, 0, 0, 0, 0, batch, int(max_seqlen_q), int(max_seqlen_k),
            *_kernel_args(q.device)]
    # packed [total, H, D] seen as [1, H, total, D]; LSE [H, total] as [1, H, total]
    q4 = _aligned(q).unsqueeze(0).transpose(1, 2)
    k4 = _aligned(k).unsqueeze(0).transpose(1, 2)
    v4 = _aligned(v).unsqueeze(0).transpose(1, 2)
    with torch.cuda.device(q.device):
        _raise_refusal(torch.ops.samsparse_cuda.fwd(
            q4, k4, v4, out.unsqueeze(0).transpose(1, 2), lse.unsqueeze(0),
            kv_num_blocks.to(torch.int32) if masked else None, kv_indices.to(torch.int32) if masked else None,
            None, None, cu_seqlens_q.to(q.device, torch.int32).contiguous(),
            cu_seqlens_k.to(q.device, torch.int32).contiguous(), float(scale), geom,
        ))
    return out, lse


@_cuda_varlen_op.register_fake
def _(q, *args, **kwargs):
    return empty_varlen_outputs(q)


def cuda_varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    kv_num_blocks: torch.Tensor | None = None,
    kv_indices: torch.Tensor | None = None,
    scale: float | None = None,
    *,
    block_size: int | tuple[int, int] = 128,
    return_lse: bool = False,
):
    """Block-sparse attention over packed variable-length sequences, in one launch.

    Args:
        q: [total_q, H, D]; k, v: [total_k, Hkv, D] (H % Hkv == 0), sequences packed
            back to back; fp16/bf16 on a CUDA device.
        cu_seqlens_q, cu_seqlens_k: int [B + 1] cumulative sequence starts (moved to q's
            device; no host synchronisation).
        max_seqlen_q, max_seqlen_k: the longest sequence (sizes the launch).
        kv_num_blocks: int32 [B', H', Mq] (B' in {1, B}, H' in {1, H},
            Mq = ceil(max_seqlen_q / bq)) — key blocks read by each query block of each
            sequence (block ids count from that sequence's first key); None: dense.
        kv_indices: int32 [B', H', Mq, Mk] — the key-block ids, valid ones first.
        scale: softmax scale (default D ** -0.5).
        block_size: (bq, bk) tokens per mask block (int for both).
        return_lse: also return the natural-log LSE, float32 [H, total_q].

    Returns:
        out [total_q, H, D] in q's dtype (and the LSE with ``return_lse``). Queries that
        read no key get output 0 and LSE -inf. No rel-pos and no per-head dense/sparse
        selection here: :func:`samsparse.compat.sam_block_sparse_attn` handles those by
        calling the backend once per sequence.
    """
    bq, bk = check_varlen_args(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, kv_num_blocks, kv_indices, block_size)
    if kernel_head_dim(q.shape[2]) == 0:
        raise NotImplementedError(f"head dim {q.shape[2]} is not supported by the CUDA kernel (multiple of 8, <= 256)")
    scale = resolve_scale(q, scale)
    if not scale > 0:
        raise ValueError(f"the CUDA kernel needs a positive scale, got {scale}")
    out, lse = torch.ops.samsparse.cuda_varlen_attention(
        q, k, v, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q), int(max_seqlen_k), kv_num_blocks, kv_indices,
        scale, int(bq), int(bk),
    )
    return (out, lse) if return_lse else out


# ---------------------------------------------------------------------------- the backend
MAX_HEAD_DIM = 256


class CudaBackend(Backend):
    """Block-sparse flash attention in CUDA C++ (sm_80+, fp16/bf16), SAM's rel-pos fused.

    Supports: dense or ``BlockMask`` (sequence and tiles layouts, broadcast B'/H',
    empty rows), GQA/MQA, any input strides, head dims that are multiples of 8 up to
    256 (kernels for 32, 64, 80, 128, 256; others are zero-padded to the next one),
    rel-pos terms or tables (tables -> terms as in :func:`rel_terms`), LSE.
    The extension is compiled on the first GPU call (cached); if that fails,
    ``why_not`` says why and ``auto`` falls back to the next backend.
    """

    name = "cuda"
    # below triton: on an H100 (benchmarks/RESULTS.md, 2026-11-23) the Triton kernel is faster
    # with SAM's rel-pos (0.97x vs 0.53x of SDPA flash at d=64), so ``auto`` prefers it
    priority = 25
    dtypes = (torch.float16, torch.bfloat16)
    head_dims = "multiples of 8 up to 256 (kernels: 32, 64, 80, 128, 256)"
    devices = "cuda (sm_80+)"

    def is_available(self) -> str | None:
        from . import build  # lazily: `python -m samsparse.backends.cuda.build` must not find it imported

        return build.availability_reason()

    def _why_not(self, call: AttentionCall) -> str | None:
        if call.device.type != "cuda":
            return f"inputs are on {call.device.type}; the CUDA kernel needs CUDA tensors"
        d = call.head_dim
        if d % 8 != 0 or d <= 0 or d > MAX_HEAD_DIM:
            return f"head dim {d} is not supported (needs a multiple of 8, at most {MAX_HEAD_DIM})"
        if max(call.nq, call.nk) >= 2**31 - 2**20:
            return f"sequence too long for 32-bit token indices (Nq={call.nq}, Nk={call.nk})"
        return None

    def why_not(self, q, k, v=None, mask=None, rel_pos=None, scale=None, return_lse=False) -> str | None:
        reason = super().why_not(q, k, v, mask, rel_pos, scale, return_lse)
        if reason is not None:
            return reason
        if scale is not None and not float(scale) > 0:
            return f"the CUDA kernel needs a positive scale, got {scale}"
        if rel_pos is not None:
            gh, gw = rel_pos.k_grid
            if gh >= 32768 or gw >= 65536:
                return f"rel-pos key grid {tuple(rel_pos.k_grid)} too large"
            need = smem_bytes(q.shape[-1], (gh, gw))
            limit = device_smem_limit(q.device)
            if need > limit:
                return (
                    f"rel-pos key grid {tuple(rel_pos.k_grid)} needs {need} bytes of shared memory per block "
                    f"(device allows {limit})"
                )
        if q.device.type == "cuda" and not _is_fake(q):
            from . import build

            return build.ensure_loaded()  # builds at most once per process, on the first GPU call
        return None

    def _attend(self, q, k, v, mask, rel_pos, scale, return_lse):
        out, lse = attention(q, k, v, mask, rel_pos, scale)
        return (out, lse) if return_lse else out


def _is_fake(t: torch.Tensor) -> bool:
    try:
        from torch._subclasses.fake_tensor import FakeTensor
    except ImportError:  # pragma: no cover
        return False
    return isinstance(t, FakeTensor)
