"""Mask builders, recipes and pictures (CPU, fast)."""

from __future__ import annotations

import json
import logging
import math
import os

import numpy as np
import pytest
import torch

from samsparse.masks import (
    RECIPE_NAMES,
    BlockMask,
    MaskRecipe,
    build_mask,
    dynamic,
    from_head_mask_type,
    hierarchical,
    hierarchical_plan,
    hybrid,
    image_to_prompt,
    local_2d,
    parse_recipe,
    pool_tiles,
    prompt_blocks,
    prompt_tiles,
    region_focused,
    render_mask,
    render_query_tile,
)


def diag_set(mask: BlockMask) -> bool:
    m = mask.blocks.shape[-1]
    return bool(mask.blocks.diagonal(dim1=-2, dim2=-1).all()) and mask.blocks.shape[-2] == m


# ---------------------------------------------------------------- local_2d
def slow_local_tokens(grid, tile, radius):
    """Token-level rule written out with Python loops."""
    (gh, gw), (th, tw) = grid, tile
    rh, rw = radius
    n = gh * gw
    out = torch.zeros(n, n, dtype=torch.bool)
    for qi in range(gh):
        for qj in range(gw):
            for ki in range(gh):
                for kj in range(gw):
                    if abs(qi // th - ki // th) <= rh and abs(qj // tw - kj // tw) <= rw:
                        out[qi * gw + qj, ki * gw + kj] = True
    return out


def slow_local_blocks(grid, tile, radius):
    nth, ntw = math.ceil(grid[0] / tile[0]), math.ceil(grid[1] / tile[1])
    m = nth * ntw
    out = torch.zeros(m, m, dtype=torch.bool)
    for a in range(m):
        for b in range(m):
            if abs(a // ntw - b // ntw) <= radius[0] and abs(a % ntw - b % ntw) <= radius[1]:
                out[a, b] = True
    return out


@pytest.mark.parametrize("radius", [0, 1, 2, (1, 0), (0, 2)])
def test_local_2d_matches_slow_loops_on_uneven_grid(radius):
    grid, tile = (13, 11), (4, 3)
    mask = local_2d(grid, tile, radius=radius)
    r = radius if isinstance(radius, tuple) else (radius, radius)
    assert mask.layout == "tiles" and mask.grid == grid and mask.tile == tile
    assert mask.shape == (1, 1, 16, 16) and mask.blocks.dtype == torch.bool
    assert torch.equal(mask.blocks[0, 0], slow_local_blocks(grid, tile, r))
    assert torch.equal(mask.to_token_mask()[0, 0], slow_local_tokens(grid, tile, r))
    assert diag_set(mask)
    mask.validate()


def test_local_2d_shapes_heads_density():
    mask = local_2d((64, 64), (8, 16), radius=1, num_heads=12)
    assert mask.shape == (1, 12, 32, 32)
    assert mask.block_size == (128, 128) and mask.seq_len == (4096, 4096)
    assert torch.equal(mask.blocks[0, 0], mask.blocks[0, 11])
    # separable: rows (2+3*6+2)/8 of 8, cols (2+3+3+2)/4 of 4
    assert mask.density() == pytest.approx((22 / 64) * (10 / 16))
    assert local_2d((64, 64), (8, 16), radius=10).density() == 1.0
    assert local_2d((64, 64), (8, 16), radius=0).density() == pytest.approx(1 / 32)
    assert local_2d((64, 64), (8, 16), radius=1).equals(local_2d((64, 64), (8, 16), radius=1))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(radius=-1), "radius"),
        (dict(radius=(1, 2, 3)), "radius"),
        (dict(grid=(0, 4)), "grid"),
        (dict(tile=(8, 0)), "tile"),
        (dict(num_heads=0), "num_heads"),
        (dict(radius=1.5), "radius"),
    ],
)
def test_local_2d_invalid(kwargs, match):
    with pytest.raises(ValueError, match=match):
        local_2d(**kwargs)


