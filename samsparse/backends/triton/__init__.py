"""Triton backend: block-sparse flash attention with SAM's rel-pos fused.

Importing this package does not import Triton; the kernels load on first use,
so ``why_not`` can say "triton is not installed" instead of failing at import.
"""

from .backend import TritonBackend

__all__ = ["TritonBackend", "attention", "triton_varlen_attention"]


def __getattr__(name):
    if name in ("attention", "triton_varlen_attention", "relpos_terms"):
        from . import ops

        return getattr(ops, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
