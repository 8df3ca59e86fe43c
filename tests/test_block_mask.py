"""BlockMask: layouts, index form, token mask, validation and algebra."""

import math
from unittest import mock

import pytest
import torch

from samsparse.masks import BlockMask


def slow_token_mask(mask: BlockMask) -> torch.Tensor:
    """Token mask by explicit loops over tokens (independent of the vectorised path)."""
    nq, nk = mask.seq_len
    bb, hb = mask.blocks.shape[:2]

    def block_of(t, axis):
        if mask.layout == "sequence":
            return t // mask.block_size[axis]
        gh, gw = mask.grid
        th, tw = mask.tile
        r, c = divmod(t, gw)
        return (r // th) * math.ceil(gw / tw) + c // tw

    out = torch.zeros(bb, hb, nq, nk, dtype=torch.bool)
    for i in range(nq):
        for j in range(nk):
            out[:, :, i, j] = mask.blocks[:, :, block_of(i, 0), block_of(j, 1)]
    return out


@pytest.mark.parametrize("nq,nk,bs", [(35, 35, 16), (64, 50, 16), (7, 100, (8, 32))])
def test_sequence_token_mask_matches_loops(nq, nk, bs):
    g = torch.Generator().manual_seed(nq)
    bq, bk = (bs, bs) if isinstance(bs, int) else bs
    blocks = torch.rand(2, 3, math.ceil(nq / bq), math.ceil(nk / bk), generator=g) > 0.5
    mask = BlockMask(blocks, bs, (nq, nk), allow_empty_rows=True)
    assert torch.equal(mask.to_token_mask(), slow_token_mask(mask))


@pytest.mark.parametrize("grid,tile", [((7, 9), (4, 4)), ((13, 11), (4, 3)), ((8, 16), (8, 16))])
def test_tiles_token_mask_matches_loops(grid, tile):
    mt = math.ceil(grid[0] / tile[0]) * math.ceil(grid[1] / tile[1])
    blocks = torch.rand(1, 2, mt, mt, generator=torch.Generator().manual_seed(1)) > 0.4
    mask = BlockMask(blocks, None, None, layout="tiles", grid=grid, tile=tile, allow_empty_rows=True)
    assert mask.num_blocks == (mt, mt)
    assert torch.equal(mask.to_token_mask(), slow_token_mask(mask))


def test_indices_sorted_counts_and_cached():
    blocks = torch.tensor([[1, 0, 1, 1], [0, 0, 0, 1], [1, 1, 1, 1]], dtype=torch.bool)
    mask = BlockMask(blocks, 4, (12, 16))
    idx = mask.to_indices()
    assert idx.kv_num_blocks.dtype == torch.int32 and idx.kv_indices.dtype == torch.int32
    assert idx.kv_num_blocks.tolist() == [[[3, 1, 4]]]
    assert idx.kv_indices[0, 0, 0, :3].tolist() == [0, 2, 3]
    assert idx.kv_indices[0, 0, 1, :1].tolist() == [3]
    assert idx.kv_indices[0, 0, 2].tolist() == [0, 1, 2, 3]
    assert mask.to_indices() is idx  # computed once


def test_density_counts_partial_blocks():
    # 10 tokens, block 8: block 0 has 8 tokens, block 1 has 2
    blocks = torch.tensor([[True, False], [False, True]])
    mask = BlockMask(blocks, 8, 10)
    assert mask.density() == pytest.approx((64 + 4) / 100)
    assert BlockMask.full(10, 8).density() == 1.0


def test_validate_empty_rows_and_broadcast():
    blocks = torch.tensor([[True, False], [False, False]])
    with pytest.raises(ValueError, match="reads no key block"):
        BlockMask(blocks, 8, 16).validate()
    BlockMask(blocks, 8, 16, allow_empty_rows=True).validate()
    mask = BlockMask(torch.ones(2, 1, 2, 2, dtype=torch.bool), 8, 16)
    mask.validate(batch=2, heads=5)
    with pytest.raises(ValueError, match="batch"):
        mask.validate(batch=3)
    assert mask.expand(2, 5).shape == (2, 5, 2, 2)


def test_bad_shapes_explain_themselves():
    with pytest.raises(ValueError, match=r"needs \(2, 2\)"):
        BlockMask(torch.ones(3, 3, dtype=torch.bool), 8, 16)
    with pytest.raises(ValueError, match="tile"):
        BlockMask(torch.ones(4, 4, dtype=torch.bool), 10, None, layout="tiles", grid=(8, 8), tile=(4, 4))
    with pytest.raises(ValueError, match="layout"):
        BlockMask(torch.ones(1, 1, dtype=torch.bool), 8, 8, layout="rows")
    with pytest.raises(TypeError):
        BlockMask([[True]], 8, 8)


def test_and_or_invert_and_token_equality():
    g = torch.Generator().manual_seed(0)
    a = BlockMask(torch.rand(1, 2, 3, 3, generator=g) > 0.5, 4, 12, allow_empty_rows=True)
    b = BlockMask(torch.rand(1, 2, 3, 3, generator=g) > 0.5, 4, 12, allow_empty_rows=True)
    assert torch.equal((a & b).to_token_mask(), a.to_token_mask() & b.to_token_mask())
    assert torch.equal((a | b).to_token_mask(), a.to_token_mask() | b.to_token_mask())
    assert torch.equal((~a).blocks, ~a.blocks)
    with pytest.raises(ValueError, match="differ"):
        a & BlockMask.full(12, 6)


def test_from_token_mask_roundtrip():
    blocks = torch.rand(1, 1, 4, 3, generator=torch.Generator().manual_seed(2)) > 0.5
    mask = BlockMask(blocks, 8, (30, 20), allow_empty_rows=True)
    again = BlockMask.from_token_mask(mask.to_token_mask(), 8)
    assert again.equals(mask)


def test_to_flex_is_cached_and_matches_token_mask():
    blocks = torch.rand(1, 2, 3, 3, generator=torch.Generator().manual_seed(4)) > 0.5
    mask = BlockMask(blocks, 16, 40, allow_empty_rows=True)
    flex = mask.to_flex("cpu")
    assert mask.to_flex("cpu") is flex
    dense = flex.to_dense()  # [B, H, Mq, Mk] blocks that are computed
    assert torch.equal(dense.bool(), blocks)


def test_key_blocks_per_row_is_cached_carried_to_devices_and_never_read_back_unasked():
    """The mean number of key blocks per query block: computed from CPU blocks for free, carried by
    ``to``, and for blocks built elsewhere (a GPU; here the meta device) only read when asked."""
    from samsparse.backends.base import mask_kernel_args

    blocks = torch.zeros(1, 2, 4, 4, dtype=torch.bool)
    blocks[..., 0] = True
    blocks[0, 1, :, 1] = True  # head 1 reads two key blocks per query block: mean 1.5
    mask = BlockMask(blocks, 64, 256)
    assert mask.key_blocks_per_row() == 1.5
    assert mask_kernel_args(mask, torch.device("cpu")).mean_keys == 1.5 * 64
    assert mask.to("meta").key_blocks_per_row(read_device=False) == 1.5
    elsewhere = BlockMask(blocks.to("meta"), 64, 256)
    assert elsewhere.key_blocks_per_row(read_device=False) is None
    assert mask_kernel_args(elsewhere, torch.device("meta")).mean_keys == 0.0
    assert (~mask).key_blocks_per_row() == 2.5  # a new mask: its own count
    # while torch.compile traces, nothing is read (a read would break the graph); known values still are
    fresh = BlockMask(blocks, 64, 256)
    with mock.patch.object(torch.compiler, "is_compiling", return_value=True):
        assert fresh.key_blocks_per_row() is None
        assert mask.key_blocks_per_row() == 1.5
