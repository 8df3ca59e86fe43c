"""Functional API in the style of MIT-Han-Lab's Block-Sparse-Attention (flash-attn layouts).

Two entry points for code written against ``block_sparse_attn`` / the "sam block
sparse attention" seed API, both running on samsparse's backends
(:func:`samsparse.backends.attend`, so ``backend="auto"`` picks the fastest one
that supports the call):

- :func:`sam_block_sparse_attn_simple`: padded batch, flash-attn's
  *sequence-major* layout ``q [B, N, H, D]``, ``k/v [B, N, Hkv, D]``.
- :func:`sam_block_sparse_attn`: packed variable-length batch ``q [total_q, H, D]``,
  ``k/v [total_k, Hkv, D]`` with ``cu_seqlens`` offsets and a per-head
  ``head_mask_type`` (0 = dense head, ``k > 0`` = block-sparse head that uses
  mask head ``k - 1``).

Helpers :func:`prepare_varlen_inputs` (pack a list / a padded batch),
:func:`split_varlen` and :func:`pad_varlen` (back again) go with the varlen form.

Conventions (as in Block-Sparse-Attention / flash-attn):

- dtypes float16 / bfloat16 / float32; head dims 32..256, multiples of 8;
  MQA/GQA: ``H % Hkv == 0``, query head ``h`` reads key/value head
  ``h // (H // Hkv)``.
- ``softmax_scale`` defaults to ``D ** -0.5``.
- ``cu_seqlens_*`` are int32 ``[batch + 1]``: ``0, n_0, n_0 + n_1, ...``.
- Block masks are bool, ``True`` = "query block reads key block"; block ``i``
  covers tokens ``[i * block, (i + 1) * block)`` of its sequence (the last
  block may be partial).
- The LSE is float32, natural log; ``-inf`` for a query that reads no key.

Differences from the original library: no streaming heads (``head_mask_type``
-1 raises :class:`StreamingHeadsNotSupported`), no dropout, no causal flag
(express causality in the block mask), forward only through the backends'
autograd support, and the varlen LSE is packed ``[H, total_q]`` (flash-attn >=
2.5) instead of padded ``[batch, H, max_seqlen_q]``.

Host synchronisation: the varlen function needs the sequence boundaries on the
host to slice the packed tensors, so it reads ``cu_seqlens_q``,
``cu_seqlens_k`` and ``head_mask_type`` once per call. Pass them as CPU
tensors (what :func:`prepare_varlen_inputs` returns by default) and no device
sync happens; on the GPU each costs one sync. The one-off check that every
query block reads at least one key block (after cropping the mask to each
sequence) costs one more sync per call; ``allow_empty_rows=True`` skips it (such
rows then give output 0 and LSE -inf).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import torch

from .backends import registry
from .backends.base import Backend
from .masks.block_mask import BlockMask

__all__ = [
    "StreamingHeadsNotSupported",
    "sam_block_sparse_attn",
    "sam_block_sparse_attn_simple",
    "prepare_varlen_inputs",
    "split_varlen",
    "pad_varlen",
    "SUPPORTED_DTYPES",
    "MIN_HEAD_DIM",
    "MAX_HEAD_DIM",
]

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MIN_HEAD_DIM = 32
MAX_HEAD_DIM = 256
_HEAD_DIM_MULTIPLE = 8


class StreamingHeadsNotSupported(NotImplementedError, ValueError):
    """``head_mask_type`` asked for a streaming head (-1), which samsparse does not implement."""


# --------------------------------------------------------------------------- validation
def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _check_qkv(q, k, v, *, varlen: bool) -> None:
    """Types, ranks, dtypes, devices, head counts and head dims of q/k/v."""
    if varlen:
        q_form, kv_form, n = "[total_q, H, D]", "[total_k, Hkv, D]", 3
    else:
        q_form, kv_form, n = "[B, N, H, D]", "[B, N, Hkv, D]", 4
    for name, t, form in (("q", q, q_form), ("k", k, kv_form), ("v", v, kv_form)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor {form}, got {type(t).__name__}")
        if t.dim() != n:
            hint = ""
            if varlen and t.dim() == 4:
                hint = "; for a padded batch use sam_block_sparse_attn_simple, or pack it with prepare_varlen_inputs"
            elif not varlen and t.dim() == 3:
                hint = "; for packed variable-length input use sam_block_sparse_attn with cu_seqlens"
            raise ValueError(f"{name} must be {form} ({n} dims), got shape {tuple(t.shape)}{hint}")
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(
                f"{name} has dtype {_dtype_name(t.dtype)}; supported: float16, bfloat16, float32 "
                f"(convert with {name}.to(torch.bfloat16) or similar)"
            )
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(
            f"q, k, v must share one dtype, got {_dtype_name(q.dtype)}, {_dtype_name(k.dtype)}, "
            f"{_dtype_name(v.dtype)}; convert k and v with .to(q.dtype)"
        )
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}; move them with .to(q.device)")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape {kv_form}, got {tuple(k.shape)} and {tuple(v.shape)}")
    d = q.shape[-1]
    if k.shape[-1] != d:
        raise ValueError(f"q head dim {d} differs from k/v head dim {k.shape[-1]}; q, k and v need one head dim D")
    if not (MIN_HEAD_DIM <= d <= MAX_HEAD_DIM) or d % _HEAD_DIM_MULTIPLE != 0:
        raise ValueError(
            f"head dim D={d} is not supported: it must be between {MIN_HEAD_DIM} and {MAX_HEAD_DIM} and a "
            f"multiple of {_HEAD_DIM_MULTIPLE}; zero-pad q/k/v's last dim to the next supported size and pass "
            f"softmax_scale={d}**-0.5 to keep the original scale"
        )
    if not varlen and k.shape[0] != q.shape[0]:
        raise ValueError(f"k/v batch {k.shape[0]} differs from q batch {q.shape[0]}; q, k, v need one batch size B")
    h, hkv = q.shape[-2], k.shape[-2]
    if h < 1 or hkv < 1:
        raise ValueError(f"q and k/v need at least one head, got H={h}, Hkv={hkv}")
    if h % hkv != 0:
        raise ValueError(
            f"q has H={h} heads but k/v have Hkv={hkv}: for MQA/GQA the number of q heads must be a "
            "multiple of the number of k/v heads"
        )


def _check_scale(softmax_scale) -> float | None:
    if softmax_scale is None:
        return None
    if isinstance(softmax_scale, bool) or not isinstance(softmax_scale, (int, float)):
        raise TypeError(f"softmax_scale must be a positive float or None (= D**-0.5), got {type(softmax_scale).__name__}")
    scale = float(softmax_scale)
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"softmax_scale must be a positive finite float or None (= D**-0.5), got {softmax_scale!r}")
    return scale


def _check_backend(backend) -> None:
    if isinstance(backend, Backend) or backend == "auto":
        return
    if not isinstance(backend, str):
        raise TypeError(f"backend must be 'auto', a backend name or a Backend, got {type(backend).__name__}")
    registry.get(backend)  # ValueError listing the registered names


def _block_pair(block_size) -> tuple[int, int]:
    if isinstance(block_size, bool):
        raise TypeError(f"block_size must be an int or a pair (bq, bk) of ints, got {block_size!r}")
    if isinstance(block_size, int):
        block_size = (block_size, block_size)
    try:
        bq, bk = (operator.index(b) for b in block_size)
    except (TypeError, ValueError):
        raise TypeError(f"block_size must be an int or a pair (bq, bk) of ints, got {block_size!r}") from None
    if bq <= 0 or bk <= 0:
        raise ValueError(f"block_size must be positive, got {(bq, bk)}")
    return bq, bk


def _check_mask_tensor(mask: torch.Tensor, device: torch.device) -> None:
    if mask.dtype != torch.bool and (mask.is_floating_point() or mask.is_complex()):
        raise TypeError(
            f"mask must be a bool block tensor (True = block is attended), got dtype {_dtype_name(mask.dtype)}; "
            "convert with mask.bool() (or mask != 0)"
        )
    if mask.device != device:
        raise ValueError(f"mask is on {mask.device} but q is on {device}; move it with mask.to(q.device)")


def _seq_len_int(value, name: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None


def _read_cu_seqlens(cu: torch.Tensor, name: str, total: int, tensor_name: str, device: torch.device) -> list[int]:
    """Validate ``cu`` and return it as host ints (one device sync if it lives on the GPU)."""
    if not isinstance(cu, torch.Tensor):
        raise TypeError(
            f"{name} must be an int32 tensor [batch + 1], got {type(cu).__name__}; "
            f"build it with torch.tensor(offsets, dtype=torch.int32) or prepare_varlen_inputs"
        )
    if cu.dtype != torch.int32:
        raise TypeError(f"{name} must have dtype int32 (flash-attn's convention), got {_dtype_name(cu.dtype)}; use {name}.to(torch.int32)")
    if cu.dim() != 1 or cu.numel() < 2:
        raise ValueError(f"{name} must be 1-D [batch + 1] with at least 2 entries (0, ..., total), got shape {tuple(cu.shape)}")
    if cu.device.type != "cpu" and cu.device != device:
        raise ValueError(f"{name} is on {cu.device}; pass it on the CPU (no sync) or on q's device {device}")
    values = cu.tolist()
    if values[0] != 0:
        raise ValueError(f"{name} must start at 0, got {values[0]} ({name}={values})")
    for i in range(len(values) - 1):
        if values[i + 1] < values[i]:
            raise ValueError(
                f"{name} must be non-decreasing (cumulative sequence lengths), but entry {i + 1} ({values[i + 1]}) "
                f"< entry {i} ({values[i]})"
            )
    if values[-1] != total:
        raise ValueError(
            f"{name} ends at {values[-1]} but {tensor_name} has {total} tokens; the last offset must equal "
            f"{tensor_name}.shape[0]"
        )
    return values


def _read_head_mask_type(head_mask_type, heads: int, device: torch.device) -> list[int]:
    if isinstance(head_mask_type, torch.Tensor):
        if head_mask_type.dtype != torch.int32:
            raise TypeError(
                f"head_mask_type must have dtype int32, got {_dtype_name(head_mask_type.dtype)}; "
                "use head_mask_type.to(torch.int32)"
            )
        if head_mask_type.dim() != 1:
            raise ValueError(f"head_mask_type must be 1-D [H], got shape {tuple(head_mask_type.shape)}")
        if head_mask_type.device.type != "cpu" and head_mask_type.device != device:
            raise ValueError(f"head_mask_type is on {head_mask_type.device}; pass it on the CPU or on q's device {device}")
        values = head_mask_type.tolist()
    elif isinstance(head_mask_type, Sequence) and not isinstance(head_mask_type, str):
        values = [_seq_len_int(t, "head_mask_type entries") for t in head_mask_type]
    else:
        raise TypeError(f"head_mask_type must be an int32 tensor [H] (or a list of ints), got {type(head_mask_type).__name__}")
    if len(values) != heads:
        raise ValueError(f"head_mask_type has {len(values)} entries but q has H={heads} heads; give one entry per query head")
    for h, t in enumerate(values):
        if t == -1:
            raise StreamingHeadsNotSupported(
                f"head_mask_type[{h}] = -1: streaming heads are not supported, use 0 (dense) or k>0 (block-sparse, "
                "mask head k-1); express a streaming pattern (sink + local window) as a block mask instead"
            )
        if t < -1:
            raise ValueError(f"head_mask_type[{h}] = {t} is invalid: use 0 (dense) or k>0 (block-sparse, mask head k-1)")
    return values


# --------------------------------------------------------------------------- padded API
def sam_block_sparse_attn_simple(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: BlockMask | torch.Tensor | None,
    softmax_scale: float | None = None,
    backend: str | Backend = "auto",
    return_lse: bool = False,
    *,
    block_size: int | tuple[int, int] = 128,
    allow_empty_rows: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Block-sparse attention on a padded batch in flash-attn's sequence-major layout.

    Args:
        q: [B, Nq, H, D]; k, v: [B, Nk, Hkv, D] with ``H % Hkv == 0``. Any strides
            (e.g. views of a fused qkv projection); not copied: the backend gets
            ``.transpose(1, 2)`` views.
        mask: a :class:`~samsparse.masks.BlockMask` built for ``seq_len=(Nq, Nk)``;
            or a bool block tensor ``[B'|1, H'|1, Mq, Mk]`` (or ``[Mq, Mk]``) with
            ``Mq = ceil(Nq / block_size)``, ``Mk = ceil(Nk / block_size)``; or None
            for dense attention.
        softmax_scale: logit scale, default ``D ** -0.5``.
        backend: ``"auto"``, a registered backend name or a Backend.
        return_lse: also return the float32 natural-log LSE ``[B, H, Nq]``.
        block_size: tokens per block (int or ``(bq, bk)``) of a tensor ``mask``;
            ignored for a BlockMask (which carries its own).
        allow_empty_rows: for a tensor ``mask``: let query blocks that read no key
            block through (output 0, LSE -inf) instead of raising. The check for
            them costs one device sync per call with a tensor ``mask`` (a reused
            BlockMask is checked once); ``True`` skips it.

    Returns:
        ``[B, Nq, H, D]`` in q's dtype (a transposed view of the backend's output;
        call ``.contiguous()`` if you need a dense layout), and the LSE with
        ``return_lse``.
    """
    _check_qkv(q, k, v, varlen=False)
    scale = _check_scale(softmax_scale)
    _check_backend(backend)
    b, nq, h, _ = q.shape
    nk = k.shape[1]
    if nq < 1 or nk < 1:
        raise ValueError(f"q and k/v need at least one token, got Nq={nq}, Nk={nk}")
    block_mask = _simple_mask(mask, block_size, nq, nk, b, h, q.device, allow_empty_rows)
    res = registry.attend(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        block_mask,
        None,
        scale,
        bool(return_lse),
        backend=backend,
    )
    if return_lse:
        out, lse = res
        return out.transpose(1, 2), lse
    return res.transpose(1, 2)


