"""Patcher: dense exactness, sparse semantics, unpatch, save/load round trips."""

import copy
import types

import pytest
import torch

import samsparse
from samsparse import SparseAttention, patch, patch_config, unpatch
from samsparse.checkpoints import build_tiny_sam
from samsparse.masks import BlockMask


@pytest.fixture(scope="module")
def tiny_sam():
    return build_tiny_sam(embed_dim=64, depth=3, num_heads=4, img_size=128, window_size=3, global_attn_indexes=(1,))


@pytest.fixture(scope="module")
def image():
    return torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("backend", ["sdpa", "flex", "reference", "auto"])
@pytest.mark.parametrize("blocks", ["global", "all"])
def test_dense_patch_reproduces_sam_encoder(tiny_sam, image, backend, blocks):
    model = copy.deepcopy(tiny_sam)
    with torch.no_grad():
        ref = model.image_encoder(image)
    keys = list(model.state_dict())
    patch(model, backend=backend, blocks=blocks)
    assert list(model.state_dict()) == keys
    with torch.no_grad():
        out = model.image_encoder(image)
    assert (out - ref).abs().max().item() <= 1e-5


def test_timm_samvit_dense_patch_reproduces():
    timm = pytest.importorskip("timm")
    model = timm.create_model(
        "samvit_base_patch16", pretrained=False, img_size=128, embed_dim=64, depth=3, num_heads=4,
        window_size=3, global_attn_indexes=[1], num_classes=0,
    ).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "rel_pos" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    x = torch.randn(1, 3, 128, 128, generator=g)
    with torch.no_grad():
        ref = model(x)
    patch(model, blocks="all", backend="sdpa")
    assert sum(isinstance(m, SparseAttention) for m in model.modules()) == 3
    with torch.no_grad():
        out = model(x)
    assert (out - ref).abs().max().item() <= 1e-5


@pytest.mark.slow
def test_vit_b_sized_dense_patch_reproduces():
    from segment_anything.modeling import ImageEncoderViT

    torch.manual_seed(0)
    enc = ImageEncoderViT(
        img_size=256, embed_dim=768, depth=12, num_heads=12, use_rel_pos=True, window_size=14,
        global_attn_indexes=(2, 5, 8, 11), out_chans=256,
    ).eval()
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if "rel_pos" in name:
                p.normal_(std=0.1)
        x = torch.randn(1, 3, 256, 256)
        ref = enc(x)
        patch(enc, blocks="all", backend="sdpa")
        out = enc(x)
    assert (out - ref).abs().max().item() <= 1e-4 * ref.abs().max().item()


