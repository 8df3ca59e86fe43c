"""Safe loading of SAM checkpoints and shape-based model reconstruction.

Everything here reads checkpoints with ``torch.load(..., weights_only=True)``
(no arbitrary code execution) and infers the architecture from tensor *shapes*
only, so the inference functions also work on ``meta`` tensors.

State-dict layout handled (segment_anything ``Sam``)::

    image_encoder.patch_embed.proj.weight   [C, 3, p, p]        C = embed_dim, p = patch size (16)
    image_encoder.pos_embed                 [1, g, g, C]        g = img_size // p
    image_encoder.blocks.{i}.attn.qkv.weight [3C, C]
    image_encoder.blocks.{i}.attn.rel_pos_h [2*S-1, C // heads] S = window size, or g for global blocks
    image_encoder.blocks.{i}.mlp.lin1.weight [C * mlp_ratio, C]
    image_encoder.neck.0.weight             [out_chans, C, 1, 1]
    prompt_encoder.* / mask_decoder.*       (decoder; dims inferred likewise)

A bare ``ImageEncoderViT`` state dict (same keys without ``image_encoder.``)
is accepted by the encoder functions too.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .._atomic import atomic_path
from .registry import OFFICIAL_ENCODER_CONFIGS

__all__ = [
    "CheckpointLoadError",
    "load_state_dict",
    "load_checkpoint",
    "save_checkpoint",
    "infer_model_type",
    "infer_encoder_config",
    "infer_decoder_config",
    "build_image_encoder_from_state_dict",
    "build_sam_from_state_dict",
    "default_decoder_num_heads",
]

logger = logging.getLogger(__name__)

_STRIP_PREFIXES = ("module.", "_orig_mod.")
_WRAPPER_KEYS = ("model", "state_dict")
_CONFIG_KEY = "samsparse"
_PLAIN_SCALARS = (str, int, float, bool, type(None))
_ENC = "image_encoder."
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.")
_DEC_LAYER_RE = re.compile(r"^mask_decoder\.transformer\.layers\.(\d+)\.")
_IOU_LAYER_RE = re.compile(r"^mask_decoder\.iou_prediction_head\.layers\.(\d+)\.weight$")


class CheckpointLoadError(ValueError):
    """The file exists but is not a usable PyTorch / SAM checkpoint."""


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


def _strip_prefixes(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Remove leading ``module.`` (DataParallel/DDP) and ``_orig_mod.`` (torch.compile)."""
    out: dict[str, Any] = {}
    stripped = 0
    for key, value in state_dict.items():
        new = key
        changed = True
        while changed:
            changed = False
            for prefix in _STRIP_PREFIXES:
                if new.startswith(prefix):
                    new = new[len(prefix):]
                    changed = True
        if new != key:
            stripped += 1
        if new in out:
            raise CheckpointLoadError(
                f"State dict has both {key!r} and another key that becomes {new!r} after "
                "stripping 'module.'/'_orig_mod.' prefixes; re-save it with unique keys."
            )
        out[new] = value
    if stripped:
        logger.debug("stripped wrapper prefixes from %d keys", stripped)
    return out


def _check_plain(obj: Any, where: str) -> None:
    if isinstance(obj, _PLAIN_SCALARS):
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"{where} has a non-str key {k!r}; use str keys only.")
            _check_plain(v, f"{where}[{k!r}]")
        return
    raise TypeError(
        f"{where} is a {type(obj).__name__}; a samsparse config may only contain "
        "str/int/float/bool/None/list/tuple/dict so that torch.load(weights_only=True) can read it."
    )


