"""The oracle: float64 dense math on any device, exact by construction."""

from __future__ import annotations

import torch

from ..masks.block_mask import BlockMask
from ..relpos import RelPos
from .base import Backend, expand_kv, resolve_scale, token_mask_for

__all__ = ["ReferenceBackend", "reference_attention"]


def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: BlockMask | None = None,
    rel_pos: RelPos | None = None,
    scale: float | None = None,
    return_lse: bool = False,
    compute_dtype: torch.dtype = torch.float64,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention by the definition, in ``compute_dtype`` (float64 by default).

    q [B, H, Nq, D], k/v [B, Hkv, Nk, D] -> out [B, H, Nq, D] in q's dtype, and
    with ``return_lse`` the float32 LSE [B, H, Nq] (-inf for empty rows, whose
    output is 0). The rel-pos terms are computed in ``compute_dtype`` from the
    tables when given, so the oracle is free of low-precision rounding.
    """
    heads = q.shape[1]
    scale = resolve_scale(q, scale)
    qd = q.to(compute_dtype)
    kd = expand_kv(k, heads).to(compute_dtype)
    vd = expand_kv(v, heads).to(compute_dtype)
    scores = torch.matmul(qd, kd.transpose(-2, -1)) * scale
    if rel_pos is not None:
        scores = scores + rel_pos.bias(qd, compute_dtype)
    token_mask = token_mask_for(mask, q.device)
    if token_mask is not None:
        scores = scores.masked_fill(~token_mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)
    empty = torch.isinf(lse) & (lse < 0)
    probs = torch.exp(scores - torch.where(empty, torch.zeros_like(lse), lse))
    out = torch.matmul(probs, vd).to(q.dtype)
    if return_lse:
        return out, lse.squeeze(-1).to(torch.float32)
    return out


class ReferenceBackend(Backend):
    """Float64 dense attention with the block mask expanded to tokens: slow, exact."""

    name = "reference"
    priority = 0

    def _attend(self, q, k, v, mask, rel_pos, scale, return_lse):
        return reference_attention(q, k, v, mask, rel_pos, scale, return_lse)
