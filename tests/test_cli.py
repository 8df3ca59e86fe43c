"""The ``samsparse`` command line, run as a subprocess (``python -m samsparse.cli``) on a tiny checkpoint.

Runs that fail before any model work (usage errors) or need monkeypatching are also
run in-process through ``samsparse.cli.main`` to keep the suite fast.
"""

from __future__ import annotations

import csv
import hashlib
import http.server
import json
import os
import socket
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli_env, run_cli, save_png, synthetic_image, tmp_leftovers
from PIL import Image

from samsparse import io as sio
from samsparse.cli import AMG_METADATA_COLUMNS, main

HAS_RECIPES = True
try:
    from samsparse.masks import parse_recipe  # noqa: F401
except ImportError:  # pragma: no cover - recipes are part of the package
    HAS_RECIPES = False

SPARSE = "local:radius=0,tile=4x4"  # sparse on the tiny model's 8x8 token grid (canonical spelling)


def run_main(capsys, *argv) -> tuple[int, str, str]:
    """``samsparse ARGV`` in-process: (exit status, stdout, stderr)."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse usage errors
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def _check_segment_dir(d: Path, image: np.ndarray | tuple[int, int]) -> dict:
    """Check one image's segment outputs; return its masks.json."""
    h, w = image if isinstance(image, tuple) else image.shape[:2]
    data = json.loads((d / "masks.json").read_text())
    assert data["height"] == h and data["width"] == w
    assert data["annotations"], "no masks written"
    for ann in data["annotations"]:
        raw = np.asarray(Image.open(d / ann["mask_file"]))
        assert raw.shape == (h, w) and raw.dtype == np.uint8 and set(np.unique(raw)) <= {0, 255}
        png = raw > 127
        assert np.array_equal(sio.rle_to_mask(ann["segmentation"]), png), ann["mask_file"]
        assert ann["segmentation"]["size"] == [h, w]
        assert ann["area"] == int(png.sum()) and isinstance(ann["score"], float)
    if data.get("overlay"):
        assert np.asarray(Image.open(d / data["overlay"])).shape == (h, w, 3)
    return data


# --------------------------------------------------------------------------------------
# segment
# --------------------------------------------------------------------------------------


def test_segment_points_boxes_prompt_file(tiny_checkpoint, good_images, tmp_path):
    a, b = good_images
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"b.png": {"points": [[20, 30, 1], [60, 120, 0]], "boxes": [[5, 5, 90, 100]]}}))
    out = tmp_path / "out"
    r = run_cli("segment", a, b, "--checkpoint", tiny_checkpoint, "--point", "60,30", "--box", "10,15,100,80",
                "--box", "0,0,50,50", "--prompts", prompts, "-o", out)
    assert r.returncode == 0, r.stderr
    assert "segment: 2 done, 0 skipped (already done), 0 failed" in r.stdout
    da = _check_segment_dir(out / "a", (90, 120))
    # a: the point is one prompt, each of the 2 boxes one prompt (batched) -> 3 masks
    assert len(da["annotations"]) == 3
    assert [ann["prompt"] for ann in da["annotations"]] == [
        {"points": [[60.0, 30.0, 1]]}, {"box": [10.0, 15.0, 100.0, 80.0]}, {"box": [0.0, 0.0, 50.0, 50.0]}]
    db = _check_segment_dir(out / "b", (150, 100))
    # b: 3 points (one prompt) + 3 boxes (one prompt each)
    assert len(db["annotations"]) == 4 and len(db["annotations"][0]["prompt"]["points"]) == 3
    assert tmp_leftovers(out) == []
    assert "Traceback" not in r.stderr


def test_segment_csv_multimask_numpy_rle(tiny_checkpoint, good_images, tmp_path):
    a, _ = good_images
    prompts = tmp_path / "p.csv"
    prompts.write_text("image,x,y,label,x0,y0,x1,y1\na.png,60,30,1,,,,\na.png,,,,10,15,100,80\n")
    out = tmp_path / "out"
    r = run_cli("segment", a, "--checkpoint", tiny_checkpoint, "--prompts", prompts, "--multimask", "-o", out,
                env=cli_env(SAMSPARSE_NO_PYCOCOTOOLS="1"))
    assert r.returncode == 0, r.stderr
    data = _check_segment_dir(out / "a", (90, 120))
    # one box + points -> a single prompt (box + point), 3 masks with --multimask
    assert len(data["annotations"]) == 3 and [x["multimask_index"] for x in data["annotations"]] == [0, 1, 2]
    assert data["annotations"][0]["prompt"] == {"points": [[60.0, 30.0, 1]], "box": [10.0, 15.0, 100.0, 80.0]}
    mask_utils = pytest.importorskip("pycocotools.mask")
    for ann in data["annotations"]:  # the NumPy encoder wrote what pycocotools would
        png = np.asarray(Image.open(out / "a" / ann["mask_file"])) > 127
        assert ann["segmentation"]["counts"] == mask_utils.encode(np.asfortranarray(png.astype(np.uint8)))["counts"].decode()