# ---------------------------------------------------------------- image_to_prompt
def test_image_to_prompt_default_dense():
    mask = image_to_prompt()
    assert mask.layout == "sequence"
    assert mask.shape == (1, 12, 33, 33) and mask.blocks.dtype == torch.bool
    assert mask.seq_len == (4101, 4101) and mask.block_size == (128, 128)
    assert bool(mask.blocks.all())
    assert list(prompt_blocks(4096, 5, 128)) == [32]


@pytest.mark.parametrize(
    "ni, np_, bs, expected",
    [(4096, 5, 128, [32]), (4000, 5, 128, [31]), (250, 10, 128, [1, 2]), (256, 300, 128, [2, 3, 4]), (64, 0, 32, [])],
)
def test_prompt_blocks(ni, np_, bs, expected):
    assert list(prompt_blocks(ni, np_, bs)) == expected
    # brute force: blocks holding a token >= ni
    n = ni + np_
    brute = sorted({t // bs for t in range(ni, n)})
    assert brute == expected


@pytest.mark.parametrize("ni, np_, bs", [(4096, 5, 128), (4000, 5, 128), (250, 10, 128), (300, 7, 64)])
def test_image_to_prompt_sparse_prompt_rows_cols_dense(ni, np_, bs):
    mask = image_to_prompt(ni, np_, bs, batch_size=2, num_heads=3, sparse_image_to_image=True, image_sparsity=0.7)
    m = math.ceil((ni + np_) / bs)
    assert mask.shape == (2, 3, m, m)
    pb = list(prompt_blocks(ni, np_, bs))
    assert bool(mask.blocks[..., pb, :].all()) and bool(mask.blocks[..., :, pb].all())
    assert diag_set(mask)
    # token level: prompt tokens read everything and are read by everything
    tokens = mask.to_token_mask()
    assert bool(tokens[..., ni:, :].all()) and bool(tokens[..., :, ni:].all())
    assert torch.equal(mask.blocks[0], mask.blocks[1])  # shared over the batch
    mask.validate(batch=2, heads=3)


def test_image_to_prompt_sparsity_seed_and_heads():
    kw = dict(num_image_tokens=4096, num_prompt_tokens=5, num_heads=4, sparse_image_to_image=True, image_sparsity=0.5)
    a, b, c = image_to_prompt(**kw, seed=0), image_to_prompt(**kw, seed=0), image_to_prompt(**kw, seed=1)
    assert torch.equal(a.blocks, b.blocks)
    assert not torch.equal(a.blocks, c.blocks)
    image = a.blocks[0, :, :32, :32].float()
    assert torch.allclose(image.mean((-1, -2)), torch.full((4,), 0.5), atol=1 / 1024)
    assert not torch.equal(a.blocks[0, 0], a.blocks[0, 1])  # per head
    # high sparsity still keeps the diagonal
    d = image_to_prompt(4096, 5, sparse_image_to_image=True, image_sparsity=0.99)
    assert diag_set(d)
    assert d.blocks[0, 0, :32, :32].sum() == 32


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_image_tokens=0), "num_image_tokens"),
        (dict(num_prompt_tokens=-1), "num_prompt_tokens"),
        (dict(block_size=0), "block_size"),
        (dict(batch_size=0), "batch_size"),
        (dict(num_heads=0), "num_heads"),
        (dict(image_sparsity=1.0), "image_sparsity"),
        (dict(image_sparsity=-0.1), "image_sparsity"),
        (dict(sparse_image_to_image="yes"), "sparse_image_to_image"),
    ],
)
def test_image_to_prompt_invalid(kwargs, match):
    with pytest.raises(ValueError, match=match):
        image_to_prompt(**kwargs)


# ---------------------------------------------------------------- hierarchical
@pytest.mark.parametrize("density", [0.1, 0.25, 0.5])
def test_hierarchical_density_and_structure(density):
    mask = hierarchical((64, 64), (8, 16), num_heads=12, density=density)
    assert mask.shape == (1, 12, 32, 32) and mask.blocks.dtype == torch.bool and mask.layout == "tiles"
    assert abs(mask.density() - density) <= 0.1, mask.density()
    assert diag_set(mask)
    plan = hierarchical_plan((64, 64), (8, 16), 12, density)
    assert [h.group for h in plan] == [0] * 4 + [1] * 4 + [2] * 4
    # finer groups read smaller neighbourhoods; the coarsest reads a global lattice
    per_head = [local_2d((64, 64), (8, 16), radius=h.radius).density() for h in plan]
    assert per_head[0] <= per_head[4]
    assert all(h.stride is not None for h in plan[8:]) and all(h.stride is None for h in plan[:8])
    mask.validate(heads=12)


