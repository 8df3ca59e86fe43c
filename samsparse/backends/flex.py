"""FlexAttention: our BlockMask converted once, SAM's rel-pos as a ``score_mod``.

One compiled wrapper serves every call: the rel-pos terms and the block mask are
inputs of the compiled function, not constants captured in closures, so the
global blocks of a model (same shapes, one shared mask) compile once and never
recompile per layer.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch

from ..masks.block_mask import BlockMask
from .base import Backend, expand_kv

__all__ = ["FlexBackend", "to_flex_block_mask"]

log = logging.getLogger(__name__)


def _flex_module():
    try:
        from torch.nn.attention import flex_attention as fa
    except ImportError:  # pragma: no cover - torch < 2.5
        return None
    return fa


def to_flex_block_mask(mask: BlockMask, device: torch.device | str) -> Any:
    """Torch ``BlockMask`` for ``mask`` on ``device``; built once per device and cached on the mask.

    ``sequence`` masks map straight onto Flex's index form (``from_kv_blocks``, no
    cost). ``tiles`` masks are expressed as a ``mask_mod`` that looks up each
    token's tile, evaluated once by ``create_block_mask``.
    """
    fa = _flex_module()
    device = torch.device(device)
    key = ("flex", device)
    cache = mask._derived
    if key in cache:
        return cache[key]
    nq, nk = mask.seq_len
    blocks = mask.blocks.to(device)
    qb, kb = mask.token_to_block(device)
    bb, hb = blocks.shape[:2]

    def block_lookup(b, h, q_idx, kv_idx):
        # token-level rule: used by eager flex, and by compiled flex for tile layouts
        return blocks[b if bb > 1 else 0, h if hb > 1 else 0, qb[q_idx], kb[kv_idx]]

    if mask.layout == "sequence" and mask.block_size[0] == mask.block_size[1]:
        # every selected block is a "full" block: compiled kernels skip the mask_mod
        idx = mask.to_indices(device)
        flex_mask = fa.BlockMask.from_kv_blocks(
            torch.zeros_like(idx.kv_num_blocks),
            idx.kv_indices,
            idx.kv_num_blocks,
            idx.kv_indices,
            BLOCK_SIZE=mask.block_size,
            mask_mod=block_lookup,
            seq_lengths=(nq, nk),
        )
    else:
        flex_mask = fa.create_block_mask(block_lookup, bb, hb, nq, nk, device=device)
    cache[key] = flex_mask
    return flex_mask


def _flex_relpos_call(q, k, v, block_mask, rel_h, rel_w, scale: float, grid_w: int, gqa: bool, return_lse: bool):
    fa = _flex_module()
    score_mod = None
    if rel_h is not None:

        def score_mod(score, b, h, q_idx, kv_idx):
            return score + rel_h[b, h, q_idx, kv_idx // grid_w] + rel_w[b, h, q_idx, kv_idx % grid_w]

    aux_request = getattr(fa, "AuxRequest", None)
    if return_lse and aux_request is not None:
        out, aux = fa.flex_attention(
            q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale, enable_gqa=gqa,
            return_aux=aux_request(lse=True),
        )
        return out, aux.lse
    return fa.flex_attention(
        q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale, enable_gqa=gqa, return_lse=return_lse
    )


class FlexBackend(Backend):
    """torch FlexAttention (compiled on CUDA; eager on CPU unless ``compile=True``).

    Options: ``compile`` (bool, default: True on CUDA), ``compile_backend``
    (torch.compile backend, default "inductor").
    """

    name = "flex"
    priority = 20
    dtypes = (torch.float16, torch.bfloat16, torch.float32)
    head_dims = "16-256, power of 2 for compiled CUDA kernels"

    def __post_init__(self) -> None:
        self._compiled = None

    def is_available(self) -> str | None:
        if _flex_module() is None:
            return "torch.nn.attention.flex_attention needs torch >= 2.5"
        return None

    def _why_not(self, call):
        if call.nq < 1 or call.nk < 1:
            return "empty sequence"
        return None

    def auto_skip_reason(self, q: torch.Tensor) -> str | None:
        if not self._use_compile(q.device):
            return "flex runs unfused (eager) here; sdpa is faster"
        return None

    def _use_compile(self, device: torch.device) -> bool:
        return bool(self.options.get("compile", device.type == "cuda"))

    def _fn(self, device: torch.device):
        if not self._use_compile(device):
            return _flex_relpos_call
        if self._compiled is None:
            self._compiled = torch.compile(
                _flex_relpos_call, backend=self.options.get("compile_backend", "inductor"), dynamic=False, fullgraph=True
            )
        return self._compiled

    def _attend(self, q, k, v, mask, rel_pos, scale, return_lse):
        heads, hkv = q.shape[1], k.shape[1]
        gqa = hkv != heads
        if gqa and heads % hkv == 0 and hkv > 1 and not self._use_compile(q.device):
            k, v, gqa = expand_kv(k, heads), expand_kv(v, heads), False
        block_mask = None if mask is None else to_flex_block_mask(mask, q.device)
        rel_h = rel_w = None
        grid_w = 1
        if rel_pos is not None:
            rel_h, rel_w = rel_pos.terms(q)
            grid_w = rel_pos.k_grid[1]
        with warnings.catch_warnings():
            # eager flex on the CPU is intentional (no compiler needed); its advice to compile is noise here
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            res = self._fn(q.device)(q, k, v, block_mask, rel_h, rel_w, scale, grid_w, gqa, return_lse)
        if return_lse:
            out, lse = res
            return out, lse.float()
        return res
