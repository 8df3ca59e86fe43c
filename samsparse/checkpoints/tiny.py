"""A tiny, deterministic, randomly initialised SAM for tests across the project."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

from .loading import default_decoder_num_heads

__all__ = ["build_tiny_sam"]


def build_tiny_sam(
    embed_dim: int = 64,
    depth: int = 2,
    num_heads: int = 2,
    img_size: int = 128,
    window_size: int = 4,
    global_attn_indexes: Sequence[int] = (1,),
    seed: int = 0,
    prompt_dim: int = 32,
    decoder_mlp_dim: int = 64,
    *,
    patch_size: int = 16,
    mlp_ratio: float = 4.0,
    decoder_depth: int = 2,
    decoder_num_heads: int | None = None,
    mask_in_chans: int = 8,
    iou_head_hidden_dim: int | None = None,
    rel_pos_std: float = 0.1,
    pos_embed_std: float = 0.02,
) -> nn.Module:
    """Build a small ``segment_anything.modeling.Sam`` with seeded random weights.

    The architecture is SAM's own (``ImageEncoderViT`` with ``use_rel_pos=True``,
    windowed + global blocks, ``PromptEncoder``, ``MaskDecoder``/``TwoWayTransformer``),
    only smaller. ``rel_pos_h``/``rel_pos_w`` (zero in a fresh SAM) and ``pos_embed``
    are filled with normal noise so that tests exercise them. All parameters and the
    prompt encoder's random Fourier matrix are drawn from a generator seeded with
    ``seed``; the global RNG state is left untouched.

    Args:
        embed_dim, depth, num_heads: encoder width, number of blocks, heads
            (``embed_dim % num_heads == 0``).
        img_size: input side in pixels (multiple of ``patch_size``); token grid is
            ``img_size // patch_size``.
        window_size: window of non-global blocks (rel-pos tables ``[2*window_size-1, head_dim]``).
        global_attn_indexes: blocks with global attention (tables ``[2*grid-1, head_dim]``).
        seed: RNG seed; equal seeds give bit-identical float32 weights.
        prompt_dim: encoder ``out_chans`` = prompt/decoder embedding dim (multiple of 8).
        decoder_mlp_dim: hidden size of the two-way transformer MLPs.
        decoder_num_heads: decoder heads; ``None`` uses
            :func:`~samsparse.checkpoints.loading.default_decoder_num_heads`, which is
            what :func:`build_sam_from_state_dict` assumes.

    Returns:
        ``Sam`` in eval mode on CPU, float32.
    """
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    if embed_dim % num_heads:
        raise ValueError(f"embed_dim={embed_dim} must be divisible by num_heads={num_heads}.")
    if img_size % patch_size:
        raise ValueError(f"img_size={img_size} must be a multiple of patch_size={patch_size}.")
    if prompt_dim % 8:
        raise ValueError(f"prompt_dim={prompt_dim} must be a multiple of 8 (SAM's mask decoder upscales by dim//8).")
    if any(not 0 <= i < depth for i in global_attn_indexes):
        raise ValueError(f"global_attn_indexes={tuple(global_attn_indexes)} must lie in [0, depth={depth}).")
    grid = img_size // patch_size
    heads_dec = decoder_num_heads if decoder_num_heads is not None else default_decoder_num_heads(prompt_dim, 2)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = Sam(
            image_encoder=ImageEncoderViT(
                img_size=img_size,
                patch_size=patch_size,
                embed_dim=embed_dim,
                depth=depth,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                out_chans=prompt_dim,
                qkv_bias=True,
                norm_layer=partial(nn.LayerNorm, eps=1e-6),
                use_rel_pos=True,
                rel_pos_zero_init=False,
                window_size=window_size,
                global_attn_indexes=tuple(global_attn_indexes),
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=prompt_dim,
                image_embedding_size=(grid, grid),
                input_image_size=(img_size, img_size),
                mask_in_chans=mask_in_chans,
            ),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(
                    depth=decoder_depth,
                    embedding_dim=prompt_dim,
                    mlp_dim=decoder_mlp_dim,
                    num_heads=heads_dec,
                ),
                transformer_dim=prompt_dim,
                iou_head_depth=3,
                iou_head_hidden_dim=iou_head_hidden_dim or prompt_dim,
            ),
        )
        with torch.no_grad():
            for name, p in sam.named_parameters():
                if name.endswith(("rel_pos_h", "rel_pos_w")):
                    p.normal_(0.0, rel_pos_std)
                elif name.endswith("pos_embed"):
                    p.normal_(0.0, pos_embed_std)
    return sam.eval()
