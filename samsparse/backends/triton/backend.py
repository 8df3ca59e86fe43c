"""The ``triton`` backend behind the common contract (see :mod:`samsparse.backends.base`)."""

from __future__ import annotations

import importlib.util
import os
from typing import ClassVar

import torch

from ..base import AttentionCall, Backend

__all__ = ["TritonBackend"]

MAX_HEAD_DIM = 256


def _interpret_mode() -> bool:
    """True when the kernels run (or will run) under TRITON_INTERPRET=1 (numpy on the CPU)."""
    import sys

    kernel = sys.modules.get(f"{__package__}.kernel")
    if kernel is not None:
        return bool(kernel.INTERPRET)
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "yes", "on")


_CAPABILITY: dict[int, int] = {}


def _capability_major(dev: torch.device) -> int:
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    major = _CAPABILITY.get(index)
    if major is None:
        major = _CAPABILITY[index] = torch.cuda.get_device_capability(index)[0]
    return major


class TritonBackend(Backend):
    """Fused block-sparse flash attention in Triton (CUDA; CPU under ``TRITON_INTERPRET=1``).

    Options: ``config`` (a :class:`~samsparse.backends.triton.configs.TileConfig`
    to force a tile config; default: autotuned once per shape class and cached
    on disk).
    """

    name: ClassVar[str] = "triton"
    priority: ClassVar[int] = 30
    dtypes: ClassVar[tuple[torch.dtype, ...]] = (torch.float16, torch.bfloat16, torch.float32)
    head_dims: ClassVar[str] = f"1-{MAX_HEAD_DIM} (non powers of two split, e.g. 80 = 64 + 16)"
    devices: ClassVar[str] = "cuda (cpu under TRITON_INTERPRET=1)"

    def is_available(self) -> str | None:
        if importlib.util.find_spec("triton") is None:
            return "triton is not installed (pip install triton)"
        if not (torch.cuda.is_available() or _interpret_mode()):
            return "no CUDA device (set TRITON_INTERPRET=1 to run the kernels on the CPU, slowly)"
        return None

    def _why_not(self, call: AttentionCall) -> str | None:
        dev = call.device
        if dev.type == "cuda":
            if _interpret_mode():
                return "the Triton kernels were loaded with TRITON_INTERPRET=1 (CPU only)"
            major = _capability_major(dev)
            if major < 8 and call.dtype == torch.bfloat16:
                return f"bfloat16 needs compute capability >= 8.0 (this GPU is sm{major}x)"
            if major < 7:
                return f"Triton needs compute capability >= 7.0 (this GPU is sm{major}x)"
        elif dev.type == "cpu":
            if not _interpret_mode():
                return "tensors are on the CPU: the Triton kernels run on CUDA (or on the CPU with TRITON_INTERPRET=1)"
        else:
            return f"the Triton kernels run on CUDA, got device {dev}"
        if call.head_dim > MAX_HEAD_DIM:
            return f"head dim {call.head_dim} > {MAX_HEAD_DIM} is not supported by the Triton kernel"
        if call.nq < 1 or call.nk < 1:
            return "empty sequence"
        if call.layout not in (None, "sequence", "tiles"):
            return f"unknown mask layout {call.layout!r}"
        return None

    def _attend(self, q, k, v, mask, rel_pos, scale, return_lse):
        from .ops import attention

        out, lse = attention(q, k, v, mask, rel_pos, scale, config=self.options.get("config"))
        return (out, lse) if return_lse else out

    def window_reason(self, head_dim, dtype, window, rel_pos):
        from .windows import window_unsupported_reason

        return window_unsupported_reason(head_dim, dtype, window, rel_pos)

    def attend_windows(self, q, k, v, k_fill, v_fill, rel_pos, scale, grid, window):
        from .windows import window_attention

        out, _ = window_attention(q, k, v, k_fill, v_fill, rel_pos, scale, grid, window, config=self.options.get("config"))
        return out