def _split_checkpoint(obj: Any, path: Path) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    if not isinstance(obj, Mapping):
        raise CheckpointLoadError(
            f"{path} holds a {type(obj).__name__}, not a dict; expected a state dict "
            "(e.g. torch.save(model.state_dict(), path)) or a dict wrapping it under 'model'."
        )
    config = obj.get(_CONFIG_KEY)
    if config is not None and not isinstance(config, Mapping):
        raise CheckpointLoadError(
            f"{path}: the {_CONFIG_KEY!r} entry must be a dict, got {type(config).__name__}."
        )
    inner: Any = None
    for key in _WRAPPER_KEYS:
        value = obj.get(key)
        if isinstance(value, Mapping):
            inner = value
            logger.debug("%s: using the state dict under %r", path, key)
            break
    if inner is None:
        inner = {k: v for k, v in obj.items() if k != _CONFIG_KEY}
    tensors = {k: v for k, v in inner.items() if isinstance(v, Tensor)}
    dropped = [k for k in inner if k not in tensors]
    if not tensors:
        raise CheckpointLoadError(
            f"{path} contains no tensors (top-level keys: {sorted(map(str, obj))[:10]}); expected "
            "a SAM state dict, either raw or wrapped under 'model' / 'state_dict'."
        )
    if dropped:
        logger.warning("%s: ignoring %d non-tensor entries: %s", path, len(dropped), dropped[:5])
    state_dict = _strip_prefixes(tensors)
    return state_dict, (dict(config) if config is not None else None)


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """Load a checkpoint file safely and split it into (state dict, samsparse config).

    Args:
        path: A ``.pth``/``.pt`` file written by ``torch.save`` containing either a raw
            state dict, or a dict wrapping it under ``"model"`` / ``"state_dict"``. An
            optional ``"samsparse"`` entry (dict of plain python values) is returned
            separately.

    Returns:
        ``(state_dict, config)``: ``state_dict`` maps parameter names (leading
        ``module.`` / ``_orig_mod.`` removed) to CPU tensors with the dtype stored in
        the file (float32 for the official SAM checkpoints); ``config`` is the
        ``"samsparse"`` dict or ``None``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointLoadError (a ValueError): not a PyTorch checkpoint, truncated,
            contains arbitrary python objects, or holds no tensors.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(
            f"Checkpoint path={str(p)!r} does not exist. Pass the path of a downloaded SAM "
            "checkpoint, or a name like 'vit_b' to samsparse.checkpoints.download() to fetch it."
        )
    if p.is_dir():
        raise IsADirectoryError(
            f"Checkpoint path={str(p)!r} is a directory; pass the .pth file inside it."
        )
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc):
            raise CheckpointLoadError(
                f"{p} contains python objects other than tensors and plain containers, which "
                "torch.load(weights_only=True) refuses to unpickle. If you trust the file, "
                "re-save just the weights: torch.save(torch.load(path, weights_only=False)"
                "['model'], new_path) and load new_path."
            ) from exc
        raise CheckpointLoadError(
            f"{p} is not a PyTorch checkpoint (unpickling failed: {exc}). Check that the file "
            "is the .pth checkpoint and that it was downloaded completely."
        ) from exc
    except Exception as exc:  # noqa: BLE001 - torch raises many types for garbage input
        size = p.stat().st_size
        raise CheckpointLoadError(
            f"{p} is not a PyTorch checkpoint or is truncated/corrupt ({size} bytes; "
            f"{type(exc).__name__}: {str(exc)[:200]}). Re-download it (e.g. "
            "samsparse.checkpoints.download('vit_b', force=True)) or check the path."
        ) from exc
    return _split_checkpoint(obj, p)


def load_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Load only the state dict of a checkpoint; see :func:`load_checkpoint`."""
    return load_checkpoint(path)[0]


