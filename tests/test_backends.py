"""Every PyTorch backend against the float64 reference, plus registry and selection."""

import math

import pytest
import torch

from samsparse import backends
from samsparse.backends import UnsupportedCall, get
from samsparse.masks import BlockMask
from samsparse.relpos import RelPos

PYTORCH_BACKENDS = ["sdpa", "flex"]


def make_case(seed, b, h, hkv, grid, d, dtype, mask_kind, rel, block=16):
    g = torch.Generator().manual_seed(seed)
    n = grid[0] * grid[1]
    q = torch.randn(b, h, n, d, generator=g).to(dtype)
    k = torch.randn(b, hkv, n, d, generator=g).to(dtype)
    v = torch.randn(b, hkv, n, d, generator=g).to(dtype)
    mask = None
    if mask_kind == "random":
        m = math.ceil(n / block)
        blocks = torch.rand(b, h, m, m, generator=g) > 0.5
        blocks[..., 0] = True
        mask = BlockMask(blocks, block, n)
    elif mask_kind == "broadcast":
        m = math.ceil(n / block)
        blocks = torch.rand(1, h, m, m, generator=g) > 0.6
        blocks |= torch.eye(m, dtype=torch.bool)
        mask = BlockMask(blocks, block, n)
    elif mask_kind == "empty_rows":
        m = math.ceil(n / block)
        blocks = torch.rand(b, 1, m, m, generator=g) > 0.5
        blocks[:, :, 1] = False
        mask = BlockMask(blocks, block, n, allow_empty_rows=True)
    elif mask_kind == "tiles":
        th, tw = 3, 4
        mt = math.ceil(grid[0] / th) * math.ceil(grid[1] / tw)
        blocks = torch.rand(1, h, mt, mt, generator=g) > 0.5
        blocks |= torch.eye(mt, dtype=torch.bool)
        mask = BlockMask(blocks, None, None, layout="tiles", grid=grid, tile=(th, tw))
    rel_pos = None
    if rel != "none":
        rel_pos = RelPos.from_tables(
            torch.randn(2 * grid[0] - 1, d, generator=g).to(dtype), torch.randn(2 * grid[1] - 1, d, generator=g).to(dtype), grid
        )
        if rel == "terms":
            rh, rw = rel_pos.terms(q)
            rel_pos = RelPos(grid, grid, rel_h=rh, rel_w=rw)
    return q, k, v, mask, rel_pos


CASES = [
    # b, h, hkv, grid, d, mask, rel
    (2, 3, 3, (5, 7), 16, "none", "none"),
    (2, 3, 3, (5, 7), 16, "random", "tables"),
    (1, 4, 4, (6, 6), 32, "broadcast", "terms"),
    (2, 2, 2, (7, 9), 64, "tiles", "tables"),
    (2, 2, 2, (5, 7), 80, "empty_rows", "tables"),
    (1, 4, 2, (4, 10), 32, "random", "tables"),  # GQA
    (1, 4, 1, (6, 5), 16, "broadcast", "none"),  # MQA
]


@pytest.mark.parametrize("backend", PYTORCH_BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=[f"{c[5]}-{c[6]}-d{c[4]}-h{c[1]}/{c[2]}" for c in CASES])
def test_fp32_matches_reference(backend, case):
    q, k, v, mask, rel_pos = make_case(7, *case[:4], case[4], torch.float32, case[5], case[6])
    ref, ref_lse = get("reference").attend(q, k, v, mask, rel_pos, return_lse=True)
    out, lse = get(backend).attend(q, k, v, mask, rel_pos, return_lse=True)
    assert out.shape == q.shape and out.dtype == q.dtype
    err = (out - ref).abs().max().item()
    assert err <= 2e-5, f"max abs err {err}"
    finite = torch.isfinite(ref_lse)
    assert torch.equal(finite, torch.isfinite(lse))
    assert (lse[finite] - ref_lse[finite]).abs().max().item() <= 2e-5
    if case[5] == "empty_rows":
        assert torch.isneginf(ref_lse).any() and (out[~finite] == 0).all()


@pytest.mark.parametrize("backend", PYTORCH_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_within_torch_own_error(backend, dtype):
    q, k, v, mask, rel_pos = make_case(11, 2, 2, 2, (8, 8), 32, dtype, "random", "tables")
    ref = get("reference").attend(q, k, v, mask, rel_pos).double()
    # PyTorch's own low-precision error for the same math: SAM's eager attention in ``dtype``
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1) + rel_pos.bias(q)
    scores = scores.masked_fill(~mask.to_token_mask(), float("-inf"))
    lowp = (scores.softmax(-1) @ v).double()
    err_torch = (lowp - ref).abs().max().item()
    out = get(backend).attend(q, k, v, mask, rel_pos).double()
    err = (out - ref).abs().max().item()
    assert err <= 2 * err_torch + 1e-2, f"{backend} err {err} vs torch {err_torch}"


