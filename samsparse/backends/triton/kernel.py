"""Triton kernels: block-sparse flash attention with SAM's decomposed rel-pos fused.

Two kernels:

- :func:`_attn_fwd` — forward attention over a block mask in FlexAttention's
  index form (``kv_num_blocks`` / ``kv_indices``), online softmax in base 2
  (log2(e) folded into the scale), fp32 accumulation, natural-log LSE out.
  SAM's bias ``rel_h[q, row(k)] + rel_w[q, col(k)]`` is added per tile from
  the rel-pos *terms* (any strides).
- :func:`_relpos_terms` — the terms from q and the gathered tables
  (``rel_h = q @ Rh[row(q)]^T``, ``rel_w = q @ Rw[col(q)]^T``) with one small
  ``tl.dot`` per query grid row / column; run right before the attention kernel
  when the caller gives tables.

Token <-> block maps (``LAYOUT``):

- ``0`` sequence: block ``i`` holds tokens ``[i*BQ, (i+1)*BQ)``.
- ``1`` tiles: the tokens are a row-major grid ``(TGH, TGW)`` cut into
  ``(TH, TW)`` tiles numbered row-major (``NTW`` tiles per tile row); a block is
  addressed in place (tokens are never copied).

Key sub-blocks (``ROWS``): in the sequence layout with rel-pos and a key block
made of whole key-grid rows, every step of the loop is exactly 1 or 2 key rows
(``BLOCK_N = next_pow2(RGW)`` or ``2 * RGW``). The width term is then the same
``[BLOCK_M, RGW]`` tile for every step (loaded once per program) and the height
term is one coalesced ``[BLOCK_M]`` vector per row; with one row per step it is
folded into the row max, so the bias costs one FMA per logit.

Fixed offset (``FIXED_M``, dense key-row mode, bf16/fp32): :func:`_fixed_offset_pass` takes each
row's softmax offset from step 0 and keeps it, so a logit costs one FMA and one exp2 (no row max,
no max subtraction); the height term rides on the per-row rescale of the running sums. Programs
whose sums leave [2^-100, 2^100] (logits ~70 nats above all of step 0's) are flagged, and a second
launch (``REDO``) recomputes just those with the running max.

One-hot bias (``REL_DOT``): for small key grids (1: up to 16x16, SAM's windows)
and small tiles of the tiles layout (2) the bias is two tensor-core products,
``rel_h[:, rows] @ onehot(row(k)) + rel_w[:, cols] @ onehot(col(k))`` (K = 16
each), accumulated in fp32 onto the scaled logits. In mode 1 with tables
(``REL_TAB``) the program computes its own terms (:func:`_program_terms`).
Otherwise the bias is gathered per tile (cached loads). The bias of step t+1 is
loaded during step t (plain loads are not software-pipelined by Triton), and
the row of key-block ids sits in registers so the K/V addresses of future steps
are arithmetic the pipeliner can issue ahead.

Windows in place (``WIN``): SAM's windowed blocks pad the token grid with zeros to a
multiple of the window and cut it into windows. With ``WIN`` the program of window
``b`` reads its tokens straight from the unpadded ``[B, IGH*IGW]`` q/k/v (the qkv
projection of the unpadded grid), uses the qkv bias (what SAM's projection makes of a
zero token) as the key and value of each padding token, skips padding queries, and
writes the output back to the image grid. Same result, without the partition copies
and the projections of the padding tokens.

Head dims that are not a power of two are split in two power-of-two parts
(``D1 + D2``, e.g. 80 = 64 + 16) so that no tensor-core work is spent on padding.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["INTERPRET", "LOG2E", "_attn_fwd", "_relpos_terms"]

LOG2E = 1.4426950408889634


@triton.jit
def _load_2d(ptrs, mask, EVEN: tl.constexpr):
    if EVEN:
        x = tl.load(ptrs)
    else:
        x = tl.load(ptrs, mask=mask, other=0.0)
    return x


@triton.jit
def _dot(a, b, acc, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    """a @ b (+ acc) in fp32. UPCAST: multiply in fp32 (the CPU interpreter's bf16 dot is wrong)."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if IEEE or UPCAST:
        res = tl.dot(a, b, acc, input_precision="ieee")
    else:
        res = tl.dot(a, b, acc)
    return res


@triton.jit
def _step_block(t, offs_mk, idx_row, dense_head, SUB_N: tl.constexpr, DENSE: tl.constexpr, HAS_HEAD_MASK: tl.constexpr):
    """(key-block id, sub-step) of loop step t."""
    jb = t // SUB_N
    sub = t - jb * SUB_N
    if DENSE:
        j = jb
    else:
        j = tl.sum(tl.where(offs_mk == jb, idx_row, 0), 0)
        if HAS_HEAD_MASK:
            j = tl.where(dense_head, jb, j)
    return j, sub


@triton.jit
def _key_coords(
    j, sub, nk, offs_n, BK, NTW,
    LAYOUT: tl.constexpr, ROWS: tl.constexpr, SUB_N: tl.constexpr, BLOCK_N: tl.constexpr,
    TGH: tl.constexpr, TGW: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr,
    RGW: tl.constexpr, TILE_REL: tl.constexpr,
):
    """Key tokens of a step: (token ids, valid, rel-grid row, rel-grid col).

    In the key-row mode the row is a scalar (the whole step is one key-grid row).
    """
    if LAYOUT == 0:
        if ROWS > 0:
            b_row = (j * SUB_N + sub) * ROWS  # first key row of the step (BK == SUB_N * ROWS * RGW)
            k_tok = b_row * RGW + offs_n
            k_ok = (offs_n < ROWS * RGW) & (k_tok < nk)
            b_col = offs_n
        else:
            n_in = sub * BLOCK_N + offs_n
            k_tok = j * BK + n_in
            k_ok = (n_in < BK) & (k_tok < nk)
            b_row = k_tok // RGW
            b_col = k_tok - b_row * RGW
    else:
        k_tr = j // NTW
        k_tc = j - k_tr * NTW
        n_in = sub * BLOCK_N + offs_n
        k_r = n_in // TW
        k_c = n_in % TW
        k_row = k_tr * TH + k_r
        k_col = k_tc * TW + k_c
        k_tok = k_row * TGW + k_col
        k_ok = (k_r < TH) & (k_row < TGH) & (k_col < TGW)
        if TILE_REL:
            b_row = k_row
            b_col = k_col
        else:
            b_row = k_tok // RGW
            b_col = k_tok - b_row * RGW
    return k_tok, k_ok, b_row, b_col


@triton.jit
def _gather_bias(relh_rows, relw_rows, b_row, b_col, shr, swc, mask):
    """rel_h[q, row(k)] + rel_w[q, col(k)] for a [BLOCK_M, BLOCK_N] tile, log2 domain, fp32."""
    bias = tl.load(relh_rows[:, None] + b_row[None, :] * shr, mask=mask, other=0.0).to(tl.float32)
    bias += tl.load(relw_rows[:, None] + b_col[None, :] * swc, mask=mask, other=0.0).to(tl.float32)
    return bias * 1.4426950408889634


@triton.jit
def _program_terms(
    q1, q2, TAB, sta, stb, std, q_pos, q_ok,
    G: tl.constexpr, RP: tl.constexpr, TP: tl.constexpr,
    HEAD_DIM: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
):
    """SAM's rel-pos term of a program's queries: ``out[i, r] = <q_i, R[pos_i - r + G - 1]>`` for r < G.

    ``R`` is the raw table (2G-1 rows), read through the gathered one (``TAB[a, b] = R[a - b + G - 1]``):
    one ``[BLOCK_M, D] x [D, TP]`` product gives every query against every raw row, then a
    per-query shift (``tl.gather``) picks its G entries. Rounded to q's dtype, as SAM's einsum is.
    Returns ``[BLOCK_M, RP]`` (zero for r >= G and for missing queries).
    """
    offs_t = tl.arange(0, TP)
    t_ok = offs_t < 2 * G - 1
    row_ptr = TAB + tl.maximum(offs_t - (G - 1), 0) * sta + tl.maximum((G - 1) - offs_t, 0) * stb
    offs_d1 = tl.arange(0, D1)
    tab1 = tl.load(
        row_ptr[:, None] + offs_d1[None, :] * std, mask=t_ok[:, None] & (offs_d1 < HEAD_DIM)[None, :], other=0.0
    ).to(q1.dtype)
    a = _dot(q1, tl.trans(tab1), None, IEEE, UPCAST)
    if D2 > 0:
        offs_d2 = tl.arange(0, D2)
        tab2 = tl.load(
            row_ptr[:, None] + (D1 + offs_d2)[None, :] * std,
            mask=t_ok[:, None] & ((D1 + offs_d2) < HEAD_DIM)[None, :],
            other=0.0,
        ).to(q2.dtype)
        a = _dot(q2, tl.trans(tab2), a, IEEE, UPCAST)
    a = a.to(q1.dtype)
    offs_r = tl.arange(0, RP)
    idx = tl.minimum(tl.maximum(q_pos[:, None] - offs_r[None, :] + (G - 1), 0), TP - 1)
    rel = tl.gather(a, idx, 1)
    return tl.where(q_ok[:, None] & (offs_r < G)[None, :], rel, tl.zeros_like(rel))


@triton.jit
def _tile_slices(relh_rows, relw_rows, j, NTW, shr, swc, offs_rh, offs_rw, q_ok, TH, TW, RGH, RGW):
    """rel_h / rel_w of key tile j's rows and columns (tiles layout, rel grid == token grid)."""
    r0 = (j // NTW) * TH
    c0 = (j % NTW) * TW
    h_ok = (offs_rh < TH) & (r0 + offs_rh < RGH)
    w_ok = (offs_rw < TW) & (c0 + offs_rw < RGW)
    rel_h = tl.load(relh_rows[:, None] + (r0 + offs_rh)[None, :] * shr, mask=q_ok[:, None] & h_ok[None, :], other=0.0)
    rel_w = tl.load(relw_rows[:, None] + (c0 + offs_rw)[None, :] * swc, mask=q_ok[:, None] & w_ok[None, :], other=0.0)
    return rel_h, rel_w


@triton.jit
def _fixed_offset_pass(
    q1, q2, k_base, v_base, skn, skd, svn, svd,
    offs_n, offs_d1, offs_d2, dmask1, dmask2,
    relh_rows, shr, relw_tile, q_ok, total, offs_mk, idx_row, dense_head, nk, qk_scale,
    RGW: tl.constexpr, SUB_N: tl.constexpr, DENSE: tl.constexpr, HAS_HEAD_MASK: tl.constexpr,
    BLOCK_M: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr,
    EVEN_K: tl.constexpr, EVEN_D1: tl.constexpr, EVEN_D2: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
):
    """Key-row mode (one key-grid row per step) with the softmax offset fixed after step 0.

    The row max of step 0's logits (without the height term) is each row's offset ``m0``; every
    step then takes ``p = exp2(qk * scale + (rel_w - m0))``: one FMA and one exp2 per logit, no row
    max and no max subtraction. The height term ``rel_h[q, row]`` is constant over a step, so it is
    carried by the unit of the running sums: after step t they are rescaled by
    ``exp2(rel_h_t - rel_h_{t+1})`` (a per-row factor, like the online softmax's rescale), and end
    in the unit of step 0. The result is the same softmax; only the magnitudes of the partial sums
    differ. Every ``p`` of a step is at most the running sum ``l`` after it, and every partial
    output at most ``l * max|v|``; a term too small for fp32 when it is added is below 2^-100 of
    ``l`` then, and the rescales keep those proportions. So the pass is exact to fp32 rounding
    while ``l`` stays within [2^-100, 2^100] at every step (step 0's largest term is exactly 1).
    A row whose ``l`` left that range (a later logit ~70 nats above all of step 0's, or height
    terms swinging as far) is flagged (``n_bad``) and the caller
    recomputes the flagged programs with the running-max softmax.

    Step 0's key tokens and height term are derived here although the caller's prefetch has them:
    taking them from the caller measured ~20% slower at M128/w4 (255 registers) on the H200, and
    peeling step 0 out of the loop (its logits are computed twice) faulted on the GPU (Triton 3.6);
    see benchmarks/RESULTS.md, eighth run.

    Two variants were measured slower on the H200 and removed (benchmarks/RESULTS.md, ninth run): the
    offset taken inside the loop's first step instead of this separate product of step 0 (dense vit_b
    M128 1.33 vs 1.06 ms), and, for masked calls, the key-block id carried from the previous step's
    look-ahead (it keeps the software pipeliner from issuing future K/V loads early).

    Returns (acc1, acc2, l, m, n_bad): sums in the unit 2^m (m = m0 + rel_h of step 0, log2).
    """
    # ---- step 0: the offset
    j0, sub0 = _step_block(0, offs_mk, idx_row, dense_head, SUB_N, DENSE, HAS_HEAD_MASK)
    row0 = j0 * SUB_N + sub0
    k_tok0 = row0 * RGW + offs_n
    k_use0 = (offs_n < RGW) & (k_tok0 < nk) & (total > 0)
    k_rows0 = k_base + k_tok0.to(tl.int64)[:, None] * skn
    k01 = tl.load(k_rows0 + offs_d1[None, :] * skd, mask=k_use0[:, None] & dmask1[None, :], other=0.0)
    qk0 = _dot(q1, tl.trans(k01), None, IEEE, UPCAST)
    if D2 > 0:
        k02 = tl.load(k_rows0 + (D1 + offs_d2)[None, :] * skd, mask=k_use0[:, None] & dmask2[None, :], other=0.0)
        qk0 = _dot(q2, tl.trans(k02), qk0, IEEE, UPCAST)
    m0 = tl.max(tl.where(k_use0[None, :], qk0 * qk_scale + relw_tile, float("-inf")), 1)
    m0 = tl.where(m0 == float("-inf"), 0.0, m0)
    w_off = relw_tile - m0[:, None]
    h0 = tl.load(relh_rows + row0 * shr, mask=q_ok & (total > 0) & (row0 * RGW < nk), other=0.0)
    h0 = h0.to(tl.float32) * 1.4426950408889634
    h_nxt = h0
    l_lo = tl.full([BLOCK_M], float("inf"), dtype=tl.float32)  # smallest / largest running sum
    l_hi = tl.zeros([BLOCK_M], dtype=tl.float32)

    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc1 = tl.zeros([BLOCK_M, D1], dtype=tl.float32)
    if D2 > 0:
        acc2 = tl.zeros([BLOCK_M, D2], dtype=tl.float32)
    for t in range(0, total):
        h_cur = h_nxt
        # the next step's height term (step 0's after the last step: the sums end in its unit)
        j1, sub1 = _step_block(t + 1, offs_mk, idx_row, dense_head, SUB_N, DENSE, HAS_HEAD_MASK)
        row1 = j1 * SUB_N + sub1
        h_nxt = tl.load(relh_rows + row1 * shr, mask=q_ok & (t + 1 < total) & (row1 * RGW < nk), other=0.0)
        h_nxt = tl.where(t + 1 < total, h_nxt.to(tl.float32) * 1.4426950408889634, h0)

        j, sub = _step_block(t, offs_mk, idx_row, dense_head, SUB_N, DENSE, HAS_HEAD_MASK)
        k_tok = (j * SUB_N + sub) * RGW + offs_n
        k_ok = (offs_n < RGW) & (k_tok < nk)
        k_rows = k_base + k_tok.to(tl.int64)[:, None] * skn
        k1 = _load_2d(k_rows + offs_d1[None, :] * skd, k_ok[:, None] & dmask1[None, :], EVEN_K and EVEN_D1)
        qk = _dot(q1, tl.trans(k1), None, IEEE, UPCAST)
        if D2 > 0:
            k2 = _load_2d(k_rows + (D1 + offs_d2)[None, :] * skd, k_ok[:, None] & dmask2[None, :], EVEN_K and EVEN_D2)
            qk = _dot(q2, tl.trans(k2), qk, IEEE, UPCAST)
        s = qk * qk_scale + w_off
        if not EVEN_K:
            s = tl.where(k_ok[None, :], s, float("-inf"))
        p = tl.exp2(s)
        l_i = l_i + tl.sum(p, 1)
        l_hi = tl.maximum(l_hi, l_i)  # bounds every p and (times max |v|) every partial output

        v_rows = v_base + k_tok.to(tl.int64)[:, None] * svn
        v1 = _load_2d(v_rows + offs_d1[None, :] * svd, k_ok[:, None] & dmask1[None, :], EVEN_K and EVEN_D1)
        acc1 = _dot(p.to(v1.dtype), v1, acc1, IEEE, UPCAST)
        if D2 > 0:
            v2 = _load_2d(v_rows + (D1 + offs_d2)[None, :] * svd, k_ok[:, None] & dmask2[None, :], EVEN_K and EVEN_D2)
            acc2 = _dot(p.to(v2.dtype), v2, acc2, IEEE, UPCAST)
        # the sums move to the next step's unit
        beta = tl.exp2(h_cur - h_nxt)
        l_i = l_i * beta
        l_lo = tl.minimum(l_lo, l_i)
        l_hi = tl.maximum(l_hi, l_i)
        acc1 = acc1 * beta[:, None]
        if D2 > 0:
            acc2 = acc2 * beta[:, None]

    ok = (l_hi <= 1.2676506002282294e30) & (l_lo >= 7.888609052210118e-31)  # 2^100, 2^-100
    ok = ok | (total == 0)  # an empty row of a mask: nothing to redo
    n_bad = tl.sum((q_ok & (ok == 0)).to(tl.int32), 0)
    if D2 == 0:
        acc2 = acc1  # placeholder, unused
    return acc1, acc2, l_i, m0 + h0, n_bad


# NKB (dense calls' key-step count) is never specialized: Triton would make NKB == 1 a constant and emit
# a loop-free kernel, which computed wrong results on an H200 at some configs (tenth run: 8x8 / 4x12
# grids, d=80 M64/N64/w4, d=64 M64/N64/w8); unspecialized, one step runs the looped kernel that every
# longer call runs (compiled offline with Triton 3.6: NKB = 1 and 2 give the same SASS, and SAM's kernels
# keep their registers, spills and instruction counts)
@triton.jit(do_not_specialize=["NKB"])
def _attn_fwd(
    Q, K, V, O, LSE,
    KV_NUM, KV_IDX, HEAD_MASK,
    RELH, RELW,
    TABH, TABW,  # gathered rel-pos tables Rh [gh, gh, D], Rw [gw, gw, D] (REL_TAB: terms computed here)
    CU_Q, CU_K,
    KFILL, VFILL,  # WIN: key / value of a padding token (the qkv bias) [Hkv, D]
    FLAGS,  # FIXED_M: written, one int32 per program (1: redo); REDO: read (0: nothing to do)
    qk_scale,  # softmax scale * log2(e)
    sqb, sqh, sqn, sqd,
    skb, skh, skn, skd,
    svb, svh, svn, svd,
    sob, soh, son, sod,
    slb, slh, sln,
    snb, snh, snm,  # kv_num_blocks strides (0 where broadcast)
    sib, sih, sim, sik,  # kv_indices strides
    shb, shh, shq, shr,  # rel_h strides [B, H, Nq, gh_k]
    swb, swh, swq, swc,  # rel_w strides [B, H, Nq, gw_k]
    sth_a, sth_b, sth_d, stw_a, stw_b, stw_d,  # table strides
    sfh,  # KFILL / VFILL row stride (the caller makes their d-stride equal to K's and V's)
    H, GROUP, Nq, Nk,
    BQ, BK, NKB,  # query / key block size in tokens, key blocks when dense
    NTW,  # tiles per tile row (tiles layout)
    NWW, NWIN, IGH, IGW,  # WIN: windows per window row, windows per image, image token grid
    HEAD_DIM: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr,
    EVEN_D1: tl.constexpr, EVEN_D2: tl.constexpr,  # D1 <= HEAD_DIM, D1 + D2 <= HEAD_DIM (no masking on d)
    LAYOUT: tl.constexpr,  # 0 sequence, 1 tiles
    TGH: tl.constexpr, TGW: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr,
    RGW: tl.constexpr,  # rel-pos key grid width
    ROWS: tl.constexpr,  # 0, or key-grid rows per step (sequence layout + rel-pos; 2 needs BLOCK_N == 2 * RGW)
    TILE_REL: tl.constexpr,  # tiles layout and rel key grid == tile grid: row/col from the tile
    REL_DOT: tl.constexpr,  # bias = rel_h @ onehot(row) + rel_w @ onehot(col) on tensor cores: 0 off,
    # 1 small key grid (whole rows of the terms loaded once), 2 tiles layout (a tile's slices per step)
    RGH: tl.constexpr, RHP: tl.constexpr, RWP: tl.constexpr,  # rel key grid height; padded widths of the one-hots
    REL_TAB: tl.constexpr, TP: tl.constexpr,  # REL_DOT with the terms from the tables in this program; raw rows padded
    SPLIT_M: tl.constexpr,  # programs per query block
    SUB_N: tl.constexpr,  # loop steps per key block
    DENSE: tl.constexpr, HAS_HEAD_MASK: tl.constexpr, HAS_REL: tl.constexpr, VARLEN: tl.constexpr,
    EVEN_Q: tl.constexpr, EVEN_K: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
    SCALE_POS: tl.constexpr,  # qk_scale > 0
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    MK: tl.constexpr,  # number of key blocks (mask row length)
    MK_PAD: tl.constexpr,  # next power of two >= MK
    WIN: tl.constexpr = 0,  # > 0: SAM's windows read in place (see "Windows in place" above)
    FIXED_M: tl.constexpr = 0,  # key-row mode (ROWS == 1): softmax offset fixed after step 0 (_fixed_offset_pass)
    REDO: tl.constexpr = 0,  # the running-max launch after a FIXED_M one: only the programs it flagged
    CARRY_IDS: tl.constexpr = 0,  # running max, masked, rel-pos look-ahead: a step's key-block id comes from
    # the previous step's look-ahead (one cross-warp id lookup per step instead of two)
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    if REDO:
        # most programs of a redo launch have nothing to do: leave before any other load
        if tl.load(FLAGS + pid_bh * tl.num_programs(0) + pid_m) == 0:
            return
    b = pid_bh // H
    h = pid_bh % H
    hk = h // GROUP
    qb = pid_m // SPLIT_M
    qs = pid_m % SPLIT_M
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    hk64 = hk.to(tl.int64)
    if WIN > 0:
        # the batch index counts windows: image b // NWIN, window b % NWIN (row-major, NWW per row)
        w_img = b // NWIN
        w_id = b - w_img * NWIN
        w_y = (w_id // NWW) * WIN  # top-left token of the window on the image grid
        w_x = (w_id - (w_id // NWW) * NWW) * WIN
        b64 = w_img.to(tl.int64)

    if VARLEN:
        q_start = tl.load(CU_Q + b).to(tl.int64)
        nq = (tl.load(CU_Q + b + 1) - q_start).to(tl.int32)
        k_start = tl.load(CU_K + b).to(tl.int64)
        nk = (tl.load(CU_K + b + 1) - k_start).to(tl.int32)
    else:
        q_start = 0
        nq = Nq
        k_start = 0
        nk = Nk

    # ---------------------------------------------------------------- queries
    offs_m = qs * BLOCK_M + tl.arange(0, BLOCK_M)  # offset inside the query block
    if LAYOUT == 0:
        q_tok = qb * BQ + offs_m
        q_ok = (offs_m < BQ) & (q_tok < nq)
        q_pos = q_tok  # position on the rel-pos grid
        if WIN > 0:
            # window-local token -> image token; padding queries are not computed
            q_lr = q_tok // WIN
            q_lc = q_tok - q_lr * WIN
            q_ok = q_ok & (w_y + q_lr < IGH) & (w_x + q_lc < IGW)
            q_tok = (w_y + q_lr) * IGW + (w_x + q_lc)
    else:
        q_tr = qb // NTW
        q_tc = qb - q_tr * NTW
        q_r = offs_m // TW
        q_c = offs_m % TW
        q_row = q_tr * TH + q_r
        q_col = q_tc * TW + q_c
        q_tok = q_row * TGW + q_col
        q_ok = (q_r < TH) & (q_row < TGH) & (q_col < TGW)
        q_pos = q_tok

    offs_d1 = tl.arange(0, D1)
    dmask1 = offs_d1 < HEAD_DIM
    if D2 > 0:
        offs_d2 = tl.arange(0, D2)
        dmask2 = (offs_d2 + D1) < HEAD_DIM

    flag_ptr = FLAGS + pid_bh * tl.num_programs(0) + pid_m
    q_rows = Q + b64 * sqb + h64 * sqh + (q_start + q_tok.to(tl.int64))[:, None] * sqn
    q1 = _load_2d(q_rows + offs_d1[None, :] * sqd, q_ok[:, None] & dmask1[None, :], EVEN_Q and EVEN_D1)
    if D2 > 0:
        q2 = _load_2d(q_rows + (D1 + offs_d2)[None, :] * sqd, q_ok[:, None] & dmask2[None, :], EVEN_Q and EVEN_D2)

    # ---------------------------------------------------------------- key blocks
    n_dense = NKB
    if VARLEN:
        n_dense = tl.cdiv(nk, BK)
    if DENSE:
        n_kv = n_dense
    else:
        n_kv = tl.load(KV_NUM + b64 * snb + h64 * snh + qb * snm)
        if HAS_HEAD_MASK:
            dense_head = tl.load(HEAD_MASK + h) == 0
            n_kv = tl.where(dense_head, n_dense, n_kv)
        idx_base = KV_IDX + b64 * sib + h64 * sih + qb * sim
        # the row's key-block ids, held in registers: the K/V addresses of a future step
        # are then plain arithmetic, which the software pipeliner can issue 2+ steps ahead
        offs_mk = tl.arange(0, MK_PAD)
        # masked by the row length, not by n_kv: the load does not wait for n_kv's (an entry past
        # n_kv is never used), which takes one dependent memory latency off the program's start
        idx_row = tl.load(idx_base + offs_mk * sik, mask=offs_mk < MK, other=0)
    if VARLEN:
        n_kv = tl.where(qb * BQ < nq, n_kv, 0)

    offs_n = tl.arange(0, BLOCK_N)
    k_base = K + b64 * skb + hk64 * skh + k_start * skn
    v_base = V + b64 * svb + hk64 * svh + k_start * svn

    if HAS_REL:
        relh_rows = RELH + b64 * shb + h64 * shh + q_tok.to(tl.int64) * shq
        relw_rows = RELW + b64 * swb + h64 * swh + q_tok.to(tl.int64) * swq
        if ROWS == 1:
            # width term: the same [BLOCK_M, RGW] tile for every key row
            relw_tile = _load_2d(
                relw_rows[:, None] + offs_n[None, :] * swc,
                q_ok[:, None] & (offs_n < RGW)[None, :],
                EVEN_Q and (BLOCK_N == RGW),
            ).to(tl.float32) * 1.4426950408889634
        if ROWS == 2:
            # two key rows per step: the width tile twice side by side
            relw_tile = _load_2d(
                relw_rows[:, None] + (offs_n % RGW)[None, :] * swc, q_ok[:, None], EVEN_Q
            ).to(tl.float32) * 1.4426950408889634
            second_row = offs_n >= RGW
        if REL_DOT > 0:
            offs_rh = tl.arange(0, RHP)
            offs_rw = tl.arange(0, RWP)
            sm_scale = qk_scale * 0.6931471805599453  # natural-log units; log2(e) goes into the exponent
        if REL_DOT == 1:
            # the query rows' whole rel_h / rel_w (small key grid), loaded once per program
            if REL_TAB:
                # rel_h / rel_w of this program's queries from the tables (no separate terms kernel)
                q_r = q_pos // RGW
                q_c = q_pos - q_r * RGW
                if D2 > 0:
                    q_rest = q2
                else:
                    q_rest = q1  # unused (D2 == 0): any tensor of q's type
                relh_q = _program_terms(q1, q_rest, TABH, sth_a, sth_b, sth_d, q_r, q_ok, RGH, RHP, TP,
                                        HEAD_DIM, D1, D2, IEEE, UPCAST)
                relw_q = _program_terms(q1, q_rest, TABW, stw_a, stw_b, stw_d, q_c, q_ok, RGW, RWP, TP,
                                        HEAD_DIM, D1, D2, IEEE, UPCAST)
            else:
                relh_q = tl.load(
                    relh_rows[:, None] + offs_rh[None, :] * shr, mask=q_ok[:, None] & (offs_rh < RGH)[None, :], other=0.0
                )
                relw_q = tl.load(
                    relw_rows[:, None] + offs_rw[None, :] * swc, mask=q_ok[:, None] & (offs_rw < RGW)[None, :], other=0.0
                )

    if DENSE:
        offs_mk = 0
        idx_row = 0
    if WIN > 0:
        # a padding token's key / value is the qkv bias (SAM projects the zero padding): its rows
        # are read from KFILL / VFILL (same d-stride as K / V) instead of from the grid
        k_fill_row = KFILL + hk64 * sfh
        v_fill_row = VFILL + hk64 * sfh
    if not HAS_HEAD_MASK:
        dense_head = False

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc1 = tl.zeros([BLOCK_M, D1], dtype=tl.float32)
    if D2 > 0:
        acc2 = tl.zeros([BLOCK_M, D2], dtype=tl.float32)

    total = n_kv * SUB_N
    if WIN > 0:
        total = tl.where(tl.max(q_ok.to(tl.int32), 0) > 0, total, 0)  # all queries padding: nothing to do
    if HAS_REL and REL_DOT == 2:
        j0, _ = _step_block(0, offs_mk, idx_row, dense_head, SUB_N, DENSE, HAS_HEAD_MASK)
        relh_nxt, relw_nxt = _tile_slices(
            relh_rows, relw_rows, j0, NTW, shr, swc, offs_rh, offs_rw, q_ok & (total > 0), TH, TW, RGH, RGW
        )
    if HAS_REL and REL_DOT == 0:
        # the bias of step t is loaded during step t-1: plain loads are not software-pipelined
        j0, sub0 = _step_block(0, offs_mk, idx_row, dense_head, SUB_N, DENSE, HAS_HEAD_MASK)
        _, k_ok0, b_row0, b_col0 = _key_coords(
            j0, sub0, nk, offs_n, BK, NTW, LAYOUT, ROWS, SUB_N, BLOCK_N, TGH, TGW, TH, TW, RGW, TILE_REL
        )
        if ROWS > 0:
            relh_nxt = tl.load(relh_rows + b_row0 * shr, mask=q_ok & (total > 0) & (b_row0 * RGW < nk), other=0.0)
            relh_nxt = relh_nxt.to(tl.float32) * 1.4426950408889634
            if ROWS == 2:
                relh2_nxt = tl.load(
                    relh_rows + (b_row0 + 1) * shr, mask=q_ok & (total > 0) & ((b_row0 + 1) * RGW < nk), other=0.0
                )
                relh2_nxt = relh2_nxt.to(tl.float32) * 1.4426950408889634
        else:
            bias_nxt = _gather_bias(
                relh_rows, relw_rows, b_row0, b_col0, shr, swc, q_ok[:, None] & k_ok0[None, :] & (total > 0)
            )

    if FIXED_M:
        if D2 == 0:  # placeholders for the pass's unused second-half arguments
            q2 = q1
            offs_d2 = offs_d1
            dmask2 = dmask1
        acc1, f_acc2, l_i, m_i, n_bad = _fixed_offset_pass(
            q1, q2, k_base, v_base, skn, skd, svn, svd,
            offs_n, offs_d1, offs_d2, dmask1, dmask2,
            relh_rows, shr, relw_tile, q_ok, total, offs_mk, idx_row, dense_head, nk, qk_scale,
            RGW, SUB_N, DENSE, HAS_HEAD_MASK, BLOCK_M, D1, D2, EVEN_K, EVEN_D1, EVEN_D2, IEEE, UPCAST,
        )
        if D2 > 0:
            acc2 = f_acc2
        # a flagged program is recomputed by the running-max launch that follows (ops._launch);
        # keeping that loop out of this kernel keeps its registers at the pass's own need
        tl.store(flag_ptr, (n_bad > 0).to(tl.int32))

    if not FIXED_M:
        # online softmax with a running max (every mode but the fixed-offset pass)
        if CARRY_IDS:
            j_nx, sub_nx = _step_block(0, offs_mk, idx_row, dense_head, SUB_N, DENSE, HAS_HEAD_MASK)
        for t in range(0, total):
            if CARRY_IDS:  # the look-ahead of the previous step found this step's key block
                j = j_nx
                sub = sub_nx
            else:
                j, sub = _step_block(t, offs_mk, idx_row, dense_head, SUB_N, DENSE, HAS_HEAD_MASK)
            k_tok, k_ok, b_row, b_col = _key_coords(
                j, sub, nk, offs_n, BK, NTW, LAYOUT, ROWS, SUB_N, BLOCK_N, TGH, TGW, TH, TW, RGW, TILE_REL
            )
            if HAS_REL and REL_DOT == 2:
                # this step's tile slices of rel_h / rel_w; the next step's are loaded now
                relh_q = relh_nxt
                relw_q = relw_nxt
                j1, sub1 = _step_block(t + 1, offs_mk, idx_row, dense_head, SUB_N, DENSE, HAS_HEAD_MASK)
                if CARRY_IDS:
                    j_nx = j1
                    sub_nx = sub1
                relh_nxt, relw_nxt = _tile_slices(
                    relh_rows, relw_rows, j1, NTW, shr, swc, offs_rh, offs_rw, q_ok & (t + 1 < total), TH, TW, RGH, RGW
                )
                n_in = sub * BLOCK_N + offs_n
                oh_row = n_in // TW  # key row / column inside the tile
                oh_col = n_in % TW
            elif HAS_REL and REL_DOT == 1:
                oh_row = b_row
                oh_col = b_col
            if HAS_REL and REL_DOT == 0:
                t1 = t + 1
                j1, sub1 = _step_block(t1, offs_mk, idx_row, dense_head, SUB_N, DENSE, HAS_HEAD_MASK)
                if CARRY_IDS:
                    j_nx = j1
                    sub_nx = sub1
                _, k_ok1, b_row1, b_col1 = _key_coords(
                    j1, sub1, nk, offs_n, BK, NTW, LAYOUT, ROWS, SUB_N, BLOCK_N, TGH, TGW, TH, TW, RGW, TILE_REL
                )
                if ROWS > 0:
                    relh = relh_nxt
                    relh_nxt = tl.load(relh_rows + b_row1 * shr, mask=q_ok & (t1 < total) & (b_row1 * RGW < nk), other=0.0)
                    relh_nxt = relh_nxt.to(tl.float32) * 1.4426950408889634
                    if ROWS == 2:
                        relh2 = relh2_nxt
                        relh2_nxt = tl.load(
                            relh_rows + (b_row1 + 1) * shr, mask=q_ok & (t1 < total) & ((b_row1 + 1) * RGW < nk), other=0.0
                        )
                        relh2_nxt = relh2_nxt.to(tl.float32) * 1.4426950408889634
                else:
                    bias = bias_nxt
                    bias_nxt = _gather_bias(
                        relh_rows, relw_rows, b_row1, b_col1, shr, swc, q_ok[:, None] & k_ok1[None, :] & (t1 < total)
                    )

            if WIN > 0:
                k_lr = k_tok // WIN
                k_lc = k_tok - k_lr * WIN
                k_real = k_ok & (w_y + k_lr < IGH) & (w_x + k_lc < IGW)
                k_tok = (w_y + k_lr) * IGW + (w_x + k_lc)
            k_rows = k_base + k_tok.to(tl.int64)[:, None] * skn
            if WIN > 0:
                k_rows = tl.where(k_real[:, None], k_rows, k_fill_row)
            k1 = _load_2d(k_rows + offs_d1[None, :] * skd, k_ok[:, None] & dmask1[None, :], EVEN_K and EVEN_D1)
            qk = _dot(q1, tl.trans(k1), None, IEEE, UPCAST)
            if D2 > 0:
                k2 = _load_2d(k_rows + (D1 + offs_d2)[None, :] * skd, k_ok[:, None] & dmask2[None, :], EVEN_K and EVEN_D2)
                qk = _dot(q2, tl.trans(k2), qk, IEEE, UPCAST)

            # logits in the log2 domain: s = qk * scale*log2(e) + bias*log2(e); the scale multiply
            # is fused with the bias add (FMA) or, without bias, with the max subtraction below
            if HAS_REL and REL_DOT > 0:
                # bias[q, k] = rel_h[q, row(k)] + rel_w[q, col(k)] as two one-hot products, accumulated
                # onto the scaled logits in fp32 (exact: each logit gains exactly two terms)
                if UPCAST:  # the interpreter's bool -> bf16 cast is wrong; the dot runs in fp32 anyway
                    onehot_h = (offs_rh[:, None] == oh_row[None, :]).to(tl.float32)
                    onehot_w = (offs_rw[:, None] == oh_col[None, :]).to(tl.float32)
                else:
                    onehot_h = (offs_rh[:, None] == oh_row[None, :]).to(relh_q.dtype)
                    onehot_w = (offs_rw[:, None] == oh_col[None, :]).to(relw_q.dtype)
                s = _dot(relh_q, onehot_h, qk * sm_scale, IEEE, UPCAST)
                s = _dot(relw_q, onehot_w, s, IEEE, UPCAST)
            elif HAS_REL:
                if ROWS == 1:
                    # the height term is constant over the step (one key row): it goes into the
                    # row max instead of into every logit
                    s = qk * qk_scale + relw_tile
                elif ROWS == 2:
                    s = qk * qk_scale + (relw_tile + tl.where(second_row[None, :], relh2[:, None], relh[:, None]))
                else:
                    s = qk * qk_scale + bias
            elif SCALE_POS:
                s = qk  # scaled below: max(qk) * scale == max(qk * scale) for scale > 0
            else:
                s = qk * qk_scale
            if not EVEN_K:
                s = tl.where(k_ok[None, :], s, float("-inf"))

            # online softmax (base 2); a row with no valid key so far keeps m = -inf
            if HAS_REL and REL_DOT > 0:
                m_new = tl.maximum(m_i, tl.max(s, 1) * 1.4426950408889634)
            elif HAS_REL and ROWS == 1:
                m_new = tl.maximum(m_i, tl.max(s, 1) + relh)
            elif (not HAS_REL) and SCALE_POS:
                m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
            else:
                m_new = tl.maximum(m_i, tl.max(s, 1))
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
            if HAS_REL and REL_DOT > 0:
                p = tl.exp2(s * 1.4426950408889634 - m_use[:, None])
            elif HAS_REL and ROWS == 1:
                p = tl.exp2(s - (m_use - relh)[:, None])
            elif (not HAS_REL) and SCALE_POS:
                p = tl.exp2(s * qk_scale - m_use[:, None])
            else:
                p = tl.exp2(s - m_use[:, None])
            alpha = tl.exp2(m_i - m_use)
            l_i = l_i * alpha + tl.sum(p, 1)
            m_i = m_new

            v_rows = v_base + k_tok.to(tl.int64)[:, None] * svn
            if WIN > 0:
                v_rows = tl.where(k_real[:, None], v_rows, v_fill_row)
            v1 = _load_2d(v_rows + offs_d1[None, :] * svd, k_ok[:, None] & dmask1[None, :], EVEN_K and EVEN_D1)
            acc1 = acc1 * alpha[:, None]
            acc1 = _dot(p.to(v1.dtype), v1, acc1, IEEE, UPCAST)
            if D2 > 0:
                v2 = _load_2d(v_rows + (D1 + offs_d2)[None, :] * svd, k_ok[:, None] & dmask2[None, :], EVEN_K and EVEN_D2)
                acc2 = acc2 * alpha[:, None]
                acc2 = _dot(p.to(v2.dtype), v2, acc2, IEEE, UPCAST)

    # ---------------------------------------------------------------- epilogue
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    inv_l = 1.0 / l_safe
    o_rows = O + b64 * sob + h64 * soh + (q_start + q_tok.to(tl.int64))[:, None] * son
    out1 = (acc1 * inv_l[:, None]).to(O.dtype.element_ty)
    if EVEN_Q and EVEN_D1:
        tl.store(o_rows + offs_d1[None, :] * sod, out1)
    else:
        tl.store(o_rows + offs_d1[None, :] * sod, out1, mask=q_ok[:, None] & dmask1[None, :])
    if D2 > 0:
        out2 = (acc2 * inv_l[:, None]).to(O.dtype.element_ty)
        if EVEN_Q and EVEN_D2:
            tl.store(o_rows + (D1 + offs_d2)[None, :] * sod, out2)
        else:
            tl.store(o_rows + (D1 + offs_d2)[None, :] * sod, out2, mask=q_ok[:, None] & dmask2[None, :])
    lse = tl.where(empty, float("-inf"), (m_i + tl.log2(l_safe)) * 0.6931471805599453)
    lse_ptrs = LSE + b64 * slb + h64 * slh + (q_start + q_tok.to(tl.int64)) * sln
    if EVEN_Q:
        tl.store(lse_ptrs, lse)
    else:
        tl.store(lse_ptrs, lse, mask=q_ok)


@triton.jit
def _terms_block(
    q_rows, q_ok, sqd, table, sta, stb, std, n_keys, out_rows, so_k,
    HEAD_DIM: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
):
    """out[i, kk] = <q[i], table[kk]> for the BLOCK_Q queries of one grid row/column."""
    offs_k = tl.arange(0, BLOCK_K)
    k_ok = offs_k < n_keys
    offs_d1 = tl.arange(0, D1)
    dmask1 = offs_d1 < HEAD_DIM
    if D2 > 0:
        offs_d2 = tl.arange(0, D2)
        dmask2 = (offs_d2 + D1) < HEAD_DIM
    q1 = tl.load(q_rows[:, None] + offs_d1[None, :] * sqd, mask=q_ok[:, None] & dmask1[None, :], other=0.0)
    t1 = tl.load(
        table + offs_k[:, None] * stb + offs_d1[None, :] * std, mask=k_ok[:, None] & dmask1[None, :], other=0.0
    ).to(q1.dtype)
    res = _dot(q1, tl.trans(t1), None, IEEE, UPCAST)
    if D2 > 0:
        q2 = tl.load(
            q_rows[:, None] + (D1 + offs_d2)[None, :] * sqd, mask=q_ok[:, None] & dmask2[None, :], other=0.0
        )
        t2 = tl.load(
            table + offs_k[:, None] * stb + (D1 + offs_d2)[None, :] * std,
            mask=k_ok[:, None] & dmask2[None, :],
            other=0.0,
        ).to(q2.dtype)
        res = _dot(q2, tl.trans(t2), res, IEEE, UPCAST)
    tl.store(
        out_rows[:, None] + offs_k[None, :] * so_k,
        res.to(out_rows.dtype.element_ty),
        mask=q_ok[:, None] & k_ok[None, :],
    )


@triton.jit
def _relpos_terms(
    Q, RH, RW, OUTH, OUTW,
    sqb, sqh, sqn, sqd,
    srh_a, srh_b, srh_d,  # Rh [gh_q, gh_k, D]
    srw_a, srw_b, srw_d,  # Rw [gw_q, gw_k, D]
    shb, shh, shq, shr,  # rel_h out [B, H, Nq, gh_k]
    swb, swh, swq, swc,  # rel_w out [B, H, Nq, gw_k]
    H,
    GHQ: tl.constexpr, GWQ: tl.constexpr, GHK: tl.constexpr, GWK: tl.constexpr,
    HEAD_DIM: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
):
    """Programs [0, GHQ): rel_h of one query grid row; [GHQ, GHQ+GWQ): rel_w of one query column."""
    pid = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_i = tl.arange(0, BLOCK_Q)
    q_base = Q + b * sqb + h * sqh
    if pid < GHQ:
        q_tok = pid * GWQ + offs_i
        q_ok = offs_i < GWQ
        _terms_block(
            q_base + q_tok.to(tl.int64) * sqn, q_ok, sqd,
            RH + pid * srh_a, srh_a, srh_b, srh_d, GHK,
            OUTH + b * shb + h * shh + q_tok.to(tl.int64) * shq, shr,
            HEAD_DIM, D1, D2, BLOCK_Q, BLOCK_K, IEEE, UPCAST,
        )
    else:
        c = pid - GHQ
        q_tok = offs_i * GWQ + c
        q_ok = offs_i < GHQ
        _terms_block(
            q_base + q_tok.to(tl.int64) * sqn, q_ok, sqd,
            RW + c * srw_a, srw_a, srw_b, srw_d, GWK,
            OUTW + b * swb + h * swh + q_tok.to(tl.int64) * swq, swc,
            HEAD_DIM, D1, D2, BLOCK_Q, BLOCK_K, IEEE, UPCAST,
        )


def _is_interpreted() -> bool:
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # pragma: no cover
        return False
    return isinstance(_attn_fwd, InterpretedFunction)


INTERPRET = _is_interpreted()
