"""Block masks and their builders.

One mask type (:class:`BlockMask`) for every backend; small pure builders, one
module per family; :class:`MaskRecipe` strings/dicts name a builder and its
arguments (what configs store); :func:`render_mask` draws a mask.
"""

from .block_mask import BlockMask, KVIndices
from .dynamic import dynamic, pool_tiles
from .hierarchical import HeadScale, hierarchical, hierarchical_plan
from .hybrid import from_head_mask_type, hybrid
from .image_to_prompt import image_to_prompt, prompt_blocks
from .local import local_2d
from .recipe import RECIPE_NAMES, MaskRecipe, build_mask, parse_recipe
from .region import prompt_tiles, region_focused
from .render import render_mask, render_query_tile

__all__ = [
    "BlockMask",
    "HeadScale",
    "KVIndices",
    "MaskRecipe",
    "RECIPE_NAMES",
    "build_mask",
    "dynamic",
    "from_head_mask_type",
    "hierarchical",
    "hierarchical_plan",
    "hybrid",
    "image_to_prompt",
    "local_2d",
    "parse_recipe",
    "pool_tiles",
    "prompt_blocks",
    "prompt_tiles",
    "region_focused",
    "render_mask",
    "render_query_tile",
]