def save_checkpoint(
    path: str | os.PathLike,
    state_dict: Mapping[str, Tensor],
    samsparse_config: Mapping[str, Any] | None = None,
) -> Path:
    """Save ``state_dict`` (+ optional samsparse config) so :func:`load_checkpoint` reads it.

    The file is ``{"model": state_dict, "samsparse": config}`` written to a temporary
    file and renamed into place. ``samsparse_config`` may only contain
    str/int/float/bool/None/list/tuple/dict values (checked, ``TypeError`` otherwise)
    so it loads with ``weights_only=True``.
    """
    p = Path(path).expanduser()
    payload: dict[str, Any] = {"model": dict(state_dict)}
    if samsparse_config is not None:
        _check_plain(dict(samsparse_config), "samsparse_config")
        payload[_CONFIG_KEY] = dict(samsparse_config)
    with atomic_path(p) as tmp:  # no partial or leftover file if saving fails
        torch.save(payload, tmp)
    return p


# --------------------------------------------------------------------------------------
# Shape inference
# --------------------------------------------------------------------------------------


def _encoder_view(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Image-encoder entries with the ``image_encoder.`` prefix removed."""
    sd = _strip_prefixes(state_dict)
    if any(k.startswith(_ENC) for k in sd):
        return {k[len(_ENC):]: v for k, v in sd.items() if k.startswith(_ENC)}
    if "patch_embed.proj.weight" in sd:
        return dict(sd)
    sample = sorted(sd)[:5]
    raise ValueError(
        "state_dict is not a SAM image-encoder state dict: neither "
        "'image_encoder.patch_embed.proj.weight' nor 'patch_embed.proj.weight' is present "
        f"(first keys: {sample}). If the keys carry another wrapper prefix (e.g. 'sam.'), "
        "strip it first."
    )


def _shape(sd: Mapping[str, Any], key: str) -> tuple[int, ...]:
    try:
        return tuple(sd[key].shape)
    except KeyError:
        raise ValueError(f"state_dict lacks the key {key!r} needed to infer the architecture.") from None


def infer_encoder_config(state_dict: Mapping[str, Tensor]) -> dict[str, Any]:
    """Infer ``ImageEncoderViT`` hyper-parameters from tensor shapes.

    Args:
        state_dict: A ``Sam`` state dict (``image_encoder.*`` keys) or a bare
            ``ImageEncoderViT`` state dict. Any device (``meta`` works) and dtype.

    Returns:
        dict with ``embed_dim``, ``depth``, ``num_heads``, ``img_size``, ``patch_size``,
        ``in_chans``, ``window_size`` (0 if no block is windowed),
        ``global_attn_indexes`` (tuple of block indices with global attention),
        ``out_chans``, ``mlp_ratio`` (float), ``qkv_bias``, ``use_rel_pos``,
        ``use_abs_pos``. These are exactly the ``ImageEncoderViT`` keyword arguments.

    Raises:
        ValueError: the keys/shapes are not those of a SAM ViT image encoder.
    """
    sd = _encoder_view(state_dict)
    embed_dim, in_chans, ph, pw = _shape(sd, "patch_embed.proj.weight")
    if ph != pw:
        raise ValueError(f"patch_embed.proj.weight has a non-square patch {ph}x{pw}; SAM uses square patches.")
    patch = ph
    block_ids = sorted({int(m.group(1)) for k in sd if (m := _BLOCK_RE.match(k))})
    if not block_ids:
        raise ValueError("state_dict has no 'blocks.N.*' keys; cannot infer the encoder depth.")
    depth = len(block_ids)
    if block_ids != list(range(depth)):
        raise ValueError(f"encoder block indices are not contiguous: {block_ids[:10]}...")

    use_rel_pos = "blocks.0.attn.rel_pos_h" in sd
    use_abs_pos = "pos_embed" in sd
    rel_lens: list[int] = []
    head_dim = None
    if use_rel_pos:
        for i in range(depth):
            lh, hd = _shape(sd, f"blocks.{i}.attn.rel_pos_h")
            lw, _ = _shape(sd, f"blocks.{i}.attn.rel_pos_w")
            if lh != lw:
                raise ValueError(f"blocks.{i}.attn.rel_pos_h/w lengths differ ({lh} vs {lw}); only square inputs are supported.")
            rel_lens.append(lh)
            head_dim = hd
        if embed_dim % head_dim:
            raise ValueError(f"embed_dim {embed_dim} is not a multiple of the rel-pos head dim {head_dim}.")
        num_heads = embed_dim // head_dim
    else:
        official = {cfg["embed_dim"]: cfg["num_heads"] for cfg in OFFICIAL_ENCODER_CONFIGS.values()}
        num_heads = official.get(embed_dim)  # may be None: caller must pass config["num_heads"]

    if use_abs_pos:
        _, gh, gw, c = _shape(sd, "pos_embed")
        if gh != gw:
            raise ValueError(f"pos_embed grid {gh}x{gw} is not square; SAM's ImageEncoderViT takes a square img_size.")
        grid = gh
    elif rel_lens:
        grid = (max(rel_lens) + 1) // 2
        logger.warning("no pos_embed; assuming img_size = %d from the largest rel-pos table", grid * patch)
    else:
        raise ValueError("state_dict has neither pos_embed nor rel_pos tables; pass config['img_size'].")

    global_idx: tuple[int, ...] = ()
    window = 0
    if rel_lens:
        global_idx = tuple(i for i, n in enumerate(rel_lens) if n == 2 * grid - 1)
        windowed = {n for n in rel_lens if n != 2 * grid - 1}
        if len(windowed) > 1:
            raise ValueError(f"windowed blocks have different rel-pos lengths {sorted(windowed)}; SAM uses one window size.")
        if windowed:
            n = windowed.pop()
            if n % 2 == 0:
                raise ValueError(f"rel-pos length {n} is even; expected 2*window_size-1.")
            window = (n + 1) // 2
    mlp_hidden = _shape(sd, "blocks.0.mlp.lin1.weight")[0]
    mlp_ratio = mlp_hidden / embed_dim
    if int(embed_dim * mlp_ratio) != mlp_hidden:  # guard float round-down in Block
        mlp_ratio = (mlp_hidden + 0.5) / embed_dim
    out_chans = _shape(sd, "neck.0.weight")[0]
    return {
        "embed_dim": int(embed_dim),
        "depth": depth,
        "num_heads": num_heads,
        "img_size": int(grid * patch),
        "patch_size": int(patch),
        "in_chans": int(in_chans),
        "window_size": int(window),
        "global_attn_indexes": global_idx,
        "out_chans": int(out_chans),
        "mlp_ratio": float(mlp_ratio),
        "qkv_bias": "blocks.0.attn.qkv.bias" in sd,
        "use_rel_pos": use_rel_pos,
        "use_abs_pos": use_abs_pos,
    }


def infer_model_type(state_dict: Mapping[str, Tensor]) -> str:
    """Return ``"vit_b"``, ``"vit_l"`` or ``"vit_h"`` for official SAM layouts, else ``"custom"``.

    Works on full ``Sam`` and bare ``ImageEncoderViT`` state dicts, on any device
    (``meta`` tensors are fine: only shapes are read).

    Raises:
        ValueError: ``state_dict`` is not a SAM image-encoder state dict at all.
    """
    cfg = infer_encoder_config(state_dict)
    for name, ref in OFFICIAL_ENCODER_CONFIGS.items():
        if all(cfg.get(k) == v for k, v in ref.items()):
            return name
    return "custom"


def default_decoder_num_heads(transformer_dim: int, attention_downsample_rate: int = 2) -> int:
    """Decoder head count used when it cannot be read from shapes.

    Official SAM uses 8. For small decoders the largest of 8, 4, 2, 1 dividing both
    ``transformer_dim`` and ``transformer_dim // attention_downsample_rate`` is used
    (:func:`samsparse.checkpoints.build_tiny_sam` follows the same rule).
    """
    internal = transformer_dim // attention_downsample_rate
    for h in (8, 4, 2, 1):
        if transformer_dim % h == 0 and internal % h == 0:
            return h
    return 1


def infer_decoder_config(state_dict: Mapping[str, Tensor]) -> dict[str, Any]:
    """Infer ``PromptEncoder`` / ``MaskDecoder`` / ``TwoWayTransformer`` sizes from shapes.

    Returns:
        dict with ``prompt_embed_dim``, ``mask_in_chans``, ``decoder_depth``,
        ``decoder_mlp_dim``, ``decoder_num_heads`` (not visible in shapes: see
        :func:`default_decoder_num_heads`), ``attention_downsample_rate``,
        ``num_multimask_outputs``, ``iou_head_depth``, ``iou_head_hidden_dim``.
    """
    sd = _strip_prefixes(state_dict)
    dim = _shape(sd, "prompt_encoder.no_mask_embed.weight")[1]
    mask_in_chans = _shape(sd, "prompt_encoder.mask_downscaling.3.weight")[0]
    layer_ids = sorted({int(m.group(1)) for k in sd if (m := _DEC_LAYER_RE.match(k))})
    if not layer_ids:
        raise ValueError("state_dict has no 'mask_decoder.transformer.layers.N.*' keys.")
    mlp_dim = _shape(sd, "mask_decoder.transformer.layers.0.mlp.lin1.weight")[0]
    internal = _shape(sd, "mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight")[0]
    downsample = max(1, dim // internal)
    n_tokens = _shape(sd, "mask_decoder.mask_tokens.weight")[0]
    iou_ids = sorted({int(m.group(1)) for k in sd if (m := _IOU_LAYER_RE.match(k))})
    iou_hidden = _shape(sd, "mask_decoder.iou_prediction_head.layers.0.weight")[0]
    return {
        "prompt_embed_dim": int(dim),
        "mask_in_chans": int(mask_in_chans),
        "decoder_depth": len(layer_ids),
        "decoder_mlp_dim": int(mlp_dim),
        "decoder_num_heads": default_decoder_num_heads(dim, downsample),
        "attention_downsample_rate": int(downsample),
        "num_multimask_outputs": int(n_tokens) - 1,
        "iou_head_depth": len(iou_ids),
        "iou_head_hidden_dim": int(iou_hidden),
    }


# --------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------

_ENCODER_KEYS = (
    "embed_dim", "depth", "num_heads", "img_size", "patch_size", "in_chans", "window_size",
    "global_attn_indexes", "out_chans", "mlp_ratio", "qkv_bias", "use_rel_pos", "use_abs_pos",
)
_DECODER_KEYS = (
    "prompt_embed_dim", "mask_in_chans", "decoder_depth", "decoder_mlp_dim", "decoder_num_heads",
    "attention_downsample_rate", "num_multimask_outputs", "iou_head_depth", "iou_head_hidden_dim",
)
_SAM_KEYS = ("pixel_mean", "pixel_std")


def _overrides(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """Flatten a user/samsparse config: top-level keys plus an optional ``"encoder"`` sub-dict."""
    if config is None:
        return {}
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a dict or None, got {type(config).__name__}")
    flat = dict(config)
    nested = flat.pop("encoder", None)
    if isinstance(nested, Mapping):
        flat = {**dict(nested), **flat}
    known = set(_ENCODER_KEYS) | set(_DECODER_KEYS) | set(_SAM_KEYS)
    return {k: v for k, v in flat.items() if k in known}


def _make_encoder(cfg: Mapping[str, Any]) -> nn.Module:
    from segment_anything.modeling import ImageEncoderViT

    if cfg.get("num_heads") is None:
        raise ValueError(
            "Cannot infer the encoder's num_heads (the state dict has no rel-pos tables); "
            "pass config={'num_heads': N}."
        )
    return ImageEncoderViT(
        img_size=int(cfg["img_size"]),
        patch_size=int(cfg["patch_size"]),
        in_chans=int(cfg["in_chans"]),
        embed_dim=int(cfg["embed_dim"]),
        depth=int(cfg["depth"]),
        num_heads=int(cfg["num_heads"]),
        mlp_ratio=float(cfg["mlp_ratio"]),
        out_chans=int(cfg["out_chans"]),
        qkv_bias=bool(cfg["qkv_bias"]),
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        act_layer=nn.GELU,
        use_abs_pos=bool(cfg["use_abs_pos"]),
        use_rel_pos=bool(cfg["use_rel_pos"]),
        rel_pos_zero_init=True,
        window_size=int(cfg["window_size"]),
        global_attn_indexes=tuple(int(i) for i in cfg["global_attn_indexes"]),
    )


def _make_sam(enc: Mapping[str, Any], dec: Mapping[str, Any], extra: Mapping[str, Any]) -> nn.Module:
    from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    dim = int(dec["prompt_embed_dim"])
    img = int(enc["img_size"])
    grid = img // int(enc["patch_size"])
    return Sam(
        image_encoder=_make_encoder(enc),
        prompt_encoder=PromptEncoder(
            embed_dim=dim,
            image_embedding_size=(grid, grid),
            input_image_size=(img, img),
            mask_in_chans=int(dec["mask_in_chans"]),
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=int(dec["num_multimask_outputs"]),
            transformer=TwoWayTransformer(
                depth=int(dec["decoder_depth"]),
                embedding_dim=dim,
                mlp_dim=int(dec["decoder_mlp_dim"]),
                num_heads=int(dec["decoder_num_heads"]),
                attention_downsample_rate=int(dec["attention_downsample_rate"]),
            ),
            transformer_dim=dim,
            iou_head_depth=int(dec["iou_head_depth"]),
            iou_head_hidden_dim=int(dec["iou_head_hidden_dim"]),
        ),
        pixel_mean=list(extra.get("pixel_mean", [123.675, 116.28, 103.53])),
        pixel_std=list(extra.get("pixel_std", [58.395, 57.12, 57.375])),
    )


def _compare_keys(model: nn.Module, state_dict: Mapping[str, Tensor], model_type: str, what: str) -> None:
    """Raise a ValueError if keys/shapes of ``state_dict`` do not match ``model`` exactly."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {expected[k]}"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != expected[k]
    ]
    if not (missing or unexpected or wrong):
        return
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong)):
        if items:
            more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
            parts.append(f"{len(items)} {label} keys: {items[:5]}{more}")
    raise ValueError(
        f"state_dict does not match the {what} built for inferred model type {model_type!r}: "
        + "; ".join(parts)
        + ". Hint: load the file with samsparse.checkpoints.load_state_dict() (strips 'module.' "
        "prefixes and unwraps 'model'/'state_dict'); strip any other wrapper prefix (e.g. 'sam.'); "
        "HQ-SAM / MobileSAM / SAM 2 checkpoints are different architectures; pass config={...} "
        "to override inferred hyper-parameters."
    )


