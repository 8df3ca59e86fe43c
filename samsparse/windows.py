"""SAM's windowed encoder blocks, run without the window partition.

segment_anything's ``Block.forward`` zero-pads the normalised ``[B, H, W, C]`` grid to
a multiple of the window, cuts it into windows, runs attention on every window
(padding included), and stitches the result back. :func:`use_windows_in_place`
turns each windowed ``Block`` of an encoder into a :class:`WindowsInPlaceBlock` (a
subclass, so ``isinstance`` and the state_dict are unchanged) whose forward hands the
unpadded grid to :meth:`SparseAttention.forward_windowed`: with a window kernel the
qkv and output projections run on the grid's tokens only and no partition copy is
made. The result is the same function (``tests/test_windows.py`` checks it against
the original block); :func:`use_windows_partitioned` swaps the original class back.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from .attention import SparseAttention

__all__ = [
    "window_partition",
    "window_unpartition",
    "use_windows_in_place",
    "use_windows_partitioned",
    "WINDOW_MODES",
]

WINDOW_MODES = ("in_place", "partition")

log = logging.getLogger(__name__)


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """[B, H, W, C] -> ([B * nW, window, window, C], (Hp, Wp)): zero-padded to a multiple of ``window``."""
    b, h, w, c = x.shape
    pad_h, pad_w = -h % window, -w % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window, window, wp // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window, window, c), (hp, wp)


def window_unpartition(
    windows: torch.Tensor, window: int, padded: tuple[int, int], size: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`: [B * nW, window, window, C] -> [B, H, W, C] (padding dropped)."""
    hp, wp = padded
    h, w = size
    c = windows.shape[-1]
    b = windows.shape[0] // ((hp // window) * (wp // window))
    x = windows.view(b, hp // window, wp // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, hp, wp, c)
    return x[:, :h, :w, :].contiguous() if (hp, wp) != (h, w) else x


def _sam_block_class():
    try:
        from segment_anything.modeling.image_encoder import Block
    except ImportError:  # pragma: no cover - segment_anything is a dependency
        return None
    return Block


_SamBlock = _sam_block_class()

if _SamBlock is not None:

    class WindowsInPlaceBlock(_SamBlock):
        """segment_anything's ``Block`` whose windowed attention reads the windows in place.

        Same parameters, same function; only ``forward`` differs (see the module docstring).
        """

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.window_size <= 0 or not isinstance(self.attn, SparseAttention):
                return _SamBlock.forward(self, x)  # unpatched since: the original forward
            shortcut = x
            x = shortcut + self.attn.forward_windowed(self.norm1(x), self.window_size)
            return x + self.mlp(self.norm2(x))

    __all__.append("WindowsInPlaceBlock")
else:  # pragma: no cover
    WindowsInPlaceBlock = None


def use_windows_in_place(model: nn.Module) -> int:
    """Windowed segment_anything blocks in ``model`` read their windows in place; returns how many.

    Only blocks whose class is exactly segment_anything's ``Block`` are changed (a subclass
    or another library's block may have its own forward); the others keep partitioning.
    """
    if WindowsInPlaceBlock is None:
        return 0
    count = 0
    for blk in model.modules():
        if type(blk) is WindowsInPlaceBlock:
            count += 1
        elif type(blk) is _SamBlock and getattr(blk, "window_size", 0) > 0:
            blk.__class__ = WindowsInPlaceBlock
            count += 1
    if count:
        log.info("%d windowed blocks read their windows in place", count)
    return count


def use_windows_partitioned(model: nn.Module) -> int:
    """Undo :func:`use_windows_in_place` in ``model``: the blocks get SAM's own class back; returns how many."""
    count = 0
    for blk in model.modules():
        if WindowsInPlaceBlock is not None and type(blk) is WindowsInPlaceBlock:
            blk.__class__ = _SamBlock
            count += 1
    return count