def test_segment_skip_and_overwrite(tiny_checkpoint, good_images, tmp_path, capsys):
    a, b = good_images
    out = tmp_path / "out"
    args = ["segment", a, b, "--checkpoint", tiny_checkpoint, "--point", "30,30", "-o", out]
    assert run_main(capsys, *args)[0] == 0
    marker = out / "a" / "masks.json"
    before = marker.stat().st_mtime_ns
    os.utime(out / "a" / "mask_000.png", ns=(1, 1))
    rc, stdout, err = run_main(capsys, *args)
    assert rc == 0 and "0 done, 2 skipped" in stdout and "already done" in err
    assert marker.stat().st_mtime_ns == before and (out / "a" / "mask_000.png").stat().st_mtime_ns == 1
    # different prompts: kept, with a warning
    rc, stdout, err = run_main(capsys, *args[:-4], "--point", "40,40", "-o", out)
    assert rc == 0 and "other settings or prompts" in err
    # --overwrite redoes them; fewer masks than before -> stale mask files removed
    rc, stdout, err = run_main(capsys, "segment", a, "--checkpoint", tiny_checkpoint, "--box", "1,1,50,50", "--box", "2,2,60,60", "-o", out, "--overwrite", "--no-overlay")
    assert rc == 0 and "1 done" in stdout
    assert (out / "a" / "mask_000.png").stat().st_mtime_ns != 1
    assert len(json.loads(marker.read_text())["annotations"]) == 2
    rc, _, _ = run_main(capsys, "segment", a, "--checkpoint", tiny_checkpoint, "--point", "30,30", "-o", out, "--overwrite", "--no-overlay")
    assert sorted(p.name for p in (out / "a").iterdir()) == ["mask_000.png", "masks.json", "overlay.png"] or \
        sorted(p.name for p in (out / "a").iterdir()) == ["mask_000.png", "masks.json"]
    assert not (out / "a" / "mask_001.png").exists()


def test_segment_dtype_bf16_and_sparse(tiny_checkpoint, good_images, tmp_path, capsys):
    a, _ = good_images
    rc, out, err = run_main(capsys, "segment", a, "--checkpoint", tiny_checkpoint, "--point", "30,30", "--dtype", "bf16",
                            "--device", "cpu", "--backend", "sdpa", "-o", tmp_path / "o1", "-q")
    assert rc == 0, err
    assert out == "" and err == ""  # -q: nothing but warnings/errors
    _check_segment_dir(tmp_path / "o1" / "a", (90, 120))
    if HAS_RECIPES:
        rc, out, err = run_main(capsys, "segment", a, "--checkpoint", tiny_checkpoint, "--point", "30,30", "--mask", SPARSE, "-o", tmp_path / "o2")
        assert rc == 0, err
        assert json.loads((tmp_path / "o2" / "a" / "masks.json").read_text())["settings"]["mask"] == SPARSE


def test_segment_downscaled_image_prompts_at_the_edge(tiny_checkpoint, tmp_path, capsys):
    big = save_png(tmp_path / "big.png", synthetic_image(300, 400, 11))
    out = tmp_path / "o"
    rc, _, err = run_main(capsys, "segment", big, "--checkpoint", tiny_checkpoint, "--max-pixels", "30000",
                          "--point", "400,300", "--box", "-20,0,400,300", "--box", "0,0,200,150", "-o", out)
    assert rc == 0, err
    assert "megapixels" in err and "clipped" in err
    data = json.loads((out / "big" / "masks.json").read_text())
    assert data["prompts"]["points"] == [[400.0, 300.0, 1]]  # recorded as given, in original pixels
    assert (data["height"], data["width"]) == (150, 200) and data["scale"] == pytest.approx(0.5)
    assert data["annotations"][2]["prompt"]["box"] == [0.0, 0.0, 100.0, 75.0]  # the work image's pixels
    _check_segment_dir(out / "big", (150, 200))


