"""Triton backend on a CUDA GPU: the full case grid of tests/attention_cases.py vs the reference.

Run on the GPU machine: ``pytest -m gpu tests/test_triton_gpu.py``. Skipped without CUDA.
Autotuning is switched off here (default tile configs, plus the forced configs
of some cases), so the run stays short; the benchmark exercises the tuner.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
for _p in (str(HERE.parent), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from attention_cases import GPU_CASES, Case, check, make_inputs  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(__import__("importlib").util.find_spec("triton") is None, reason="triton is not installed"),
]


@pytest.fixture(scope="module", autouse=True)
def _no_autotune():
    old = os.environ.get("SAMSPARSE_TRITON_AUTOTUNE")
    os.environ["SAMSPARSE_TRITON_AUTOTUNE"] = "0"
    yield
    if old is None:
        os.environ.pop("SAMSPARSE_TRITON_AUTOTUNE", None)
    else:
        os.environ["SAMSPARSE_TRITON_AUTOTUNE"] = old


def _backend(case: Case):
    from samsparse.backends.triton import TritonBackend
    from samsparse.backends.triton.configs import TileConfig

    options = {}
    if case.config:
        options["config"] = TileConfig(case.config[0], case.config[1], 4, 2)
    return TritonBackend(options=options)


@pytest.mark.parametrize("case", GPU_CASES, ids=[c.id for c in GPU_CASES])
def test_gpu_matches_reference(case):
    q, k, v, mask, rel_pos = make_inputs(case, "cuda")
    backend = _backend(case)
    assert backend.why_not(q, k, v, mask, rel_pos, return_lse=True) is None
    out, lse = backend.attend(q, k, v, mask, rel_pos, return_lse=True)
    torch.cuda.synchronize()
    res = check(case, q, k, v, mask, rel_pos, out, lse)
    assert res["ok"], "\n".join(res["problems"]) + f"\n{ {k: v for k, v in res.items() if k != 'problems'} }"


@pytest.mark.parametrize("check,kwargs", [
    ("_fixed_offset_check", {}),  # the pass and its redo launch
    ("_carry_ids_check", {}),  # masked running-max loops carry the look-ahead's key-block id (default)
    ("_carry_ids_check", {"off": True}),  # SAMSPARSE_TRITON_CARRY_IDS=0
    ("_terms_configs_check", {}),  # the terms kernel at the configs bench_terms.py times
], ids=["fixed-offset", "carry-ids", "carry-ids-off", "terms-configs"])
def test_gpu_interpreter_checks_natively(check, kwargs):
    """Interpreter checks of tests/test_triton_backend.py run natively on the GPU. The fixed-offset pass
    of dense key-row calls flags exactly the programs it cannot hold (none for ordinary inputs), the
    redo launch gives the running-max result bit for bit, and masked calls keep the running max unless
    ``SAMSPARSE_TRITON_FIXED_OFFSET=all``; masked loops match the reference with carried key-block ids
    (the default) and without them."""
    import test_triton_backend

    res = getattr(test_triton_backend, check)("cuda", **kwargs)
    assert res["ok"], "\n".join(res["problems"])


def _check_forced_config(case: Case, config: tuple) -> None:
    """``case`` on the GPU with the tile config ``config`` (BLOCK_M, BLOCK_N, warps, stages) forced: it must
    match the reference."""
    from samsparse.backends.triton import TritonBackend
    from samsparse.backends.triton.configs import TileConfig

    q, k, v, mask, rel_pos = make_inputs(case, "cuda")
    out, lse = TritonBackend(options={"config": TileConfig(*config)}).attend(q, k, v, mask, rel_pos, return_lse=True)
    torch.cuda.synchronize()
    res = check(case, q, k, v, mask, rel_pos, out, lse)
    assert res["ok"], "\n".join(res["problems"])


@pytest.mark.parametrize("config", [(128, 64, 8, 3), (128, 128, 8, 2), (64, 64, 4, 3), (128, 64, 4, 2)])
def test_gpu_every_candidate_config_is_correct(config):
    """The autotuner may pick any candidate: each must be right (key-row mode, 1 and 2 rows per step)."""
    case = Case(2, 4, 4, (64, 64), 64, "bf16", mask="random", block=128, rel="tables", seed=3, density=0.3)
    _check_forced_config(case, config)


def _window_configs() -> list:
    try:
        from samsparse.backends.triton.configs import window_candidates
    except ImportError:  # no triton: the module is skipped anyway
        return []
    return [(d, (c.block_m, c.block_n, c.num_warps, c.num_stages)) for d in (64, 80) for c in window_candidates(d)]


def _check_window_config(d: int, config: tuple, seed: int) -> None:
    """SAM's window shape (50 windows of 14x14, 16 heads, tables in, strided q/k/v, bf16) with a forced config."""
    case = Case(50, 16, 16, (14, 14), d, "bf16", mask="none", rel="tables", strided=True, seed=seed)
    _check_forced_config(case, config)


