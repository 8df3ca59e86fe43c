"""Patched checkpoints: the original weights (keys unchanged) plus a small samsparse config.

File format (``torch.save``, loads with ``weights_only=True``)::

    {"model": <Sam state_dict, keys exactly as segment_anything's>,
     "samsparse": {"format_version": 1, "model_type": "vit_b" | ... | "custom",
                   "architecture": {<ImageEncoderViT kwargs>, "decoder_num_heads": 8},
                   "patch": {"blocks": [...], "mask": "hierarchical:density=0.25" | None,
                             "backend": "auto", ...}}}

segment_anything's own builder loads the weights: ``sam.load_state_dict(ckpt["model"])``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..patch import FORMAT_VERSION, PatchConfig, patch, patch_config
from .download import download
from .loading import build_sam_from_state_dict, infer_encoder_config, infer_model_type, load_checkpoint, save_checkpoint
from .registry import get_checkpoint_info

__all__ = ["save", "load", "resolve_checkpoint"]

log = logging.getLogger(__name__)

_UNSET: Any = object()


def _plain(value: Any) -> Any:
    """Tuples -> lists, recursively (so the config survives weights_only loading)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _decoder_heads(model: nn.Module) -> int | None:
    try:
        return int(model.mask_decoder.transformer.layers[0].self_attn.num_heads)
    except AttributeError:
        return None


def save(model: nn.Module, path: str | os.PathLike) -> Path:
    """Save a (patched) Sam as a patched checkpoint, atomically.

    The weights are the model's state_dict with unchanged keys; the ``samsparse``
    entry holds the architecture (so tiny custom models round-trip), the patched
    blocks, the mask recipe and the backend preference. An unpatched model is
    saved with a dense, unpatched config.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"save() needs a torch.nn.Module, got {type(model).__name__}")
    cfg = patch_config(model)
    if cfg is not None and cfg.mask == "fixed":
        raise ValueError(
            "this model was patched with a fixed BlockMask tensor, which a checkpoint cannot store; "
            "patch with a mask recipe (e.g. 'hierarchical:density=0.25') to save it"
        )
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    arch = _plain(infer_encoder_config(state))
    heads = _decoder_heads(model)
    if heads is not None:
        arch["decoder_num_heads"] = heads
    config = {
        "format_version": FORMAT_VERSION,
        "model_type": infer_model_type(state),
        "architecture": arch,
        "patch": _plain(cfg.to_dict()) if cfg is not None else None,
    }
    return save_checkpoint(path, state, config)


def _looks_like_path(text: str) -> bool:
    return os.sep in text or "/" in text or text.lower().endswith((".pth", ".pt", ".bin", ".ckpt"))


def resolve_checkpoint(model: str | os.PathLike, progress: bool = True) -> Path:
    """A checkpoint path from a local path or an official name ("vit_b", ...; downloaded on first use).

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: an unknown name (lists the valid ones).
        DownloadError: the official file could not be fetched (message says what to do).
    """
    text = os.fspath(model)
    path = Path(text).expanduser()
    if path.exists():
        return path
    if _looks_like_path(text):
        raise FileNotFoundError(f"checkpoint {text!r} does not exist; check the path, or pass a name like 'vit_b'")
    get_checkpoint_info(text)  # ValueError with the valid names
    return download(text, progress=progress)


def load(
    path: str | os.PathLike,
    mask: Any = _UNSET,
    backend: str | None = None,
    blocks: Any = None,
    device: torch.device | str | None = None,
    patch_model: bool = True,
    progress: bool = True,
) -> nn.Module:
    """Build a (patched) Sam from a patched or an original checkpoint, or an official name.

    Args:
        path: a checkpoint file (patched or original SAM), or "vit_b" / "vit_l" / "vit_h".
        mask: mask recipe; default: the checkpoint's recipe (dense for an original one).
        backend: backend preference; default: the checkpoint's (or "auto").
        blocks: which blocks to patch; default: the checkpoint's (or "global").
        device: where to put the model (default CPU).
        patch_model: False returns the plain segment_anything model.

    Returns:
        ``segment_anything.modeling.Sam`` in eval mode, patched unless ``patch_model`` is False.
    """
    ckpt_path = resolve_checkpoint(path, progress=progress)
    state, config = load_checkpoint(ckpt_path)
    config = config or {}
    arch = config.get("architecture") or {}
    model = build_sam_from_state_dict(state, arch)
    saved = PatchConfig.from_dict(config["patch"]) if config.get("patch") else None
    if patch_model:
        use_mask = (saved.mask if saved else None) if mask is _UNSET else mask
        use_backend = backend or (saved.backend if saved else "auto")
        use_blocks = blocks if blocks is not None else (saved.block_selector if saved else "global")
        patch(model, mask=use_mask, backend=use_backend, blocks=use_blocks)
        cfg = patch_config(model)
        cfg.model_type = config.get("model_type") or infer_model_type(state)
    if device is not None:
        model.to(device)
    log.info("loaded %s (%s)", ckpt_path, config.get("model_type") or infer_model_type(state))
    return model.eval()