def test_strided_inputs_from_qkv_projection():
    g = torch.Generator().manual_seed(0)
    b, n, h, d = 2, 30, 3, 16
    qkv = torch.randn(b, n, 3, h, d, generator=g)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    assert not q.is_contiguous()
    ref = get("reference").attend(q.contiguous(), k.contiguous(), v.contiguous())
    for name in PYTORCH_BACKENDS:
        assert (get(name).attend(q, k, v) - ref).abs().max() <= 2e-5


def test_input_errors_name_the_argument():
    q = torch.randn(1, 2, 10, 8)
    with pytest.raises(ValueError, match=r"q must be \[B, H, N, D\]"):
        backends.attend(q[0], q, q)
    with pytest.raises(TypeError, match="one dtype"):
        backends.attend(q, q.double(), q)
    with pytest.raises(ValueError, match="multiple of the k/v heads"):
        backends.attend(torch.randn(1, 3, 10, 8), q, q)
    with pytest.raises(ValueError, match="rebuild the mask"):
        backends.attend(q, q, q, mask=BlockMask.full(12, 4))
    with pytest.raises(ValueError, match="q_grid"):
        backends.attend(q, q, q, rel_pos=RelPos.from_tables(torch.randn(5, 8), torch.randn(5, 8), (3, 3)))
    with pytest.raises(ValueError, match="unknown backend"):
        backends.attend(q, q, q, backend="nope")


def test_registry_auto_selection_and_reasons():
    assert {"reference", "sdpa", "flex"} <= set(backends.available())
    q = torch.randn(1, 2, 10, 8)
    chosen = backends.select(q, q, q)
    assert chosen.name != "reference"
    assert backends.select(q, q, q, backend="sdpa").name == "sdpa"
    # flex refuses float64; asking for it by name gives the reason, auto falls back
    qd = q.double()
    assert "dtype" in get("flex").why_not(qd, qd, qd)
    with pytest.raises(ValueError, match="cannot run this call"):
        backends.select(qd, qd, qd, backend="flex")
    assert backends.select(qd, qd, qd).name in ("sdpa", "reference")
    with pytest.raises(UnsupportedCall):
        get("flex").attend(qd, qd, qd)
    rows = backends.backend_table()
    assert {"name", "available", "why_not", "dtypes", "head_dims"} <= set(rows[0])


def test_flex_compiles_once_for_all_global_blocks():
    """Patching every global block of a model must not recompile per layer."""
    from torch._dynamo.testing import CompileCounterWithBackend

    from samsparse.backends.flex import FlexBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    flex = FlexBackend(options={"compile": True, "compile_backend": counter})
    grid = (6, 8)
    blocks = (torch.rand(1, 2, 3, 3, generator=torch.Generator().manual_seed(0)) > 0.3) | torch.eye(3, dtype=torch.bool)
    mask = BlockMask(blocks, 16, 48)
    for layer in range(4):  # four "layers": new tensors, same shapes and mask
        q, k, v, _, rel_pos = make_case(layer, 1, 2, 2, grid, 16, torch.float32, "none", "tables")
        out = flex.attend(q, k, v, mask, rel_pos)
        ref = get("reference").attend(q, k, v, mask, rel_pos)
        assert (out - ref).abs().max() <= 1e-4
    assert counter.frame_count == 1, f"compiled {counter.frame_count} times"


def test_gather_rel_pos_compiles_without_lru_cache_warning():
    """Under torch.compile the rel-pos index is built in the graph (Dynamo warns about lru_cache)."""
    import warnings

    from samsparse.relpos import gather_rel_pos

    table = torch.randn(27, 8)

    @torch.compile(backend="eager", fullgraph=True)
    def gathered(t):
        return gather_rel_pos(14, 14, t)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = gathered(table)
    assert not [w for w in caught if "lru_cache" in str(w.message)]
    assert torch.equal(out, gather_rel_pos(14, 14, table))


