"""Backend registry and automatic selection.

``auto`` picks the highest-priority backend whose ``why_not`` has no objection:
by measured speed on Hopper: triton > cuda > flex > sdpa > reference. One
exception: plain dense attention on a GPU (no mask, no rel-pos, no LSE, as many
k/v heads as q heads) goes to PyTorch's SDPA, whose cuDNN / flash kernels are
faster there than ours (H100: Triton 0.87x of cuDNN without bias); our kernels
earn their place with the fused rel-pos bias and the block mask.
"""

from __future__ import annotations

import logging

import torch

from ..masks.block_mask import BlockMask
from ..relpos import RelPos
from .base import Backend, BackendFactory, check_inputs, resolve_scale

__all__ = ["register", "get", "names", "available", "select", "attend", "backend_table"]

log = logging.getLogger(__name__)

_FACTORIES: dict[str, BackendFactory] = {}
_INSTANCES: dict[str, Backend] = {}


def register(name: str, factory: BackendFactory, *, replace: bool = False) -> None:
    """Register a backend factory under ``name`` (instantiated lazily, once)."""
    if name in _FACTORIES and not replace:
        raise ValueError(f"backend {name!r} is already registered (pass replace=True to override)")
    _FACTORIES[name] = factory
    _INSTANCES.pop(name, None)


def names() -> list[str]:
    """All registered backend names, fastest first."""
    return sorted(_FACTORIES, key=lambda n: -get(n).priority)


def get(name: str | Backend) -> Backend:
    """The backend registered as ``name`` (a Backend instance is returned as is)."""
    if isinstance(name, Backend):
        return name
    if not isinstance(name, str):
        raise TypeError(f"backend must be a name or a Backend, got {type(name).__name__}")
    if name not in _FACTORIES:
        raise ValueError(f"unknown backend {name!r}; choose one of: auto, {', '.join(sorted(_FACTORIES))}")
    if name not in _INSTANCES:
        _INSTANCES[name] = _FACTORIES[name]()
    return _INSTANCES[name]


def available() -> list[str]:
    """Names of the backends that can run on this machine, fastest first."""
    return [n for n in names() if get(n).is_available() is None]


def select(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor | None = None,
    mask: BlockMask | None = None,
    rel_pos: RelPos | None = None,
    scale: float | None = None,
    return_lse: bool = False,
    backend: str | Backend = "auto",
    exclude: tuple[str, ...] = ("reference",),
) -> Backend:
    """The backend that will run this call.

    With ``backend="auto"`` the fastest backend that supports the call (the
    ``reference`` oracle only if nothing else does). A named backend that cannot
    run the call raises ValueError with its reason.
    """
    if backend != "auto":
        chosen = get(backend)
        reason = chosen.why_not(q, k, v, mask, rel_pos, scale, return_lse)
        if reason is not None:
            raise ValueError(f"backend {chosen.name!r} cannot run this call: {reason}. Use backend='auto' to fall back.")
        return chosen
    if "sdpa" not in exclude and "sdpa" in _FACTORIES and _plain_dense_on_gpu(q, k, mask, rel_pos, return_lse):
        sdpa = get("sdpa")
        if sdpa.why_not(q, k, v, mask, rel_pos, scale, return_lse) is None:
            return sdpa
    reasons = []
    for name in names():
        if name in exclude:
            continue
        candidate = get(name)
        reason = candidate.why_not(q, k, v, mask, rel_pos, scale, return_lse) or candidate.auto_skip_reason(q)
        if reason is None:
            return candidate
        reasons.append(f"{name}: {reason}")
    log.debug("auto backend fell back to reference (%s)", "; ".join(reasons))
    return get("reference")


_SDPA_FIRST_DEVICES = ("cuda",)


def _plain_dense_on_gpu(q: torch.Tensor, k: torch.Tensor, mask, rel_pos, return_lse: bool) -> bool:
    """A call PyTorch's own SDPA kernels serve best: dense, no bias, no LSE, no head sharing, on a GPU."""
    return (
        mask is None
        and rel_pos is None
        and not return_lse
        and q.device.type in _SDPA_FIRST_DEVICES
        and k.shape[1] == q.shape[1]
    )


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: BlockMask | None = None,
    rel_pos: RelPos | None = None,
    scale: float | None = None,
    return_lse: bool = False,
    backend: str | Backend = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Block-sparse attention through the chosen (or automatically selected) backend.

    q [B, H, Nq, D], k/v [B, Hkv, Nk, D] -> [B, H, Nq, D] (and float32 LSE [B, H, Nq]
    with ``return_lse``). See :mod:`samsparse.backends.base` for the contract.
    """
    check_inputs(q, k, v, mask, rel_pos)
    chosen = select(q, k, v, mask, rel_pos, scale, return_lse, backend=backend)
    # inputs checked and the backend's why_not passed in select(): run it directly
    return chosen._attend(q, k, v, mask, rel_pos, resolve_scale(q, scale), return_lse)


def backend_table() -> list[dict]:
    """One row per registered backend: name, available, why not, devices, dtypes, head dims."""
    return [get(n).describe() for n in names()]
