"""The fast encoder path: patch every block, run the encoder in bf16/fp16, optionally compile.

    sam = samsparse.load("vit_b")
    samsparse.optimize(sam, dtype=torch.bfloat16, compile="default")

The encoder's input is cast to ``dtype`` (by segment_anything's patch embedding,
which runs as one GEMM, see :mod:`samsparse.patch_embed`; by a forward pre-hook for
other encoders) and its output back to float32 by a forward hook, so SAM's prompt
encoder, mask decoder and predictors keep working unchanged. Before compiling, one eager forward fills the per-model caches (masks,
backend choice), so ``torch.compile`` traces with no graph break: every block,
windowed and global, shares the same custom op.

Compile scope: ``"blocks"`` (the default) compiles each transformer block's
forward on its own. All windowed blocks share one compiled graph and all global
blocks another (same code, parameters passed as inputs), so Inductor lowers two
block graphs instead of one 12-32 block graph: the cold first call is much shorter,
at the cost of one residual-add fusion per block boundary. ``"encoder"`` compiles
the whole encoder forward as one graph.

``gelu="tanh"`` is an opt-in approximation (:mod:`samsparse.tanh_gelu`): the MLPs' first
GEMM applies the tanh GELU in its epilogue. It is never the default; dense mode is exact.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from .patch import is_patched, patch
from .patch_embed import use_matmul_patch_embed
from .tanh_gelu import restore_exact_gelu, use_tanh_gelu
from .windows import WINDOW_MODES, use_windows_in_place, use_windows_partitioned

__all__ = ["optimize", "encoder_of", "COMPILE_MODES", "COMPILE_SCOPES", "GELU_MODES", "WINDOW_MODES"]

COMPILE_SCOPES = ("blocks", "encoder")
GELU_MODES = ("exact", "tanh")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")  # torch.compile modes that capture CUDA graphs

log = logging.getLogger(__name__)

_HOOKS_ATTR = "_samsparse_cast_hooks"
_COMPILED_ATTR = "_samsparse_compiled_forwards"  # [(module, forward it had before compiling)]


class _CastIn:
    """Forward pre-hook: the encoder's image input in the encoder's dtype (a class, so models pickle)."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype

    def __call__(self, module: nn.Module, args: tuple):
        x = args[0]
        return (x.to(self.dtype),) + tuple(args[1:]) if x.dtype != self.dtype else None


class _CastOut:
    """Forward hook: the embedding back in float32."""

    def __call__(self, module: nn.Module, args: tuple, out: torch.Tensor):
        return out.float() if out.dtype != torch.float32 else None


def _restore_forwards(enc: nn.Module) -> None:
    """Undo an earlier ``optimize(compile=...)``: each compiled forward goes back to what it was."""
    for module, previous in reversed(getattr(enc, _COMPILED_ATTR, ())):
        if previous is None:
            module.__dict__.pop("forward", None)
        else:
            module.forward = previous
    object.__setattr__(enc, _COMPILED_ATTR, [])


def _compile_forward(enc: nn.Module, module: nn.Module, compiled) -> None:
    getattr(enc, _COMPILED_ATTR).append((module, module.__dict__.get("forward")))
    module.forward = compiled(module.forward)


def encoder_of(model: nn.Module) -> nn.Module:
    """The image encoder of a Sam (``model.image_encoder``), or the model itself if it is one."""
    enc = getattr(model, "image_encoder", None)
    if isinstance(enc, nn.Module):
        return enc
    if hasattr(model, "blocks") and hasattr(model, "patch_embed"):
        return model
    raise TypeError(f"{type(model).__name__} is neither a Sam nor a SAM image encoder (no image_encoder / blocks)")


def _encoder_input_size(enc: nn.Module) -> int:
    size = getattr(enc, "img_size", None)
    if isinstance(size, int):
        return size
    if isinstance(size, (tuple, list)):
        return int(size[0])
    return 1024