def test_auto_sends_plain_dense_gpu_calls_to_pytorch_sdpa(monkeypatch):
    """Dense, bias-free, LSE-free calls go to SDPA (cuDNN / flash beat our kernels there); anything else by priority."""
    from samsparse.backends import registry
    from samsparse.backends.base import Backend
    from samsparse.masks import BlockMask
    from samsparse.relpos import RelPos

    class Eager(Backend):  # a top-priority backend that accepts every call
        name = "eager_fake"
        priority = 1000

        def _attend(self, q, k, v, mask, rel_pos, scale, return_lse):
            raise AssertionError("not run in this test")

    monkeypatch.setitem(registry._FACTORIES, "eager_fake", Eager)
    monkeypatch.setattr(registry, "_SDPA_FIRST_DEVICES", ("cpu",))  # pretend the CPU is the GPU of the rule
    q = k = v = torch.randn(1, 2, 16, 8)
    try:
        assert registry.select(q, k, v).name == "sdpa"
        assert registry.select(q, k, v, return_lse=True).name == "eager_fake"
        assert registry.select(q, torch.randn(1, 1, 16, 8), torch.randn(1, 1, 16, 8)).name == "eager_fake"  # GQA
        rel = RelPos.from_tables(torch.randn(7, 8), torch.randn(7, 8), (4, 4))
        assert registry.select(q, k, v, rel_pos=rel).name == "eager_fake"
        mask = BlockMask(torch.ones(1, 1, 2, 2, dtype=torch.bool), 8, 16)
        assert registry.select(q, k, v, mask=mask).name == "eager_fake"
        assert registry.select(q, k, v, backend="eager_fake").name == "eager_fake"  # by name: as asked
        monkeypatch.setattr(registry, "_SDPA_FIRST_DEVICES", ("cuda",))
        assert registry.select(q, k, v).name == "eager_fake"  # CPU tensors: priority order
    finally:
        registry._INSTANCES.pop("eager_fake", None)


def test_check_varlen_args_shared_by_the_kernel_backends():
    from samsparse.backends.base import check_varlen_args

    q = k = v = torch.zeros(10, 4, 8)
    cu = torch.tensor([0, 4, 10])
    nb, idx = torch.ones(1, 4, 1, dtype=torch.int32), torch.zeros(1, 4, 1, 1, dtype=torch.int32)
    assert check_varlen_args(q, k, v, cu, cu, 6, None, None, 128) == (128, 128)
    assert check_varlen_args(q, k, v, cu, cu, 6, nb, idx, (64, 32)) == (64, 32)
    bad = [
        ((torch.zeros(1, 10, 4, 8), k, v, cu, cu, 6, None, None, 128), "q must be packed"),
        ((q, torch.zeros(10, 3, 8), torch.zeros(10, 3, 8), cu, cu, 6, None, None, 128), "need a multiple"),
        ((q, k, v, cu, cu[:2], 6, None, None, 128), "cu_seqlens_q and cu_seqlens_k"),
        ((q, k, v, cu, cu, 6, nb, None, 128), "give both"),
        ((q, k, v, cu, cu, 6, nb[0], idx, 128), r"kv_num_blocks must be \[B', H', Mq\]"),
        ((q, k, v, cu, cu, 6, torch.ones(3, 4, 1, dtype=torch.int32), idx, 128), "does not broadcast to B=2, H=4"),
        ((q, k, v, cu, cu, 200, nb, idx, 128), "needs 2"),
    ]
    for args, message in bad:
        with pytest.raises(ValueError, match=message):
            check_varlen_args(*args)


def test_relpos_terms_cache_follows_q():
    """Terms cached by RelPos.terms belong to one q: another q (or q changed in place) gets its own terms."""
    g = torch.Generator().manual_seed(3)
    tables = torch.randn(2, 7, 8, generator=g)
    rp = RelPos.from_tables(tables[0], tables[1], (4, 4))
    q1 = torch.randn(1, 2, 16, 8, generator=g)
    q2 = torch.randn(1, 2, 16, 8, generator=g)

    def fresh(q):
        return RelPos.from_tables(tables[0], tables[1], (4, 4)).terms(q)

    h1, w1 = rp.terms(q1)
    assert rp.terms(q1)[0] is h1  # cached for the same q
    h2, w2 = rp.terms(q2)
    assert torch.equal(h2, fresh(q2)[0]) and torch.equal(w2, fresh(q2)[1])
    assert not torch.equal(h2, h1)
    q2.mul_(2.0)  # in place: the cached terms are stale
    assert torch.equal(rp.terms(q2)[0], fresh(q2)[0])
    # terms given by the caller are the caller's, whatever q is
    given = RelPos((4, 4), (4, 4), rel_h=h1, rel_w=w1)
    assert given.terms(q2)[0] is h1
    assert given.ready_terms(q2)[0] is h1
    # ready_terms: only what is held for this q; validate checks the tables, not terms cached for another batch
    assert rp.ready_terms(q1) is None and rp.ready_terms(q2)[0] is rp.rel_h
    q8 = torch.randn(3, 2, 16, 8, generator=g)
    rp.validate(q8, 16)
    assert torch.equal(rp.terms(q8)[0], fresh(q8)[0])
    # another tensor with the same address, view and version counter (what the caching allocator gives the
    # next tensor of that size once q is freed) is not q: nothing is held for it
    q3 = torch.randn(1, 2, 16, 8, generator=g)
    q3.add_(0.0)  # version 1, as the alias below starts with
    rp.terms(q3)
    alias = torch.empty(0).set_(q3.untyped_storage(), q3.storage_offset(), q3.shape, q3.stride())
    assert (alias.data_ptr(), alias._version) == (q3.data_ptr(), q3._version)
    assert rp.ready_terms(alias) is None and rp.ready_terms(q3) is not None