# --------------------------------------------------------------------------------------
# amg
# --------------------------------------------------------------------------------------

AMG_OPTS = ["--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0", "--box-nms-thresh", "0.99", "--points-per-batch", "8"]


def test_amg_binary_mask(tiny_checkpoint, good_images, tmp_path):
    out = tmp_path / "amg"
    r = run_cli("amg", *good_images, "--checkpoint", tiny_checkpoint, *AMG_OPTS, "--min-mask-region-area", "5", "-o", out)
    assert r.returncode == 0, r.stderr
    for img, (h, w) in zip(good_images, [(90, 120), (150, 100)]):
        d = out / img.stem
        with open(d / "metadata.csv", newline="") as f:
            reader = csv.reader(f)
            header = next(reader)
            rows = list(reader)
        assert tuple(header) == AMG_METADATA_COLUMNS
        assert rows, "random tiny model gave no masks even with thresholds at 0"
        for row in rows:
            mask = np.asarray(Image.open(d / f"{row[0]}.png"))
            assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
            assert int(row[1]) == int((mask > 127).sum())
            x0, y0, bw, bh = (float(v) for v in row[2:6])
            assert 0 <= x0 < w and 0 <= y0 < h and bw <= w and bh <= h
        assert sorted(p.name for p in d.iterdir()) == sorted(["metadata.csv"] + [f"{row[0]}.png" for row in rows])


def test_amg_coco_rle(tiny_checkpoint, good_images, tmp_path):
    out = tmp_path / "amg"
    r = run_cli("amg", good_images[0], "--checkpoint", tiny_checkpoint, *AMG_OPTS, "--output-mode", "coco_rle", "-o", out)
    assert r.returncode == 0, r.stderr
    records = json.loads((out / "a.json").read_text())
    assert records and set(records[0]) == {"segmentation", "area", "bbox", "predicted_iou", "point_coords", "stability_score", "crop_box"}
    for rec in records:
        m = sio.rle_to_mask(rec["segmentation"])
        assert m.shape == (90, 120) and int(m.sum()) == rec["area"]
    assert tmp_leftovers(out) == []


def test_amg_uncompressed_rle_and_bad_option(tiny_checkpoint, good_images, tmp_path, capsys):
    out = tmp_path / "amg"
    rc, _, err = run_main(capsys, "amg", good_images[1], "--checkpoint", tiny_checkpoint, *AMG_OPTS, "--output-mode", "uncompressed_rle", "-o", out)
    assert rc == 0, err
    records = json.loads((out / "b.json").read_text())
    assert records and isinstance(records[0]["segmentation"]["counts"], list)
    assert sio.rle_to_mask(records[0]["segmentation"]).shape == (150, 100)
    rc, _, err = run_main(capsys, "amg", good_images[1], "--checkpoint", tiny_checkpoint, "--points-per-batch", "0", "-o", out)
    assert rc == 2 and "points_per_batch must be >= 1" in err
    rc, _, err = run_main(capsys, "amg", good_images[1], "--output-mode", "png", "-o", out)
    assert rc == 2 and "invalid choice" in err


# --------------------------------------------------------------------------------------
# patch, download, backends, masks, bench, eval
# --------------------------------------------------------------------------------------


def test_patch_then_use(tiny_checkpoint, good_images, tmp_path, capsys):
    from samsparse.checkpoints import load_checkpoint
    from samsparse.patch import patch_config
    from samsparse.predictor import load_model

    mask = SPARSE if HAS_RECIPES else "dense"
    out = tmp_path / "patched.pth"
    r = run_cli("patch", "--checkpoint", tiny_checkpoint, "--mask", mask, "--blocks", "all", "-o", out)
    assert r.returncode == 0, r.stderr
    assert f"wrote {out}" in r.stdout
    sd, cfg = load_checkpoint(out)
    assert cfg is not None and set(sd) == set(load_checkpoint(tiny_checkpoint)[0])
    sam = load_model(out)
    assert patch_config(sam).blocks == [0, 1] and (patch_config(sam).mask or "dense") == mask
    assert tmp_leftovers(tmp_path) == []
    # an existing output is kept unless --overwrite
    rc, _, err = run_main(capsys, "patch", "--checkpoint", tiny_checkpoint, "-o", out)
    assert rc == 2 and "already exists; pass --overwrite" in err
    rc, _, err = run_main(capsys, "patch", "--checkpoint", tiny_checkpoint, "-o", out, "--overwrite")
    assert rc == 0, err
    # the patched checkpoint drives segment
    rc, stdout, err = run_main(capsys, "segment", good_images[0], "--checkpoint", out, "--point", "30,30", "-o", tmp_path / "seg")
    assert rc == 0, err


