"""The fast encoder path: bf16 within tolerance, one compiled graph, no graph breaks."""

import copy

import pytest
import torch

import samsparse
from samsparse.checkpoints import build_tiny_sam
from samsparse.fast import optimize


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_sam(embed_dim=64, depth=4, num_heads=4, img_size=128, window_size=3, global_attn_indexes=(1, 3))


def test_bf16_encoder_close_to_fp32_original(tiny):
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = tiny.image_encoder(x)
        lowp_orig = copy.deepcopy(tiny).image_encoder.to(torch.bfloat16)(x.bfloat16()).float()
    model = optimize(copy.deepcopy(tiny), dtype=torch.bfloat16, backend="sdpa")
    with torch.no_grad():
        out = model.image_encoder(x)
    assert out.dtype == torch.float32
    err = (out - ref).abs().max().item()
    err_orig = (lowp_orig - ref).abs().max().item()  # SAM's own bf16 error
    assert err <= 2 * err_orig + 1e-2, f"{err} vs SAM bf16 {err_orig}"


@pytest.mark.parametrize("scope", ["encoder", "blocks"])
def test_compiled_encoder_no_graph_break_no_recompile_per_layer(tiny, scope):
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("eager")
    model = optimize(
        copy.deepcopy(tiny), dtype=None, compile="default", backend="sdpa", compile_backend=counter, compile_scope=scope
    )
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        out = model.image_encoder(x)
        out2 = model.image_encoder(x + 1)
        ref = tiny.image_encoder(x)
    # encoder: one graph; blocks: one per block kind (windowed, global) + patch embedding + neck,
    # whatever the depth (4 blocks here, 2 of each kind)
    expected = 1 if scope == "encoder" else 4
    assert counter.frame_count == expected, f"{counter.frame_count} graphs: graph breaks or recompiles"
    assert (out - ref).abs().max() <= 1e-5
    assert not torch.equal(out, out2)


def test_compile_scope_is_checked(tiny):
    with pytest.raises(ValueError, match="compile_scope must be one of"):
        optimize(copy.deepcopy(tiny), dtype=None, backend="sdpa", compile="default", compile_scope="layers")


def test_optimize_patches_unpatched_model_and_rejects_non_sam():
    model = build_tiny_sam()
    optimize(model, dtype=None, backend="sdpa")
    assert samsparse.patch_config(model).blocks == [0, 1]
    with pytest.raises(TypeError, match="neither a Sam"):
        optimize(torch.nn.Linear(2, 2))


