"""Official SAM checkpoints: registry, verified resumable download, safe loading.

Typical use::

    from samsparse.checkpoints import download, load_checkpoint, build_sam_from_state_dict

    path = download("vit_b")                      # ~/.cache/samsparse or $SAMSPARSE_HOME
    state_dict, cfg = load_checkpoint(path)       # torch.load(weights_only=True)
    sam = build_sam_from_state_dict(state_dict, cfg)
"""

from .download import ChecksumError, DownloadError, cache_dir, checkpoint_path, download, sha256_file
from .loading import (
    CheckpointLoadError,
    build_image_encoder_from_state_dict,
    build_sam_from_state_dict,
    default_decoder_num_heads,
    infer_decoder_config,
    infer_encoder_config,
    infer_model_type,
    load_checkpoint,
    load_state_dict,
    save_checkpoint,
)
from .registry import (
    ALIASES,
    CHECKPOINTS,
    OFFICIAL_ENCODER_CONFIGS,
    CheckpointInfo,
    get_checkpoint_info,
    list_checkpoints,
)
from .tiny import build_tiny_sam

__all__ = [
    "ALIASES",
    "CHECKPOINTS",
    "OFFICIAL_ENCODER_CONFIGS",
    "CheckpointInfo",
    "CheckpointLoadError",
    "ChecksumError",
    "DownloadError",
    "build_image_encoder_from_state_dict",
    "build_sam_from_state_dict",
    "build_tiny_sam",
    "cache_dir",
    "checkpoint_path",
    "default_decoder_num_heads",
    "download",
    "get_checkpoint_info",
    "infer_decoder_config",
    "infer_encoder_config",
    "infer_model_type",
    "list_checkpoints",
    "load_checkpoint",
    "load_state_dict",
    "save_checkpoint",
    "sha256_file",
]
