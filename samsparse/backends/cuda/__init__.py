"""CUDA backend: hand-written block-sparse flash attention (mma.sync + ldmatrix + cp.async) with SAM's rel-pos fused.

Importing this package compiles nothing and touches no GPU: the extension in
``csrc/`` is built with ninja on the first GPU call that needs it (cached under
``$SAMSPARSE_HOME/ext``), or ahead of time with
``python -m samsparse.backends.cuda.build`` / :func:`build_extension`.
"""

from .backend import CudaBackend, attention, cuda_varlen_attention, kernel_head_dim, last_launch, smem_bytes

__all__ = [
    "CudaBackend",
    "attention",
    "build_extension",
    "cuda_varlen_attention",
    "kernel_head_dim",
    "last_launch",
    "smem_bytes",
]


def build_extension(verbose: bool = True, archs: str | None = None):
    """Compile the extension ahead of time (see :func:`samsparse.backends.cuda.build.build_extension`)."""
    from .build import build_extension as _build

    return _build(verbose=verbose, archs=archs)
