"""samsparse: block-sparse, rel-pos-fused attention for Segment Anything's image encoder."""

from .backends import attend
from .masks import BlockMask
from .relpos import RelPos

__version__ = "0.1.0"
__all__ = ["BlockMask", "RelPos", "attend", "__version__"]
