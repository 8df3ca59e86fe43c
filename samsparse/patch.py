"""Find SAM encoder attention blocks, swap them for SparseAttention, and back.

Works on segment_anything's ``Sam`` / ``ImageEncoderViT``, timm's SAM ViT
(``samvit_*``) and models that vendor SAM's encoder: blocks are found by
structure (a module with an ``attn`` that looks like SAM attention and a
``window_size``), not by class.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from torch import nn

from .attention import MaskSource, SparseAttention, is_sam_attention
from .backends import registry
from .backends.base import Backend

__all__ = ["PatchConfig", "patch", "unpatch", "patch_config", "find_attention_blocks", "is_patched"]

log = logging.getLogger(__name__)

CONFIG_ATTR = "_samsparse_config"
FORMAT_VERSION = 1


@dataclass
class PatchConfig:
    """What a patch did: stored on the model and in patched checkpoints.

    blocks: indices of the patched encoder blocks; global_blocks: indices of the
    global-attention blocks; mask: recipe string (None = dense); backend: name.
    """

    blocks: list[int]
    global_blocks: list[int]
    mask: str | None = None
    backend: str = "auto"
    block_selector: Any = "global"
    format_version: int = FORMAT_VERSION
    model_type: str | None = None
    encoder: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PatchConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            log.warning("ignoring unknown samsparse config keys: %s", sorted(unknown))
        return cls(**{k: v for k, v in data.items() if k in known})


def find_attention_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Encoder blocks in order: (dotted name, block) for every module with a SAM-like ``attn``.

    A block is any module with an ``attn`` attribute that is SAM-style attention
    (or already a SparseAttention) and an int ``window_size`` (0 = global attention).
    """
    found = []
    for name, module in model.named_modules():
        attn = getattr(module, "attn", None)
        if not isinstance(attn, nn.Module) or not isinstance(getattr(module, "window_size", None), int):
            continue
        if is_sam_attention(attn) or isinstance(attn, SparseAttention):
            found.append((name, module))
    return found


def _select_blocks(blocks: list[tuple[str, nn.Module]], selector: Any) -> list[int]:
    n = len(blocks)
    if selector == "global":
        return [i for i, (_, b) in enumerate(blocks) if b.window_size == 0]
    if selector == "all":
        return list(range(n))
    if selector == "windowed":
        return [i for i, (_, b) in enumerate(blocks) if b.window_size > 0]
    if isinstance(selector, int) and not isinstance(selector, bool):
        selector = [selector]
    if isinstance(selector, Sequence) and not isinstance(selector, str):
        out = []
        for i in selector:
            if not isinstance(i, int) or isinstance(i, bool):
                raise TypeError(f"blocks must be 'global', 'all', 'windowed' or a list of ints, got item {i!r}")
            j = i + n if i < 0 else i
            if not 0 <= j < n:
                raise ValueError(f"block index {i} is out of range: the encoder has {n} blocks (0..{n - 1})")
            out.append(j)
        return sorted(set(out))
    raise ValueError(f"blocks must be 'global', 'all', 'windowed' or a list of block indices, got {selector!r}")


def _backend_name(backend: str | Backend) -> str:
    if isinstance(backend, Backend):
        return backend.name
    if backend != "auto":
        registry.get(backend)  # raises with the list of valid names
    return backend


def is_patched(model: nn.Module) -> bool:
    """True if any encoder attention of ``model`` is a SparseAttention."""
    return any(isinstance(m, SparseAttention) for m in model.modules())


def patch(
    model: nn.Module,
    mask: Any = None,
    backend: str | Backend = "auto",
    blocks: str | int | Sequence[int] = "global",
) -> nn.Module:
    """Swap the encoder's attention modules for :class:`SparseAttention`, in place.

    Args:
        model: a segment_anything ``Sam`` or ``ImageEncoderViT``, a timm SAM ViT, or
            any model that contains SAM-style encoder blocks.
        mask: None / "dense" (exact SAM), a mask recipe such as
            ``"hierarchical:density=0.25"`` (str or dict), a MaskRecipe or a BlockMask.
        backend: "auto" (fastest available per call) or a backend name.
        blocks: which blocks to patch: "global" (default; SAM's global-attention
            blocks), "all", "windowed", or a list of block indices.

    Returns:
        The same model (patched in place). Parameter names and state_dict keys are unchanged.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"patch() needs a torch.nn.Module, got {type(model).__name__}")
    if is_patched(model):
        raise ValueError("this model is already patched; call samsparse.unpatch(model) first to change the patch")
    found = find_attention_blocks(model)
    if not found:
        raise ValueError(
            f"no SAM-style encoder attention blocks found in {type(model).__name__}: expected blocks with "
            "an `attn` module (qkv, proj, rel_pos_h/rel_pos_w) and a `window_size`"
        )
    chosen = _select_blocks(found, blocks)
    backend_name = _backend_name(backend)
    source = MaskSource(mask)
    for i in chosen:
        _, block = found[i]
        block.attn = SparseAttention.from_attention(block.attn, mask=source, backend=backend)
    first = found[0][1].attn
    config = PatchConfig(
        blocks=chosen,
        global_blocks=[i for i, (_, b) in enumerate(found) if b.window_size == 0],
        mask=source.describe(),
        backend=backend_name,
        block_selector=blocks if isinstance(blocks, str) else list(chosen),
        encoder={"depth": len(found), "num_heads": first.num_heads, "embed_dim": first.qkv.in_features},
    )
    object.__setattr__(model, CONFIG_ATTR, config)
    log.info("patched %d of %d encoder blocks (mask=%s, backend=%s)", len(chosen), len(found), config.mask, backend_name)
    return model


def unpatch(model: nn.Module) -> nn.Module:
    """Restore the original attention modules (current parameters kept), in place."""
    from .windows import use_windows_partitioned

    use_windows_partitioned(model)  # blocks made to read windows in place by optimize()
    for _, block in find_attention_blocks(model):
        if isinstance(block.attn, SparseAttention):
            block.attn = block.attn.to_original()
    if hasattr(model, CONFIG_ATTR):
        object.__delattr__(model, CONFIG_ATTR)
    return model


def patch_config(model: nn.Module) -> PatchConfig | None:
    """The PatchConfig of a patched model (None if it is not patched)."""
    return getattr(model, CONFIG_ATTR, None)
