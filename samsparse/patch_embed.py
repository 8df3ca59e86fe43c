"""SAM's patch embedding as one matrix product.

segment_anything's ``PatchEmbed`` is a ``Conv2d`` with kernel == stride (16x16) and
3 input channels, followed by a permute to ``[B, H/16, W/16, C]``. cuDNN runs that
convolution poorly on 3-channel bf16 input (it first pads the channels to 8 in NHWC,
then uses a generic fprop kernel: ~1.3 ms for vit_b at B=8 on an H100, about 6% of
the optimized encoder). The same operation is a reshape of the image into
non-overlapping patches followed by one GEMM against the flattened kernel; both sum
the same ``C*kh*kw`` products in fp32, so the result equals the convolution up to
summation order.

:func:`use_matmul_patch_embed` swaps a ``PatchEmbed``'s convolution for a
:class:`PatchifyConv2d` that shares its parameters, so checkpoints (state_dict keys and
tensors) and pickling are unaffected.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PatchifyConv2d", "patch_embed_matmul", "use_matmul_patch_embed"]


def _is_patchify_conv(conv: nn.Module) -> bool:
    return (
        isinstance(conv, nn.Conv2d)
        and tuple(conv.stride) == tuple(conv.kernel_size)
        and tuple(conv.padding) == (0, 0)
        and tuple(conv.dilation) == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )


def patch_embed_matmul(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(x).permute(0, 2, 3, 1)`` for a kernel == stride convolution, as a GEMM.

    Args:
        x: images ``[B, C, H, W]`` (any float dtype: cast to the kernel's dtype first).
        conv: the patchify convolution (kernel == stride, no padding, groups 1).

    Returns:
        ``[B, H/kh, W/kw, out_channels]`` in the kernel's dtype.
    """
    if x.dim() != 4:
        raise ValueError(f"expected images [B, C, H, W], got shape {tuple(x.shape)}")
    x = x.to(conv.weight.dtype)
    b, c, h, w = x.shape
    kh, kw = conv.kernel_size
    if c != conv.in_channels:
        raise ValueError(f"image has {c} channels, the patch embedding expects {conv.in_channels}")
    if h % kh or w % kw:
        # the convolution drops the remainder rows / columns; keep its exact semantics
        return nn.Conv2d.forward(conv, x).permute(0, 2, 3, 1)
    gh, gw = h // kh, w // kw
    patches = x.reshape(b, c, gh, kh, gw, kw).permute(0, 2, 4, 1, 3, 5).reshape(b, gh, gw, c * kh * kw)
    return F.linear(patches, conv.weight.reshape(conv.out_channels, -1), conv.bias)


class PatchifyConv2d(nn.Conv2d):
    """A kernel == stride ``Conv2d`` computed as one GEMM (same parameters, same output).

    The output is the NCHW view of a channels-last result, so a following
    ``permute(0, 2, 3, 1)`` (SAM's ``PatchEmbed``) is free.
    """

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> "PatchifyConv2d":
        """A module sharing ``conv``'s weight and bias Parameters (no copy)."""
        if not _is_patchify_conv(conv):
            raise ValueError(f"not a patchify convolution (kernel == stride, no padding, groups 1): {conv}")
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        for name in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "transposed",
                     "output_padding", "groups", "padding_mode", "_reversed_padding_repeated_twice"):
            setattr(new, name, getattr(conv, name))
        new.weight = conv.weight
        new.bias = conv.bias
        new.train(conv.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return patch_embed_matmul(x, self).permute(0, 3, 1, 2)


def use_matmul_patch_embed(patch_embed: nn.Module) -> bool:
    """Run a segment_anything ``PatchEmbed`` as one GEMM (in place); returns whether it does.

    Modules of any other class (timm's patch embedding, which may add a norm or
    flatten) and convolutions that are not a plain patchify are left unchanged.
    """
    cls = type(patch_embed)
    is_sam = cls.__name__ == "PatchEmbed" and cls.__module__.startswith("segment_anything")
    proj = getattr(patch_embed, "proj", None)
    if not is_sam or not _is_patchify_conv(proj):
        return False
    if not isinstance(proj, PatchifyConv2d):
        patch_embed.proj = PatchifyConv2d.from_conv(proj)
    return True