@pytest.mark.parametrize("grid", [(8, 8), (4, 12)])
@pytest.mark.parametrize("d,config", _window_configs())
def test_gpu_window_candidates_on_grids_shorter_than_their_tile(grid, d, config):
    """Small grids (here 64 and 48 tokens) take the window candidates too, with the tile cut to the
    sequence: each must be right. On an H200 (Triton 3.6) one key step over these grids computed wrong
    results (rel err ~0.96: d=80 at M64/N64/w4, d=64 at M64/N64/w8, e.g. M128/N256/w8/s2 cut to 64 rows,
    which also faulted) until the plan split such calls into two key steps of at most 16 rows per warp."""
    _check_forced_config(Case(1, 2, 2, grid, d, "bf16", mask="none", rel="tables", strided=True, seed=5), config)


@pytest.mark.parametrize("d,config", _window_configs())
def test_gpu_every_window_candidate_config_is_correct(d, config):
    """SAM's 14x14 windows (tables in, strided q/k/v, 16 heads, 50 windows): every candidate the
    autotuner may pick for the window shape class must be right, for vit_b's d=64 and vit_h's d=80."""
    _check_window_config(d, config, seed=7)


@pytest.mark.parametrize("d,config", _window_configs())
def test_gpu_windows_in_place_match_partitioned_windows(d, config):
    """SAM's 64x64 grid read in place (14x14 windows, padded to 70x70): same as the kernel on
    partitioned windows with the same config, and as the float64 reference, for every candidate."""
    from attention_cases import partitioned_windows

    from samsparse.backends.reference import reference_attention
    from samsparse.backends.triton import TritonBackend
    from samsparse.backends.triton.configs import TileConfig
    from samsparse.backends.triton.windows import window_attention
    from samsparse.relpos import RelPos

    g = torch.Generator(device="cuda").manual_seed(3)
    b, h, grid, ws = 2, 16 if d == 80 else 12, (64, 64), 14
    n = grid[0] * grid[1]
    qkv = torch.randn(b, n, 3, h, d, device="cuda", generator=g).to(torch.bfloat16)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # strided views, as SparseAttention makes them
    fill = torch.randn(2, h, d, device="cuda", generator=g).to(torch.bfloat16)
    tables = 0.3 * torch.randn(2, 2 * ws - 1, d, device="cuda", generator=g)
    rp = RelPos.from_tables(tables[0].to(torch.bfloat16), tables[1].to(torch.bfloat16), (ws, ws))
    cfg = TileConfig(*config)
    out, lse = window_attention(q, k, v, fill[0], fill[1], rp, None, grid, ws, config=cfg)
    qw, kw, vw, (hp, wp) = partitioned_windows(q, k, v, fill[0], fill[1], grid, ws)
    part = TritonBackend(options={"config": cfg}).attend(qw, kw, vw, None, rp)
    rel_h, rel_w = rp.terms(qw)
    ref = reference_attention(qw.double(), kw.double(), vw.double(), None,
                              RelPos((ws, ws), (ws, ws), rel_h=rel_h.double(), rel_w=rel_w.double()))
    torch.cuda.synchronize()

    def unpart(t):
        t = t.reshape(b, hp // ws, wp // ws, h, ws, ws, d).permute(0, 3, 1, 4, 2, 5, 6).reshape(b, h, hp, wp, d)
        return t[:, :, : grid[0], : grid[1]].reshape(b, h, n, d)

    assert torch.isfinite(lse).all()
    torch.testing.assert_close(out, unpart(part), rtol=0, atol=0)  # same config, same arithmetic
    err = float((out.double() - unpart(ref)).abs().max() / unpart(ref).abs().max())
    assert err < 1e-2, err


def _fallback_configs():
    try:
        from samsparse.backends.triton.configs import smaller_configs, window_candidates
    except ImportError:
        return []
    out = []
    for d in (64, 80):
        seen = []
        for c in window_candidates(d):
            for f in smaller_configs(c, d):
                if f not in seen and f not in window_candidates(d):
                    seen.append(f)
        out += [(d, (f.block_m, f.block_n, f.num_warps, f.num_stages)) for f in seen]
    return out


@pytest.mark.parametrize("d,config", _fallback_configs())
def test_gpu_every_window_fallback_config_is_correct(d, config):
    """The configs tried when a window candidate does not fit a GPU's shared memory must be right too
    (a 1-stage config was wrong at d=80: split head dims stop at 2 stages)."""
    _check_window_config(d, config, seed=9)


def test_gpu_encoder_with_windows_in_place_matches_partitioned():
    """A random vit_b-sized SAM encoder in bf16: optimize(windows="in_place") against "partition"."""
    from segment_anything.modeling.image_encoder import ImageEncoderViT

    from samsparse import optimize
    from samsparse.windows import WindowsInPlaceBlock

    torch.manual_seed(0)
    enc = ImageEncoderViT(depth=3, embed_dim=768, num_heads=12, global_attn_indexes=(2,), window_size=14,
                          use_rel_pos=True, rel_pos_zero_init=False, out_chans=256).cuda().eval()
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if name.endswith("qkv.bias"):
                p.normal_(0.0, 0.5)
    x = torch.randn(2, 3, 1024, 1024, device="cuda")
    optimize(enc, dtype=torch.bfloat16, windows="partition")
    with torch.no_grad():
        want = enc(x)
    optimize(enc, dtype=torch.bfloat16, windows="in_place")
    assert sum(type(blk) is WindowsInPlaceBlock for blk in enc.blocks) == 2
    with torch.no_grad():
        got = enc(x)
    err = float((got - want).abs().max() / want.abs().max())
    assert err < 2e-3, err


def test_gpu_autotune_and_cache(tmp_path, monkeypatch):
    from samsparse.backends.triton import configs, ops

    monkeypatch.setenv("SAMSPARSE_HOME", str(tmp_path))
    monkeypatch.setenv("SAMSPARSE_TRITON_AUTOTUNE", "1")
    configs.CACHE.clear_memory()
    ops._TUNED.clear()
    case = Case(1, 2, 2, (16, 32), 64, "fp16", mask="none", rel="tables", seed=5)
    q, k, v, mask, rel_pos = make_inputs(case, "cuda")
    out, lse = ops.attention(q, k, v, mask, rel_pos)
    assert check(case, q, k, v, mask, rel_pos, out, lse)["ok"]
    assert configs.cache_path().exists()
    ops._TUNED.clear()
    configs.CACHE.clear_memory()


def test_gpu_varlen_matches_per_sequence():
    from samsparse.backends.reference import reference_attention
    from samsparse.backends.triton import triton_varlen_attention
    from samsparse.masks import BlockMask

    g = torch.Generator().manual_seed(0)
    lens = [300, 1000, 77]
    h, d, bs = 4, 64, 128
    cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32, device="cuda")
    total = sum(lens)
    qkv = torch.randn(total, 3, h, d, generator=g).to("cuda", torch.bfloat16)
    q, k, v = qkv.unbind(1)
    m = math.ceil(max(lens) / bs)
    blocks = torch.rand(len(lens), h, m, m, generator=g) < 0.5
    blocks |= torch.eye(m, dtype=torch.bool)
    idx = BlockMask(blocks, bs, m * bs).to("cuda").to_indices("cuda")
    head_mask = torch.tensor([0, 1, 1, 1], dtype=torch.int32, device="cuda")
    out = triton_varlen_attention(q, k, v, cu, cu, max(lens), max(lens), idx.kv_num_blocks, idx.kv_indices, None, head_mask)
    for i, n in enumerate(lens):
        s = slice(int(cu[i]), int(cu[i + 1]))
        mb = math.ceil(n / bs)
        bi = blocks[i : i + 1, :, :mb, :mb].clone()
        bi[:, 0] = True
        ref = reference_attention(
            q[s].transpose(0, 1)[None], k[s].transpose(0, 1)[None], v[s].transpose(0, 1)[None],
            BlockMask(bi, bs, n).to("cuda"),
        )
        err = (out[s].transpose(0, 1)[None].double() - ref.double()).abs().max().item()
        assert err < 2e-2, f"sequence {i}: {err}"


