"""Hybrid masks: some heads dense, the others sparse (Block-Sparse-Attention's ``head_mask_type``).

``head_mask_type`` is an int32 vector ``[H]``: ``0`` = the head is dense, ``k > 0``
= the head uses head ``k - 1`` of the sparse mask. (Block-Sparse-Attention's
``-1``, streaming attention, is not supported here.)
"""

from __future__ import annotations

from typing import Sequence

import torch

from .block_mask import BlockMask
from .local import _check_heads

__all__ = ["hybrid", "from_head_mask_type"]


def from_head_mask_type(head_mask_type: torch.Tensor | Sequence[int], sparse_mask: BlockMask) -> BlockMask:
    """Per-head mask from a ``head_mask_type`` vector and a sparse mask.

    Args:
        head_mask_type: ints ``[H]``; 0 = dense head, ``k > 0`` = sparse mask head ``k - 1``.
        sparse_mask: BlockMask with blocks ``[B', Hs, Mq, Mk]`` (any layout).

    Returns:
        BlockMask like ``sparse_mask`` (same layout, sizes, device) with blocks
        ``[B', H, Mq, Mk]``: all True for dense heads, the chosen sparse head otherwise.
    """
    if not isinstance(sparse_mask, BlockMask):
        raise TypeError(f"sparse_mask must be a BlockMask, got {type(sparse_mask).__name__}")
    hmt = torch.as_tensor(head_mask_type)
    if hmt.dim() != 1 or hmt.numel() == 0 or hmt.dtype.is_floating_point or hmt.dtype == torch.bool:
        raise ValueError(
            f"head_mask_type must be a non-empty 1-D int vector [H], got shape {tuple(hmt.shape)} dtype {hmt.dtype}"
        )
    hmt = hmt.to("cpu", torch.int64)
    hs = sparse_mask.blocks.shape[1]
    if bool((hmt < 0).any()):
        raise ValueError(
            f"head_mask_type {hmt.tolist()} has negative entries; only 0 (dense) and k>0 "
            "(sparse mask head k-1) are supported (streaming heads, -1, are not)"
        )
    if bool((hmt > hs).any()):
        raise ValueError(
            f"head_mask_type {hmt.tolist()} refers to sparse head {int(hmt.max()) - 1}, but the sparse "
            f"mask has {hs} head(s); entries must be in [0, {hs}]"
        )
    blocks = sparse_mask.blocks
    src = (hmt - 1).clamp(min=0).to(blocks.device)
    out = blocks.index_select(1, src)  # [B', H, Mq, Mk]
    dense = (hmt == 0).to(blocks.device)[None, :, None, None]
    out = out | dense
    return sparse_mask._like(out.contiguous())


def hybrid(
    sparse: BlockMask,
    num_heads: int,
    dense_heads: int | Sequence[int],
) -> tuple[BlockMask, torch.Tensor]:
    """Some heads dense, the rest sparse.

    Args:
        sparse: the sparse BlockMask, blocks ``[B', Hs, Mq, Mk]``.
        num_heads: H, the number of heads of the attention call.
        dense_heads: an int ``n`` (the first ``n`` heads are dense) or a list of head ids.

    The sparse heads take the sparse mask's heads as follows: ``Hs == 1`` -> all use
    head 0; ``Hs == num_heads`` -> head ``h`` uses sparse head ``h``; ``Hs`` equal to
    the number of sparse heads -> the ``j``-th sparse head uses sparse head ``j``.

    Returns:
        ``(mask, head_mask_type)``: ``mask`` is :func:`from_head_mask_type`'s
        BlockMask with blocks ``[B', num_heads, Mq, Mk]``; ``head_mask_type`` is int32
        ``[num_heads]`` on the CPU (0 = dense, ``k > 0`` = sparse head ``k - 1``), for
        kernels that skip the mask lookup on dense heads.
    """
    if not isinstance(sparse, BlockMask):
        raise TypeError(f"sparse must be a BlockMask, got {type(sparse).__name__}")
    num_heads = _check_heads(num_heads)
    if isinstance(dense_heads, bool):
        raise ValueError(f"dense_heads must be an int count or a list of head ids, got {dense_heads!r}")
    if isinstance(dense_heads, int):
        if not 0 <= dense_heads <= num_heads:
            raise ValueError(f"dense_heads={dense_heads} must be a count in [0, num_heads={num_heads}]")
        dense = list(range(dense_heads))
    else:
        dense = [int(h) for h in dense_heads]
        bad = [h for h in dense if not 0 <= h < num_heads]
        if bad:
            raise ValueError(f"dense_heads {bad} are not head ids in [0, {num_heads})")
        if len(set(dense)) != len(dense):
            raise ValueError(f"dense_heads {dense} lists a head twice")
    sparse_ids = [h for h in range(num_heads) if h not in set(dense)]
    hs = sparse.blocks.shape[1]
    hmt = torch.zeros(num_heads, dtype=torch.int32)
    if hs == 1:
        hmt[sparse_ids] = 1
    elif hs == num_heads:
        hmt[sparse_ids] = torch.tensor(sparse_ids, dtype=torch.int32) + 1
    elif hs == len(sparse_ids):
        hmt[sparse_ids] = torch.arange(1, hs + 1, dtype=torch.int32)
    else:
        raise ValueError(
            f"the sparse mask has {hs} heads; give it 1 head, num_heads={num_heads} heads, or one head "
            f"per sparse head ({len(sparse_ids)})"
        )
    return from_head_mask_type(hmt, sparse), hmt