def _materialize(model: nn.Module, state_dict: Mapping[str, Tensor], sam_extra: Mapping[str, Any] | None) -> nn.Module:
    """Allocate a meta-built model on CPU and copy ``state_dict`` in (strict)."""
    model = model.to_empty(device="cpu")
    if sam_extra is not None:  # non-persistent buffers of Sam are not in the state dict
        model.pixel_mean = torch.tensor(list(sam_extra.get("pixel_mean", [123.675, 116.28, 103.53]))).view(-1, 1, 1)
        model.pixel_std = torch.tensor(list(sam_extra.get("pixel_std", [58.395, 57.12, 57.375]))).view(-1, 1, 1)
    with torch.no_grad():
        model.load_state_dict(state_dict, strict=True)
    # Any other non-persistent buffer would be uninitialised memory now.
    for mod_name, mod in model.named_modules():
        for buf in getattr(mod, "_non_persistent_buffers_set", ()):
            if not (mod is model and buf in ("pixel_mean", "pixel_std")):
                raise RuntimeError(f"unexpected non-persistent buffer {mod_name}.{buf}; cannot rebuild safely")
    return model.eval()


def build_image_encoder_from_state_dict(
    state_dict: Mapping[str, Tensor], config: Mapping[str, Any] | None = None
) -> nn.Module:
    """Build a ``segment_anything`` ``ImageEncoderViT`` and load the encoder weights (strict).

    Accepts a full ``Sam`` state dict (only ``image_encoder.*`` is used) or a bare encoder
    state dict. ``config`` entries override inferred hyper-parameters.
    """
    enc_sd = _encoder_view(state_dict)
    cfg = {**infer_encoder_config(enc_sd), **{k: v for k, v in _overrides(config).items() if k in _ENCODER_KEYS}}
    with torch.device("meta"):
        enc = _make_encoder(cfg)
    _compare_keys(enc, enc_sd, infer_model_type(enc_sd), "ImageEncoderViT")
    return _materialize(enc, enc_sd, None)


