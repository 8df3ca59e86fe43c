"""Windowed blocks without the partition (samsparse.windows) on the CPU.

The in-place window kernel itself is checked under the Triton interpreter in
``test_triton_backend.py`` (``windows-*`` checks) and on the GPU in
``test_triton_gpu.py``; here: the block class swap, the partition fallback of
backends without a window kernel, and what a SAM user relies on (state_dict,
pickling, unpatch).
"""

from __future__ import annotations

import copy
import io

import pytest
import torch

from samsparse import optimize, patch, unpatch
from samsparse.attention import SparseAttention
from samsparse.checkpoints import build_tiny_sam
from samsparse.windows import (
    WindowsInPlaceBlock,
    use_windows_in_place,
    use_windows_partitioned,
    window_partition,
    window_unpartition,
)

sam_encoder = pytest.importorskip("segment_anything.modeling.image_encoder")


def _padded_sam():
    """A tiny SAM whose 10x10 token grid needs padding to 3x3 windows, with non-zero qkv bias / rel-pos."""
    sam = build_tiny_sam(img_size=160, seed=1, window_size=3, global_attn_indexes=(1,)).eval()
    with torch.no_grad():
        for name, p in sam.image_encoder.named_parameters():
            if "rel_pos" in name or name.endswith("qkv.bias"):
                p.normal_(0.0, 0.5)
    return sam


@pytest.mark.parametrize("size", [(8, 8), (10, 7)])
def test_partition_helpers_match_segment_anything(size):
    x = torch.randn(2, *size, 6)
    ours, pad = window_partition(x, 3)
    theirs, pad_sa = sam_encoder.window_partition(x, 3)
    assert pad == pad_sa and torch.equal(ours, theirs)
    assert torch.equal(window_unpartition(ours, 3, pad, size), sam_encoder.window_unpartition(theirs, 3, pad_sa, size))


def test_optimize_swaps_windowed_blocks_and_keeps_the_function():
    sam = _padded_sam()
    original = copy.deepcopy(sam)
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        want = original.image_encoder(x)
    keys = list(sam.state_dict())
    optimize(sam, dtype=None)
    blocks = sam.image_encoder.blocks
    assert [type(b) is WindowsInPlaceBlock for b in blocks] == [b.window_size > 0 for b in blocks]
    assert all(isinstance(b, sam_encoder.Block) for b in blocks)
    assert list(sam.state_dict()) == keys
    with torch.no_grad():
        got = sam.image_encoder(x)
    # no window kernel on this CPU: forward_windowed partitions, as SAM does
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_windows_partition_option_and_unpatch_restore_sam_blocks():
    sam = _padded_sam()
    optimize(sam, dtype=None)
    optimize(sam, dtype=None, windows="partition")
    assert all(type(b) is sam_encoder.Block for b in sam.image_encoder.blocks)
    optimize(sam, dtype=None, windows="in_place")
    unpatch(sam)
    assert all(type(b) is sam_encoder.Block for b in sam.image_encoder.blocks)
    assert not any(isinstance(b.attn, SparseAttention) for b in sam.image_encoder.blocks)
    with pytest.raises(ValueError, match="windows must be one of"):
        optimize(sam, windows="inplace")


def test_in_place_block_runs_the_original_forward_once_unpatched_by_hand():
    sam = _padded_sam()
    original = copy.deepcopy(sam)
    patch(sam)
    n_windowed = sum(b.window_size > 0 for b in sam.image_encoder.blocks)
    assert n_windowed >= 1 and use_windows_in_place(sam) == n_windowed
    for blk in sam.image_encoder.blocks:  # the attention swapped back without unpatch()
        if isinstance(blk.attn, SparseAttention):
            blk.attn = blk.attn.to_original()
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        torch.testing.assert_close(sam.image_encoder(x), original.image_encoder(x), rtol=1e-5, atol=1e-5)
    assert use_windows_partitioned(sam) == n_windowed


def test_only_exact_segment_anything_blocks_are_swapped():
    sam = _padded_sam()
    patch(sam)

    class MyBlock(sam_encoder.Block):
        pass

    windowed = [b for b in sam.image_encoder.blocks if b.window_size > 0]
    windowed[0].__class__ = MyBlock  # a subclass may have its own forward: left alone
    assert use_windows_in_place(sam) == len(windowed) - 1
    assert type(windowed[0]) is MyBlock


def test_optimized_model_with_in_place_windows_pickles():
    sam = _padded_sam()
    optimize(sam, dtype=None)
    buf = io.BytesIO()
    torch.save(sam, buf)
    buf.seek(0)
    again = torch.load(buf, weights_only=False)
    assert [type(b) for b in again.image_encoder.blocks] == [type(b) for b in sam.image_encoder.blocks]
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        torch.testing.assert_close(again.image_encoder(x), sam.image_encoder(x))


def test_forward_windowed_checks_its_input():
    attn = SparseAttention(12, num_heads=2, use_rel_pos=True, input_size=(3, 3))
    with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
        attn.forward_windowed(torch.randn(4, 12), 3)
    with pytest.raises(ValueError, match="positive int"):
        attn.forward_windowed(torch.randn(1, 5, 5, 12), 0)