class _Handler(http.server.BaseHTTPRequestHandler):
    payload = b""

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        self.wfile.write(self.payload)


@pytest.fixture
def http_server():
    _Handler.payload = os.urandom(50_000)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Handler.payload
    server.shutdown()
    server.server_close()


def test_download_from_loopback(http_server, tmp_path, capsys):
    base, payload = http_server
    digest = hashlib.sha256(payload).hexdigest()
    r = run_cli("download", "my_sam", "--url", f"{base}/my_sam.pth", "--sha256", digest, "--dir", tmp_path / "cache", "-q")
    assert r.returncode == 0, r.stderr
    path = Path(r.stdout.strip())
    assert path == tmp_path / "cache" / "my_sam.pth" and path.read_bytes() == payload
    # the pinned size/SHA-256 of an official name are enforced: a wrong file is refused
    rc, out, err = run_main(capsys, "download", "vit_b", "--url", f"{base}/x.pth", "--dir", tmp_path / "c2", "-q")
    assert rc == 1 and "sam_vit_b_01ec64.pth" in err and not (tmp_path / "c2" / "sam_vit_b_01ec64.pth").exists()
    # a wrong --sha256: refused, nothing at the final path
    rc, out, err = run_main(capsys, "download", "other", "--url", f"{base}/o.pth", "--sha256", "0" * 64, "--dir", tmp_path / "c3", "-q")
    assert rc == 1 and "SHA-256 mismatch" in err and not (tmp_path / "c3" / "o.pth").exists()


def test_download_errors(tmp_path, capsys):
    with socket.socket() as s:  # a port with nothing listening: "offline"
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc, _, err = run_main(capsys, "download", "vit_b", "--url", f"http://127.0.0.1:{port}/x.pth", "--dir", tmp_path, "-q")
    assert rc == 1 and "download the file manually" in err and "Traceback" not in err
    rc, _, err = run_main(capsys, "download", "vit_q")
    assert rc == 2 and "Valid names: vit_b, vit_h, vit_l" in err
    rc, _, err = run_main(capsys, "download", "x", "--url", "ftp://example.invalid/x.pth", "--dir", tmp_path)
    assert rc == 2 and "http" in err


def test_backends_table(capsys):
    r = run_cli("backends")  # through `python -m samsparse.cli`
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["name", "available", "why"] and "head dims" in lines[0]
    names = {line.split()[0] for line in lines[2:]}
    assert {"sdpa", "reference"} <= names
    rc, out, _ = run_main(capsys, "backends", "--json")
    assert rc == 0 and {row["name"] for row in json.loads(out)} == names


def test_python_dash_m_samsparse():
    import subprocess

    r = subprocess.run([sys.executable, "-m", "samsparse", "--help"], capture_output=True, text=True, env=cli_env(), timeout=120)
    assert r.returncode == 0 and "segment" in r.stdout and "amg" in r.stdout and "eval" in r.stdout


@pytest.mark.skipif(not HAS_RECIPES, reason="mask recipes not available")
def test_masks_picture(tmp_path, capsys):
    out = tmp_path / "mask.png"
    r = run_cli("masks", "hierarchical:density=0.25", "-o", out, "--grid", "32x32", "--heads", "4")
    assert r.returncode == 0, r.stderr
    pic = np.asarray(Image.open(out))
    assert pic.ndim == 3 and pic.shape[2] == 3 and pic.shape[0] > 20
    assert "density" in r.stdout and "4 heads" in r.stdout
    assert len(np.unique(pic.reshape(-1, 3), axis=0)) >= 2  # read and skipped blocks differ
    rc, _, err = run_main(capsys, "masks", "dense", "-o", tmp_path / "dense.png", "--grid", "16", "--heads", "2")
    assert rc == 0, err
    rc, _, err = run_main(capsys, "masks", "nosuchmask", "-o", tmp_path / "x.png")
    assert rc == 2 and "nosuchmask" in err and not (tmp_path / "x.png").exists()
    rc, _, err = run_main(capsys, "masks", "dense", "-o", out)
    assert rc == 2 and "already exists" in err


