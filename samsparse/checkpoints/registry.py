"""Registry of the official Segment Anything (SAM v1) checkpoints.

The URLs are the ones published in the segment-anything README. The sizes and
SHA-256 digests are pinned so that :func:`samsparse.checkpoints.download` can
verify a download before it is moved into place. The digests agree across
several independent projects that pin these files (for example
``computational-cell-analytics/micro-sam`` ``micro_sam/util.py::_CHECKSUMS``
and the 3D Slicer ``SlicerSegmentAnything`` extension), and the sizes agree with
model manifests that record byte counts next to the same digests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "CheckpointInfo",
    "CHECKPOINTS",
    "ALIASES",
    "OFFICIAL_ENCODER_CONFIGS",
    "get_checkpoint_info",
    "list_checkpoints",
]

_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything/"


@dataclass(frozen=True)
class CheckpointInfo:
    """Metadata of one downloadable checkpoint.

    Attributes:
        name: Registry key, e.g. ``"vit_b"``.
        model_type: segment_anything model type (``"vit_b"``, ``"vit_l"``,
            ``"vit_h"``) or ``"custom"`` for files that are not official SAM.
        url: Where to download the file from (HTTP(S)).
        filename: File name used in the cache directory.
        sha256: Lower-case hex SHA-256 of the whole file, or ``None`` when no
            digest is pinned (then only the size is checked).
        size: Size of the file in bytes, or ``None`` when unknown.
    """

    name: str
    model_type: str
    url: str
    filename: str
    sha256: str | None
    size: int | None

    def __post_init__(self) -> None:
        if self.sha256 is not None:
            digest = self.sha256.lower()
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError(
                    f"CheckpointInfo(sha256={self.sha256!r}) for {self.name!r} is not a "
                    "64-character hex SHA-256 digest; pass sha256=None to skip hashing."
                )
            object.__setattr__(self, "sha256", digest)
        if self.size is not None and self.size < 0:
            raise ValueError(
                f"CheckpointInfo(size={self.size}) for {self.name!r} must be >= 0 or None."
            )


CHECKPOINTS: dict[str, CheckpointInfo] = {
    "vit_h": CheckpointInfo(
        name="vit_h",
        model_type="vit_h",
        url=_BASE_URL + "sam_vit_h_4b8939.pth",
        filename="sam_vit_h_4b8939.pth",
        sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        size=2564550879,
    ),
    "vit_l": CheckpointInfo(
        name="vit_l",
        model_type="vit_l",
        url=_BASE_URL + "sam_vit_l_0b3195.pth",
        filename="sam_vit_l_0b3195.pth",
        sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        size=1249524607,
    ),
    "vit_b": CheckpointInfo(
        name="vit_b",
        model_type="vit_b",
        url=_BASE_URL + "sam_vit_b_01ec64.pth",
        filename="sam_vit_b_01ec64.pth",
        sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        size=375042383,
    ),
}

#: Alternative spellings accepted by :func:`get_checkpoint_info`.
ALIASES: dict[str, str] = {
    "default": "vit_h",
    "sam_vit_h": "vit_h",
    "sam_vit_l": "vit_l",
    "sam_vit_b": "vit_b",
    "vit-h": "vit_h",
    "vit-l": "vit_l",
    "vit-b": "vit_b",
    "sam_vit_h_4b8939": "vit_h",
    "sam_vit_l_0b3195": "vit_l",
    "sam_vit_b_01ec64": "vit_b",
    "sam_vit_h_4b8939.pth": "vit_h",
    "sam_vit_l_0b3195.pth": "vit_l",
    "sam_vit_b_01ec64.pth": "vit_b",
}

#: Image-encoder hyper-parameters of the official models, as built by
#: ``segment_anything.build_sam`` (keys match :func:`infer_encoder_config`).
OFFICIAL_ENCODER_CONFIGS: dict[str, dict[str, Any]] = {
    "vit_b": dict(
        embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11),
        img_size=1024, patch_size=16, window_size=14, out_chans=256, mlp_ratio=4.0,
    ),
    "vit_l": dict(
        embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23),
        img_size=1024, patch_size=16, window_size=14, out_chans=256, mlp_ratio=4.0,
    ),
    "vit_h": dict(
        embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31),
        img_size=1024, patch_size=16, window_size=14, out_chans=256, mlp_ratio=4.0,
    ),
}


def list_checkpoints() -> list[str]:
    """Return the canonical registry names, e.g. ``["vit_b", "vit_h", "vit_l"]`` (sorted)."""
    return sorted(CHECKPOINTS)


def get_checkpoint_info(name: str) -> CheckpointInfo:
    """Look up an official checkpoint by name.

    Args:
        name: ``"vit_b"``, ``"vit_l"``, ``"vit_h"`` or an alias such as
            ``"sam_vit_b"``, ``"default"`` (= vit_h) or the file name
            ``"sam_vit_b_01ec64.pth"``. Case-insensitive.

    Returns:
        The :class:`CheckpointInfo`.

    Raises:
        ValueError: ``name`` is unknown; the message lists the valid names.
    """
    if not isinstance(name, str):
        raise TypeError(f"get_checkpoint_info(name=...) expects a str, got {type(name).__name__}")
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    try:
        return CHECKPOINTS[key]
    except KeyError:
        valid = ", ".join(list_checkpoints())
        aliases = ", ".join(sorted(a for a in ALIASES if not a.endswith(".pth")))
        raise ValueError(
            f"Unknown checkpoint name={name!r}. Valid names: {valid} "
            f"(aliases: {aliases}). To use another file, pass its local path instead."
        ) from None