def test_relpos_reused_across_fresh_tensors_never_returns_another_tensors_terms():
    """A RelPos kept across calls whose q is freed and reallocated (often at the same address, version 0
    again): every call gets the terms of its own q. Keyed by address and version alone, 5 of 20 calls
    returned the previous q's terms on the development machine."""
    g = torch.Generator().manual_seed(4)
    tables = torch.randn(2, 7, 8, generator=g)
    rp = RelPos.from_tables(tables[0], tables[1], (4, 4))
    for _ in range(20):
        q = torch.randn(1, 2, 16, 8, generator=g)
        want = RelPos.from_tables(tables[0], tables[1], (4, 4)).terms(q)
        got = rp.terms(q)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        del q, got


def test_triton_op_does_not_use_terms_cached_for_another_q(monkeypatch):
    """ops.attention passes the tables (the kernel computes the terms) unless the terms belong to q."""
    pytest.importorskip("triton")
    from samsparse.backends.triton import ops

    seen = []

    def fake_impl(q, k, v, kv_num, kv_idx, rel_h, rel_w, rh, rw, *rest):
        seen.append((rel_h, rh))
        return q, q[..., 0]

    monkeypatch.setattr(ops, "_attention_impl", fake_impl)
    g = torch.Generator().manual_seed(4)
    tables = torch.randn(2, 7, 8, generator=g)
    rp = RelPos.from_tables(tables[0], tables[1], (4, 4))
    q1, q2 = (torch.randn(1, 2, 16, 8, generator=g) for _ in range(2))
    cached_h, _ = rp.terms(q1)  # e.g. an earlier call through another backend
    ops.attention(q2, q2, q2, None, rp)
    assert seen[-1][0] is None and seen[-1][1] is not None  # tables, not q1's terms
    ops.attention(q1, q1, q1, None, rp)
    assert seen[-1][0] is cached_h  # q1's own cached terms are used


def test_module_table_cache_is_kept_for_its_parameters_and_dropped_for_replaced_ones():
    """SparseAttention keeps its gathered rel-pos tables while its parameters are unchanged; a parameter
    replaced by another tensor gets its own tables, even when that tensor has the old one's address,
    view and version counter (as the caching allocator can hand out)."""
    from samsparse import SparseAttention

    torch.manual_seed(5)
    attn = SparseAttention(16, num_heads=2, use_rel_pos=True, input_size=(3, 3)).eval()
    with torch.no_grad():
        first = attn._rel_pos((3, 3), torch.float32)
        assert attn._rel_pos((3, 3), torch.float32).rh is first.rh  # kept
        h = attn.rel_pos_h
        alias = torch.empty(0).set_(h.untyped_storage(), h.storage_offset(), h.shape, h.stride())
        while alias._version != h._version:  # the same version count as the old parameter
            (alias if alias._version < h._version else h).add_(0.0)
        first = attn._rel_pos((3, 3), torch.float32)  # (h's in-place bumps are new contents: gather again)
        assert (alias.data_ptr(), alias._version) == (h.data_ptr(), h._version)
        attn.rel_pos_h = torch.nn.Parameter(alias, requires_grad=False)
        again = attn._rel_pos((3, 3), torch.float32)
        assert again.rh is not first.rh  # gathered anew for the new parameter object
        assert torch.equal(again.rh, first.rh)  # (same storage: same values)
        import copy

        twin = copy.deepcopy(attn)  # copies the cache (identities pickle as matching nothing)
        assert all(not e[2].matches(twin.rel_pos_h, k[2]) for k, e in twin._tables.items())
        assert torch.equal(twin._rel_pos((3, 3), torch.float32).rh, again.rh)