def test_bench_wiring(monkeypatch, capsys, tmp_path):
    import samsparse.benchmark as bench

    seen = {}

    def fake_quick_table(**kwargs):
        seen.update(kwargs)
        return [{"variant": "dense", "ms": 1.5}, {"variant": "sparse", "ms": 0.75}]

    monkeypatch.setattr(bench, "quick_table", fake_quick_table)
    rc, out, err = run_main(capsys, "bench", "--device", "cpu", "--batch-sizes", "1,2", "-o", tmp_path / "b.csv")
    assert rc == 0, err
    assert seen == {"device": "cpu", "batch_sizes": (1, 2)}  # only what the user set
    assert "variant" in out and "0.75" in out
    assert (tmp_path / "b.csv").read_text().splitlines()[0] == "variant,ms"
    seen.clear()
    rc, out, err = run_main(capsys, "bench", "--device", "cpu", "--compile", "reduce-overhead")
    assert rc == 0, err
    assert seen == {"device": "cpu", "compile": "reduce-overhead"}
    seen.clear()
    rc, out, err = run_main(capsys, "bench", "--device", "cpu", "--gelu", "tanh")
    assert rc == 0, err
    assert seen == {"device": "cpu", "gelu": "tanh"}
    rc, out, err = run_main(capsys, "bench", "--compile", "max")
    assert rc == 2 and "--compile" in err
    monkeypatch.setitem(sys.modules, "samsparse.benchmark", None)  # as if the module were missing
    monkeypatch.delattr("samsparse.benchmark", raising=False)
    rc, out, err = run_main(capsys, "bench")
    assert rc == 2 and "samsparse.benchmark" in err and "not part of this installation" in err


def test_bench_quick_variants():
    from samsparse.benchmark import quick_variants

    assert quick_variants(["dense", "local:radius=2"]) == ["original", "sdpa", "dense", "sparse:local:radius=2"]
    assert quick_variants(["dense"], "default") == ["original", "sdpa", "dense", "original+compile", "dense+compile"]
    assert quick_variants(["dense"], "reduce-overhead")[-2:] == ["original+graphs", "dense+graphs"]
    with pytest.raises(ValueError, match="compile must be one of"):
        quick_variants(["dense"], "max-autotune")
    assert quick_variants(["dense"], "default", gelu="tanh") == [
        "original", "sdpa", "dense", "dense+tanhgelu", "original+compile", "dense+compile", "dense+tanhgelu+compile"]
    with pytest.raises(ValueError, match="gelu must be"):
        quick_variants(["dense"], gelu="fast")


@pytest.mark.slow
def test_bench_subprocess():
    r = run_cli("bench", "--device", "cpu", "--image-size", "64", "--recipes", "dense", timeout=300)
    assert r.returncode == 0, r.stderr
    assert "variant" in r.stdout.splitlines()[0] and "dense" in r.stdout


def test_eval(tiny_checkpoint, good_images, tmp_path, capsys):
    csv_path = tmp_path / "eval.csv"
    mask = SPARSE if HAS_RECIPES else "dense"
    r = run_cli("eval", *good_images, "--checkpoint", tiny_checkpoint, "--mask", mask, "-o", csv_path)
    assert r.returncode == 0, r.stderr
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    from samsparse.evaluate import EVAL_COLUMNS

    assert tuple(rows[0]) == EVAL_COLUMNS and len(rows) == 2
    for row in rows:
        assert 0.0 <= float(row["mask_iou"]) <= 1.0 and -1.0 <= float(row["embedding_cosine"]) <= 1.0
        assert float(row["dense_encoder_s"]) > 0 and float(row["sparse_encoder_s"]) > 0
    assert "summary" in r.stdout and "mask_iou_mean" in r.stdout
    # dense vs original SAM: identical masks, cosine 1
    rc, out, err = run_main(capsys, "eval", good_images[0], "--checkpoint", tiny_checkpoint, "--mask", "dense", "--box", "5,5,100,80")
    assert rc == 0, err
    summary = out.splitlines()[-1]
    assert "mask_iou_mean=1" in summary and "embedding_cosine_mean=1" in summary
    assert "no sparse mask" in err
    # a bad image and a bad prompt fail alone; exit 1
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    rc, out, err = run_main(capsys, "eval", good_images[0], bad, "--checkpoint", tiny_checkpoint, "--point", "119,89")
    assert rc == 1 and "bad.png: file is empty" in err and "images=1" in out
    rc, out, err = run_main(capsys, "eval", *good_images, "--checkpoint", tiny_checkpoint, "--point", "110,10")
    assert rc == 1 and "point (110, 10) is outside" in err and "b.png" in err and "images=1" in out


