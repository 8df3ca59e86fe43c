"""PyTorch SDPA with the rel-pos bias and the block mask materialised as one additive mask.

The best exact PyTorch path for SAM's attention today, and the baseline the
kernels are measured against. Memory: one [B, H, Nq, Nk] bias in q's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Backend, expand_kv, token_mask_for

__all__ = ["SdpaBackend"]


class SdpaBackend(Backend):
    """``torch.nn.functional.scaled_dot_product_attention`` with a materialised bias."""

    name = "sdpa"
    priority = 10

    def _attend(self, q, k, v, mask, rel_pos, scale, return_lse):
        heads = q.shape[1]
        k = expand_kv(k, heads)
        v = expand_kv(v, heads)
        token_mask = token_mask_for(mask, q.device)
        bias = None
        if rel_pos is not None:
            bias = rel_pos.bias(q)
            if token_mask is not None:
                bias = bias.masked_fill(~token_mask, float("-inf"))
        elif token_mask is not None:
            bias = token_mask
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
        empty = None
        if mask is not None and mask.allow_empty_rows:
            empty = ~token_mask.any(-1, keepdim=True)  # [B', H', Nq, 1]
            out = out.masked_fill(empty, 0.0)
        if not return_lse:
            return out
        scores = torch.matmul(q.float(), k.float().transpose(-2, -1)) * scale
        if rel_pos is not None:
            scores = scores + rel_pos.bias(q, torch.float32)
        if token_mask is not None:
            scores = scores.masked_fill(~token_mask, float("-inf"))
        return out, torch.logsumexp(scores, dim=-1)
