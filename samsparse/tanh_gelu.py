"""Opt-in approximate MLP: the tanh GELU fused into the first linear layer's GEMM.

SAM's encoder MLP is ``lin2(GELU(lin1(x)))`` with the exact (erf) GELU. On CUDA, cuBLASLt
can apply a GELU in the GEMM's epilogue, but only the tanh approximation
``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` (|difference| <= ~5e-4, below bf16's
resolution for |x| > 0.06). The unfused path writes the ``[tokens, 4*C]`` hidden tensor,
reads it back for the GELU and writes it again: on an H100 that is 0.41 ms of vit_b's
0.26 ms fc1 GEMM at B=8, against 0.28 ms fused (benchmarks/RESULTS.md).

This changes the function, so it is never on by default: dense mode stays exact.
``samsparse.optimize(sam, gelu="tanh")`` swaps each block's MLP for a
:class:`TanhGeluMLP` that shares its layers (state_dict keys and tensors unchanged);
``gelu="exact"`` puts the original modules back.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TanhGeluMLP", "linear_gelu_tanh", "use_tanh_gelu", "restore_exact_gelu"]

log = logging.getLogger(__name__)


def _linear_gelu_tanh_impl(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if x.is_cuda:
        # cuBLASLt GELU_BIAS epilogue (falls back to addmm + tanh GELU where cuBLASLt does not apply)
        y = torch._addmm_activation(bias, x2, weight.t(), use_gelu=True)
    else:
        y = F.gelu(F.linear(x2, weight, bias), approximate="tanh")
    return y.reshape(*lead, weight.shape[0])


# an opaque op: Inductor would otherwise decompose it into a GEMM and a pointwise GELU again
_linear_gelu_tanh_op = torch.library.custom_op("samsparse::linear_gelu_tanh", _linear_gelu_tanh_impl, mutates_args=())


@_linear_gelu_tanh_op.register_fake
def _(x, weight, bias):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def linear_gelu_tanh(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``gelu(F.linear(x, weight, bias), approximate="tanh")``, one fused GEMM on CUDA.

    Args:
        x: ``[..., K]``; weight ``[N, K]``; bias ``[N]``; one dtype and device.

    Returns:
        ``[..., N]`` in x's dtype.
    """
    if weight.dim() != 2 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"weight must be [N, {x.shape[-1]}] for input [..., {x.shape[-1]}], got {tuple(weight.shape)}")
    if bias is None or tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must be [{weight.shape[0]}], got {None if bias is None else tuple(bias.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t.dtype != x.dtype or t.device != x.device:
            raise TypeError(f"{name} is {t.dtype} on {t.device}, x is {x.dtype} on {x.device}: use one dtype and device")
    return torch.ops.samsparse.linear_gelu_tanh(x, weight, bias)


# (first linear, last linear, the modules that must be no-ops) of the MLP layouts we know
_LAYOUTS = (("lin1", "lin2", ()), ("fc1", "fc2", ("drop1", "norm", "drop2")))


def _layout_of(mlp: nn.Module):
    """The (first, last, no-op names) layout of a SAM / timm MLP with an exact GELU, or None."""
    act = getattr(mlp, "act", None)
    if not isinstance(act, nn.GELU) or act.approximate != "none":
        return None
    for first, last, noops in _LAYOUTS:
        lin1, lin2 = getattr(mlp, first, None), getattr(mlp, last, None)
        if not (isinstance(lin1, nn.Linear) and isinstance(lin2, nn.Linear) and lin1.bias is not None):
            continue
        if all(_is_noop(getattr(mlp, name, None)) for name in noops):
            return first, last
    return None


def _is_noop(module) -> bool:
    if module is None or isinstance(module, nn.Identity):
        return True
    return isinstance(module, nn.Dropout) and module.p == 0.0


class TanhGeluMLP(nn.Module):
    """``last(tanh_gelu(first(x)))`` sharing an MLP's layers (same child names, so same state_dict keys)."""

    def __init__(self, mlp: nn.Module) -> None:
        layout = _layout_of(mlp)
        if layout is None:
            raise TypeError(f"{type(mlp).__name__} is not an MLP with an exact GELU between two linear layers")
        super().__init__()
        for name, child in mlp.named_children():
            setattr(self, name, child)
        self._first, self._last = layout
        object.__setattr__(self, "_original", mlp)  # out of the module tree and the state_dict
        self.training = mlp.training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = getattr(self, self._first)
        return getattr(self, self._last)(linear_gelu_tanh(x, first.weight, first.bias))

    def to_original(self) -> nn.Module:
        """The original MLP module (its layers are the ones this module used)."""
        return self._original


def _blocks(encoder: nn.Module):
    return [blk for blk in getattr(encoder, "blocks", ()) if isinstance(getattr(blk, "mlp", None), nn.Module)]


def use_tanh_gelu(encoder: nn.Module) -> int:
    """Swap every block's exact-GELU MLP for a :class:`TanhGeluMLP`; returns how many were swapped."""
    n = 0
    for blk in _blocks(encoder):
        if not isinstance(blk.mlp, TanhGeluMLP) and _layout_of(blk.mlp) is not None:
            blk.mlp = TanhGeluMLP(blk.mlp)
            n += 1
    if n:
        log.info("%d MLP blocks use the tanh GELU fused into their first GEMM (approximate)", n)
    return n


def restore_exact_gelu(encoder: nn.Module) -> int:
    """Undo :func:`use_tanh_gelu`; returns how many MLPs were restored."""
    n = 0
    for blk in _blocks(encoder):
        if isinstance(blk.mlp, TanhGeluMLP):
            blk.mlp = blk.mlp.to_original()
            n += 1
    return n