# --------------------------------------------------------------------------------------
# Bad input: each bad file reported on one line, the rest processed, exit 1
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_batch(tiny_checkpoint, tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    save_png(d / "good1.png", synthetic_image(90, 120, 1))
    Image.fromarray(synthetic_image(80, 100, 2)).save(d / "good2.jpg", quality=95)
    save_png(d / "gray.png", synthetic_image(70, 90, 3).mean(axis=2).astype(np.uint8))
    save_png(d / "rgba.png", np.dstack([synthetic_image(70, 90, 4), np.full((70, 90), 200, np.uint8)]))
    Image.fromarray((synthetic_image(64, 80, 5)[..., 0].astype(np.uint16) * 16)).save(d / "sixteen.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 60x100 (h x w), displayed rotated: 100x60
    Image.fromarray(synthetic_image(60, 100, 6)).save(d / "exif.jpg", exif=exif, quality=95)
    save_png(d / "large.png", synthetic_image(1200, 1600, 7))
    save_png(d / "outside.png", synthetic_image(60, 60, 8))
    (d / "empty.png").write_bytes(b"")
    full = save_png(d / "tmpfull.png", synthetic_image(64, 64, 9)).read_bytes()
    (d / "tmpfull.png").unlink()
    (d / "corrupt.png").write_bytes(full[: len(full) // 2])
    (d / "fake.png").write_text("not a picture\n")
    (d / "notes.txt").write_text("hello\n")
    prompts = d / "prompts.json"
    prompts.write_text(json.dumps({"outside.png": {"points": [[500, 20, 1]]}}))
    out = tmp_path_factory.mktemp("out") / "o"
    r = run_cli("segment", d, d / "notes.txt", d / "missing.png", "--checkpoint", tiny_checkpoint,
                "--point", "20,20", "--prompts", prompts, "--max-pixels", "500000", "-o", out)
    return r, d, out


GOOD = {"good1": (90, 120), "good2": (80, 100), "gray": (70, 90), "rgba": (70, 90), "sixteen": (64, 80), "exif": (100, 60)}


def test_bad_batch_exit_status_and_good_images_done(bad_batch):
    r, _, out = bad_batch
    assert r.returncode == 1, r.stderr
    for name, size in GOOD.items():
        _check_segment_dir(out / name, size)
    assert "Traceback" not in r.stderr
    assert tmp_leftovers(out) == []


@pytest.mark.parametrize(
    "name, message",
    [
        ("empty.png", "file is empty (0 bytes); re-export or re-copy the image"),
        ("corrupt.png", "image data is corrupt or truncated"),
        ("fake.png", "not an image"),
        ("notes.txt", "not an image"),
        ("missing.png", "no such file or directory"),
        ("outside.png", "point (500, 20) is outside the image of size 60x60 (width x height)"),
    ],
)
def test_bad_batch_each_failure_one_line(bad_batch, name, message):
    r, d, out = bad_batch
    lines = [line for line in r.stderr.splitlines() if name in line and "error" in line]
    assert len(lines) == 1, r.stderr
    assert message in lines[0], lines[0]
    assert not (out / Path(name).stem).exists(), "a failed image must leave no output"


def test_bad_batch_large_image_downscaled(bad_batch):
    r, _, out = bad_batch
    data = json.loads((out / "large" / "masks.json").read_text())
    assert data["original_width"] == 1600 and data["original_height"] == 1200
    assert data["width"] * data["height"] <= 500_000 * 1.01 and data["scale"] < 1
    _check_segment_dir(out / "large", (data["height"], data["width"]))
    assert "large.png" in r.stderr and "megapixels" in r.stderr


def test_bad_batch_16bit_and_exif(bad_batch):
    r, _, out = bad_batch
    assert "sixteen.png" in r.stderr and "scaled to 8 bits" in r.stderr
    assert json.loads((out / "exif" / "masks.json").read_text())["height"] == 100


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can read any file")
def test_unreadable_file(tiny_checkpoint, good_images, tmp_path, capsys):
    locked = save_png(tmp_path / "locked.png", synthetic_image(40, 40))
    locked.chmod(0)
    rc, out, err = run_main(capsys, "segment", locked, good_images[0], "--checkpoint", tiny_checkpoint, "--point", "5,5", "-o", tmp_path / "o")
    assert rc == 1 and "locked.png: permission denied" in err and (tmp_path / "o" / "a" / "masks.json").exists()


# --------------------------------------------------------------------------------------
# Usage errors: exit 2, one line, nothing written
# --------------------------------------------------------------------------------------


def test_unknown_recipe_subprocess(tiny_checkpoint, good_images, tmp_path):
    out = tmp_path / "o"
    r = run_cli("segment", good_images[0], "--checkpoint", tiny_checkpoint, "--point", "5,5", "--mask", "nosuchmask", "-o", out)
    assert r.returncode == 2
    errors = [line for line in r.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "--mask" in errors[0] and "nosuchmask" in errors[0]
    assert "Traceback" not in r.stderr and not out.exists()


def _usage(capsys, tmp_path, *argv):
    out = tmp_path / "o"
    rc, stdout, err = run_main(capsys, *argv, "-o", out)
    assert rc == 2, err
    assert not out.exists()
    assert "Traceback" not in err
    return err


def test_usage_errors(tiny_checkpoint, good_images, tmp_path, capsys):
    img = good_images[0]
    ck = ["--checkpoint", tiny_checkpoint]
    err = _usage(capsys, tmp_path, "segment", img, *ck, "--point", "5,5", "--backend", "warp")
    assert "unknown backend 'warp'" in err and "sdpa" in err
    if not torch.cuda.is_available():
        err = _usage(capsys, tmp_path, "segment", img, *ck, "--point", "5,5", "--device", "cuda")
        assert "CUDA was requested" in err and "use device 'cpu'" in err
    err = _usage(capsys, tmp_path, "segment", img, *ck, "--point", "5,5", "--dtype", "int8")
    assert "--dtype" in err
    err = _usage(capsys, tmp_path, "segment", img, *ck)
    assert "no prompts" in err
    err = _usage(capsys, tmp_path, "segment", img, *ck, "--point", "5")
    assert "--point" in err and "x,y or x,y,label" in err
    err = _usage(capsys, tmp_path, "segment", img, *ck, "--box", "9,9,1,1")
    assert "x1 < x0" in err
    bad_json = tmp_path / "p.json"
    bad_json.write_text('{"a.png": {"points": [[1, 2]]')
    err = _usage(capsys, tmp_path, "segment", img, *ck, "--prompts", bad_json)
    assert "--prompts" in err and "p.json" in err and "not valid JSON" in err
    err = _usage(capsys, tmp_path, "segment", tmp_path / "nothing_here.png", *ck, "--point", "5,5")
    assert "no such file" in err and "no input images" in err


def test_bad_checkpoints(tiny_checkpoint, good_images, tmp_path, capsys):
    img = good_images[0]
    text = tmp_path / "notes.pth"
    text.write_text("definitely not a checkpoint")
    err = _usage(capsys, tmp_path, "segment", img, "--checkpoint", text, "--point", "5,5")
    assert len(err.strip().splitlines()) == 1 and "cannot use checkpoint" in err and "notes.pth" in err
    cut = tmp_path / "cut.pth"
    data = Path(tiny_checkpoint).read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    err = _usage(capsys, tmp_path, "segment", img, "--checkpoint", cut, "--point", "5,5")
    assert "cut.pth" in err and "truncated" in err
    other = tmp_path / "resnet.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, other)
    err = _usage(capsys, tmp_path, "segment", img, "--checkpoint", other, "--point", "5,5")
    assert "resnet.pth" in err and "not a SAM image-encoder state dict" in err
    err = _usage(capsys, tmp_path, "segment", img, "--checkpoint", tiny_checkpoint, "--model", "vit_l", "--point", "5,5")
    assert "holds a custom model" in err and "'vit_l'" in err
    err = _usage(capsys, tmp_path, "segment", img, "--checkpoint", tmp_path / "absent.pth", "--point", "5,5")
    assert "absent.pth" in err and "does not exist" in err
    err = _usage(capsys, tmp_path, "amg", img, "--checkpoint", cut)
    assert "cut.pth" in err and "truncated" in err


# --------------------------------------------------------------------------------------
# Interrupted runs: only complete files, the re-run finishes the rest
# --------------------------------------------------------------------------------------


@pytest.fixture
def three_images(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    return [save_png(d / f"img{i}.png", synthetic_image(60 + 10 * i, 80, i)) for i in range(3)]


def _assert_complete_files_only(out: Path) -> None:
    assert tmp_leftovers(out) == []
    for png in out.rglob("*.png"):
        Image.open(png).load()  # every file that exists is a whole picture
    for js in out.rglob("*.json"):
        json.loads(js.read_text())


def test_interrupted_run_resumes(tiny_checkpoint, three_images, tmp_path):
    out = tmp_path / "out"
    args = ["segment", *three_images, "--checkpoint", tiny_checkpoint, "--point", "10,10", "-o", out]
    # 3 writes per image (mask, overlay, masks.json): stop after the 2nd image's overlay
    r = run_cli(*args, env=cli_env(SAMSPARSE_TEST_INTERRUPT="raise:5"))
    assert r.returncode == 130, r.stderr
    assert "interrupted" in r.stderr and "run the same command again" in r.stderr
    assert (out / "img0" / "masks.json").exists()
    assert (out / "img1" / "overlay.png").exists() and not (out / "img1" / "masks.json").exists()
    assert not (out / "img2").exists()
    _assert_complete_files_only(out)
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    assert "2 done, 1 skipped" in r.stdout
    for i in range(len(three_images)):
        _check_segment_dir(out / f"img{i}", (60 + 10 * i, 80))


def test_shards_split_the_inputs_and_agree_on_names(tiny_checkpoint, three_images, tmp_path, capsys):
    # a fourth image whose stem collides with img0: both get a hashed name, the same in every shard
    other = tmp_path / "other"
    other.mkdir()
    twin = save_png(other / "img0.png", synthetic_image(50, 70, 7))
    inputs = [*three_images, twin]
    out = tmp_path / "out"
    base = ["amg", *inputs, "--checkpoint", tiny_checkpoint, *AMG_OPTS, "--output-mode", "coco_rle", "-o", out]
    rc, stdout, _ = run_main(capsys, *base, "--shard", "0/2")
    assert rc == 0 and "amg (shard 0/2): 2 done" in stdout
    first = sorted(p.name for p in out.iterdir())
    assert len(first) == 2 and first[0].startswith("img0-") and "img2.json" in first  # inputs 0 and 2
    rc, stdout, _ = run_main(capsys, *base, "--shard", "1/2")
    assert rc == 0 and "2 done, 0 skipped" in stdout
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 4 and "img1.json" in names and len([n for n in names if n.startswith("img0-")]) == 2
    # the unsharded run finds all four done
    rc, stdout, _ = run_main(capsys, *base)
    assert rc == 0 and "0 done, 4 skipped" in stdout
    for bad in ("2/2", "1", "a/b", "0/0", "-1/2"):
        rc, _, err = run_main(capsys, *base, "--shard", bad)
        assert rc == 2 and "K/N" in err, bad


def test_killed_run_leaves_no_partial_file(tiny_checkpoint, three_images, tmp_path):
    out = tmp_path / "out"
    args = ["amg", *three_images, "--checkpoint", tiny_checkpoint, *AMG_OPTS, "--output-mode", "coco_rle", "-o", out]
    # SIGKILL while the 2nd image's JSON is written but not yet renamed into place
    r = run_cli(*args, env=cli_env(SAMSPARSE_TEST_INTERRUPT="kill:2"))
    assert r.returncode == -9
    assert (out / "img0.json").exists() and not (out / "img1.json").exists() and not (out / "img2.json").exists()
    assert len(tmp_leftovers(out)) == 1  # the half-written temporary file of the killed process
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    assert "2 done, 1 skipped" in r.stdout
    _assert_complete_files_only(out)
    assert all(json.loads((out / f"img{i}.json").read_text()) for i in range(3))


def test_sigterm_midway_then_rerun(tiny_checkpoint, three_images, tmp_path):
    import subprocess
    import time

    out = tmp_path / "out"
    args = ["segment", *map(str, three_images), "--checkpoint", str(tiny_checkpoint), "--point", "10,10", "-o", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "samsparse.cli", *args], env=cli_env(SAMSPARSE_TEST_INTERRUPT="sleep:0.3"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (out / "img0" / "masks.json").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the first image never finished"
            time.sleep(0.05)
        proc.terminate()  # SIGTERM, as a job scheduler would send
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert not (out / "img2" / "masks.json").exists()
    _assert_complete_files_only(out)
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    assert "1 skipped" in r.stdout
    for i in range(3):
        _check_segment_dir(out / f"img{i}", (60 + 10 * i, 80))