def test_hierarchical_heads_follow_plan():
    mask = hierarchical((64, 64), (8, 8), num_heads=6, density=0.2, num_groups=3, seed=3)
    plan = hierarchical_plan((64, 64), (8, 8), 6, 0.2, 3, seed=3)
    for h, scale in enumerate(plan):
        local = local_2d((64, 64), (8, 8), radius=scale.radius).blocks[0, 0]
        assert bool((mask.blocks[0, h] | ~local).all())  # contains its neighbourhood
        if scale.stride is None:
            assert torch.equal(mask.blocks[0, h], local)
        else:
            sh, sw = scale.stride
            ph, pw = scale.phase
            for q, k in [(0, 0), (9, 30), (63, 1)]:
                dr, dc = k // 8 - q // 8, k % 8 - q % 8
                expect = bool(local[q, k]) or ((dr - ph) % sh == 0 and (dc - pw) % sw == 0)
                assert bool(mask.blocks[0, h, q, k]) == expect


def test_hierarchical_seed_and_determinism():
    a = hierarchical(density=0.25, seed=0)
    assert torch.equal(a.blocks, hierarchical(density=0.25, seed=0).blocks)
    others = [hierarchical(density=0.25, seed=s).blocks for s in (1, 2, 3)]
    assert any(not torch.equal(a.blocks, o) for o in others)


@pytest.mark.parametrize("grid, tile, heads", [((13, 11), (4, 3), 5), ((64, 64), (4, 4), 16), ((70, 70), (8, 16), 12)])
def test_hierarchical_planned_density_is_exact(caplog, grid, tile, heads):
    # the plan computes densities from separable 1-D sums; they must equal the built mask's
    with caplog.at_level(logging.DEBUG, logger="samsparse.masks.hierarchical"):
        mask = hierarchical(grid, tile, num_heads=heads, density=0.2)
    planned = [r.getMessage() for r in caplog.records if "planned" in r.getMessage()]
    assert planned and float(planned[-1].rsplit(" ", 1)[-1]) == pytest.approx(mask.density(), abs=1e-5)


def test_hierarchical_uneven_and_tiny_grids():
    mask = hierarchical((13, 11), (4, 3), num_heads=5, density=0.3)
    assert mask.shape == (1, 5, 16, 16) and diag_set(mask)
    assert abs(mask.density() - 0.3) <= 0.1
    small = hierarchical((14, 14), (8, 14), num_heads=4, density=0.25)  # 2 tiles: best effort
    assert small.shape == (1, 4, 2, 2) and diag_set(small)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(density=0.0), "density"),
        (dict(density=1.5), "density"),
        (dict(num_groups=0), "num_groups"),
        (dict(num_groups=13), "num_groups"),
        (dict(num_heads=0), "num_heads"),
        (dict(tile=(0, 4)), "tile"),
    ],
)
def test_hierarchical_invalid(kwargs, match):
    with pytest.raises(ValueError, match=match):
        hierarchical(**kwargs)


# ---------------------------------------------------------------- hybrid
def test_hybrid_count_and_list():
    sparse = local_2d((32, 32), (8, 8), radius=0)
    mask, hmt = hybrid(sparse, num_heads=4, dense_heads=2)
    assert hmt.dtype == torch.int32 and hmt.tolist() == [0, 0, 1, 1]
    assert mask.shape == (1, 4, 16, 16)
    assert bool(mask.blocks[0, :2].all())
    assert torch.equal(mask.blocks[0, 2], sparse.blocks[0, 0]) and torch.equal(mask.blocks[0, 3], sparse.blocks[0, 0])

    per_head = hierarchical((32, 32), (8, 8), num_heads=4, density=0.3)
    mask, hmt = hybrid(per_head, num_heads=4, dense_heads=[1, 3])
    assert hmt.tolist() == [1, 0, 3, 0]
    assert torch.equal(mask.blocks[0, 2], per_head.blocks[0, 2]) and bool(mask.blocks[0, 3].all())

    two = hierarchical((32, 32), (8, 8), num_heads=2, density=0.3)
    mask, hmt = hybrid(two, num_heads=4, dense_heads=[0, 2])
    assert hmt.tolist() == [0, 1, 0, 2]
    assert torch.equal(mask.blocks[0, 3], two.blocks[0, 1])


