"""samsparse: block-sparse, rel-pos-fused attention for Segment Anything's image encoder."""

from .attention import SparseAttention
from .backends import attend
from .checkpoints.patched import load, save
from .fast import optimize
from .masks import BlockMask
from .patch import PatchConfig, patch, patch_config, unpatch
from .predictor import SparseAutomaticMaskGenerator, SparseSamPredictor, build_predictor
from .prompts import mask_to_logits
from .relpos import RelPos

__version__ = "0.1.0"
__all__ = [
    "BlockMask",
    "PatchConfig",
    "RelPos",
    "SparseAttention",
    "SparseAutomaticMaskGenerator",
    "SparseSamPredictor",
    "attend",
    "build_predictor",
    "load",
    "mask_to_logits",
    "optimize",
    "save",
    "patch",
    "patch_config",
    "unpatch",
    "__version__",
]
