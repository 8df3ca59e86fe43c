"""The opt-in tanh-GELU MLP: same layers and keys, the tanh GELU's values, reversible, compilable."""

from __future__ import annotations

import io
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import samsparse
from samsparse.benchmark import build_encoder
from samsparse.tanh_gelu import TanhGeluMLP, linear_gelu_tanh, restore_exact_gelu, use_tanh_gelu


def test_linear_gelu_tanh_values_and_checks():
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(2, 5, 8, generator=g), torch.randn(16, 8, generator=g), torch.randn(16, generator=g)
    y = linear_gelu_tanh(x, w, b)
    assert y.shape == (2, 5, 16)
    torch.testing.assert_close(y, F.gelu(F.linear(x, w, b), approximate="tanh"))
    assert (y - F.gelu(F.linear(x, w, b))).abs().max() > 1e-6  # it is the approximation, not the erf GELU
    with pytest.raises(ValueError, match="weight must be"):
        linear_gelu_tanh(x, torch.randn(16, 7), b)
    with pytest.raises(ValueError, match="bias must be"):
        linear_gelu_tanh(x, w, None)
    with pytest.raises(TypeError, match="dtype"):
        linear_gelu_tanh(x, w.double(), b)


def test_swap_keeps_keys_and_restores():
    enc = build_encoder("tiny", img_size=64).eval()
    keys = {k: v.data_ptr() for k, v in enc.state_dict().items()}
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        exact = enc(x)
        n = use_tanh_gelu(enc)
        approx = enc(x)
    assert n == len(enc.blocks) and all(isinstance(b.mlp, TanhGeluMLP) for b in enc.blocks)
    assert {k: v.data_ptr() for k, v in enc.state_dict().items()} == keys  # same names, same tensors
    assert 0 < (approx - exact).abs().max() < 1e-2
    assert use_tanh_gelu(enc) == 0  # already swapped
    clone = pickle.loads(pickle.dumps(enc))
    assert isinstance(clone.blocks[0].mlp, TanhGeluMLP)
    assert restore_exact_gelu(enc) == len(enc.blocks)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), exact)


def test_only_exact_gelu_mlps_are_swapped():
    class Odd(nn.Module):
        def __init__(self, act):
            super().__init__()
            self.lin1, self.lin2, self.act = nn.Linear(4, 8), nn.Linear(8, 4), act

    with pytest.raises(TypeError, match="exact GELU"):
        TanhGeluMLP(Odd(nn.ReLU()))
    with pytest.raises(TypeError, match="exact GELU"):
        TanhGeluMLP(Odd(nn.GELU(approximate="tanh")))
    assert isinstance(TanhGeluMLP(Odd(nn.GELU())), TanhGeluMLP)


def test_optimize_gelu_modes_and_compile_without_graph_breaks():
    enc = build_encoder("tiny", img_size=64).eval()
    with pytest.raises(ValueError, match="gelu must be"):
        samsparse.optimize(enc, dtype=None, gelu="fast")
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    samsparse.optimize(enc, dtype=None, gelu="tanh", compile="default", compile_backend=counting_backend)
    assert all(isinstance(b.mlp, TanhGeluMLP) for b in enc.blocks)
    with torch.no_grad():
        enc(torch.randn(1, 3, 64, 64))
    ops = [str(n.target) for gm in graphs for n in gm.graph.nodes if n.op == "call_function"]
    assert any("linear_gelu_tanh" in op for op in ops), "the fused op must stay one node in the compiled graph"
    samsparse.optimize(enc, dtype=None, gelu="exact")
    assert not any(isinstance(b.mlp, TanhGeluMLP) for b in enc.blocks)


def test_bench_variant_suffix():
    from samsparse.benchmark import _variant_model

    model = _variant_model(build_encoder("tiny", img_size=64), "dense+tanhgelu", torch.device("cpu"), torch.float32)
    assert all(isinstance(b.mlp, TanhGeluMLP) for b in model.blocks)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)  # the swapped model still saves a plain state_dict