def _simple_mask(mask, block_size, nq, nk, batch, heads, device, allow_empty_rows) -> BlockMask | None:
    if mask is None:
        return None
    if isinstance(mask, BlockMask):
        if mask.seq_len != (nq, nk):
            raise ValueError(
                f"mask was built for seq_len {mask.seq_len} but q has Nq={nq} and k/v Nk={nk} tokens; "
                "rebuild the mask for this input size"
            )
        mb, mh = mask.blocks.shape[:2]
        if mb not in (1, batch):
            raise ValueError(f"mask batch dimension {mb} does not match the input batch B={batch} (use 1 to broadcast)")
        if mh not in (1, heads):
            raise ValueError(f"mask head dimension {mh} does not match the number of q heads H={heads} (use 1 to broadcast)")
        return mask
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a BlockMask, a bool block tensor [B'|1, H'|1, Mq, Mk] or None, got {type(mask).__name__}")
    _check_mask_tensor(mask, device)
    if mask.dim() == 2:
        mask = mask[None, None]
    if mask.dim() != 4:
        raise ValueError(f"mask must be a bool block tensor [B'|1, H'|1, Mq, Mk] (or [Mq, Mk]), got shape {tuple(mask.shape)}")
    bq, bk = _block_pair(block_size)
    need = (math.ceil(nq / bq), math.ceil(nk / bk))
    if tuple(mask.shape[-2:]) != need:
        raise ValueError(
            f"mask has {tuple(mask.shape[-2:])} query x key blocks, but Nq={nq}, Nk={nk} with "
            f"block_size={(bq, bk)} needs {need}; pass the block_size the mask was built with"
        )
    mb, mh = mask.shape[:2]
    if mb not in (1, batch):
        raise ValueError(f"mask batch dimension {mb} does not match the input batch B={batch} (use 1 to broadcast)")
    if mh not in (1, heads):
        raise ValueError(f"mask head dimension {mh} does not match the number of q heads H={heads} (use 1 to broadcast)")
    bm = BlockMask(mask, (bq, bk), (nq, nk), allow_empty_rows=allow_empty_rows)
    try:
        bm.validate(batch, heads)
    except ValueError as exc:
        raise ValueError(f"{exc} (here: pass allow_empty_rows=True)") from None
    return bm