def test_optimize_on_an_encoder_already_in_bf16(tiny):
    model = copy.deepcopy(tiny)
    model.image_encoder.to(torch.bfloat16)
    optimize(model.image_encoder, dtype=None, backend="sdpa")  # warm-up must use the encoder's dtype
    with torch.no_grad():
        out = model.image_encoder(torch.randn(1, 3, 128, 128, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16


def test_matmul_patch_embedding_equals_the_convolution(tiny):
    from samsparse.patch_embed import patch_embed_matmul, use_matmul_patch_embed

    pe = copy.deepcopy(tiny.image_encoder.patch_embed)
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = pe(x)
        assert use_matmul_patch_embed(pe)
        out = pe(x)
        odd = torch.randn(1, 3, 120, 136)  # not a multiple of the 16x16 kernel: the convolution's semantics
        assert torch.allclose(patch_embed_matmul(odd, pe.proj), pe.proj(odd).permute(0, 2, 3, 1), atol=1e-5)
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5), (out - ref).abs().max()
    with pytest.raises(ValueError, match="channels"):
        patch_embed_matmul(torch.randn(1, 4, 32, 32), pe.proj)
    assert not use_matmul_patch_embed(torch.nn.Conv2d(3, 8, 16, 16))  # not a SAM PatchEmbed
    strided = copy.deepcopy(tiny.image_encoder.patch_embed)
    strided.proj = torch.nn.Conv2d(3, 8, 16, 8)
    assert not use_matmul_patch_embed(strided)  # overlapping patches stay a convolution


def test_cuda_graph_modes_compile_the_encoder_whole(tiny, monkeypatch):
    """Per-block CUDA graphs would overwrite each other's outputs: those modes use one graph."""
    compiled = []

    def fake_compile(fn, **kwargs):
        compiled.append(getattr(fn, "__self__", None))
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    model = optimize(copy.deepcopy(tiny), dtype=None, backend="sdpa", compile="reduce-overhead")
    assert compiled == [model.image_encoder]
    compiled.clear()
    model = optimize(copy.deepcopy(tiny), dtype=None, backend="sdpa", compile="default")
    assert len(compiled) == len(model.image_encoder.blocks) + 2  # blocks + patch embedding + neck


def test_optimize_again_starts_from_the_eager_encoder(tiny, monkeypatch):
    """A second optimize (other mode, scope, or none) replaces the compiled forwards, never wraps them."""
    wrapped = []

    def fake_compile(fn, **kwargs):
        wrapped.append(fn)

        def compiled_fn(*a, **k):
            return fn(*a, **k)

        compiled_fn.is_compiled = True
        return compiled_fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    model = optimize(copy.deepcopy(tiny), dtype=None, backend="sdpa", compile="default")
    enc = model.image_encoder
    assert all(getattr(b.forward, "is_compiled", False) for b in enc.blocks)
    wrapped.clear()
    optimize(model, dtype=None, backend="sdpa", compile="default", compile_scope="encoder")
    assert not any(getattr(fn, "is_compiled", False) for fn in wrapped)  # nothing compiled twice
    assert "forward" not in enc.blocks[0].__dict__ and getattr(enc.forward, "is_compiled", False)
    optimize(model, dtype=None, backend="sdpa", compile=None)
    assert "forward" not in enc.__dict__ and "forward" not in enc.blocks[0].__dict__
    assert not getattr(enc.patch_embed.forward, "is_compiled", False)  # the GEMM embedding, eager
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        assert torch.allclose(enc(x), tiny.image_encoder(x), atol=1e-5)


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_optimized_model_pickles_and_keeps_its_state_dict_keys(tiny, dtype):
    import io

    model = optimize(copy.deepcopy(tiny), dtype=dtype, backend="sdpa")
    assert list(model.state_dict()) == list(tiny.state_dict())  # the GEMM embedding shares the conv's parameters
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    again = torch.load(buf, weights_only=False)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(again.image_encoder(x), model.image_encoder(x))


def test_optimize_checks_its_arguments(tiny):
    model = copy.deepcopy(tiny)
    with pytest.raises(ValueError, match="compile must be None"):
        optimize(model, dtype=None, backend="sdpa", compile="fast")
    with pytest.raises(TypeError, match="dtype must be None"):
        optimize(model, dtype=torch.int8, backend="sdpa")
    with pytest.raises(ValueError, match="example_batch"):
        optimize(model, dtype=None, backend="sdpa", example_batch=0)
    assert next(model.parameters()).dtype == torch.float32  # nothing touched before the checks


def test_patch_global_recipe_sparse_global_blocks_dense_windows(tiny):
    from samsparse.benchmark import patch_global_recipe

    model = patch_global_recipe(copy.deepcopy(tiny), "local:radius=1", backend="sdpa")
    blocks = model.image_encoder.blocks
    assert samsparse.patch_config(model).blocks == list(range(len(blocks)))
    for blk in blocks:
        recipe = blk.attn.mask_source.recipe
        if blk.window_size > 0:
            assert recipe is None or recipe.is_dense, "windowed blocks stay dense"
        else:
            assert recipe is not None and not recipe.is_dense


def test_compiled_call_at_a_new_batch_size_does_not_recompile_later():
    """The warm-up (B=1) fills the backend cache for every batch size: a compiled call at B=2 traces the
    cached path, so the next B=2 call compiles nothing more (a miss would trace registry.select, break the
    graph, and recompile on the following call)."""
    from samsparse.benchmark import build_encoder

    enc = build_encoder("tiny", img_size=64).eval()
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    samsparse.optimize(enc, dtype=None, compile="default", compile_backend=counting_backend, backend="sdpa",
                       example_batch=1)
    with torch.no_grad():
        enc(torch.randn(2, 3, 64, 64))
        first = len(graphs)
        enc(torch.randn(2, 3, 64, 64))
    assert first > 0 and len(graphs) == first, f"second B=2 call compiled {len(graphs) - first} more graphs"