def _masked_sam_attention_forward(token_mask):
    """SAM's own Attention.forward with -inf outside ``token_mask``: the independent computation."""
    from segment_anything.modeling.image_encoder import add_decomposed_rel_pos

    def forward(self, x):
        b, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, b * self.num_heads, h * w, -1).unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = add_decomposed_rel_pos(attn, q, self.rel_pos_h, self.rel_pos_w, (h, w), (h, w))
        allowed = token_mask.expand(b, self.num_heads, -1, -1).reshape(b * self.num_heads, h * w, h * w)
        attn = attn.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
        out = (attn @ v).view(b, self.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
        return self.proj(out)

    return forward


@pytest.mark.parametrize("layout", ["sequence", "tiles"])
def test_sparse_patch_equals_independent_masked_sam(tiny_sam, image, layout):
    grid = (8, 8)  # 128 px / 16
    g = torch.Generator().manual_seed(3)
    if layout == "sequence":
        blocks = torch.rand(1, 4, 4, 4, generator=g) > 0.5
        blocks |= torch.eye(4, dtype=torch.bool)
        mask = BlockMask(blocks, 16, 64)
    else:
        blocks = torch.rand(1, 4, 6, 6, generator=g) > 0.5
        blocks |= torch.eye(6, dtype=torch.bool)
        mask = BlockMask(blocks, None, None, layout="tiles", grid=grid, tile=(3, 4))
    model = copy.deepcopy(tiny_sam)
    independent = copy.deepcopy(tiny_sam)
    glob = independent.image_encoder.blocks[1].attn
    glob.forward = types.MethodType(_masked_sam_attention_forward(mask.to_token_mask()), glob)
    patch(model, mask=mask, backend="sdpa")
    with torch.no_grad():
        out = model.image_encoder(image)
        ref = independent.image_encoder(image)
        dense = tiny_sam.image_encoder(image)
    assert (out - ref).abs().max().item() <= 1e-5
    assert (out - dense).abs().max().item() > 1e-3  # the mask really changed something


def test_unpatch_restores_original_class_and_outputs(tiny_sam, image):
    model = copy.deepcopy(tiny_sam)
    cls = type(model.image_encoder.blocks[1].attn)
    patch(model, blocks="all")
    assert patch_config(model).blocks == [0, 1, 2]
    unpatch(model)
    assert type(model.image_encoder.blocks[1].attn) is cls
    assert patch_config(model) is None
    with torch.no_grad():
        assert torch.equal(model.image_encoder(image), tiny_sam.image_encoder(image))


def test_block_selection_and_errors(tiny_sam):
    model = copy.deepcopy(tiny_sam)
    patch(model, blocks=[0, -1])
    assert patch_config(model).blocks == [0, 2]
    with pytest.raises(ValueError, match="already patched"):
        patch(model)
    fresh = copy.deepcopy(tiny_sam)
    with pytest.raises(ValueError, match="out of range"):
        patch(fresh, blocks=[7])
    with pytest.raises(ValueError, match="unknown backend"):
        patch(fresh, backend="warp-speed")
    with pytest.raises(ValueError, match="no SAM-style"):
        patch(torch.nn.Linear(3, 3))


def test_fixed_mask_on_wrong_grid_explains(tiny_sam, image):
    model = copy.deepcopy(tiny_sam)
    patch(model, mask=BlockMask.full(100, 16), backend="sdpa")
    with pytest.raises(ValueError, match="mask recipe"):
        with torch.no_grad():
            model.image_encoder(image)


def test_fixed_mask_is_moved_once_per_device_and_keeps_its_row_count():
    """A fixed mask on another device than q is copied once per device (a copy per call would rebuild
    its kernel indices in every call), and the copy knows its key blocks per row without reading back."""
    from samsparse.attention import MaskSource

    blocks = torch.zeros(1, 2, 4, 4, dtype=torch.bool)
    blocks[..., :3] = True
    source = MaskSource(BlockMask(blocks, 16, 64))
    q = torch.empty(1, 2, 64, 8, device="meta")
    first = source.get((8, 8), 2, q, q)
    assert first.device.type == "meta" and source.get((8, 8), 2, q, q) is first
    assert first.key_blocks_per_row(read_device=False) == 3.0


def test_save_load_roundtrip_and_segment_anything_loads_weights(tiny_sam, image, tmp_path):
    model = copy.deepcopy(tiny_sam)
    patch(model, blocks="all", backend="sdpa")
    path = samsparse.save(model, tmp_path / "patched.pth")
    loaded = samsparse.load(path)
    cfg = patch_config(loaded)
    assert cfg.blocks == [0, 1, 2] and cfg.backend == "sdpa" and cfg.model_type == "custom"
    with torch.no_grad():
        assert torch.equal(loaded.image_encoder(image), model.image_encoder(image))
    # segment_anything's own classes take the weights unchanged
    ckpt = torch.load(path, weights_only=True)
    plain = copy.deepcopy(tiny_sam)
    plain.load_state_dict(ckpt["model"], strict=True)
    with torch.no_grad():
        assert (plain.image_encoder(image) - model.image_encoder(image)).abs().max() <= 1e-5
    # an original checkpoint loads and patches with the given options
    torch.save(tiny_sam.state_dict(), tmp_path / "orig.pth")
    from_orig = samsparse.load(tmp_path / "orig.pth", backend="sdpa", blocks="global")
    assert patch_config(from_orig).blocks == [1]


def test_recipe_patch_roundtrips_through_checkpoint(tiny_sam, image, tmp_path):
    model = copy.deepcopy(tiny_sam)
    patch(model, mask="hierarchical:density=0.5,tile=2x4", backend="sdpa")
    path = samsparse.save(model, tmp_path / "sparse.pth")
    loaded = samsparse.load(path)
    assert patch_config(loaded).mask == "hierarchical:density=0.5,tile=2x4"
    with torch.no_grad():
        out = loaded.image_encoder(image)
        assert torch.equal(out, model.image_encoder(image))
        assert (out - tiny_sam.image_encoder(image)).abs().max() > 1e-4  # sparse changed the result
    dense = samsparse.load(path, mask=None)
    assert patch_config(dense).mask is None
    with pytest.raises(ValueError, match="valid"):
        patch(copy.deepcopy(tiny_sam), mask="nonsense:density=0.5")


def test_cached_rel_pos_tables_follow_parameter_updates(tiny_sam, image):
    model = copy.deepcopy(tiny_sam)
    patch(model, backend="sdpa", blocks="all")
    with torch.no_grad():
        first = model.image_encoder(image)
        assert torch.equal(model.image_encoder(image), first)  # cache hit, same result
        model.image_encoder.blocks[1].attn.rel_pos_h.mul_(2.0)  # in-place update bumps the version
        updated = model.image_encoder(image)
        reference = copy.deepcopy(tiny_sam)
        reference.image_encoder.blocks[1].attn.rel_pos_h.mul_(2.0)
        expected = reference.image_encoder(image)
    assert not torch.equal(updated, first)
    assert (updated - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("backend", ["sdpa", "reference"])
def test_model_built_and_patched_under_inference_mode(image, backend):
    """Parameters made under torch.inference_mode have no version counter: the patched blocks must
    still run (their rel-pos tables are then gathered every call) and follow in-place updates."""
    with torch.inference_mode():
        model = build_tiny_sam(embed_dim=64, depth=3, num_heads=4, img_size=128, window_size=3,
                               global_attn_indexes=(1,))
        reference = copy.deepcopy(model)
        patch(model, backend=backend, blocks="all")
        out = model.image_encoder(image)
        expected = reference.image_encoder(image)
        assert (out - expected).abs().max() <= 1e-5
        model.image_encoder.blocks[1].attn.rel_pos_h.mul_(2.0)
        reference.image_encoder.blocks[1].attn.rel_pos_h.mul_(2.0)
        assert (model.image_encoder(image) - reference.image_encoder(image)).abs().max() <= 1e-5


@pytest.mark.parametrize(
    "name,depth,global_blocks",
    [("vit_b", 12, [2, 5, 8, 11]), ("vit_l", 24, [5, 11, 17, 23]), ("vit_h", 32, [7, 15, 23, 31])],
)
def test_official_sizes_patch_on_meta_device(name, depth, global_blocks):
    """Full-size segment_anything models (built on the meta device: no memory) patch by structure."""
    from segment_anything import sam_model_registry

    with torch.device("meta"):
        sam = sam_model_registry[name]()
    keys = list(sam.state_dict())
    patch(sam, mask="hierarchical:density=0.25")
    cfg = patch_config(sam)
    assert cfg.global_blocks == global_blocks and cfg.blocks == global_blocks and cfg.encoder["depth"] == depth
    assert list(sam.state_dict()) == keys


@pytest.mark.parametrize("name,global_blocks", [("samvit_large_patch16", [5, 11, 17, 23]), ("samvit_huge_patch16", [7, 15, 23, 31])])
def test_timm_official_sizes_patch_on_meta_device(name, global_blocks):
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    patch(model, blocks="all")
    assert patch_config(model).global_blocks == global_blocks
    assert all(isinstance(b.attn, SparseAttention) for b in model.blocks)
    unpatch(model)
    assert not any(isinstance(m, SparseAttention) for m in model.modules())