# --------------------------------------------------------------------------- varlen API
def sam_block_sparse_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    head_mask_type: torch.Tensor | Sequence[int],
    mask: torch.Tensor | Sequence[BlockMask] | None,
    max_seqlen_q: int,
    max_seqlen_k: int,
    softmax_scale: float | None = None,
    block_size: int | tuple[int, int] = 128,
    backend: str | Backend = "auto",
    return_lse: bool = False,
    *,
    allow_empty_rows: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Block-sparse attention over a packed variable-length batch (Block-Sparse-Attention's varlen API).

    Args:
        q: [total_q, H, D]; k, v: [total_k, Hkv, D] (``H % Hkv == 0``): the
            sequences of the batch concatenated along dim 0.
        cu_seqlens_q, cu_seqlens_k: int32 [batch + 1], cumulative lengths
            (``0, n_0, n_0 + n_1, ..., total``). Read on the host once per call:
            pass CPU tensors to avoid a device sync.
        head_mask_type: int32 [H] (tensor or list): 0 = dense head; ``k > 0`` =
            block-sparse head reading mask head ``k - 1``. -1 (streaming in the
            original library) raises :class:`StreamingHeadsNotSupported`.
        mask: what the block-sparse heads read; None if every head is dense. Either
            a bool block tensor ``[batch|1, num_mask_heads, Mq_max, Mk_max]`` with
            ``Mq_max = ceil(max_seqlen_q / bq)``, ``Mk_max = ceil(max_seqlen_k / bk)``
            (sequence ``i`` uses its top-left ``ceil(n_q_i / bq) x ceil(n_k_i / bk)``
            blocks), or a list of ``batch`` BlockMasks, one per sequence, each with
            blocks ``[1, num_mask_heads, Mq_i, Mk_i]`` and ``seq_len == (n_q_i, n_k_i)``
            (any layout, e.g. SAM's ``tiles``; its ``block_size`` is used).
        max_seqlen_q, max_seqlen_k: upper bounds of the sequence lengths (they fix
            the block counts of a tensor ``mask``).
        softmax_scale: logit scale, default ``D ** -0.5``.
        block_size: tokens per block of a tensor ``mask`` (int or ``(bq, bk)``).
        backend: ``"auto"``, a registered backend name or a Backend.
        return_lse: also return the float32 natural-log LSE, packed ``[H, total_q]``.
        allow_empty_rows: let query blocks that read no key block (within their
            sequence) through, with output 0 and LSE -inf, instead of raising;
            also skips the one-sync check for them.

    Returns:
        out ``[total_q, H, D]`` in q's dtype (and the LSE with ``return_lse``).
    """
    _check_qkv(q, k, v, varlen=True)
    scale = _check_scale(softmax_scale)
    _check_backend(backend)
    total_q, heads, d = q.shape
    total_k = k.shape[0]
    device = q.device
    cq = _read_cu_seqlens(cu_seqlens_q, "cu_seqlens_q", total_q, "q", device)
    ck = _read_cu_seqlens(cu_seqlens_k, "cu_seqlens_k", total_k, "k/v", device)
    if len(cq) != len(ck):
        raise ValueError(
            f"cu_seqlens_q describes {len(cq) - 1} sequences but cu_seqlens_k {len(ck) - 1}; "
            "both need batch + 1 entries"
        )
    batch = len(cq) - 1
    lens_q = [cq[i + 1] - cq[i] for i in range(batch)]
    lens_k = [ck[i + 1] - ck[i] for i in range(batch)]
    max_q = _seq_len_int(max_seqlen_q, "max_seqlen_q")
    max_k = _seq_len_int(max_seqlen_k, "max_seqlen_k")
    for name, given, lens in (("max_seqlen_q", max_q, lens_q), ("max_seqlen_k", max_k, lens_k)):
        if given < max(lens):
            i = lens.index(max(lens))
            raise ValueError(f"{name}={given} is smaller than sequence {i}'s length {max(lens)}; pass the longest length")
    hmt = _read_head_mask_type(head_mask_type, heads, device)
    if not allow_empty_rows:
        for i in range(batch):
            if lens_q[i] > 0 and lens_k[i] == 0:
                raise ValueError(
                    f"sequence {i} has {lens_q[i]} queries but no keys (cu_seqlens_k); give it keys or pass "
                    "allow_empty_rows=True (its output is then 0)"
                )
    sparse = any(t > 0 for t in hmt)
    if sparse and mask is None:
        raise ValueError(
            "head_mask_type has block-sparse heads (entries > 0) but mask is None; pass the block mask, "
            "or use head_mask_type 0 (dense) for every head"
        )

    if mask is None or not sparse:
        if mask is not None:  # still check it, so a wrong mask is not silently ignored
            _varlen_masks(mask, hmt, lens_q, lens_k, max_q, max_k, block_size, device, True, check_only=True)
        masks = [None] * batch
    else:
        masks = _varlen_masks(mask, hmt, lens_q, lens_k, max_q, max_k, block_size, device, allow_empty_rows)

    out = q.new_empty(total_q, heads, d)
    lse = torch.empty(heads, total_q, dtype=torch.float32, device=device) if return_lse else None
    for i in range(batch):
        s, e, ks, ke = cq[i], cq[i + 1], ck[i], ck[i + 1]
        if e == s:
            continue
        if ke == ks:  # no keys (allow_empty_rows): output 0, LSE -inf
            out[s:e].zero_()
            if lse is not None:
                lse[:, s:e] = float("-inf")
            continue
        res = registry.attend(
            q[s:e].unsqueeze(0).transpose(1, 2),
            k[ks:ke].unsqueeze(0).transpose(1, 2),
            v[ks:ke].unsqueeze(0).transpose(1, 2),
            masks[i],
            None,
            scale,
            bool(return_lse),
            backend=backend,
        )
        if return_lse:
            o, l = res
            lse[:, s:e] = l[0]
        else:
            o = res
        out[s:e] = o[0].transpose(0, 1)
    if return_lse:
        return out, lse
    return out


def _head_selection(hmt: list[int], mask_heads: int, device: torch.device):
    """How to turn [.., mask_heads, ..] blocks into per-query-head blocks.

    Returns ("same", t) when every head is block-sparse with mask head t (a view,
    broadcast over heads), ("identity", None) when head h reads mask head h, or
    ("gather", (index, dense)) with an int64 index [H] and a bool [H] of dense heads.
    """
    heads = len(hmt)
    if all(t == hmt[0] for t in hmt) and hmt[0] > 0:
        return "same", hmt[0] - 1
    if mask_heads == heads and hmt == list(range(1, heads + 1)):
        return "identity", None
    index = torch.tensor([max(t - 1, 0) for t in hmt], dtype=torch.long, device=device)
    dense = torch.tensor([t == 0 for t in hmt], dtype=torch.bool, device=device)
    return "gather", (index, dense)


def _apply_selection(blocks: torch.Tensor, selection) -> torch.Tensor:
    """[B', S, Mq, Mk] mask-head blocks -> [B', H|1, Mq, Mk] query-head blocks (dense heads all True)."""
    kind, arg = selection
    if kind == "same":
        return blocks if blocks.shape[1] == 1 else blocks[:, arg : arg + 1]
    if kind == "identity":
        return blocks
    index, dense = arg
    picked = blocks.index_select(1, index)
    return picked | dense[None, :, None, None]


def _varlen_masks(
    mask, hmt, lens_q, lens_k, max_q, max_k, block_size, device, allow_empty_rows, check_only: bool = False
) -> list[BlockMask | None]:
    """Validate ``mask`` against the call and build each sequence's per-query-head BlockMask."""
    batch = len(lens_q)
    heads = len(hmt)
    top = max(hmt)
    if isinstance(mask, torch.Tensor):
        _check_mask_tensor(mask, device)
        if mask.dim() != 4:
            raise ValueError(
                f"mask must be a bool block tensor [batch, num_mask_heads, Mq_max, Mk_max], got shape {tuple(mask.shape)}"
            )
        if mask.dtype != torch.bool:
            mask = mask != 0
        bq, bk = _block_pair(block_size)
        mb, ms, mq, mk = mask.shape
        need = (math.ceil(max_q / bq), math.ceil(max_k / bk))
        if (mq, mk) != need:
            raise ValueError(
                f"mask has {(mq, mk)} query x key blocks, but max_seqlen_q={max_q}, max_seqlen_k={max_k} with "
                f"block_size={(bq, bk)} need {need}; build the mask for the max lengths, or pass the block_size "
                "it was built with"
            )
        if mb not in (1, batch):
            raise ValueError(f"mask batch dimension {mb} does not match the {batch} sequences of cu_seqlens (use 1 to broadcast)")
        if top > ms:
            h = hmt.index(top)
            raise ValueError(
                f"head_mask_type[{h}] = {top} refers to mask head {top - 1}, but mask has only {ms} mask heads "
                f"(shape {tuple(mask.shape)}); entries must be <= {ms}"
            )
        if check_only:
            return []
        selected = _apply_selection(mask, _head_selection(hmt, ms, device))  # [mb, H|1, mq, mk]
        nbq = [math.ceil(n / bq) for n in lens_q]
        nbk = [math.ceil(n / bk) for n in lens_k]
        if not allow_empty_rows:
            _check_rows(selected, nbq, nbk, hmt, device)
        result = []
        for i in range(batch):
            if lens_q[i] == 0 or lens_k[i] == 0:
                result.append(None)
                continue
            blocks = selected[i if mb > 1 else 0][None, :, : nbq[i], : nbk[i]]
            bm = BlockMask(blocks, (bq, bk), (lens_q[i], lens_k[i]), allow_empty_rows=allow_empty_rows)
            if not allow_empty_rows:
                bm._validated = True  # rows checked for all sequences at once in _check_rows
            result.append(bm)
        return result

    if isinstance(mask, (str, bytes)) or not isinstance(mask, Sequence):
        raise TypeError(
            "mask must be a bool block tensor [batch, num_mask_heads, Mq_max, Mk_max], a list of per-sequence "
            f"BlockMasks, or None; got {type(mask).__name__}"
        )
    if len(mask) != batch:
        raise ValueError(f"mask is a list of {len(mask)} BlockMasks but cu_seqlens describe {batch} sequences; give one per sequence")
    result = []
    for i, m in enumerate(mask):
        if not isinstance(m, BlockMask):
            raise TypeError(f"mask[{i}] must be a BlockMask, got {type(m).__name__}")
        if m.seq_len != (lens_q[i], lens_k[i]):
            raise ValueError(
                f"mask[{i}] was built for seq_len {m.seq_len} but sequence {i} has {lens_q[i]} query and "
                f"{lens_k[i]} key tokens (cu_seqlens); rebuild it for that sequence"
            )
        mb, ms = m.blocks.shape[:2]
        if mb != 1:
            raise ValueError(f"mask[{i}] has batch dimension {mb}; a per-sequence BlockMask needs blocks [1, num_mask_heads, Mq, Mk]")
        if top > ms:
            h = hmt.index(top)
            raise ValueError(
                f"head_mask_type[{h}] = {top} refers to mask head {top - 1}, but mask[{i}] has only {ms} mask heads; "
                f"entries must be <= {ms}"
            )
        if check_only:
            continue
        if m.device != device:
            m = m.to(device)
        if lens_q[i] == 0 or lens_k[i] == 0:
            result.append(None)
            continue
        allow = allow_empty_rows or m.allow_empty_rows
        # Derived per-head masks are cached on the user's mask, so repeated calls with the
        # same masks reuse the derived mask's caches (indices, token masks, flex masks).
        key = ("compat_heads", tuple(hmt), allow)
        derived = m._derived.get(key)
        if derived is None:
            selection = _head_selection(hmt, ms, m.device)
            blocks = _apply_selection(m.blocks, selection)
            if blocks is m.blocks and allow == m.allow_empty_rows:
                derived = m
            else:
                derived = BlockMask(
                    blocks, m.block_size, m.seq_len, layout=m.layout, grid=m.grid, tile=m.tile, allow_empty_rows=allow
                )
            m._derived[key] = derived
        try:
            derived.validate(1, heads)
        except ValueError as exc:
            raise ValueError(f"mask[{i}] (sequence {i}): {exc}; or pass allow_empty_rows=True") from None
        result.append(derived)
    return result


def _check_rows(selected: torch.Tensor, nbq: list[int], nbk: list[int], hmt: list[int], device) -> None:
    """Raise unless every query block of every sequence reads a key block inside that sequence (one sync)."""
    mb, hs, mq, mk = selected.shape
    batch = len(nbq)
    qvalid = torch.arange(mq, device=device)[None, :] < torch.tensor(nbq, device=device)[:, None]  # [batch, mq]
    kvalid = torch.arange(mk, device=device)[None, :] < torch.tensor(nbk, device=device)[:, None]  # [batch, mk]
    reads = (selected.expand(batch, hs, mq, mk) & kvalid[:, None, None, :]).any(-1)  # [batch, hs, mq]
    empty = ~reads & qvalid[:, None, :]
    if not bool(empty.any()):
        return
    i, h, r = empty.nonzero()[0].tolist()
    if hs == 1:
        head_desc = f"mask head {max(hmt) - 1}"
    else:
        head_desc = f"head {h} (mask head {hmt[h] - 1})"
    raise ValueError(
        f"sequence {i}: query block {r} of {head_desc} reads no key block among the sequence's first {nbk[i]} "
        "key blocks (the mask is cropped to each sequence's length); every query block needs at least one key "
        "block, or pass allow_empty_rows=True (those rows then give output 0)"
    )


# --------------------------------------------------------------------------- varlen helpers
def prepare_varlen_inputs(
    tensors: torch.Tensor | Sequence[torch.Tensor],
    lengths: torch.Tensor | Sequence[int] | None = None,
    *,
    cu_seqlens_device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Pack sequences for :func:`sam_block_sparse_attn`.

    Args:
        tensors: a list of ``[N_i, H, D]`` tensors (one per sequence), or a padded
            batch ``[B, N, H, D]`` whose sequence ``b`` is ``tensors[b, :lengths[b]]``.
        lengths: the valid lengths of a padded batch (list of ints or a tensor [B];
            a GPU tensor costs one sync); None = every row is full (``N``). Not
            allowed with a list.
        cu_seqlens_device: where ``cu_seqlens`` is created; the default CPU is what
            :func:`sam_block_sparse_attn` reads without a device sync (pass
            ``q.device`` for flash-attn style kernels that need it on the GPU).

    Returns:
        ``(packed [sum N_i, H, D], cu_seqlens int32 [B + 1], max_seqlen)``.
    """
    if isinstance(tensors, torch.Tensor):
        if tensors.dim() < 2:
            raise ValueError(f"a padded batch must be [B, N, ...], got shape {tuple(tensors.shape)}")
        b, n = tensors.shape[:2]
        if lengths is None:
            lens = [n] * b
        else:
            if isinstance(lengths, torch.Tensor):
                if lengths.dim() != 1 or lengths.is_floating_point():
                    raise TypeError(f"lengths must be an integer tensor [B], got {lengths.dtype} of shape {tuple(lengths.shape)}")
                lens = lengths.tolist()
            else:
                lens = [_seq_len_int(x, "lengths entries") for x in lengths]
            if len(lens) != b:
                raise ValueError(f"lengths has {len(lens)} entries but the padded batch has B={b} sequences")
            for i, length in enumerate(lens):
                if not 0 <= length <= n:
                    raise ValueError(f"lengths[{i}] = {length} is outside [0, {n}] (the padded length N)")
        pieces = [tensors[i, : lens[i]] for i in range(b)]
        packed = torch.cat(pieces, 0) if pieces else tensors.reshape(0, *tensors.shape[2:])
    else:
        if lengths is not None:
            raise ValueError("lengths is only for a padded batch; a list of sequences carries its own lengths")
        if isinstance(tensors, (str, bytes)) or not isinstance(tensors, Sequence) or len(tensors) == 0:
            raise TypeError("tensors must be a non-empty list of [N_i, ...] tensors or a padded [B, N, ...] tensor")
        first = tensors[0]
        for i, t in enumerate(tensors):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"tensors[{i}] must be a torch.Tensor, got {type(t).__name__}")
            if t.dim() < 1 or t.shape[1:] != first.shape[1:]:
                raise ValueError(
                    f"tensors[{i}] has shape {tuple(t.shape)}; every sequence must be [N_i, {', '.join(map(str, first.shape[1:]))}]"
                )
            if t.dtype != first.dtype or t.device != first.device:
                raise ValueError(f"tensors[{i}] is {t.dtype} on {t.device}, tensors[0] is {first.dtype} on {first.device}; use one dtype and device")
        lens = [t.shape[0] for t in tensors]
        packed = torch.cat(list(tensors), 0)
    offsets = [0]
    for length in lens:
        offsets.append(offsets[-1] + length)
    cu = torch.tensor(offsets, dtype=torch.int32, device=cu_seqlens_device)
    return packed, cu, max(lens) if lens else 0


def split_varlen(packed: torch.Tensor, cu_seqlens: torch.Tensor | Sequence[int]) -> list[torch.Tensor]:
    """Inverse of packing a list: the per-sequence views ``packed[cu[i]:cu[i+1]]``."""
    offsets = cu_seqlens.tolist() if isinstance(cu_seqlens, torch.Tensor) else list(cu_seqlens)
    if len(offsets) < 2 or offsets[-1] != packed.shape[0]:
        raise ValueError(f"cu_seqlens must be [0, ..., {packed.shape[0]}] (ending at packed.shape[0]), got {offsets}")
    return [packed[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]


def pad_varlen(
    packed: torch.Tensor,
    cu_seqlens: torch.Tensor | Sequence[int],
    max_seqlen: int | None = None,
    value: float = 0.0,
) -> torch.Tensor:
    """Inverse of packing a padded batch: ``[total, ...] -> [B, max_seqlen, ...]``, padding with ``value``."""
    pieces = split_varlen(packed, cu_seqlens)
    longest = max((p.shape[0] for p in pieces), default=0)
    n = longest if max_seqlen is None else _seq_len_int(max_seqlen, "max_seqlen")
    if n < longest:
        raise ValueError(f"max_seqlen={n} is smaller than the longest sequence ({longest})")
    out = packed.new_full((len(pieces), n, *packed.shape[1:]), value)
    for i, p in enumerate(pieces):
        out[i, : p.shape[0]] = p
    return out
