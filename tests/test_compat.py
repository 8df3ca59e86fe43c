"""Tests for samsparse.compat: the Block-Sparse-Attention style functional API.

Every result is compared with an independent dense computation written here
(per sequence: block mask expanded to tokens by hand, float64 softmax).
"""

from __future__ import annotations

import math

import pytest
import torch

from samsparse.backends.reference import ReferenceBackend
from samsparse.compat import (
    StreamingHeadsNotSupported,
    pad_varlen,
    prepare_varlen_inputs,
    sam_block_sparse_attn,
    sam_block_sparse_attn_simple,
    split_varlen,
)
from samsparse.masks import BlockMask

BACKENDS = ["sdpa", "reference", "auto", "flex"]
FP32_TOL = dict(atol=2e-5, rtol=2e-5)
BF16_TOL = dict(atol=3e-2, rtol=3e-2)


# --------------------------------------------------------------------------- oracle
def dense_attention(q, k, v, token_mask=None, scale=None):
    """q [Nq, H, D], k/v [Nk, Hkv, D], token_mask bool [H|1, Nq, Nk] -> (out [Nq, H, D] f64, lse [H, Nq] f64)."""
    heads, d = q.shape[1], q.shape[2]
    rep = heads // k.shape[1]
    scale = d**-0.5 if scale is None else scale
    qd = q.double().permute(1, 0, 2)
    kd = k.double().repeat_interleave(rep, dim=1).permute(1, 0, 2)
    vd = v.double().repeat_interleave(rep, dim=1).permute(1, 0, 2)
    s = qd @ kd.transpose(-1, -2) * scale
    if token_mask is not None:
        s = s.masked_fill(~token_mask, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    safe = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    p = torch.exp(s - safe[..., None])
    return (p @ vd).permute(1, 0, 2), lse


def seq_token_mask(blocks, nq, nk, bq, bk):
    """blocks [H, Mq, Mk] (sequence layout) -> bool [H, nq, nk]."""
    qb = torch.arange(nq) // bq
    kb = torch.arange(nk) // bk
    return blocks[:, qb][:, :, kb]


def tile_token_mask(blocks, grid, tile):
    """blocks [H, M, M] over SAM-style tiles -> bool [H, N, N]."""
    gh, gw = grid
    th, tw = tile
    per_row = -(-gw // tw)
    ids = torch.tensor([(r // th) * per_row + (c // tw) for r in range(gh) for c in range(gw)])
    return blocks[:, ids][:, :, ids]


def head_blocks(mask_heads, hmt, mq, mk):
    """Per-query-head blocks [H, mq, mk] from mask heads [S, >=mq, >=mk] and head_mask_type."""
    out = []
    for t in hmt:
        out.append(torch.ones(mq, mk, dtype=torch.bool) if t == 0 else mask_heads[t - 1, :mq, :mk])
    return torch.stack(out)


def random_blocks(*shape, density=0.4, generator=None):
    blocks = torch.rand(*shape, generator=generator) < density
    blocks[..., 0] = True  # every query block reads key block 0 (present in every sequence)
    return blocks


def make_varlen(lens_q, lens_k, heads, kv_heads, d, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    qs = [torch.randn(n, heads, d, generator=g).to(dtype) for n in lens_q]
    ks = [torch.randn(n, kv_heads, d, generator=g).to(dtype) for n in lens_k]
    vs = [torch.randn(n, kv_heads, d, generator=g).to(dtype) for n in lens_k]
    return qs, ks, vs


def run_varlen_case(lens_q, lens_k, heads, kv_heads, d, hmt, block, backend, dtype=torch.float32, tol=FP32_TOL,
                    scale=None, seed=0):
    bq, bk = (block, block) if isinstance(block, int) else block
    qs, ks, vs = make_varlen(lens_q, lens_k, heads, kv_heads, d, dtype, seed)
    q, cu_q, max_q = prepare_varlen_inputs(qs)
    k, cu_k, max_k = prepare_varlen_inputs(ks)
    v, _, _ = prepare_varlen_inputs(vs)
    num_mask_heads = max(max(hmt), 1)
    mq, mk = math.ceil(max_q / bq), math.ceil(max_k / bk)
    mask = random_blocks(len(lens_q), num_mask_heads, mq, mk, generator=torch.Generator().manual_seed(seed + 1))
    out, lse = sam_block_sparse_attn(
        q, k, v, cu_q, cu_k, torch.tensor(hmt, dtype=torch.int32), mask, max_q, max_k,
        softmax_scale=scale, block_size=block, backend=backend, return_lse=True,
    )
    assert out.shape == q.shape and out.dtype == dtype
    assert lse.shape == (heads, q.shape[0]) and lse.dtype == torch.float32
    for i, (qi, ki, vi, oi, li) in enumerate(
        zip(qs, ks, vs, split_varlen(out, cu_q), split_varlen(lse.T, cu_q))
    ):
        nq, nk = qi.shape[0], ki.shape[0]
        blocks = head_blocks(mask[i], hmt, math.ceil(nq / bq), math.ceil(nk / bk))
        ref, ref_lse = dense_attention(qi, ki, vi, seq_token_mask(blocks, nq, nk, bq, bk), scale)
        torch.testing.assert_close(oi.double(), ref, **tol, msg=lambda m: f"sequence {i}: {m}")
        torch.testing.assert_close(li.T.double(), ref_lse, **tol, msg=lambda m: f"sequence {i} lse: {m}")
    return out


# --------------------------------------------------------------------------- varlen: numerics
VARLEN_CASES = [
    # block, head dim, kv heads, head_mask_type (H = 4)
    (32, 32, 4, [0, 1, 2, 1]),
    (64, 64, 2, [1, 0, 2, 0]),
    (32, 80, 1, [2, 2, 0, 1]),
    (64, 128, 2, [1, 2, 3, 4]),  # head h reads mask head h
    (32, 256, 1, [1, 1, 1, 1]),  # one mask head for all
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("block,d,kv_heads,hmt", VARLEN_CASES)
def test_varlen_matches_dense(backend, block, d, kv_heads, hmt):
    run_varlen_case([37, 128, 200], [37, 128, 200], 4, kv_heads, d, hmt, block, backend)


@pytest.mark.parametrize("backend", ["sdpa", "reference"])
def test_varlen_different_q_and_k_lengths_and_block_pair(backend):
    run_varlen_case([37, 128, 200], [64, 17, 150], 4, 2, 64, [1, 0, 2, 1], (32, 16), backend, scale=0.3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_varlen_bf16(backend):
    run_varlen_case([37, 128, 200], [37, 128, 200], 4, 2, 64, [0, 1, 2, 1], 64, backend,
                    dtype=torch.bfloat16, tol=BF16_TOL)


def test_varlen_fp16():
    run_varlen_case([50, 100], [50, 100], 4, 4, 32, [1, 0, 1, 0], 32, "sdpa", dtype=torch.float16, tol=BF16_TOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_varlen_all_dense_heads(backend):
    qs, ks, vs = make_varlen([37, 200], [37, 200], 4, 1, 64)
    q, cu, mx = prepare_varlen_inputs(qs)
    k, _, _ = prepare_varlen_inputs(ks)
    v, _, _ = prepare_varlen_inputs(vs)
    out = sam_block_sparse_attn(q, k, v, cu, cu, [0, 0, 0, 0], None, mx, mx, backend=backend)
    for qi, ki, vi, oi in zip(qs, ks, vs, split_varlen(out, cu)):
        torch.testing.assert_close(oi.double(), dense_attention(qi, ki, vi)[0], **FP32_TOL)


def test_varlen_mask_broadcast_over_batch():
    qs, ks, vs = make_varlen([37, 100], [37, 100], 4, 2, 32, seed=5)
    q, cu, mx = prepare_varlen_inputs(qs)
    k, _, _ = prepare_varlen_inputs(ks)
    v, _, _ = prepare_varlen_inputs(vs)
    mask = random_blocks(1, 2, 4, 4, generator=torch.Generator().manual_seed(6))
    hmt = [2, 0, 1, 2]
    out = sam_block_sparse_attn(q, k, v, cu, cu, hmt, mask, mx, mx, block_size=32, backend="sdpa")
    for i, oi in enumerate(split_varlen(out, cu)):
        n = qs[i].shape[0]
        mb = math.ceil(n / 32)
        ref = dense_attention(qs[i], ks[i], vs[i], seq_token_mask(head_blocks(mask[0], hmt, mb, mb), n, n, 32, 32))[0]
        torch.testing.assert_close(oi.double(), ref, **FP32_TOL)


def test_varlen_zero_length_sequence():
    qs, ks, vs = make_varlen([0, 50, 0], [0, 50, 0], 4, 2, 32)
    q, cu, mx = prepare_varlen_inputs(qs)
    k, _, _ = prepare_varlen_inputs(ks)
    v, _, _ = prepare_varlen_inputs(vs)
    mask = random_blocks(3, 1, 2, 2)
    out, lse = sam_block_sparse_attn(q, k, v, cu, cu, [1, 1, 0, 0], mask, mx, mx, block_size=32,
                                     backend="sdpa", return_lse=True)
    assert out.shape == (50, 4, 32)
    blocks = head_blocks(mask[1], [1, 1, 0, 0], 2, 2)
    ref, ref_lse = dense_attention(qs[1], ks[1], vs[1], seq_token_mask(blocks, 50, 50, 32, 32))
    torch.testing.assert_close(out.double(), ref, **FP32_TOL)
    torch.testing.assert_close(lse.double(), ref_lse, **FP32_TOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_varlen_list_of_blockmasks_with_tiles(backend):
    # sequence 0: an 8x8 token grid in 4x4 tiles (SAM layout); sequence 1: 100 tokens, blocks of 32
    g = torch.Generator().manual_seed(3)
    hmt = [1, 0, 2, 2]
    tiles = random_blocks(1, 2, 4, 4, generator=g)
    seqb = random_blocks(1, 2, 4, 4, generator=g)
    masks = [
        BlockMask(tiles, None, None, layout="tiles", grid=(8, 8), tile=(4, 4)),
        BlockMask(seqb, 32, 100),
    ]
    qs, ks, vs = make_varlen([64, 100], [64, 100], 4, 2, 64, seed=4)
    q, cu, mx = prepare_varlen_inputs(qs)
    k, _, _ = prepare_varlen_inputs(ks)
    v, _, _ = prepare_varlen_inputs(vs)
    token_masks = [
        tile_token_mask(head_blocks(tiles[0], hmt, 4, 4), (8, 8), (4, 4)),
        seq_token_mask(head_blocks(seqb[0], hmt, 4, 4), 100, 100, 32, 32),
    ]
    for _ in range(2):  # second call reuses the derived masks cached on the user's masks
        out, lse = sam_block_sparse_attn(q, k, v, cu, cu, hmt, masks, mx, mx, backend=backend, return_lse=True)
        for i, (oi, li) in enumerate(zip(split_varlen(out, cu), split_varlen(lse.T, cu))):
            ref, ref_lse = dense_attention(qs[i], ks[i], vs[i], token_masks[i])
            torch.testing.assert_close(oi.double(), ref, **FP32_TOL)
            torch.testing.assert_close(li.T.double(), ref_lse, **FP32_TOL)


def test_varlen_empty_rows_error_and_opt_in():
    # sequence 0 has 37 tokens = 2 blocks of 32; its query block 0 reads only key block 3 -> cropped away
    qs, ks, vs = make_varlen([37, 128], [37, 128], 2, 2, 32)
    q, cu, mx = prepare_varlen_inputs(qs)
    k, _, _ = prepare_varlen_inputs(ks)
    v, _, _ = prepare_varlen_inputs(vs)
    mask = torch.ones(2, 1, 4, 4, dtype=torch.bool)
    mask[0, 0, 0] = torch.tensor([False, False, False, True])
    with pytest.raises(ValueError, match=r"sequence 0: query block 0 .*allow_empty_rows=True"):
        sam_block_sparse_attn(q, k, v, cu, cu, [1, 0], mask, mx, mx, block_size=32, backend="sdpa")
    for backend in ("sdpa", "reference"):
        out, lse = sam_block_sparse_attn(q, k, v, cu, cu, [1, 0], mask, mx, mx, block_size=32, backend=backend,
                                         return_lse=True, allow_empty_rows=True)
        assert torch.all(out[:32, 0] == 0) and torch.all(lse[0, :32] == float("-inf"))
        for i, (oi, li) in enumerate(zip(split_varlen(out, cu), split_varlen(lse.T, cu))):
            n = qs[i].shape[0]
            blocks = head_blocks(mask[i], [1, 0], math.ceil(n / 32), math.ceil(n / 32))
            ref, ref_lse = dense_attention(qs[i], ks[i], vs[i], seq_token_mask(blocks, n, n, 32, 32))
            torch.testing.assert_close(oi.double(), ref, **FP32_TOL)
            torch.testing.assert_close(li.T.double(), ref_lse, **FP32_TOL)


class RecordingBackend(ReferenceBackend):
    """Reference backend that remembers the q/k/v it was given."""

    name = "recording"

    def __init__(self):
        super().__init__()
        self.calls = []

    def _attend(self, q, k, v, mask, rel_pos, scale, return_lse):
        self.calls.append((q, k, v, mask))
        return super()._attend(q, k, v, mask, rel_pos, scale, return_lse)


def test_varlen_hands_views_to_the_backend():
    qs, ks, vs = make_varlen([37, 90], [37, 90], 4, 2, 32)
    q, cu, mx = prepare_varlen_inputs(qs)
    k, _, _ = prepare_varlen_inputs(ks)
    v, _, _ = prepare_varlen_inputs(vs)
    rec = RecordingBackend()
    sam_block_sparse_attn(q, k, v, cu, cu, [1, 0, 1, 0], random_blocks(2, 1, 3, 3), mx, mx, block_size=32, backend=rec)
    assert len(rec.calls) == 2
    for (qi, ki, vi, _), start, n in zip(rec.calls, (0, 37), (37, 90)):
        assert qi.shape == (1, 4, n, 32) and ki.shape == (1, 2, n, 32)
        assert qi.data_ptr() == q[start].data_ptr() and ki.data_ptr() == k[start].data_ptr()
        assert vi.data_ptr() == v[start].data_ptr()
        assert qi.stride()[1:] == (32, 4 * 32, 1)  # [1, H, N, D] view of [N, H, D]


# --------------------------------------------------------------------------- padded API
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kv_heads,d", [(4, 32), (2, 64), (1, 128)])
def test_simple_matches_dense(backend, kv_heads, d):
    g = torch.Generator().manual_seed(7)
    b, n, h = 2, 200, 4
    q = torch.randn(b, n, h, d, generator=g)
    k = torch.randn(b, n, kv_heads, d, generator=g)
    v = torch.randn(b, n, kv_heads, d, generator=g)
    blocks = random_blocks(b, h, 4, 4, generator=g)
    out, lse = sam_block_sparse_attn_simple(q, k, v, blocks, backend=backend, return_lse=True, block_size=64)
    assert out.shape == (b, n, h, d) and lse.shape == (b, h, n)
    for i in range(b):
        ref, ref_lse = dense_attention(q[i], k[i], v[i], seq_token_mask(blocks[i], n, n, 64, 64))
        torch.testing.assert_close(out[i].double(), ref, **FP32_TOL)
        torch.testing.assert_close(lse[i].double(), ref_lse, **FP32_TOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_simple_mask_forms(backend):
    g = torch.Generator().manual_seed(8)
    b, nq, nk, h, d = 2, 100, 70, 4, 64
    q = torch.randn(b, nq, h, d, generator=g)
    k = torch.randn(b, nk, 2, d, generator=g)
    v = torch.randn(b, nk, 2, d, generator=g)
    blocks = random_blocks(4, 3, generator=g)  # [Mq, Mk] for blocks of 32
    want = [dense_attention(q[i], k[i], v[i], seq_token_mask(blocks[None], nq, nk, 32, 32), 0.2)[0] for i in range(b)]
    forms = [blocks, blocks[None, None], BlockMask(blocks, 32, (nq, nk))]
    for mask in forms:
        kw = {} if isinstance(mask, BlockMask) else {"block_size": 32}
        out = sam_block_sparse_attn_simple(q, k, v, mask, softmax_scale=0.2, backend=backend, **kw)
        for i in range(b):
            torch.testing.assert_close(out[i].double(), want[i], **FP32_TOL)
    dense = sam_block_sparse_attn_simple(q, k, v, None, backend=backend)
    for i in range(b):
        torch.testing.assert_close(dense[i].double(), dense_attention(q[i], k[i], v[i])[0], **FP32_TOL)


def test_simple_bf16():
    g = torch.Generator().manual_seed(9)
    q = torch.randn(1, 128, 4, 80, generator=g).bfloat16()
    k = torch.randn(1, 128, 2, 80, generator=g).bfloat16()
    v = torch.randn(1, 128, 2, 80, generator=g).bfloat16()
    blocks = random_blocks(1, 4, 2, 2, generator=g)
    out = sam_block_sparse_attn_simple(q, k, v, blocks, block_size=64, backend="sdpa")
    assert out.dtype == torch.bfloat16
    ref = dense_attention(q[0], k[0], v[0], seq_token_mask(blocks[0], 128, 128, 64, 64))[0]
    torch.testing.assert_close(out[0].double(), ref, **BF16_TOL)


def test_simple_hands_transposed_views_to_the_backend():
    qkv = torch.randn(2, 96, 3, 4, 32)  # fused projection output [B, N, 3, H, D]
    q, k, v = qkv.unbind(2)
    rec = RecordingBackend()
    out = sam_block_sparse_attn_simple(q, k, v, None, backend=rec)
    (qb, kb, vb, _), = rec.calls
    assert qb.shape == (2, 4, 96, 32)
    assert qb.data_ptr() == q.data_ptr() and kb.data_ptr() == k.data_ptr() and vb.data_ptr() == v.data_ptr()
    assert qb.stride() == q.transpose(1, 2).stride()
    assert out.shape == (2, 96, 4, 32)


# --------------------------------------------------------------------------- helpers
def test_prepare_split_pad_roundtrip():
    seqs = [torch.randn(n, 2, 8) for n in (3, 0, 5)]
    packed, cu, mx = prepare_varlen_inputs(seqs)
    assert packed.shape == (8, 2, 8) and cu.dtype == torch.int32 and cu.device.type == "cpu"
    assert cu.tolist() == [0, 3, 3, 8] and mx == 5
    for a, b in zip(split_varlen(packed, cu), seqs):
        assert torch.equal(a, b)
    padded = pad_varlen(packed, cu)
    assert padded.shape == (3, 5, 2, 8)
    assert torch.equal(padded[0, :3], seqs[0]) and torch.all(padded[0, 3:] == 0) and torch.all(padded[1] == 0)

    repacked, cu2, mx2 = prepare_varlen_inputs(padded, torch.tensor([3, 0, 5]))
    assert torch.equal(repacked, packed) and torch.equal(cu2, cu) and mx2 == 5
    full, cu3, mx3 = prepare_varlen_inputs(padded)
    assert full.shape == (15, 2, 8) and cu3.tolist() == [0, 5, 10, 15] and mx3 == 5
    assert pad_varlen(packed, cu, max_seqlen=7, value=-1.0).shape == (3, 7, 2, 8)


def test_padded_batch_end_to_end_matches_simple():
    """Pack a padded batch, run varlen, pad back == the padded API run per sequence."""
    g = torch.Generator().manual_seed(11)
    b, n, h, d = 3, 128, 4, 64
    lengths = [128, 37, 90]
    qp = torch.randn(b, n, h, d, generator=g)
    kp = torch.randn(b, n, 2, d, generator=g)
    vp = torch.randn(b, n, 2, d, generator=g)
    mask = random_blocks(b, 2, 4, 4, generator=g)
    hmt = [1, 2, 0, 2]
    q, cu, mx = prepare_varlen_inputs(qp, lengths)
    k, _, _ = prepare_varlen_inputs(kp, lengths)
    v, _, _ = prepare_varlen_inputs(vp, lengths)
    out = pad_varlen(sam_block_sparse_attn(q, k, v, cu, cu, hmt, mask, mx, mx, block_size=32, backend="sdpa"), cu)
    for i, length in enumerate(lengths):
        mb = math.ceil(length / 32)
        blocks = head_blocks(mask[i], hmt, mb, mb)[None]
        want = sam_block_sparse_attn_simple(qp[i : i + 1, :length], kp[i : i + 1, :length], vp[i : i + 1, :length],
                                            blocks, block_size=32, backend="reference")
        torch.testing.assert_close(out[i, :length], want[0], **FP32_TOL)
        assert torch.all(out[i, length:] == 0)


# --------------------------------------------------------------------------- errors
def varlen_args(lens=(37, 128), heads=4, kv_heads=2, d=32, block=32, mask_heads=2):
    qs, ks, vs = make_varlen(list(lens), list(lens), heads, kv_heads, d)
    q, cu, mx = prepare_varlen_inputs(qs)
    k, _, _ = prepare_varlen_inputs(ks)
    v, _, _ = prepare_varlen_inputs(vs)
    mb = math.ceil(mx / block)
    mask = random_blocks(len(lens), mask_heads, mb, mb)
    hmt = torch.tensor([1, 0, 2, 0][:heads] + [0] * max(0, heads - 4), dtype=torch.int32)
    return dict(q=q, k=k, v=v, cu_seqlens_q=cu, cu_seqlens_k=cu, head_mask_type=hmt, mask=mask,
                max_seqlen_q=mx, max_seqlen_k=mx, block_size=block, backend="sdpa")


def full_mask(n, heads=2, block=32):
    m = math.ceil(n / block)
    return BlockMask(torch.ones(1, heads, m, m, dtype=torch.bool), block, n)


def call(**overrides):
    args = varlen_args()
    args.update(overrides)
    return sam_block_sparse_attn(**args)


def test_varlen_args_are_valid():
    out = call()
    assert out.shape == (165, 4, 32)


def test_streaming_heads_rejected():
    hmt = torch.tensor([1, -1, 0, 0], dtype=torch.int32)
    with pytest.raises(NotImplementedError, match=r"streaming heads are not supported, use 0 \(dense\) or k>0"):
        call(head_mask_type=hmt)
    with pytest.raises(ValueError, match="streaming heads are not supported"):
        call(head_mask_type=hmt)
    with pytest.raises(StreamingHeadsNotSupported, match=r"head_mask_type\[1\] = -1"):
        call(head_mask_type=hmt)


@pytest.mark.parametrize(
    "overrides,exc,pattern",
    [
        (lambda a: dict(cu_seqlens_q=a["cu_seqlens_q"].long()), TypeError, r"cu_seqlens_q must have dtype int32.*\.to\(torch\.int32\)"),
        (lambda a: dict(cu_seqlens_k=a["cu_seqlens_k"].tolist()), TypeError, "cu_seqlens_k must be an int32 tensor"),
        (lambda a: dict(cu_seqlens_q=torch.tensor([0, 37, 160], dtype=torch.int32)), ValueError, r"ends at 160 but q has 165"),
        (lambda a: dict(cu_seqlens_q=torch.tensor([1, 37, 165], dtype=torch.int32)), ValueError, "must start at 0"),
        (lambda a: dict(cu_seqlens_q=torch.tensor([0, 100, 37, 165], dtype=torch.int32)), ValueError, "non-decreasing"),
        (lambda a: dict(cu_seqlens_k=torch.tensor([0, 165], dtype=torch.int32)), ValueError, "cu_seqlens_q describes 2 sequences but cu_seqlens_k 1"),
        (lambda a: dict(cu_seqlens_q=a["cu_seqlens_q"][None]), ValueError, r"1-D \[batch \+ 1\]"),
        (lambda a: dict(q=a["q"][None]), ValueError, r"q must be \[total_q, H, D\].*prepare_varlen_inputs"),
        (lambda a: dict(k=a["k"][:, :1].expand(-1, 3, -1), v=a["v"][:, :1].expand(-1, 3, -1)), ValueError, "multiple of the number of k/v heads"),
        (lambda a: dict(v=a["v"][:-1]), ValueError, "k and v must have the same shape"),
        (lambda a: dict(q=a["q"].double(), k=a["k"].double(), v=a["v"].double()), TypeError, "supported: float16, bfloat16, float32"),
        (lambda a: dict(k=a["k"].half()), TypeError, "q, k, v must share one dtype"),
        (lambda a: dict(q=a["q"].long()), TypeError, "q has dtype int64"),
        (lambda a: dict(head_mask_type=torch.tensor([1, 0, 2], dtype=torch.int32)), ValueError, "3 entries but q has H=4 heads"),
        (lambda a: dict(head_mask_type=a["head_mask_type"].long()), TypeError, "head_mask_type must have dtype int32"),
        (lambda a: dict(head_mask_type=torch.tensor([1, 0, 3, 0], dtype=torch.int32)), ValueError, r"head_mask_type\[2\] = 3 refers to mask head 2, but mask has only 2"),
        (lambda a: dict(head_mask_type=torch.tensor([1, -2, 0, 0], dtype=torch.int32)), ValueError, r"head_mask_type\[1\] = -2 is invalid"),
        (lambda a: dict(mask=None), ValueError, "block-sparse heads.*but mask is None"),
        (lambda a: dict(mask=a["mask"][:, :, :3]), ValueError, r"mask has \(3, 4\) query x key blocks, but max_seqlen_q=128.*block_size=\(32, 32\) need \(4, 4\)"),
        (lambda a: dict(block_size=64), ValueError, r"need \(2, 2\); build the mask for the max lengths, or pass the block_size"),
        (lambda a: dict(mask=a["mask"].repeat(2, 1, 1, 1)), ValueError, "mask batch dimension 4 does not match the 2 sequences"),
        (lambda a: dict(mask=a["mask"].float()), TypeError, r"bool block tensor.*mask\.bool\(\)"),
        (lambda a: dict(mask=a["mask"][0]), ValueError, r"\[batch, num_mask_heads, Mq_max, Mk_max\]"),
        (lambda a: dict(mask="blocks"), TypeError, "list of per-sequence"),
        (lambda a: dict(max_seqlen_q=100), ValueError, "max_seqlen_q=100 is smaller than sequence 1's length 128"),
        (lambda a: dict(max_seqlen_k=128.0), TypeError, "max_seqlen_k must be an int"),
        (lambda a: dict(softmax_scale=-1.0), ValueError, "softmax_scale must be a positive"),
        (lambda a: dict(backend="nope"), ValueError, "unknown backend 'nope'"),
        (lambda a: dict(mask=[BlockMask.full(37, 32)]), ValueError, "list of 1 BlockMasks but cu_seqlens describe 2"),
        (lambda a: dict(mask=[full_mask(37), full_mask(100)]), ValueError, r"mask\[1\] was built for seq_len \(100, 100\) but sequence 1 has 128"),
        (lambda a: dict(mask=[BlockMask.full(37, 32), BlockMask.full(128, 32)]), ValueError, r"head_mask_type\[2\] = 2 refers to mask head 1, but mask\[0\] has only 1"),
        (lambda a: dict(mask=[full_mask(37), "x"]), TypeError, r"mask\[1\] must be a BlockMask"),
    ],
)
def test_varlen_errors(overrides, exc, pattern):
    args = varlen_args()
    args.update(overrides(args))
    with pytest.raises(exc, match=pattern):
        sam_block_sparse_attn(**args)


@pytest.mark.parametrize("d", [20, 36, 512])
def test_head_dim_rejected(d):
    args = varlen_args(d=d)
    with pytest.raises(ValueError, match=rf"head dim D={d} is not supported.*between 32 and 256.*multiple of 8.*zero-pad"):
        sam_block_sparse_attn(**args)
    q = args["q"][None]
    with pytest.raises(ValueError, match=rf"head dim D={d}"):
        sam_block_sparse_attn_simple(q, q[:, :, :2], q[:, :, :2], None)


def test_no_keys_for_a_sequence():
    qs, ks, vs = make_varlen([10, 20], [0, 20], 4, 2, 32)
    q, cu_q, mq = prepare_varlen_inputs(qs)
    k, cu_k, mk = prepare_varlen_inputs(ks)
    v, _, _ = prepare_varlen_inputs(vs)
    with pytest.raises(ValueError, match="sequence 0 has 10 queries but no keys"):
        sam_block_sparse_attn(q, k, v, cu_q, cu_k, [0] * 4, None, mq, mk, backend="sdpa")
    out, lse = sam_block_sparse_attn(q, k, v, cu_q, cu_k, [0] * 4, None, mq, mk, backend="sdpa", return_lse=True,
                                     allow_empty_rows=True)
    assert torch.all(out[:10] == 0) and torch.all(lse[:, :10] == float("-inf"))
    torch.testing.assert_close(out[10:].double(), dense_attention(qs[1], ks[1], vs[1])[0], **FP32_TOL)


def test_simple_errors():
    q = torch.randn(2, 100, 4, 32)
    k = torch.randn(2, 100, 2, 32)
    blocks = torch.ones(2, 4, 4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"q must be \[B, N, H, D\].*sam_block_sparse_attn with cu_seqlens"):
        sam_block_sparse_attn_simple(q[0], k[0], k[0], None)
    with pytest.raises(ValueError, match=r"mask has \(4, 4\) query x key blocks, but Nq=100, Nk=100 with block_size=\(128, 128\) needs \(1, 1\)"):
        sam_block_sparse_attn_simple(q, k, k, blocks)
    with pytest.raises(ValueError, match="mask head dimension 3 does not match the number of q heads H=4"):
        sam_block_sparse_attn_simple(q, k, k, blocks[:, :3], block_size=32)
    with pytest.raises(ValueError, match="mask batch dimension 3 does not match the input batch B=2"):
        sam_block_sparse_attn_simple(q, k, k, blocks[:1].expand(3, -1, -1, -1), block_size=32)
    with pytest.raises(ValueError, match=r"mask was built for seq_len \(90, 90\) but q has Nq=100"):
        sam_block_sparse_attn_simple(q, k, k, BlockMask.full(90, 32))
    with pytest.raises(ValueError, match="k/v batch 1 differs from q batch 2"):
        sam_block_sparse_attn_simple(q, k[:1], k[:1], None)
    with pytest.raises(TypeError, match="mask must be a BlockMask, a bool block tensor"):
        sam_block_sparse_attn_simple(q, k, k, [[True]])
    empty_row = blocks.clone()
    empty_row[0, 1, 2] = False
    with pytest.raises(ValueError, match="query block 2 .*reads no key block.*allow_empty_rows=True"):
        sam_block_sparse_attn_simple(q, k, k, empty_row, block_size=32, backend="sdpa")
    out = sam_block_sparse_attn_simple(q, k, k, empty_row, block_size=32, backend="sdpa", allow_empty_rows=True)
    assert torch.all(out[0, 64:96, 1] == 0)