def build_sam_from_state_dict(state_dict: Mapping[str, Tensor], config: Mapping[str, Any] | None = None) -> nn.Module:
    """Build ``segment_anything.modeling.Sam`` matching ``state_dict`` and load it strictly.

    Same construction as ``segment_anything.build_sam._build_sam`` but with every size
    inferred from the tensor shapes (see :func:`infer_encoder_config`,
    :func:`infer_decoder_config`), so official vit_b/l/h and small custom models both work.
    The model is constructed on the ``meta`` device and then materialised on CPU, so no
    time is spent on random initialisation.

    Args:
        state_dict: A ``Sam`` state dict with ``image_encoder.*``, ``prompt_encoder.*``
            and ``mask_decoder.*`` keys (e.g. from :func:`load_state_dict`), CPU tensors.
        config: Optional overrides, e.g. the ``"samsparse"`` dict of a checkpoint;
            recognised keys are those returned by the infer functions plus
            ``pixel_mean``/``pixel_std`` (others are ignored).

    Returns:
        The ``Sam`` module in eval mode on CPU (parameters float32 unless the
        checkpoint stores another float dtype, which is copied into float32 params).

    Raises:
        ValueError: the state dict does not fit (lists the first missing/unexpected keys,
            the inferred model type and a hint).
    """
    sd = _strip_prefixes(state_dict)
    if not any(k.startswith(_ENC) for k in sd):
        if "patch_embed.proj.weight" in sd:
            raise ValueError(
                "state_dict is a bare ImageEncoderViT state dict (no 'image_encoder.' prefix), not a "
                "full Sam; use build_image_encoder_from_state_dict() for it."
            )
        _encoder_view(sd)  # raises the descriptive error
    over = _overrides(config)
    enc = {**infer_encoder_config(sd), **{k: v for k, v in over.items() if k in _ENCODER_KEYS}}
    model_type = infer_model_type(sd)
    try:
        dec = infer_decoder_config(sd)
    except ValueError as exc:
        raise ValueError(
            f"state_dict has an image encoder (inferred model type {model_type!r}) but no usable "
            f"prompt encoder / mask decoder ({exc}). For encoder-only weights use "
            "build_image_encoder_from_state_dict()."
        ) from exc
    dec.update({k: v for k, v in over.items() if k in _DECODER_KEYS})
    if dec["prompt_embed_dim"] != enc["out_chans"]:
        raise ValueError(
            f"prompt embedding dim {dec['prompt_embed_dim']} != encoder out_chans {enc['out_chans']}; "
            "the checkpoint is not a consistent Sam."
        )
    extra = {k: v for k, v in over.items() if k in _SAM_KEYS}
    with torch.device("meta"):
        sam = _make_sam(enc, dec, extra)
    _compare_keys(sam, sd, model_type, "Sam")
    logger.debug("building Sam (%s) with encoder %s and decoder %s", model_type, enc, dec)
    return _materialize(sam, sd, extra)
