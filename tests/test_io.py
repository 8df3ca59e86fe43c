"""samsparse.io and samsparse.prompts: reading bad images, atomic writes, RLE, prompt parsing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import save_png, synthetic_image
from PIL import Image

from samsparse import io as sio
from samsparse.prompts import (
    PromptError,
    Prompts,
    check_box,
    check_points,
    load_prompt_file,
    mask_to_logits,
    parse_box,
    parse_point,
    prompts_for_image,
)

# --------------------------------------------------------------------------------------
# RLE
# --------------------------------------------------------------------------------------


def _masks():
    rng = np.random.default_rng(0)
    out = [
        np.zeros((7, 5), bool),
        np.ones((7, 5), bool),
        rng.random((31, 17)) > 0.5,
        rng.random((64, 48)) > 0.95,
        np.pad(np.ones((40, 30), bool), ((3, 5), (7, 2))),
    ]
    m = np.zeros((9, 9), bool)
    m[0, 0] = True  # first pixel set: counts start with a zero-length run
    out.append(m)
    big = np.zeros((300, 200), bool)
    big[:, 150:] = True  # long runs: multi-character counts
    out.append(big)
    return out


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("index", range(7))
def test_numpy_rle_matches_pycocotools(index):
    mask_utils = pytest.importorskip("pycocotools.mask")
    m = _masks()[index]
    ours = sio.mask_to_rle(m, use_pycocotools=False)
    ref = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    assert ours["size"] == list(ref["size"])
    assert ours["counts"] == ref["counts"].decode("ascii")
    assert np.array_equal(sio.rle_to_mask(ours), m)
    assert np.array_equal(mask_utils.decode({"size": ours["size"], "counts": ours["counts"].encode()}).astype(bool), m)
    assert sio.decode_rle_counts(ours["counts"]) == sio.rle_counts(m)


def test_rle_uncompressed_counts_and_errors():
    m = _masks()[2]
    assert np.array_equal(sio.rle_to_mask({"size": list(m.shape), "counts": sio.rle_counts(m)}), m)
    with pytest.raises(ValueError, match="cover"):
        sio.rle_to_mask({"size": [4, 4], "counts": [3, 2]})
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        sio.mask_to_rle(np.zeros((2, 2, 2), bool))


def test_no_pycocotools_env_forces_numpy(monkeypatch):
    monkeypatch.setenv("SAMSPARSE_NO_PYCOCOTOOLS", "1")
    assert sio._pycocotools() is None
    m = _masks()[3]
    assert np.array_equal(sio.rle_to_mask(sio.mask_to_rle(m)), m)


def test_mask_to_bbox():
    m = np.zeros((10, 12), bool)
    m[2:5, 3:9] = True
    assert sio.mask_to_bbox(m) == [3, 2, 6, 3]
    assert sio.mask_to_bbox(np.zeros((3, 3), bool)) == [0, 0, 0, 0]


# --------------------------------------------------------------------------------------
# Reading images
# --------------------------------------------------------------------------------------


def test_read_rgb_png(tmp_path):
    a = synthetic_image(40, 50)
    img = sio.read_image(save_png(tmp_path / "x.png", a))
    assert img.array.dtype == np.uint8 and np.array_equal(img.array, a)
    assert img.original_size == (40, 50) and img.scale == 1.0 and img.notes == []


def test_read_grayscale_and_rgba(tmp_path, caplog):
    g = (np.arange(30 * 20) % 256).astype(np.uint8).reshape(30, 20)
    caplog.set_level("INFO", logger="samsparse")
    img = sio.read_image(save_png(tmp_path / "g.png", g))
    assert img.array.shape == (30, 20, 3) and np.array_equal(img.array[..., 1], g)
    assert "grayscale" in caplog.text
    rgba = np.dstack([synthetic_image(30, 20), np.full((30, 20), 128, np.uint8)])
    img = sio.read_image(save_png(tmp_path / "a.png", rgba))
    assert img.array.shape == (30, 20, 3) and np.array_equal(img.array, rgba[..., :3])
    assert any("alpha" in n for n in img.notes)


def test_read_16bit(tmp_path, caplog):
    a = (np.arange(24 * 16, dtype=np.uint16).reshape(24, 16) * 10)  # max 3830: a 12-bit image
    path = tmp_path / "s.png"
    Image.fromarray(a).save(path)
    assert Image.open(path).mode.startswith("I")
    img = sio.read_image(path)
    assert img.array.dtype == np.uint8 and img.array.shape == (24, 16, 3)
    assert img.array.max() == 255 and img.array.min() == 0
    assert "scaled to 8 bits" in caplog.text


def test_read_exif_rotated(tmp_path):
    a = synthetic_image(60, 100)  # stored 60 high, 100 wide
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "r.jpg"
    Image.fromarray(a).save(path, exif=exif, quality=95)
    img = sio.read_image(path)
    assert img.array.shape == (100, 60, 3)
    assert img.original_size == (100, 60)


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", "file is empty"),
        (b"this is a text file, not a picture\n" * 3, "not an image"),
    ],
)
def test_read_bad_files(tmp_path, content, match):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(sio.ImageReadError, match=match) as info:
        sio.read_image(path)
    assert str(path) in str(info.value)


def test_read_truncated(tmp_path):
    good = save_png(tmp_path / "g.png", synthetic_image(64, 64))
    data = good.read_bytes()
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(sio.ImageReadError, match="corrupt or truncated"):
        sio.read_image(path)


def test_read_missing_and_directory(tmp_path):
    with pytest.raises(sio.ImageReadError, match="not found"):
        sio.read_image(tmp_path / "nope.png")
    with pytest.raises(sio.ImageReadError, match="directory"):
        sio.read_image(tmp_path)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_read_large_downscaled(tmp_path, suffix, caplog):
    a = synthetic_image(1200, 1600)
    path = tmp_path / f"big{suffix}"
    Image.fromarray(a).save(path)
    img = sio.read_image(path, max_pixels=480_000)
    h, w = img.array.shape[:2]
    assert h * w <= 480_000 * 1.01 and abs(w / h - 4 / 3) < 0.01
    assert img.original_size == (1200, 1600) and img.scale == pytest.approx(w / 1600, rel=0.01)
    assert "megapixels" in caplog.text
    assert sio.read_image(path).array.shape == (1200, 1600, 3)


def test_ensure_rgb_uint8_errors():
    with pytest.raises(ValueError, match="dtype float32.*to_uint8"):
        sio.ensure_rgb_uint8(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        sio.ensure_rgb_uint8(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        sio.ensure_rgb_uint8(np.zeros((0, 4, 3), np.uint8))


def test_to_uint8():
    assert sio.to_uint8(np.array([[0.0, 0.5, 1.0]]))[0].tolist() == [[0, 128, 255]]
    assert sio.to_uint8(np.array([[False, True]]))[0].tolist() == [[0, 255]]
    assert sio.to_uint8(np.array([[0, 2000, 4000]], np.uint16))[0].tolist() == [[0, 128, 255]]


# --------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------


def test_collect_images(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    for name in ("b.png", "a.jpg", "notes.txt"):
        (d / name).write_bytes(b"x")
    (tmp_path / "e").mkdir()
    files, problems = sio.collect_images([d, str(tmp_path / "d" / "*.png"), tmp_path / "missing.png", tmp_path / "e", str(tmp_path / "*.gif")])
    assert [f.name for f in files] == ["a.jpg", "b.png"]
    assert len(problems) == 3
    assert "no such file" in problems[0] and "no image files" in problems[1] and "matches no files" in problems[2]


def test_output_names_unique(tmp_path):
    paths = [tmp_path / "x" / "img.png", tmp_path / "y" / "img.png", tmp_path / "z.png"]
    names = sio.output_names(paths)
    assert len(set(names.values())) == 3 and names[paths[2]] == "z"
    assert names[paths[0]].startswith("img-")


# --------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------


def test_atomic_write_failure_keeps_old_file(tmp_path):
    target = tmp_path / "out.json"
    sio.write_json(target, {"a": 1})

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        sio._write_with(target, boom)
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]

    with pytest.raises(KeyboardInterrupt):
        with sio.atomic_path(tmp_path / "new.bin") as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert not (tmp_path / "new.bin").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_writers_roundtrip(tmp_path):
    m = np.zeros((20, 30), bool)
    m[5:10, 2:20] = True
    sio.write_mask_png(tmp_path / "m.png", m)
    raw = np.asarray(Image.open(tmp_path / "m.png"))
    assert raw.dtype == np.uint8 and set(np.unique(raw)) == {0, 255}
    assert np.array_equal(sio.read_mask_png(tmp_path / "m.png"), m)
    sio.write_csv(tmp_path / "t.csv", [{"a": 1, "b": 0.5}, [2, float("nan")]], ["a", "b"])
    assert (tmp_path / "t.csv").read_text().splitlines() == ["a,b", "1,0.5", "2,nan"]
    ov = sio.overlay_masks(synthetic_image(20, 30), [m], points=[(3, 4, 1), (10, 10, 0)], boxes=[(1, 1, 20, 15)])
    assert ov.shape == (20, 30, 3) and ov.dtype == np.uint8


def test_remove_stale_tmp(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".mask_000.png.{dead_pid}.samsparse-tmp"
    stale.write_bytes(b"half")
    live = tmp_path / f".mask_001.png.{os.getppid()}.samsparse-tmp"  # a live process (our parent)
    live.write_bytes(b"busy")
    assert sio.remove_stale_tmp(tmp_path) == 1
    assert not stale.exists() and live.exists()


# --------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------


def test_parse_point_and_box():
    assert parse_point("500,375") == (500.0, 375.0, 1)
    assert parse_point(" 5.5 , 6 , 0 ") == (5.5, 6.0, 0)
    assert parse_box("1,2,30,40") == (1.0, 2.0, 30.0, 40.0)
    for bad, match in [("5", "2 or 3"), ("a,b", "not a list of numbers"), ("1,2,7", "label"), ("1,nan", "non-finite")]:
        with pytest.raises(PromptError, match=match):
            parse_point(bad)
    for bad, match in [("1,2,3", "4 numbers"), ("30,2,1,40", "x1 < x0"), ("1,2,x,4", "not a list")]:
        with pytest.raises(PromptError, match=match):
            parse_box(bad)


def test_prompt_json_and_csv(tmp_path):
    j = tmp_path / "p.json"
    j.write_text(json.dumps({"a.png": {"points": [[1, 2], [3, 4, 0]], "boxes": [[0, 0, 5, 5]]}, "b.png": {"box": [1, 1, 2, 2]}}))
    table = load_prompt_file(j)
    assert table["a.png"].points == [(1.0, 2.0, 1), (3.0, 4.0, 0)] and table["a.png"].boxes == [(0.0, 0.0, 5.0, 5.0)]
    assert table["b.png"].boxes == [(1.0, 1.0, 2.0, 2.0)]
    assert prompts_for_image(table, tmp_path / "sub" / "a.png") is table["a.png"]
    assert prompts_for_image(table, "c.png") is None

    c = tmp_path / "p.csv"
    c.write_text("image,x,y,label,x0,y0,x1,y1\na.png,1,2,,,,,\na.png,,,,0,0,5,5\nb.png,3,4,0,,,,\n")
    table = load_prompt_file(c)
    assert table["a.png"].points == [(1.0, 2.0, 1)] and table["a.png"].boxes == [(0.0, 0.0, 5.0, 5.0)]
    assert table["b.png"].points == [(3.0, 4.0, 0)]


@pytest.mark.parametrize(
    "text, match",
    [
        ('{"a.png": {"points": [[1, 2]]', "not valid JSON"),
        ('[1, 2]', "JSON object"),
        ('{"a.png": {"pts": []}}', "unknown keys"),
        ('{"a.png": {"points": [[1]]}}', r"points\[0\]"),
        ('{"a.png": {"boxes": [[5, 5, 1, 1]]}}', "x1 < x0"),
        ('{"a.png": {"points": [[1, 2, 3]]}}', "label"),
    ],
)
def test_malformed_prompt_json(tmp_path, text, match):
    p = tmp_path / "bad.json"
    p.write_text(text)
    with pytest.raises(PromptError, match=match) as info:
        load_prompt_file(p)
    assert "bad.json" in str(info.value)


def test_malformed_prompt_csv(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("name,x,y\na.png,1,2\n")
    with pytest.raises(PromptError, match="'image' column"):
        load_prompt_file(p)
    p.write_text("image,x,y\na.png,,\n")
    with pytest.raises(PromptError, match="line 2"):
        load_prompt_file(p)


def test_prompt_groups():
    assert Prompts(points=[(1, 2, 1)], boxes=[(0, 0, 5, 5)]).groups()[0].box == (0, 0, 5, 5)
    groups = Prompts(points=[(1, 2, 1), (3, 3, 0)], boxes=[(0, 0, 5, 5), (1, 1, 4, 4)]).groups()
    assert len(groups) == 3 and len(groups[0].points) == 2 and groups[0].box is None
    assert Prompts(points=[(1, 2, 1)]).groups()[0].is_single_point
    assert Prompts(points=[(10, 20, 1)], boxes=[(0, 0, 4, 8)]).scaled(0.5).to_dict() == {
        "points": [[5.0, 10.0, 1]], "boxes": [[0.0, 0.0, 2.0, 4.0]]
    }


def test_check_points_and_box(caplog):
    check_points(np.array([[0, 0], [100, 50]]), 50, 100)
    with pytest.raises(PromptError, match=r"point \(101, 3\) is outside the image of size 100x50"):
        check_points(np.array([[1, 1], [101, 3]]), 50, 100, "the image")
    assert check_box([-3, 2, 40, 60], 50, 100).tolist() == [0, 2, 40, 50]
    assert "clipped" in caplog.text
    with pytest.raises(PromptError, match="entirely outside"):
        check_box([200, 0, 300, 10], 50, 100)
    with pytest.raises(PromptError, match="4 numbers"):
        check_box([1, 2, 3], 50, 100)


# --------------------------------------------------------------------------------------
# Binary mask -> SAM's low-res mask logits
# --------------------------------------------------------------------------------------


def test_mask_to_logits_puts_the_mask_in_sams_input_frame():
    from segment_anything.utils.transforms import ResizeLongestSide

    h, w = 300, 500
    new_h, new_w = ResizeLongestSide.get_preprocess_shape(h, w, 1024)  # SAM's resized image: 614 x 1024
    full = mask_to_logits(np.ones((h, w), bool))
    assert full.shape == (1, 256, 256) and full.dtype == np.float32
    rows = new_h // 4  # low-res rows wholly inside the resized image; the padding below is outside
    assert (full[0, :rows] == 10).all() and (full[0, -(256 - (new_h + 3) // 4):] == -10).all()
    assert new_w == 1024 and (full[0, :, -1] > 0)[:rows].all()
    # a rectangle: +10 well inside, -10 well outside, the sign change on its (scaled) edges
    m = np.zeros((h, w), np.uint8)
    m[60:240, 100:300] = 255  # 0/255 as read from a PNG
    s = 256 / 500
    lo = mask_to_logits(m)[0]
    assert lo[int(150 * s), int(200 * s)] == 10 and lo[int(20 * s), int(20 * s)] == -10
    inside = lo > 0
    ys, xs = np.nonzero(inside)
    assert abs(ys.min() - 60 * s) <= 1 and abs(ys.max() + 1 - 240 * s) <= 1
    assert abs(xs.min() - 100 * s) <= 1 and abs(xs.max() + 1 - 300 * s) <= 1
    # bool, 0/1 and 0/255 masks agree; the magnitude is a parameter; another frame size
    assert np.array_equal(mask_to_logits(m > 0)[0], lo) and np.array_equal(mask_to_logits((m > 0).astype(float))[0], lo)
    assert np.allclose(mask_to_logits(m, logit=4.0)[0], lo * 0.4)
    assert mask_to_logits(m, image_size=128, low_res_side=32).shape == (1, 32, 32)


@pytest.mark.parametrize("bad, kw, msg", [
    (np.zeros((1, 10, 10)), {}, "2-D"),
    (np.zeros((0, 10)), {}, "2-D"),
    (np.array([["a", "b"]]), {}, "bool or numeric"),
    (np.zeros((10, 10)), {"image_size": 1000}, "multiple"),
    (np.zeros((10, 10)), {"logit": 0.0}, "logit"),
])
def test_mask_to_logits_rejects_bad_input(bad, kw, msg):
    with pytest.raises(ValueError, match=msg):
        mask_to_logits(bad, **kw)
