"""Attention backends behind one contract (see :mod:`samsparse.backends.base`).

Registered here: ``reference`` (float64 oracle), ``sdpa`` (PyTorch SDPA with a
materialised bias), ``flex`` (FlexAttention), and the kernel backends
``triton`` / ``cuda`` when their modules import.
"""

from __future__ import annotations

from .base import AttentionCall, Backend, UnsupportedCall, check_inputs
from .flex import FlexBackend
from .reference import ReferenceBackend, reference_attention
from .registry import attend, available, backend_table, get, names, register, select
from .sdpa import SdpaBackend

register("reference", ReferenceBackend)
register("sdpa", SdpaBackend)
register("flex", FlexBackend)


def _register_kernels() -> None:
    import importlib
    import logging

    for module, cls in (("triton", "TritonBackend"), ("cuda", "CudaBackend")):
        try:
            mod = importlib.import_module(f"{__name__}.{module}")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith(f"{__name__}.{module}"):
                continue  # backend package not present in this build
            logging.getLogger(__name__).debug("backend %s not importable: %s", module, exc)
            continue
        factory = getattr(mod, cls, None)
        if factory is None:
            logging.getLogger(__name__).warning("backend module %s defines no %s; not registered", module, cls)
            continue
        register(module, factory)


_register_kernels()

__all__ = [
    "AttentionCall",
    "Backend",
    "FlexBackend",
    "ReferenceBackend",
    "SdpaBackend",
    "UnsupportedCall",
    "attend",
    "available",
    "backend_table",
    "check_inputs",
    "get",
    "names",
    "reference_attention",
    "register",
    "select",
]