def optimize(
    model: nn.Module,
    dtype: torch.dtype | None = torch.bfloat16,
    compile: str | None = None,
    backend: str = "auto",
    blocks: str = "all",
    mask=None,
    example_batch: int = 1,
    compile_backend: str | object = "inductor",
    compile_scope: str = "blocks",
    gelu: str | None = None,
    windows: str = "in_place",
) -> nn.Module:
    """Make ``model``'s image encoder fast, in place; returns ``model``.

    Args:
        model: a segment_anything ``Sam`` or an ``ImageEncoderViT`` (patched or not;
            an unpatched model is patched with ``mask``, ``backend`` and ``blocks``).
        dtype: encoder compute dtype (bf16 recommended; fp16 can overflow in vit_h);
            None keeps the current dtype. The encoder output is returned as float32.
        compile: None (eager), or a ``torch.compile`` mode ("default",
            "reduce-overhead" for CUDA graphs, "max-autotune-no-cudagraphs").
        example_batch: batch size of the warm-up input used to fill the caches.
        compile_backend: the ``torch.compile`` backend (tests pass a counting backend).
        compile_scope: "blocks" (each block compiled on its own: one graph per block
            kind, short cold compile) or "encoder" (the whole forward as one graph).
            The CUDA-graph modes ("reduce-overhead", "max-autotune") always use "encoder".
        gelu: None (leave the MLPs as they are), "exact" (SAM's erf GELU; undoes "tanh"), or
            "tanh": the tanh-approximated GELU fused into each MLP's first GEMM
            (:mod:`samsparse.tanh_gelu`). Faster on CUDA, but not SAM's function: opt-in only,
            and dense mode is then no longer exact.
        windows: "in_place" (default): segment_anything's windowed blocks run attention on the
            unpadded grid and the kernel reads each window in place (no partition copies, no
            projections of padding tokens; same function, :mod:`samsparse.windows`), where the
            backend has a window kernel (Triton); "partition": SAM's own partition path.
    """
    if compile_scope not in COMPILE_SCOPES:
        raise ValueError(f"compile_scope must be one of {COMPILE_SCOPES}, got {compile_scope!r}")
    if compile is not None and compile not in COMPILE_MODES:
        raise ValueError(f"compile must be None (eager) or one of {COMPILE_MODES}, got {compile!r}")
    if dtype is not None and dtype not in _DTYPES:
        raise TypeError(f"dtype must be None (keep) or one of {', '.join(map(str, _DTYPES))}, got {dtype!r}")
    if not isinstance(example_batch, int) or example_batch < 1:
        raise ValueError(f"example_batch must be a positive int, got {example_batch!r}")
    if windows not in WINDOW_MODES:
        raise ValueError(f"windows must be one of {WINDOW_MODES}, got {windows!r}")
    if gelu is not None and gelu not in GELU_MODES:
        raise ValueError(f"gelu must be None (keep), or one of {GELU_MODES}, got {gelu!r}")
    enc = encoder_of(model)
    _restore_forwards(enc)  # optimize again (another dtype, mode or scope) starts from the eager encoder
    if not is_patched(model):
        patch(model, mask=mask, backend=backend, blocks=blocks)
    if windows == "in_place":
        use_windows_in_place(enc)
    else:
        use_windows_partitioned(enc)
    if gelu == "tanh":
        if use_tanh_gelu(enc) == 0:
            log.warning("gelu='tanh': no MLP with an exact GELU between two linear layers was found")
    elif gelu == "exact":
        restore_exact_gelu(enc)
    param = next(enc.parameters())
    device = param.device
    patch_embed = getattr(enc, "patch_embed", None)
    gemm_embed = isinstance(patch_embed, nn.Module) and use_matmul_patch_embed(patch_embed)
    if gemm_embed:
        log.info("patch embedding runs as one GEMM")
    if dtype is not None:
        enc.to(dtype)
        for handle in getattr(enc, _HOOKS_ATTR, ()):
            handle.remove()

        # the GEMM patch embedding casts the image itself (fused with its patch gather when compiled)
        handles = (enc.register_forward_hook(_CastOut()),)
        if not gemm_embed:
            handles = (enc.register_forward_pre_hook(_CastIn(dtype)),) + handles
        object.__setattr__(enc, _HOOKS_ATTR, handles)
    size = _encoder_input_size(enc)
    # the warm-up input has the encoder's own dtype (the cast hook, if any, handles float32 too)
    example = torch.zeros(example_batch, 3, size, size, device=device, dtype=dtype or param.dtype)
    with torch.no_grad():
        enc(example)  # fills mask and backend caches outside of any compiled region
    if compile:
        mode = None if compile == "default" else compile

        def compiled(fn):
            return torch.compile(fn, mode=mode, dynamic=False, backend=compile_backend)

        blocks = getattr(enc, "blocks", None)
        if compile_scope == "blocks" and compile in _CUDAGRAPH_MODES:
            # CUDA-graph trees replay one graph per compiled function: blocks of one kind would
            # share it and overwrite each other's outputs, so these modes capture the encoder whole
            log.info("compile=%r uses CUDA graphs: compiling the encoder as one graph", compile)
            compile_scope = "encoder"
        if compile_scope == "blocks" and blocks is not None and len(blocks) > 0:
            for blk in blocks:
                _compile_forward(enc, blk, compiled)
            for name in ("patch_embed", "neck"):
                sub = getattr(enc, name, None)
                if isinstance(sub, nn.Module):
                    _compile_forward(enc, sub, compiled)
        else:
            _compile_forward(enc, enc, compiled)
        log.info("image encoder compiled (mode=%s, scope=%s)", compile, compile_scope)
    return model