def test_gpu_torch_compile_no_graph_break():
    from samsparse.backends.triton.ops import attention

    case = Case(2, 4, 4, (32, 32), 64, "bf16", mask="random", block=128, rel="tables", seed=9)
    q, k, v, mask, rel_pos = make_inputs(case, "cuda")
    eager, _ = attention(q, k, v, mask, rel_pos)
    idx = mask.to_indices("cuda")

    def fn(q, k, v, kv_num, kv_idx, rh, rw):
        out, _ = torch.ops.samsparse.triton_attention(
            q, k, v, kv_num, kv_idx, None, None, rh, rw, 64 ** -0.5, 0, 128, 128, 0, 0, 0, 0, 32, 32, 32, 32, 0, 0, 0, 0
        )
        return out.float() * 2

    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True)
    out = compiled(q, k, v, idx.kv_num_blocks, idx.kv_indices, rel_pos.rh, rel_pos.rw)
    assert (out / 2 - eager.float()).abs().max().item() < 1e-2


@pytest.mark.parametrize("grid", [(8, 8), (4, 12)])
@pytest.mark.parametrize("d,config", _window_configs())
def test_gpu_window_candidates_on_grids_shorter_than_their_tile_masked(grid, d, config):
    """The small grids of test_gpu_window_candidates_on_grids_shorter_than_their_tile under a random
    16-token block mask (rows of one to four 16-key blocks, one-hot bias): masked rows read their step
    count from memory, dense calls take it as the unspecialized ``NKB``; both must be right."""
    case = Case(1, 2, 2, grid, d, "bf16", mask="random", block=16, rel="tables", strided=True, seed=6, density=0.3)
    _check_forced_config(case, config)


_ONE_STEP_CONFIGS = [(d, c) for d in (64, 80) for c in ((64, 64, 4, 3), (64, 64, 8, 2), (32, 64, 4, 3))]


@pytest.mark.parametrize("grid,rel", [((8, 8), "none"), ((2, 24), "tables"), ((1, 48), "terms")])
@pytest.mark.parametrize("d,config", _ONE_STEP_CONFIGS)
def test_gpu_dense_calls_of_one_key_step(grid, rel, d, config):
    """Dense calls whose whole key sequence is one key step, in other bias modes than the one-hot one (no
    bias; the gathered bias of a 2x24 grid; one grid row, which takes the fixed-offset pass). One-hot
    calls of one step computed wrong results on an H200 at these configs, compiled without their key
    loop (Triton specialized the step count 1 as a constant); the count is no longer specialized, so
    these run the looped kernel. Last in this file: added in the tenth session without a GPU run."""
    _check_forced_config(Case(1, 2, 2, grid, d, "bf16", mask="none", rel=rel, strided=True, seed=8), config)
