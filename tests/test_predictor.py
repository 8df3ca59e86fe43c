"""SparseSamPredictor / SparseAutomaticMaskGenerator / build_predictor / evaluate on a tiny SAM."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import make_tiny_sam, synthetic_image
from segment_anything import SamAutomaticMaskGenerator, SamPredictor

from samsparse import io as sio
from samsparse.patch import is_patched, patch, patch_config
from samsparse.predictor import (
    DeviceError,
    SparseAutomaticMaskGenerator,
    SparseSamPredictor,
    build_predictor,
    resolve_device,
    resolve_dtype,
)

ATOL = 1e-4
SPARSE = "local:tile=4x4,radius=0"  # the dense patch runs another (exact) attention kernel: float32 rounding only


def _pair(**kw):
    """(SparseSamPredictor on a dense-patched model, SamPredictor on an unpatched copy)."""
    sam = make_tiny_sam()
    ref = copy.deepcopy(sam)
    return SparseSamPredictor(sam, **kw), SamPredictor(ref)


def _close_masks(a: np.ndarray, b: np.ndarray, max_flips: int = 2) -> None:
    """Binary masks equal up to a couple of pixels whose logits sit on the threshold."""
    assert a.shape == b.shape and a.dtype == b.dtype
    flips = int((a != b).sum())
    assert flips <= max_flips, f"{flips} pixels differ"


IMG = synthetic_image(90, 120, 3)

PROMPTS = [
    dict(point_coords=np.array([[60, 30]]), point_labels=np.array([1])),
    dict(point_coords=np.array([[60, 30], [20, 70]]), point_labels=np.array([1, 0]), multimask_output=False),
    dict(box=np.array([10, 15, 100, 80])),
    dict(point_coords=np.array([[50, 40]]), point_labels=np.array([1]), box=np.array([10, 15, 100, 80]), multimask_output=False),
    dict(point_coords=np.array([[60, 30]]), point_labels=np.array([1]), return_logits=True),
]


def test_dense_patch_matches_sam_predictor():
    ours, ref = _pair()
    assert is_patched(ours.model) and not is_patched(ref.model)
    ours.set_image(IMG)
    ref.set_image(IMG)
    assert ours.original_size == ref.original_size and ours.input_size == ref.input_size
    e1, e2 = ours.get_image_embedding(), ref.get_image_embedding()
    assert e1.shape == e2.shape and torch.allclose(e1, e2, atol=ATOL), f"{(e1 - e2).abs().max()}"
    for kwargs in PROMPTS:
        m1, s1, l1 = ours.predict(**kwargs)
        m2, s2, l2 = ref.predict(**kwargs)
        assert m1.shape[-2:] == IMG.shape[:2]
        if kwargs.get("return_logits"):
            assert np.allclose(m1, m2, atol=ATOL), f"{np.abs(m1 - m2).max()}"
        else:
            _close_masks(m1, m2)
        assert np.allclose(s1, s2, atol=ATOL), f"{np.abs(s1 - s2).max()}"
        assert np.allclose(l1, l2, atol=ATOL), f"{np.abs(l1 - l2).max()}"
    # mask_input from a previous prediction
    _, _, low = ref.predict(**PROMPTS[0])
    m1, s1, _ = ours.predict(**PROMPTS[0], mask_input=low[:1])
    m2, s2, _ = ref.predict(**PROMPTS[0], mask_input=low[:1])
    _close_masks(m1, m2)
    assert np.allclose(s1, s2, atol=ATOL)


def test_binary_mask_input_is_taken_as_sams_logits():
    from samsparse.prompts import mask_to_logits

    ours, ref = _pair()
    ours.set_image(IMG)
    ref.set_image(IMG)
    binary = np.zeros(IMG.shape[:2], np.uint8)
    binary[20:70, 30:100] = 255
    side = 4 * ref.model.prompt_encoder.image_embedding_size[0]
    logits = mask_to_logits(binary, image_size=ref.model.image_encoder.img_size, low_res_side=side)
    assert logits.shape == (1, side, side)
    m1, s1, l1 = ours.predict(**PROMPTS[2], mask_input=binary)
    m2, s2, l2 = ref.predict(**PROMPTS[2], mask_input=logits)
    _close_masks(m1, m2)
    assert np.allclose(s1, s2, atol=ATOL) and np.allclose(l1, l2, atol=ATOL)
    # and it is a prompt: the output differs from the box alone
    _, s0, l0 = ref.predict(**PROMPTS[2])
    assert not np.allclose(l0, l2, atol=1e-3)


def test_predict_torch_and_batch_match():
    ours, ref = _pair()
    ours.set_image(IMG)
    ref.set_image(IMG)
    boxes = np.array([[10, 15, 100, 80], [0, 0, 60, 60], [30, 20, 119, 89]], dtype=np.float64)
    bt = torch.as_tensor(ref.transform.apply_boxes(boxes, ref.original_size), dtype=torch.float)
    m1, s1, l1 = ours.predict_torch(None, None, bt, multimask_output=False)
    m2, s2, l2 = ref.predict_torch(None, None, bt, multimask_output=False)
    assert m1.shape == (3, 1, 90, 120)
    _close_masks(m1.numpy(), m2.numpy())
    assert torch.allclose(s1, s2, atol=ATOL) and torch.allclose(l1, l2, atol=ATOL)
    m3, s3, _ = ours.predict_batch(boxes=boxes, multimask_output=False)
    _close_masks(m3, m2.numpy())
    assert np.allclose(s3, s2.numpy(), atol=ATOL)
    pts = np.array([[[60, 30]], [[20, 70]]], dtype=np.float64)
    m4, s4, _ = ours.predict_batch(point_coords=pts, point_labels=np.ones((2, 1)), multimask_output=True)
    assert m4.shape == (2, 3, 90, 120) and s4.shape == (2, 3)
    single, s_single, _ = ours.predict(point_coords=pts[1], point_labels=np.ones(1))
    _close_masks(m4[1], single)
    assert np.allclose(s4[1], s_single, atol=ATOL)


def test_set_images_batch_matches_single():
    ours, ref = _pair()
    imgs = [IMG, synthetic_image(150, 100, 4), synthetic_image(64, 64, 5)]
    ours.set_images(imgs)
    assert ours.num_images == 3 and ours.image_index == 0
    for i, img in enumerate(imgs):
        ref.set_image(img)
        e = ours.get_image_embedding(image_index=i)
        assert torch.allclose(e, ref.features, atol=ATOL), f"image {i}: {(e - ref.features).abs().max()}"
        m1, s1, _ = ours.predict(point_coords=np.array([[30, 30]]), point_labels=np.array([1]), image_index=i)
        m2, s2, _ = ref.predict(point_coords=np.array([[30, 30]]), point_labels=np.array([1]))
        assert m1.shape[-2:] == img.shape[:2]
        _close_masks(m1, m2)
        assert np.allclose(s1, s2, atol=ATOL)
    ours.select_image(1)
    assert ours.original_size == (150, 100)
    with pytest.raises(IndexError, match="out of range"):
        ours.select_image(3)
    ours.encoder_batch_size = 2  # chunked batches give the same embeddings
    ours.set_images(imgs)
    ref.set_image(imgs[2])
    assert torch.allclose(ours.get_image_embedding(2), ref.features, atol=ATOL)
    ours.set_image(IMG)  # a single image replaces the batch
    assert ours.num_images == 1
    with pytest.raises(ValueError, match="non-empty"):
        ours.set_images([])


def test_image_input_checks(caplog):
    ours, ref = _pair()
    caplog.set_level("INFO", logger="samsparse")
    gray = IMG.mean(axis=2).astype(np.uint8)
    ours.set_image(gray)
    ref.set_image(np.repeat(gray[:, :, None], 3, axis=2))
    assert torch.allclose(ours.features, ref.features, atol=ATOL)
    assert "grayscale" in caplog.text
    ours.set_image(np.dstack([IMG, np.zeros(IMG.shape[:2], np.uint8)]))
    ref.set_image(IMG)
    assert torch.allclose(ours.features, ref.features, atol=ATOL)
    assert "alpha" in caplog.text
    with pytest.raises(ValueError, match="uint8"):
        ours.set_image(IMG.astype(np.float32) / 255)
    with pytest.raises(ValueError, match="shape"):
        ours.set_image(IMG[:, :, :2])
    with pytest.raises(ValueError, match="image_format"):
        ours.set_image(IMG, image_format="RGBA")
    with pytest.raises(ValueError, match="max\\(H, W\\) == 128"):
        ours.set_torch_image(torch.zeros(1, 3, 100, 100), (100, 100))


def test_prompt_input_checks(caplog):
    ours, _ = _pair()
    with pytest.raises(RuntimeError, match="set_image"):
        ours.predict(point_coords=np.array([[1, 1]]), point_labels=np.array([1]))
    ours.set_image(IMG)
    with pytest.raises(ValueError, match=r"point \(130, 5\) is outside the image of size 120x90"):
        ours.predict(point_coords=np.array([[10, 5], [130, 5]]), point_labels=np.array([1, 1]))
    with pytest.raises(ValueError, match="point_labels must be given"):
        ours.predict(point_coords=np.array([[10, 5]]))
    with pytest.raises(ValueError, match="shape"):
        ours.predict(point_coords=np.array([10, 5]), point_labels=np.array([1]))
    with pytest.raises(ValueError, match=r"x1 < x0"):
        ours.predict(box=np.array([50, 10, 20, 40]))
    with pytest.raises(ValueError, match=r"box must have shape \[4\]"):
        ours.predict(box=np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="entirely outside"):
        ours.predict(box=np.array([200, 10, 300, 40]))
    with pytest.raises(ValueError, match="mask_input"):
        ours.predict(box=np.array([1, 2, 30, 40]), mask_input=np.zeros((1, 10, 10)))
    with pytest.raises(ValueError, match=r"binary mask of the image and must have its size \(90, 120\)"):
        ours.predict(box=np.array([1, 2, 30, 40]), mask_input=np.zeros((120, 90), bool))
    m_clip, s_clip, _ = ours.predict(box=np.array([-5, 10, 130, 80]))
    m_in, s_in, _ = ours.predict(box=np.array([0, 10, 120, 80]))
    assert "clipped" in caplog.text
    assert np.array_equal(m_clip, m_in) and np.allclose(s_clip, s_in)


def _records_match(r1, r2):
    assert len(r1) == len(r2) > 0
    key = lambda r: (r["point_coords"], r["bbox"], r["area"])  # noqa: E731
    for a, b in zip(sorted(r1, key=key), sorted(r2, key=key)):
        assert set(a) == set(b) == {"segmentation", "area", "bbox", "predicted_iou", "point_coords", "stability_score", "crop_box"}
        assert a["bbox"] == b["bbox"] and a["crop_box"] == b["crop_box"] and a["point_coords"] == b["point_coords"]
        assert abs(a["area"] - b["area"]) <= 2
        assert a["predicted_iou"] == pytest.approx(b["predicted_iou"], abs=ATOL)
        assert a["stability_score"] == pytest.approx(b["stability_score"], abs=1e-3)
        seg_a, seg_b = a["segmentation"], b["segmentation"]
        if isinstance(seg_a, dict):
            seg_a, seg_b = sio.rle_to_mask(seg_a), sio.rle_to_mask(seg_b)
        _close_masks(np.asarray(seg_a), np.asarray(seg_b))


AMG_KW = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=0.99, points_per_batch=8)


@pytest.mark.parametrize("output_mode", ["binary_mask", "coco_rle", "uncompressed_rle"])
def test_amg_matches_sam(output_mode):
    sam = make_tiny_sam()
    ref = copy.deepcopy(sam)
    ours = SparseAutomaticMaskGenerator(sam, output_mode=output_mode, **AMG_KW)
    theirs = SamAutomaticMaskGenerator(ref, output_mode=output_mode, **AMG_KW)
    assert isinstance(ours.predictor, SparseSamPredictor) and is_patched(sam)
    r1, r2 = ours.generate(IMG), theirs.generate(IMG)
    _records_match(r1, r2)
    if output_mode == "binary_mask":
        assert r1[0]["segmentation"].shape == IMG.shape[:2] and r1[0]["segmentation"].dtype == bool


def test_amg_crops_min_area_and_shared_predictor():
    sam = make_tiny_sam()
    ref = copy.deepcopy(sam)
    kw = dict(AMG_KW, crop_n_layers=1, min_mask_region_area=20, points_per_side=2)
    predictor = SparseSamPredictor(sam)
    r1 = SparseAutomaticMaskGenerator(predictor, **kw).generate(IMG)
    r2 = SamAutomaticMaskGenerator(ref, **kw).generate(IMG)
    _records_match(r1, r2)
    # a grayscale image is accepted (converted), SAM's class needs RGB
    gray = IMG.mean(axis=2).astype(np.uint8)
    assert len(SparseAutomaticMaskGenerator(predictor, **kw).generate(gray)) > 0


def test_amg_argument_errors(tiny_sam):
    with pytest.raises(ValueError, match="output_mode"):
        SparseAutomaticMaskGenerator(tiny_sam, output_mode="png")
    with pytest.raises(ValueError, match="exactly one"):
        SparseAutomaticMaskGenerator(tiny_sam, points_per_side=None)
    with pytest.raises(ValueError, match="points_per_batch"):
        SparseAutomaticMaskGenerator(tiny_sam, points_per_batch=0)


def test_patched_model_with_other_mask_is_refused(tiny_sam):
    patch(tiny_sam)  # dense
    SparseSamPredictor(tiny_sam, mask="dense")  # same patch: fine
    with pytest.raises(ValueError, match="already patched with backend"):
        SparseSamPredictor(tiny_sam, backend="reference")
    with pytest.raises(TypeError, match="Sam"):
        SparseSamPredictor(torch.nn.Linear(2, 2))


def test_resolve_dtype_and_device():
    assert resolve_dtype(None) is torch.float32 and resolve_dtype("bf16") is torch.bfloat16
    assert resolve_dtype("fp16") is torch.float16 and resolve_dtype(torch.float32) is torch.float32
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        resolve_dtype("int8")
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA was requested"):
            resolve_device("cuda")
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device("tpu9")


def test_build_predictor_from_checkpoints(tiny_checkpoint, tmp_path):
    p = build_predictor(str(tiny_checkpoint), device="cpu")
    assert isinstance(p, SparseSamPredictor) and is_patched(p.model) and patch_config(p.model).mask is None
    ref = SamPredictor(make_tiny_sam())
    p.set_image(IMG)
    ref.set_image(IMG)
    assert torch.allclose(p.features, ref.features, atol=ATOL)
    with pytest.raises(ValueError, match="custom model, but model type 'vit_b'"):
        build_predictor(tiny_checkpoint, device="cpu", model_type="vit_b")
    with pytest.raises(FileNotFoundError):
        build_predictor(str(tmp_path / "missing.pth"), device="cpu")
    with pytest.raises(ValueError, match="vit_b"):
        build_predictor("vit_q", device="cpu")
    # an already built model is used as is
    sam = make_tiny_sam()
    assert build_predictor(sam, device="cpu").model is sam


def test_build_predictor_patched_checkpoint(tmp_path):
    from samsparse.checkpoints.patched import save

    sam = make_tiny_sam()
    patch(sam, backend="sdpa", blocks="all")
    path = save(sam, tmp_path / "patched.pth")
    p = build_predictor(path, device="cpu")
    cfg = patch_config(p.model)
    assert cfg.backend == "sdpa" and cfg.blocks == [0, 1]


def test_bf16_encoder_keeps_outputs_sane(tiny_checkpoint):
    p32 = build_predictor(tiny_checkpoint, device="cpu")
    p16 = build_predictor(tiny_checkpoint, device="cpu", dtype="bf16")
    assert next(p16.model.image_encoder.parameters()).dtype == torch.bfloat16
    assert next(p16.model.mask_decoder.parameters()).dtype == torch.float32
    p32.set_image(IMG)
    p16.set_image(IMG)
    assert p16.features.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(p16.features.flatten(), p32.features.flatten(), dim=0)
    assert cos > 0.99, f"cosine {cos}"
    m32, s32, _ = p32.predict(box=np.array([10, 15, 100, 80]), multimask_output=False)
    m16, s16, _ = p16.predict(box=np.array([10, 15, 100, 80]), multimask_output=False)
    from samsparse.evaluate import mask_iou

    assert mask_iou(m16[0], m32[0]) > 0.9 and np.isfinite(s16).all()


def test_sparse_recipe_runs():
    pytest.importorskip("samsparse.masks.recipe")
    sam = make_tiny_sam()
    ref = copy.deepcopy(sam)
    p = SparseSamPredictor(sam, mask=SPARSE)  # each 4x4 tile of the 8x8 token grid reads itself only
    assert patch_config(sam).mask is not None
    p.set_image(IMG)
    r = SamPredictor(ref)
    r.set_image(IMG)
    assert torch.isfinite(p.features).all()
    assert not torch.allclose(p.features, r.features, atol=1e-6), "a sparse mask should change the embedding"
    masks, scores, _ = p.predict(point_coords=np.array([[60, 30]]), point_labels=np.array([1]))
    assert masks.shape == (3, 90, 120) and np.isfinite(scores).all()


def test_evaluate_compare_dense_vs_original():
    from samsparse.evaluate import EVAL_COLUMNS, build_pair, compare, summarize
    from samsparse.prompts import Prompts

    dense, sparse = build_pair(make_tiny_sam(), mask=None, device="cpu")
    assert not is_patched(dense.model) and is_patched(sparse.model)
    imgs = [("a", IMG), ("b", synthetic_image(64, 80, 7))]
    rows = compare(imgs, dense, sparse, prompts=[None, Prompts(boxes=[(5, 5, 60, 50)], points=[(30, 30, 1)])])
    assert [r["image"] for r in rows] == ["a", "b"] and tuple(rows[0]) == EVAL_COLUMNS
    for r in rows:
        assert r["mask_iou"] > 0.99 and r["embedding_cosine"] > 0.9999 and r["dense_encoder_s"] > 0
    assert rows[1]["prompts"] == 1
    s = summarize(rows)
    assert s["images"] == 2 and s["mask_iou_min"] > 0.99

    errors = []
    bad = [("bad", IMG), ("good", IMG)]
    rows = compare(bad, dense, sparse, prompts={"bad": Prompts(points=[(500, 1, 1)])}, on_error=lambda n, e: errors.append((n, str(e))))
    assert [r["image"] for r in rows] == ["good"] and errors[0][0] == "bad" and "outside" in errors[0][1]
