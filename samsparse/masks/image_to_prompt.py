"""Image tokens followed by prompt tokens (``sequence`` layout): the seed's mask."""

from __future__ import annotations

import math

import torch

from .block_mask import BlockMask

__all__ = ["image_to_prompt", "prompt_blocks"]


def _positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def prompt_blocks(num_image_tokens: int, num_prompt_tokens: int, block_size: int) -> range:
    """Ids of the blocks holding at least one prompt token.

    Tokens ``[0, num_image_tokens)`` are the image, ``[num_image_tokens, N)`` the
    prompt; a block that holds the last image tokens and the first prompt tokens
    counts as a prompt block. Empty when there are no prompt tokens.
    """
    n = num_image_tokens + num_prompt_tokens
    if num_prompt_tokens == 0:
        return range(0)
    return range(num_image_tokens // block_size, math.ceil(n / block_size))


def image_to_prompt(
    num_image_tokens: int = 4096,
    num_prompt_tokens: int = 5,
    block_size: int = 128,
    batch_size: int = 1,
    num_heads: int = 12,
    sparse_image_to_image: bool = False,
    image_sparsity: float = 0.5,
    device: torch.device | str | None = None,
    seed: int = 0,
) -> BlockMask:
    """Mask for image tokens followed by prompt tokens, in one sequence.

    ``N = num_image_tokens + num_prompt_tokens`` tokens in blocks of ``block_size``
    (``M = ceil(N / block_size)``; the prompt tokens sit in the last, possibly
    partial, block(s), see :func:`prompt_blocks`).

    - every query block reads the prompt block(s) (prompt columns dense);
    - prompt query blocks read every block (prompt rows dense);
    - image-to-image blocks are dense, or, with ``sparse_image_to_image``, each head
      keeps ``round((1 - image_sparsity) * Mi**2)`` of the ``Mi x Mi`` image-only
      blocks (at least the diagonal, which is always kept), chosen at random from
      ``seed``; the choice differs per head and is shared over the batch.

    Args:
        num_image_tokens: image tokens (>= 1), first in the sequence.
        num_prompt_tokens: prompt tokens (>= 0), last in the sequence.
        block_size: tokens per block (query and key).
        batch_size, num_heads: B', H' of the result.
        sparse_image_to_image: thin out the image-image blocks.
        image_sparsity: fraction of image-image blocks to drop, in [0, 1).
        device: device of the blocks.
        seed: seed of the random image-image choice (drawn on the CPU, so the mask
            is the same on every device).

    Returns:
        BlockMask, layout ``sequence``, blocks bool ``[batch_size, num_heads, M, M]``,
        ``seq_len = (N, N)``, ``block_size = (block_size, block_size)``.
    """
    _positive_int(num_image_tokens, "num_image_tokens")
    _positive_int(num_prompt_tokens, "num_prompt_tokens", minimum=0)
    _positive_int(block_size, "block_size")
    _positive_int(batch_size, "batch_size")
    _positive_int(num_heads, "num_heads")
    if not isinstance(sparse_image_to_image, bool):
        raise ValueError(f"sparse_image_to_image must be True or False, got {sparse_image_to_image!r}")
    if isinstance(image_sparsity, bool) or not isinstance(image_sparsity, (int, float)):
        raise ValueError(f"image_sparsity must be a number in [0, 1), got {image_sparsity!r}")
    if not 0.0 <= image_sparsity < 1.0:
        raise ValueError(
            f"image_sparsity must be in [0, 1) (the fraction of image-image blocks dropped), got {image_sparsity}; "
            "use sparse_image_to_image=False for a dense image part"
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")

    n = num_image_tokens + num_prompt_tokens
    m = math.ceil(n / block_size)
    prompt = prompt_blocks(num_image_tokens, num_prompt_tokens, block_size)
    mi = prompt.start if len(prompt) else m  # blocks [0, mi) hold image tokens only

    blocks = torch.ones(num_heads, m, m, dtype=torch.bool)
    if sparse_image_to_image and mi > 0:
        keep = max(mi, round((1.0 - image_sparsity) * mi * mi))  # per head, diagonal included
        gen = torch.Generator(device="cpu").manual_seed(seed)
        scores = torch.rand(num_heads, mi * mi, generator=gen)
        diag = torch.arange(mi) * (mi + 1)
        scores[:, diag] = 2.0  # above any random score: the diagonal is always kept
        chosen = torch.topk(scores, keep, dim=-1).indices
        image = torch.zeros(num_heads, mi * mi, dtype=torch.bool)
        image.scatter_(1, chosen, True)
        blocks[:, :mi, :mi] = image.view(num_heads, mi, mi)
    blocks = blocks[None].expand(batch_size, num_heads, m, m).contiguous()
    return BlockMask(blocks.to(device), block_size, n, layout="sequence")