def test_from_head_mask_type():
    sparse = hierarchical((32, 32), (8, 8), num_heads=3, density=0.3)
    mask = from_head_mask_type(torch.tensor([3, 0, 1, 1]), sparse)
    assert mask.shape == (1, 4, 16, 16) and mask.layout == "tiles"
    assert torch.equal(mask.blocks[0, 0], sparse.blocks[0, 2]) and bool(mask.blocks[0, 1].all())
    assert torch.equal(mask.blocks[0, 3], sparse.blocks[0, 0])
    with pytest.raises(ValueError, match="streaming"):
        from_head_mask_type([0, -1], sparse)
    with pytest.raises(ValueError, match="has 3 head"):
        from_head_mask_type([0, 4], sparse)
    with pytest.raises(ValueError, match="1-D int"):
        from_head_mask_type(torch.tensor([0.0, 1.0]), sparse)


def test_hybrid_invalid():
    sparse = hierarchical((32, 32), (8, 8), num_heads=3, density=0.3)
    with pytest.raises(ValueError, match="sparse mask has 3 heads"):
        hybrid(sparse, num_heads=8, dense_heads=1)
    with pytest.raises(ValueError, match="not head ids"):
        hybrid(sparse, num_heads=3, dense_heads=[5])
    with pytest.raises(ValueError, match="count"):
        hybrid(sparse, num_heads=3, dense_heads=4)


# ---------------------------------------------------------------- region_focused
def test_region_point_center():
    assert prompt_tiles(points=[(512, 512)], image_size=(1024, 1024)) == [4 * 4 + 2]  # cell (32,32) -> tile (4,2)
    mask = region_focused(points=[(512, 512)], image_size=(1024, 1024), radius=1, num_heads=2)
    assert mask.shape == (1, 2, 32, 32) and mask.layout == "tiles"
    t = 4 * 4 + 2
    assert bool(mask.blocks[..., t, :].all()) and bool(mask.blocks[..., :, t].all())
    local = local_2d(radius=1).blocks[0, 0]
    others = [i for i in range(32) if i != t]
    assert torch.equal(mask.blocks[0, 0][others][:, others], local[others][:, others])
    assert diag_set(mask)


def test_region_resize_longest_side_and_boxes():
    # H=500, W=1000: scale 1.024 -> (512, 1024); (x=500, y=250) -> (512, 256) -> cell (16, 32) -> tile (2, 2)
    assert prompt_tiles(points=np.array([[500.0, 250.0]]), image_size=(500, 1000)) == [2 * 4 + 2]
    # a point on the far edge lies in the last cell
    assert prompt_tiles(points=[(1000, 500)], image_size=(500, 1000)) == [3 * 4 + 3]
    assert prompt_tiles(boxes=[(0, 0, 300, 300)], image_size=(1024, 1024)) == [0, 1, 4, 5, 8, 9]
    # no image_size: coordinates already in the 1024 input frame; tiny SAM grid
    assert prompt_tiles(points=[(200, 10)], grid=(16, 16), tile=(4, 4), input_size=256) == [3]
    mask = region_focused(boxes=torch.tensor([[0, 0, 300, 300]]), image_size=(1024, 1024), radius=0)
    dense = [0, 1, 4, 5, 8, 9]
    assert bool(mask.blocks[0, 0][dense].all()) and bool(mask.blocks[0, 0][:, dense].all())
    assert not bool(mask.blocks[0, 0, 31, 30])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(points=[(1100, 10)], image_size=(1024, 1024)), "outside"),
        (dict(points=[(-1, 10)], image_size=(1024, 1024)), "outside"),
        (dict(boxes=[(10, 10, 5, 20)], image_size=(1024, 1024)), "x0 <= x1"),
        (dict(points=[(1, 2, 3)]), "shape"),
        (dict(), "points"),
        (dict(points=[]), "empty"),
        (dict(points=[(1, 1)], radius=-1), "radius"),
    ],
)
def test_region_invalid(kwargs, match):
    with pytest.raises(ValueError, match=match):
        region_focused(**kwargs)


