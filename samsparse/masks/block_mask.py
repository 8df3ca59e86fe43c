"""BlockMask: which key blocks each query block of an attention call reads.

The one mask type every backend understands. A mask is a bool tensor of
blocks ``[B', H', Mq, Mk]`` (``B'`` in {1, B}, ``H'`` in {1, H}: broadcast)
plus the rule that maps tokens to blocks (the *layout*):

- ``sequence``: block ``i`` holds tokens ``[i*bq, (i+1)*bq)``; the last block
  may be partial when the length is not a multiple of the block size.
- ``tiles``: the tokens are an image grid ``(gh, gw)`` in SAM's row-major
  order, cut into 2D tiles ``(th, tw)``; block ``i`` is the ``i``-th tile in
  row-major tile order (edge tiles may be partial). A block is then a patch of
  the image, not a ``2 x 64`` strip, and tokens stay where they are in memory.

The kernel form is FlexAttention's: int32 ``kv_num_blocks`` ``[B', H', Mq]``
and ``kv_indices`` ``[B', H', Mq, Mk]`` (valid ids first, ascending), computed
once per mask and cached (:meth:`BlockMask.to_indices`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

Layout = Literal["sequence", "tiles"]

__all__ = ["BlockMask", "KVIndices", "Layout"]


@dataclass(frozen=True)
class KVIndices:
    """Index form of a :class:`BlockMask` (FlexAttention's names).

    kv_num_blocks: int32 [B', H', Mq] — how many key blocks each query block reads.
    kv_indices: int32 [B', H', Mq, Mk] — the key-block ids, ascending, valid ones
        first; entries past ``kv_num_blocks`` are padding (other block ids).
    """

    kv_num_blocks: torch.Tensor
    kv_indices: torch.Tensor


_KEY_BLOCKS_PER_ROW = "key_blocks_per_row"  # BlockMask._derived key of key_blocks_per_row()


def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    if isinstance(value, int):
        value = (value, value)
    try:
        a, b = (int(v) for v in value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}") from None
    if a <= 0 or b <= 0:
        raise ValueError(f"{name} must be positive, got {(a, b)}")
    return a, b


class BlockMask:
    """A block-sparse attention mask.

    Args:
        blocks: bool tensor [B', H', Mq, Mk]; ``True`` means "query block reads key
            block". B' and H' may be 1 (broadcast over batch / heads).
        block_size: (bq, bk) tokens per block, or an int for both. With the
            ``tiles`` layout it must equal ``th * tw``.
        seq_len: (Nq, Nk) token counts, or an int for both.
        layout: ``"sequence"`` or ``"tiles"``.
        grid: (gh, gw) token grid, required for ``tiles`` (then Nq == Nk == gh*gw).
        tile: (th, tw) tile shape, required for ``tiles``.
        allow_empty_rows: if False (default) a query block that reads no key block
            is an error in :meth:`validate`; if True such rows produce output 0
            and LSE -inf.
    """

    def __init__(
        self,
        blocks: torch.Tensor,
        block_size: int | tuple[int, int],
        seq_len: int | tuple[int, int],
        layout: Layout = "sequence",
        grid: tuple[int, int] | None = None,
        tile: tuple[int, int] | None = None,
        allow_empty_rows: bool = False,
    ) -> None:
        if not isinstance(blocks, torch.Tensor):
            raise TypeError(f"blocks must be a torch.Tensor, got {type(blocks).__name__}")
        if blocks.dim() == 2:
            blocks = blocks[None, None]
        if blocks.dim() != 4:
            raise ValueError(
                f"blocks must have shape [B', H', Mq, Mk] (or [Mq, Mk]), got {tuple(blocks.shape)}"
            )
        if blocks.dtype != torch.bool:
            blocks = blocks != 0
        self.blocks = blocks
        self.layout: Layout = layout
        self.allow_empty_rows = bool(allow_empty_rows)
        if layout == "sequence":
            self.block_size = _pair(block_size, "block_size")
            self.seq_len = _pair(seq_len, "seq_len")
            self.grid = None
            self.tile = None
        elif layout == "tiles":
            if grid is None or tile is None:
                raise ValueError("layout='tiles' needs grid=(gh, gw) and tile=(th, tw)")
            self.grid = _pair(grid, "grid")
            self.tile = _pair(tile, "tile")
            n = self.grid[0] * self.grid[1]
            self.seq_len = _pair(seq_len, "seq_len") if seq_len is not None else (n, n)
            if self.seq_len != (n, n):
                raise ValueError(
                    f"layout='tiles' over grid {self.grid} needs seq_len ({n}, {n}), got {self.seq_len}"
                )
            bs = self.tile[0] * self.tile[1]
            self.block_size = _pair(block_size, "block_size") if block_size is not None else (bs, bs)
            if self.block_size != (bs, bs):
                raise ValueError(
                    f"block_size {self.block_size} does not match tile {self.tile} (= {bs} tokens)"
                )
        else:
            raise ValueError(f"layout must be 'sequence' or 'tiles', got {layout!r}")
        mq, mk = self.num_blocks
        if tuple(blocks.shape[-2:]) != (mq, mk):
            raise ValueError(
                f"blocks has {tuple(blocks.shape[-2:])} query x key blocks, but seq_len "
                f"{self.seq_len} with block_size {self.block_size} ({self.layout}) needs ({mq}, {mk})"
            )
        self._indices: dict[torch.device, KVIndices] = {}
        self._token_maps: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self._validated = False
        self._derived: dict = {}  # per-device forms built by backends (token mask, flex mask, ...)

    # ------------------------------------------------------------------ shape
    @property
    def num_blocks(self) -> tuple[int, int]:
        """(Mq, Mk): number of query and key blocks."""
        if self.layout == "tiles":
            gh, gw = self.grid
            th, tw = self.tile
            m = math.ceil(gh / th) * math.ceil(gw / tw)
            return m, m
        return (
            math.ceil(self.seq_len[0] / self.block_size[0]),
            math.ceil(self.seq_len[1] / self.block_size[1]),
        )

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.blocks.shape)

    @property
    def device(self) -> torch.device:
        return self.blocks.device

    def __repr__(self) -> str:
        extra = f", grid={self.grid}, tile={self.tile}" if self.layout == "tiles" else ""
        return (
            f"BlockMask(shape={self.shape}, block_size={self.block_size}, seq_len={self.seq_len}, "
            f"layout={self.layout!r}{extra}, density={self.density():.3f})"
        )

    # ------------------------------------------------------------- tokens
    def token_to_block(self, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Block id of every token: (int64 [Nq], int64 [Nk]). Cached per device."""
        device = torch.device(device) if device is not None else self.device
        cached = self._token_maps.get(device)
        if cached is not None:
            return cached
        if self.layout == "sequence":
            q = torch.arange(self.seq_len[0], device=device) // self.block_size[0]
            k = torch.arange(self.seq_len[1], device=device) // self.block_size[1]
        else:
            gh, gw = self.grid
            th, tw = self.tile
            rows = torch.arange(gh, device=device)[:, None] // th
            cols = torch.arange(gw, device=device)[None, :] // tw
            q = (rows * math.ceil(gw / tw) + cols).reshape(-1)
            k = q
        self._token_maps[device] = (q, k)
        return q, k

    def to_token_mask(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Dense token mask: bool [B', H', Nq, Nk], True where attention is allowed."""
        qb, kb = self.token_to_block(device)
        blocks = self.blocks.to(qb.device)
        return blocks[:, :, qb][:, :, :, kb]

    # ------------------------------------------------------------- kernel form
    def to_indices(self, device: torch.device | str | None = None) -> KVIndices:
        """Flex-style index form (int32), computed once per device and cached."""
        device = torch.device(device) if device is not None else self.device
        cached = self._indices.get(device)
        if cached is None:
            blocks = self.blocks.to(device)
            counts = blocks.sum(-1, dtype=torch.int32)
            # stable sort of "not selected" puts selected ids first, ascending
            order = torch.argsort((~blocks).to(torch.int8), dim=-1, stable=True)
            cached = KVIndices(counts.contiguous(), order.to(torch.int32).contiguous())
            self._indices[device] = cached
        return cached

    def to_flex(self, device: torch.device | str | None = None):
        """torch FlexAttention ``BlockMask`` for this mask (built once per device, cached)."""
        from ..backends.flex import to_flex_block_mask

        return to_flex_block_mask(self, device if device is not None else self.device)

    # ------------------------------------------------------------- queries
    def density(self) -> float:
        """Fraction of (query token, key token) pairs that are attended, after broadcast."""
        qb, kb = self.token_to_block("cpu")
        qw = torch.bincount(qb, minlength=self.num_blocks[0]).double()
        kw = torch.bincount(kb, minlength=self.num_blocks[1]).double()
        blocks = self.blocks.detach().to("cpu", torch.float64)
        attended = torch.einsum("bhqk,q,k->bh", blocks, qw, kw)
        return float(attended.mean() / (self.seq_len[0] * self.seq_len[1]))

    def key_blocks_per_row(self, read_device: bool = True) -> float | None:
        """Key blocks a query block reads, averaged over batch, heads and query blocks (cached).

        For blocks on a GPU this reads one number back (a host sync) the first time; with
        ``read_device=False`` it returns None there instead, unless it is already known (computed
        before, or carried over by :meth:`to` from the CPU copy); likewise while torch.compile
        traces or a CUDA graph is captured. Kernels use it to pick their loop.
        """
        hit = self._derived.get(_KEY_BLOCKS_PER_ROW)
        capturing = self.blocks.is_cuda and torch.cuda.is_current_stream_capturing()
        if hit is None and (torch.compiler.is_compiling() or capturing):
            return None  # (reading a tensor back would break the traced graph or the capture)
        if hit is None and (read_device or self.blocks.device.type == "cpu"):
            hit = self._derived[_KEY_BLOCKS_PER_ROW] = float(self.blocks.sum(-1, dtype=torch.float32).mean())
        return hit

    def block_density(self) -> float:
        """Fraction of blocks that are set (ignores partial block sizes)."""
        return float(self.blocks.float().mean())

    def empty_rows(self) -> torch.Tensor:
        """bool [B', H', Mq]: query blocks that read no key block."""
        return ~self.blocks.any(-1)

    def validate(self, batch: int | None = None, heads: int | None = None) -> "BlockMask":
        """Check the mask against a call's batch and head count; returns self.

        Raises ValueError for a batch/head dimension that neither matches nor is 1,
        and for empty query rows unless ``allow_empty_rows`` is set. The content
        check runs once per mask (it synchronises with the device).
        """
        b, h = self.blocks.shape[:2]
        if batch is not None and b not in (1, batch):
            raise ValueError(f"mask batch dimension {b} does not match the input batch {batch} (use 1 to broadcast)")
        if heads is not None and h not in (1, heads):
            raise ValueError(f"mask head dimension {h} does not match the number of heads {heads} (use 1 to broadcast)")
        if not self._validated:
            if not self.allow_empty_rows:
                empty = self.empty_rows()
                if bool(empty.any()):
                    where = empty.nonzero()[0].tolist()
                    raise ValueError(
                        f"query block {where[2]} (batch {where[0]}, head {where[1]}) reads no key block; "
                        "every query row needs at least one key block, or build the mask with "
                        "allow_empty_rows=True (its output rows are then 0)"
                    )
            self._validated = True
        return self

    def check_sequence(self, nq: int, nk: int) -> None:
        """Raise ValueError unless the mask was built for Nq=nq, Nk=nk tokens."""
        if (nq, nk) != self.seq_len:
            raise ValueError(
                f"mask was built for seq_len {self.seq_len} but the call has Nq={nq}, Nk={nk}; "
                "rebuild the mask for this input size"
            )

    # ------------------------------------------------------------- algebra
    def _like(self, blocks: torch.Tensor, allow_empty_rows: bool | None = None) -> "BlockMask":
        return BlockMask(
            blocks,
            self.block_size,
            self.seq_len,
            layout=self.layout,
            grid=self.grid,
            tile=self.tile,
            allow_empty_rows=self.allow_empty_rows if allow_empty_rows is None else allow_empty_rows,
        )

    def _check_compatible(self, other: "BlockMask") -> None:
        if not isinstance(other, BlockMask):
            raise TypeError(f"can only combine a BlockMask with a BlockMask, got {type(other).__name__}")
        mine = (self.block_size, self.seq_len, self.layout, self.grid, self.tile)
        theirs = (other.block_size, other.seq_len, other.layout, other.grid, other.tile)
        if mine != theirs:
            raise ValueError(f"masks differ in (block_size, seq_len, layout, grid, tile): {mine} vs {theirs}")

    def __and__(self, other: "BlockMask") -> "BlockMask":
        self._check_compatible(other)
        return self._like(self.blocks & other.blocks.to(self.device), self.allow_empty_rows or other.allow_empty_rows)

    def __or__(self, other: "BlockMask") -> "BlockMask":
        self._check_compatible(other)
        return self._like(self.blocks | other.blocks.to(self.device), self.allow_empty_rows and other.allow_empty_rows)

    def __invert__(self) -> "BlockMask":
        return self._like(~self.blocks, allow_empty_rows=True)

    def expand(self, batch: int, heads: int) -> "BlockMask":
        """The same mask with explicit [batch, heads, Mq, Mk] blocks."""
        self.validate(batch, heads)
        return self._like(self.blocks.expand(batch, heads, *self.blocks.shape[-2:]).contiguous())

    def to(self, device: torch.device | str) -> "BlockMask":
        """The same mask with its blocks on ``device`` (self if already there)."""
        device = torch.device(device)
        if self.blocks.device == device:
            return self
        moved = self._like(self.blocks.to(device))
        known = self.key_blocks_per_row(read_device=False)  # (free while the blocks are on the CPU)
        if known is not None:
            moved._derived[_KEY_BLOCKS_PER_ROW] = known
        return moved

    def equals(self, other: "BlockMask") -> bool:
        """True if both masks allow exactly the same token pairs (after broadcast)."""
        if self.seq_len != other.seq_len:
            return False
        a = self.to_token_mask("cpu")
        b = other.to_token_mask("cpu")
        try:
            a, b = torch.broadcast_tensors(a, b)
        except RuntimeError:
            return False
        return bool(torch.equal(a, b))

    # ------------------------------------------------------------- factories
    @classmethod
    def full(
        cls,
        seq_len: int | tuple[int, int],
        block_size: int | tuple[int, int] = 128,
        device: torch.device | str | None = None,
    ) -> "BlockMask":
        """A dense (all blocks set) mask in the ``sequence`` layout."""
        nq, nk = _pair(seq_len, "seq_len")
        bq, bk = _pair(block_size, "block_size")
        blocks = torch.ones(1, 1, math.ceil(nq / bq), math.ceil(nk / bk), dtype=torch.bool, device=device)
        return cls(blocks, (bq, bk), (nq, nk))

    @classmethod
    def from_token_mask(
        cls,
        token_mask: torch.Tensor,
        block_size: int | tuple[int, int] = 128,
    ) -> "BlockMask":
        """Smallest block mask (sequence layout) covering a token mask [B', H', Nq, Nk].

        A block is set if any of its token pairs is allowed; the result is exact
        only when the token mask is block-aligned.
        """
        if token_mask.dim() == 2:
            token_mask = token_mask[None, None]
        nq, nk = token_mask.shape[-2:]
        bq, bk = _pair(block_size, "block_size")
        mq, mk = math.ceil(nq / bq), math.ceil(nk / bk)
        padded = torch.zeros(*token_mask.shape[:2], mq * bq, mk * bk, dtype=torch.bool, device=token_mask.device)
        padded[..., :nq, :nk] = token_mask.bool()
        blocks = padded.view(*token_mask.shape[:2], mq, bq, mk, bk).any(5).any(3)
        return cls(blocks, (bq, bk), (nq, nk))