# ---------------------------------------------------------------- dynamic
def test_dynamic_picks_known_tiles():
    grid, tile = (8, 8), (4, 4)  # 2x2 tiles
    tid = torch.tensor([(r // 4) * 2 + c // 4 for r in range(8) for c in range(8)])
    perm = torch.tensor([1, 3, 0, 2])  # query tile t should pick key tile perm[t]
    k = torch.eye(4)[tid][None, None]  # [1, 1, 64, 4]
    q = torch.eye(4)[perm[tid]][None, None] * 2.0
    mask = dynamic(q, k, grid, tile, top_k=1)
    assert mask.shape == (1, 1, 4, 4) and mask.layout == "tiles"
    expect = torch.eye(4, dtype=torch.bool) | torch.eye(4, dtype=torch.bool)[perm]
    assert torch.equal(mask.blocks[0, 0], expect)
    no_diag = dynamic(q, k, grid, tile, top_k=1, include_diagonal=False)
    assert torch.equal(no_diag.blocks[0, 0], torch.eye(4, dtype=torch.bool)[perm])


def test_dynamic_partial_tiles_pool_real_tokens():
    grid, tile = (6, 5), (4, 3)  # tiles of 12, 6, 8, 4 tokens
    x = torch.randn(2, 3, 30, 7, generator=torch.Generator().manual_seed(0))
    pooled = pool_tiles(x, grid, tile)
    tid = torch.tensor([(r // 4) * 2 + c // 3 for r in range(6) for c in range(5)])
    for t in range(4):
        assert torch.allclose(pooled[:, :, t], x[:, :, tid == t].mean(2), atol=1e-6)
    # one key tile holds a tiny strong patch: its mean (only real tokens) must win
    k = torch.zeros(1, 1, 30, 2)
    k[0, 0, tid == 3, 0] = 1.0  # tile 3 (4 tokens): mean 1.0
    k[0, 0, tid == 0, 0] = 0.5  # tile 0 (12 tokens): mean 0.5
    q = torch.zeros(1, 1, 30, 2)
    q[..., 0] = 1.0
    mask = dynamic(q, k, grid, tile, top_k=1, include_diagonal=False)
    assert mask.blocks[0, 0, :, 3].all() and mask.blocks[0, 0].sum() == 4


def test_dynamic_density_batch_heads_determinism():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(2, 3, 64 * 64, 8, generator=g), torch.randn(2, 3, 64 * 64, 8, generator=g)
    a = dynamic(q, k, (64, 64), (8, 16), density=0.25)
    assert a.shape == (2, 3, 32, 32) and a.blocks.dtype == torch.bool
    rows = a.blocks.sum(-1)
    assert bool(((rows == 8) | (rows == 9)).all())  # top 8 of 32, plus the diagonal
    assert diag_set(a)
    assert torch.equal(a.blocks, dynamic(q, k, (64, 64), (8, 16), density=0.25).blocks)
    assert not torch.equal(a.blocks[0, 0], a.blocks[1, 2])
    # ties go to the lowest tile id
    zeros = torch.zeros(1, 1, 64, 4)
    tied = dynamic(zeros, zeros, (8, 8), (4, 4), top_k=2, include_diagonal=False)
    assert torch.equal(tied.blocks[0, 0], torch.tensor([[1, 1, 0, 0]] * 4, dtype=torch.bool))
    a.validate(batch=2, heads=3)


def test_dynamic_half_precision_input():
    q = torch.randn(1, 2, 196, 16).to(torch.bfloat16)
    mask = dynamic(q, q, (14, 14), (8, 14), top_k=1)
    assert mask.shape == (1, 2, 2, 2) and diag_set(mask)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(grid=(8, 9)), "N=64"),
        (dict(top_k=0), "top_k"),
        (dict(top_k=5), "top_k"),
        (dict(density=0.0), "density"),
    ],
)
def test_dynamic_invalid(kwargs, match):
    q = torch.zeros(1, 1, 64, 4)
    args = dict(grid=(8, 8), tile=(4, 4))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        dynamic(q, q, **args)


def test_dynamic_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        dynamic(torch.zeros(1, 1, 64, 4), torch.zeros(1, 2, 64, 4), (8, 8), (4, 4))


# ---------------------------------------------------------------- algebra
def test_algebra_with_builders():
    loc = local_2d(radius=1, num_heads=12)
    hier = hierarchical(num_heads=12, density=0.25)
    reg = region_focused(points=[(512, 512)], image_size=(1024, 1024), radius=0, num_heads=12)
    both = loc & hier
    either = loc | reg
    assert bool((both.blocks <= loc.blocks).all()) and bool((both.blocks <= hier.blocks).all())
    assert both.density() <= min(loc.density(), hier.density())
    assert either.density() >= max(loc.density(), reg.density())
    assert diag_set(both) and diag_set(either)
    # broadcast: a 1-head mask combines with a 12-head one
    assert (local_2d(radius=0) | hier).shape == (1, 12, 32, 32)
    with pytest.raises(ValueError, match="differ"):
        loc & local_2d(tile=(8, 8))
    idx = hier.to_indices()
    assert torch.equal(idx.kv_num_blocks, hier.blocks.sum(-1, dtype=torch.int32))


# ---------------------------------------------------------------- recipes
@pytest.mark.parametrize(
    "text",
    [
        "dense",
        "local:radius=2",
        "local:radius=1x2,tile=4x4",
        "hierarchical:density=0.25,tile=8x16",
        "hierarchical:density=0.1,num_groups=2,seed=7",
        "dynamic:density=0.5,include_diagonal=false",
        "dynamic:top_k=3",
        "image_to_prompt:image_sparsity=0.3,num_prompt_tokens=7,sparse_image_to_image=true",
        "region:image_size=768x1024,points=512x300;",
        "region:boxes=0x0x100x200,image_size=768x1024,points=512x300;10x20",
    ],
)
def test_recipe_round_trip(text):
    recipe = parse_recipe(text)
    assert str(recipe) == text
    assert parse_recipe(str(recipe)) == recipe
    data = json.loads(json.dumps(recipe.to_dict()))
    assert MaskRecipe.from_dict(data) == recipe
    assert parse_recipe(data) == recipe
    assert hash(recipe) == hash(parse_recipe(text))


def test_recipe_values_and_forms():
    r = parse_recipe("hierarchical: density = 0.25 , tile=8x16, seed=3")
    assert r.name == "hierarchical" and r.kwargs == {"density": 0.25, "tile": (8, 16), "seed": 3}
    assert isinstance(r.kwargs["seed"], int) and isinstance(r.kwargs["density"], float)
    assert parse_recipe({"name": "hierarchical", "density": 0.25, "tile": [8, 16], "seed": 3}) == r
    assert parse_recipe({"name": "hierarchical", "density": 0.25, "tile": "8x16", "seed": 3}) == r
    assert parse_recipe("dynamic:include_diagonal=False").kwargs == {"include_diagonal": False}
    assert parse_recipe("local_2d:radius=2") == MaskRecipe("local", {"radius": 2})
    assert parse_recipe(None).name == "dense" and parse_recipe("").name == "dense"
    assert parse_recipe(r) is r
    assert set(RECIPE_NAMES) == {"dense", "local", "hierarchical", "region", "image_to_prompt", "dynamic"}
    assert "density" in MaskRecipe.valid_keys("hierarchical") and "grid" not in MaskRecipe.valid_keys("hierarchical")


@pytest.mark.parametrize(
    "recipe, match",
    [
        ("blocky", "valid names: dense, local, hierarchical"),
        ("local:radiu=2", "valid keys: tile, radius"),
        ("hierarchical:grid=8x8", "valid keys: tile, density, num_groups, seed"),
        ("dense:radius=1", "takes no arguments"),
        ("local:radius", "key=value"),
        ("local:radius=1,radius=2", "twice"),
        ("region:radius=1", "needs points"),
        ({"density": 0.2}, "'name'"),
        (3, "string, a dict"),
        ({"name": "local", "radius": object()}, "not allowed"),
    ],
)
def test_recipe_errors(recipe, match):
    with pytest.raises(ValueError, match=match):
        parse_recipe(recipe)


def test_recipe_build():
    assert parse_recipe("dense").build((64, 64), 12) is None
    assert build_mask(None, (64, 64), 12) is None
    local = build_mask("local:radius=2", (64, 64), 12)
    assert local.shape == (1, 12, 32, 32) and torch.equal(local.blocks[0, 5], local_2d(radius=2).blocks[0, 0])
    window = build_mask("local:radius=1", (14, 14), 12)  # tile 8x16 clipped to 8x14
    assert window.tile == (8, 14) and window.seq_len == (196, 196)
    hier = build_mask({"name": "hierarchical", "density": 0.25}, (64, 64), 12)
    assert torch.equal(hier.blocks, hierarchical(density=0.25).blocks)
    reg = build_mask("region:image_size=1024x1024,points=512x512;", (64, 64), 1)
    assert reg.equals(region_focused(points=[(512, 512)], image_size=(1024, 1024)))
    itp = build_mask("image_to_prompt:num_image_tokens=1024,num_prompt_tokens=3", (32, 32), 4)
    assert itp.shape == (1, 4, 9, 9)

    dyn = parse_recipe("dynamic:top_k=2")
    assert dyn.is_dynamic and not parse_recipe("local").is_dynamic
    assert dyn.build((14, 14), 12) is None
    q = torch.randn(3, 2, 196, 8)
    m = dyn.build_dynamic(q, q, (14, 14))
    assert m.shape == (3, 2, 2, 2) and m.tile == (8, 14)
    with pytest.raises(ValueError, match="not dynamic"):
        parse_recipe("local").build_dynamic(q, q, (14, 14))
    with pytest.raises(ValueError, match="radius"):
        build_mask("local:radius=-1", (64, 64), 1)


# ---------------------------------------------------------------- pictures
def test_render_mask_size_and_png(tmp_path):
    from PIL import Image

    mask = hierarchical(num_heads=12, density=0.25)
    img = render_mask(mask)
    cell = 128 // 32
    assert img.dtype == np.uint8 and img.shape == (3 * (32 * cell + 1) + 1, 4 * (32 * cell + 1) + 1, 3)
    assert tuple(img[0, 0]) == (128, 128, 128)  # separator
    assert tuple(img[1, 1]) == (255, 255, 255)  # head 0, block (0, 0): the diagonal is read
    far = mask.blocks[0, 0, 0, 31]
    assert tuple(img[1, 1 + 31 * cell]) == ((255, 255, 255) if far else (40, 40, 40))

    path = tmp_path / "mask.png"
    out = render_mask(mask, path=path, max_heads=4, cell=2)
    assert out.shape == (2 * 65 + 1, 2 * 65 + 1, 3)
    assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), out)
    assert sorted(os.listdir(tmp_path)) == ["mask.png"]  # no temp file left behind

    seq = render_mask(image_to_prompt(num_heads=3))
    assert seq.shape == (2 * (33 * 3 + 1) + 1, 2 * (33 * 3 + 1) + 1, 3)


def test_render_query_tile(tmp_path):
    mask = region_focused(points=[(512, 512)], image_size=(1024, 1024), radius=0)
    img = render_query_tile(mask, (0, 0), cell=2, path=tmp_path / "q.png")
    assert img.shape == (128, 128, 3) and img.dtype == np.uint8
    assert tuple(img[0, 0]) == (220, 50, 50)  # the query tile itself
    assert tuple(img[32 * 2, 32 * 2]) == (255, 255, 255)  # focus tile (4, 2) is read
    assert tuple(img[63 * 2, 63 * 2]) == (40, 40, 40)  # far tile skipped
    assert (tmp_path / "q.png").exists()
    with pytest.raises(ValueError, match="tiles"):
        render_query_tile(image_to_prompt(), 0)
    with pytest.raises(ValueError, match="outside"):
        render_query_tile(mask, (8, 0))
