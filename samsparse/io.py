"""Read images, write PNG masks / overlays / COCO RLE / JSON / CSV, atomically.

Reading (:func:`read_image`) always returns an RGB ``uint8`` array ``[H, W, 3]``:
EXIF orientation is applied (``PIL.ImageOps.exif_transpose``), grayscale and
palette images are expanded to RGB, an alpha channel is dropped, 16-bit and float
images are scaled to 8 bits by their maximum value, and images larger than
``max_pixels`` are downscaled (JPEG files are decoded at reduced size directly, so
memory stays bounded). Every problem raises :class:`ImageReadError` with one line
naming the file, what is wrong and what to do.

Writing: every file is written to a hidden temporary file in the same directory
(``.<name>.<pid>.samsparse-tmp``), flushed to disk, then moved into place with
:func:`os.replace`, so an output path never holds a partial file. A hard kill can
leave the temporary file behind; :func:`remove_stale_tmp` (called by the CLI before
it writes into a directory) deletes those of processes that are gone.

COCO RLE: :func:`mask_to_rle` uses pycocotools when it is installed and a pure
NumPy encoder otherwise; both give the same compressed ``counts`` string.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import hashlib
import io as _io
import json
import logging
import math
import os
import signal
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from . import _atomic
from ._atomic import TMP_SUFFIX

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageReadError",
    "LoadedImage",
    "collect_images",
    "read_image",
    "ensure_rgb_uint8",
    "to_uint8",
    "output_names",
    "atomic_path",
    "write_bytes",
    "write_text",
    "write_json",
    "write_csv",
    "write_image",
    "write_mask_png",
    "read_mask_png",
    "remove_stale_tmp",
    "mask_to_rle",
    "rle_to_mask",
    "rle_counts",
    "encode_rle_counts",
    "decode_rle_counts",
    "mask_to_bbox",
    "overlay_masks",
]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pnm")
#: Images with more pixels than this are refused outright (about 3 GB as RGB).
HARD_PIXEL_LIMIT = 1_000_000_000


class ImageReadError(ValueError):
    """An input file is missing, empty, corrupt, not an image, or too large."""


# --------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------


def _has_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def collect_images(inputs: Iterable[str | os.PathLike]) -> tuple[list[Path], list[str]]:
    """Expand command-line inputs into image files.

    Each input is a file (taken as is, whatever its extension: reading it reports
    the problem), a directory (the files with an image extension directly inside,
    sorted by name), or a glob pattern (``photos/*.jpg``, ``**`` recurses; matches
    sorted). Duplicates are dropped, order is kept.

    Returns:
        (files, problems): the files, and one message per input that gave nothing.
    """
    files: list[Path] = []
    problems: list[str] = []
    seen: set[str] = set()

    def add(p: Path) -> None:
        key = os.path.abspath(p)
        if key not in seen:
            seen.add(key)
            files.append(p)

    for item in inputs:
        text = os.fspath(item)
        p = Path(text)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                problems.append(
                    f"{text}: the directory has no image files ({', '.join(IMAGE_EXTENSIONS[:5])}, ...)"
                )
            for q in found:
                add(q)
        elif p.exists():
            add(p)
        elif _has_glob(text):
            matches = sorted(Path(m) for m in glob.glob(text, recursive=True))
            matches = [m for m in matches if m.is_file()]
            if not matches:
                problems.append(f"{text}: the pattern matches no files")
            for m in matches:
                add(m)
        else:
            problems.append(f"{text}: no such file or directory")
    return files, problems


def output_names(paths: Sequence[Path]) -> dict[Path, str]:
    """A unique output name per input: the file stem, plus a short hash of the path when stems collide."""
    stems: dict[str, int] = {}
    for p in paths:
        stems[p.stem] = stems.get(p.stem, 0) + 1
    out = {}
    for p in paths:
        if stems[p.stem] == 1:
            out[p] = p.stem
        else:
            digest = hashlib.sha1(os.path.abspath(p).encode("utf-8")).hexdigest()[:8]
            out[p] = f"{p.stem}-{digest}"
    return out


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------


@dataclass
class LoadedImage:
    """An image as read by :func:`read_image`.

    array: RGB uint8 [H, W, 3] (after EXIF rotation and any downscaling).
    original_size: (H, W) of the upright image at full resolution.
    scale: array size / original size (1.0 unless downscaled by ``max_pixels``);
        multiply prompts given in original pixels by it.
    notes: conversions applied (also logged).
    """

    array: np.ndarray
    path: Path
    original_size: tuple[int, int]
    scale: float = 1.0
    notes: list[str] = field(default_factory=list)


def to_uint8(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """Bring an array of any numeric dtype to uint8; returns (array, note or None).

    bool -> 0/255; uint16/int/float with values above 1 -> scaled so the image's
    maximum maps to 255 (a 12-bit microscopy image becomes visible); float in
    [0, 1] -> times 255.
    """
    arr = np.asarray(image)
    if arr.dtype == np.uint8:
        return arr, None
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255, "boolean image mapped to 0/255"
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"cannot convert an image of dtype {arr.dtype} to uint8")
    data = arr.astype(np.float64, copy=False)
    finite = np.isfinite(data)
    if not finite.all():
        data = np.where(finite, data, 0.0)
    lo = float(data.min()) if data.size else 0.0
    hi = float(data.max()) if data.size else 0.0
    if np.issubdtype(arr.dtype, np.floating) and lo >= 0.0 and hi <= 1.0:
        return np.round(data * 255.0).astype(np.uint8), "float image in [0, 1] scaled to 0-255"
    if lo < 0:
        data = data - lo
        hi -= lo
    if hi <= 0:
        return np.zeros(arr.shape, np.uint8), f"{arr.dtype} image is all zero"
    out = np.round(data * (255.0 / hi)).clip(0, 255).astype(np.uint8)
    return out, f"{arr.dtype} image scaled to 8 bits (value {hi:g} -> 255)"


def ensure_rgb_uint8(image: np.ndarray, name: str = "image") -> tuple[np.ndarray, list[str]]:
    """Check an image array and convert it to RGB uint8 [H, W, 3]; returns (array, notes).

    Accepted: [H, W] grayscale, [H, W, 1], [H, W, 3] RGB, [H, W, 4] RGBA (alpha
    dropped). The dtype must be uint8 here (use :func:`to_uint8` first for others).

    Raises:
        ValueError: wrong dtype, wrong shape or an empty image (the message names ``name``).
    """
    arr = np.asarray(image)
    notes: list[str] = []
    if arr.dtype != np.uint8:
        raise ValueError(
            f"{name} has dtype {arr.dtype}; SAM expects uint8 pixels in [0, 255]. Convert it first, "
            "e.g. samsparse.io.to_uint8(image)[0] (scales 16-bit/float images to 8 bits)"
        )
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
        notes.append("grayscale image converted to RGB")
    elif arr.ndim == 3 and arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
        notes.append("single-channel image converted to RGB")
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
        notes.append("alpha channel dropped (RGBA -> RGB)")
    elif not (arr.ndim == 3 and arr.shape[2] == 3):
        raise ValueError(
            f"{name} has shape {arr.shape}; expected [H, W, 3] (RGB), [H, W] (grayscale) or [H, W, 4] (RGBA)"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    return np.ascontiguousarray(arr), notes


def _oriented_size(im: Any) -> tuple[int, int]:
    """(W, H) of ``im`` after its EXIF orientation is applied."""
    w, h = im.size
    try:
        orientation = im.getexif().get(0x0112)
    except Exception:  # noqa: BLE001 - broken EXIF is ignored like exif_transpose does
        orientation = None
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def _read_with_cv2(p: Path) -> np.ndarray | None:
    """Fallback for files PIL cannot open (e.g. 16-bit RGB TIFF); returns RGB(A)/gray or None."""
    try:
        import cv2
    except ImportError:  # pragma: no cover - cv2 is a dependency
        return None
    arr = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    if arr is None:
        return None
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = arr[:, :, ::-1]
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, [2, 1, 0, 3]]
    return np.ascontiguousarray(arr)


def read_image(path: str | os.PathLike, max_pixels: int | None = None) -> LoadedImage:
    """Read an image file as RGB uint8 [H, W, 3], upright (EXIF applied).

    Args:
        path: the file.
        max_pixels: downscale (keeping the aspect ratio) images with more pixels than
            this; None or 0 = keep full size (up to :data:`HARD_PIXEL_LIMIT`).

    Raises:
        ImageReadError: missing, unreadable, empty, not an image, corrupt/truncated,
            or larger than :data:`HARD_PIXEL_LIMIT` pixels.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ImageReadError(f"{p}: file not found") from None
    except OSError as exc:
        raise ImageReadError(f"{p}: cannot access the file ({exc.strerror or exc}); check the path and permissions") from None
    if p.is_dir():
        raise ImageReadError(f"{p}: is a directory, not an image file")
    if st.st_size == 0:
        raise ImageReadError(f"{p}: file is empty (0 bytes); re-export or re-copy the image")
    if not os.access(p, os.R_OK):
        raise ImageReadError(f"{p}: permission denied; make the file readable (chmod +r)")

    notes: list[str] = []
    arr: np.ndarray | None = None
    original: tuple[int, int] | None = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        old_limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None  # we check the size ourselves, below
        try:
            try:
                im = Image.open(p)
            except UnidentifiedImageError:
                im = None
            except OSError as exc:
                raise ImageReadError(f"{p}: cannot open the file ({exc}); check that it is a complete image file") from None
            if im is None:
                arr = _read_with_cv2(p)
                if arr is None:
                    raise ImageReadError(
                        f"{p}: not an image, or a format that cannot be read (supported: "
                        f"{', '.join(e.lstrip('.') for e in IMAGE_EXTENSIONS)}); convert it to PNG or JPEG"
                    )
                original = (int(arr.shape[0]), int(arr.shape[1]))
            else:
                with im:
                    w, h = _oriented_size(im)
                    original = (h, w)
                    if w * h > HARD_PIXEL_LIMIT:
                        raise ImageReadError(
                            f"{p}: image is {w}x{h} ({w * h / 1e6:.0f} megapixels), above the limit of "
                            f"{HARD_PIXEL_LIMIT / 1e6:.0f}; cut it into tiles first"
                        )
                    if max_pixels and w * h > max_pixels and im.format == "JPEG":
                        s = math.sqrt(max_pixels / (w * h))
                        im.draft("RGB", (max(1, int(im.size[0] * s)), max(1, int(im.size[1] * s))))
                    try:
                        im.load()
                        im = ImageOps.exif_transpose(im)
                    except (OSError, SyntaxError, ValueError) as exc:
                        raise ImageReadError(
                            f"{p}: image data is corrupt or truncated ({exc}); re-export or re-download it"
                        ) from None
                    if im.mode in ("RGB",):
                        pass
                    elif im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                        im = im.convert("RGBA").convert("RGB")
                        notes.append("alpha channel dropped (RGBA -> RGB)")
                    elif im.mode in ("L", "1"):
                        im = im.convert("L")
                        notes.append("grayscale image converted to RGB")
                    elif im.mode.startswith(("I", "F")):
                        pass  # 16/32-bit or float: scaled below with NumPy
                    else:
                        notes.append(f"{im.mode} image converted to RGB")
                        im = im.convert("RGB")
                    arr = np.asarray(im)
        finally:
            Image.MAX_IMAGE_PIXELS = old_limit

    assert arr is not None and original is not None
    if arr.dtype != np.uint8:
        arr, note = to_uint8(arr)
        if note:
            notes.append(note)
            log.warning("%s: %s", p, note)
    try:
        arr, more = ensure_rgb_uint8(arr, str(p))
    except ValueError as exc:
        raise ImageReadError(str(exc)) from None
    notes += more

    scale = 1.0
    h0, w0 = original
    if max_pixels and h0 * w0 > max_pixels:
        scale = math.sqrt(max_pixels / (h0 * w0))
        new_w, new_h = max(1, round(w0 * scale)), max(1, round(h0 * scale))
        if (arr.shape[1], arr.shape[0]) != (new_w, new_h):
            arr = np.asarray(Image.fromarray(arr).resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=2.0))
        msg = (
            f"image is {w0}x{h0} ({h0 * w0 / 1e6:.1f} megapixels): processed and written at {new_w}x{new_h} "
            f"(scale {scale:.3g}; raise --max-pixels to keep more)"
        )
        notes.append(msg)
        log.warning("%s: %s", p, msg)
    for note in notes:
        if "scaled" not in note and "megapixels" not in note:
            log.info("%s: %s", p, note)
    return LoadedImage(array=arr, path=p, original_size=original, scale=scale, notes=notes)


# --------------------------------------------------------------------------------------
# Atomic writing
# --------------------------------------------------------------------------------------

_WRITES = 0


def _test_hook(stage: str, tmp: Path) -> None:
    """Crash simulation for tests: ``SAMSPARSE_TEST_INTERRUPT=raise:N`` raises KeyboardInterrupt
    after the N-th completed write; ``kill:N`` SIGKILLs this process after the N-th temporary
    file is written but before it is renamed; ``sleep:S`` sleeps S seconds after each write.
    Not for users."""
    spec = os.environ.get("SAMSPARSE_TEST_INTERRUPT")
    if not spec:
        return
    mode, _, n = spec.partition(":")
    if mode == "sleep" and stage == "after_replace":  # slow writes, for tests that send signals
        time.sleep(float(n))
        return
    if not n.isdigit() or _WRITES + (1 if stage == "before_replace" else 0) != int(n):
        return
    if mode == "kill" and stage == "before_replace":
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "raise" and stage == "after_replace":
        raise KeyboardInterrupt(f"SAMSPARSE_TEST_INTERRUPT after write {n} ({tmp})")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is moved onto ``path`` (os.replace).

    On any exception (KeyboardInterrupt included) the temporary file is removed and
    ``path`` is left as it was. The writer should flush and fsync what it writes.
    """
    global _WRITES
    with _atomic.atomic_path(path, before_replace=lambda tmp: _test_hook("before_replace", tmp)) as tmp:
        yield tmp
    _WRITES += 1
    _test_hook("after_replace", Path(path))


def _write_with(path: str | os.PathLike, fill: Callable[[Any], None]) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return _write_with(path, lambda f: f.write(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, bytes):
        return obj.decode("ascii")
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> Path:
    """Write ``obj`` as JSON atomically (NumPy scalars/arrays and bytes are converted)."""
    return write_text(path, json.dumps(obj, indent=indent, default=_json_default) + "\n")


def write_csv(path: str | os.PathLike, rows: Iterable[Mapping[str, Any] | Sequence[Any]], columns: Sequence[str]) -> Path:
    """Write rows (dicts keyed by ``columns``, or sequences in that order) as CSV with a header, atomically."""
    buf = _io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        if isinstance(row, Mapping):
            writer.writerow([_csv_value(row.get(c, "")) for c in columns])
        else:
            writer.writerow([_csv_value(v) for v in row])
    return write_text(path, buf.getvalue())


def _csv_value(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else str(v)
    return v


def write_image(path: str | os.PathLike, image: np.ndarray, format: str | None = None) -> Path:
    """Write a uint8 image ([H, W] gray or [H, W, 3] RGB) atomically; format from the suffix (PNG default)."""
    from PIL import Image

    fmt = format or {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP"}.get(Path(path).suffix.lower(), "PNG")
    arr = np.ascontiguousarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"write_image needs uint8 pixels, got {arr.dtype}")
    pil = Image.fromarray(arr)
    return _write_with(path, lambda f: pil.save(f, format=fmt, **({"compress_level": 1} if fmt == "PNG" else {})))


def write_mask_png(path: str | os.PathLike, mask: np.ndarray) -> Path:
    """Write a binary mask [H, W] as an 8-bit PNG with values 0 and 255, atomically."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"a mask must be [H, W], got shape {m.shape}")
    return write_image(path, (m > 0).astype(np.uint8) * 255, format="PNG")


def read_mask_png(path: str | os.PathLike) -> np.ndarray:
    """Read a mask PNG written by :func:`write_mask_png` as bool [H, W]."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("L")) > 127


def remove_stale_tmp(directory: str | os.PathLike) -> int:
    """Delete temporary files left in ``directory`` by killed samsparse processes; return how many."""
    d = Path(directory)
    if not d.is_dir():
        return 0
    removed = 0
    for f in d.glob(f".*{TMP_SUFFIX}"):
        pid_text = f.name[: -len(TMP_SUFFIX)].rsplit(".", 1)[-1]
        if pid_text.isdigit() and int(pid_text) != os.getpid() and _pid_alive(int(pid_text)):
            continue  # another live process is writing it
        with contextlib.suppress(FileNotFoundError):
            f.unlink()
            removed += 1
            log.debug("removed stale temporary file %s", f)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


# --------------------------------------------------------------------------------------
# RLE
# --------------------------------------------------------------------------------------


def rle_counts(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE counts of a binary mask [H, W] (column-major, starting with a run of 0s)."""
    flat = np.asarray(mask).astype(bool).ravel(order="F")
    if flat.size == 0:
        return []
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0] + counts
    return counts


def encode_rle_counts(counts: Sequence[int]) -> str:
    """COCO's compressed counts string (pycocotools ``rleToString``), in pure Python."""
    out = []
    for i, c in enumerate(counts):
        x = int(c)
        if i > 2:
            x -= int(counts[i - 2])
        more = True
        while more:
            ch = x & 0x1F
            x >>= 5
            more = (x != -1) if (ch & 0x10) else (x != 0)
            if more:
                ch |= 0x20
            out.append(chr(ch + 48))
    return "".join(out)


def decode_rle_counts(s: str | bytes) -> list[int]:
    """Inverse of :func:`encode_rle_counts` (pycocotools ``rleFrString``)."""
    data = s.encode("ascii") if isinstance(s, str) else bytes(s)
    counts: list[int] = []
    p = 0
    while p < len(data):
        x = 0
        k = 0
        more = True
        while more:
            if p >= len(data):
                raise ValueError("truncated COCO RLE counts string")
            c = data[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def _pycocotools():
    if os.environ.get("SAMSPARSE_NO_PYCOCOTOOLS"):
        return None
    try:
        from pycocotools import mask as mask_utils
    except ImportError:
        return None
    return mask_utils


def mask_to_rle(mask: np.ndarray, use_pycocotools: bool | None = None) -> dict:
    """COCO compressed RLE ``{"size": [H, W], "counts": str}`` of a binary mask [H, W].

    Uses pycocotools when installed (``use_pycocotools=None``), else the NumPy encoder
    (same result). ``SAMSPARSE_NO_PYCOCOTOOLS=1`` forces the NumPy path.
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"a mask must be [H, W], got shape {m.shape}")
    h, w = m.shape
    mu = _pycocotools() if use_pycocotools is not False else None
    if mu is not None:
        rle = mu.encode(np.asfortranarray(m.astype(np.uint8)))
        return {"size": [int(h), int(w)], "counts": rle["counts"].decode("ascii")}
    if use_pycocotools:
        raise ImportError("pycocotools is not installed (pip install pycocotools)")
    return {"size": [int(h), int(w)], "counts": encode_rle_counts(rle_counts(m))}


def rle_to_mask(rle: Mapping[str, Any]) -> np.ndarray:
    """Decode a COCO RLE (compressed string or uncompressed list ``counts``) to bool [H, W]."""
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        counts = decode_rle_counts(counts)
    flat = np.zeros(h * w, dtype=bool)
    pos = 0
    value = False
    for c in counts:
        c = int(c)
        if c < 0 or pos + c > h * w:
            raise ValueError(f"RLE counts do not fit a {h}x{w} mask")
        if value:
            flat[pos : pos + c] = True
        pos += c
        value = not value
    if pos != h * w:
        raise ValueError(f"RLE counts cover {pos} pixels, not {h * w} ({h}x{w})")
    return flat.reshape((w, h)).T


def mask_to_bbox(mask: np.ndarray) -> list[int]:
    """Tight box [x, y, w, h] (COCO XYWH, in pixels) around a binary mask; [0, 0, 0, 0] when empty."""
    m = np.asarray(mask).astype(bool)
    ys, xs = np.nonzero(m)
    if xs.size == 0:
        return [0, 0, 0, 0]
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())
    return [x0, y0, x1 - x0 + 1, y1 - y0 + 1]


# --------------------------------------------------------------------------------------
# Overlay
# --------------------------------------------------------------------------------------

_PALETTE = np.array(
    [
        [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
        [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212],
        [0, 128, 128], [220, 190, 255], [170, 110, 40], [255, 250, 200], [128, 0, 0],
    ],
    dtype=np.uint8,
)


def overlay_masks(
    image: np.ndarray,
    masks: Sequence[np.ndarray],
    points: Sequence[tuple[float, float, int]] = (),
    boxes: Sequence[Sequence[float]] = (),
    alpha: float = 0.5,
) -> np.ndarray:
    """The image with each mask tinted in its own colour and outlined, plus prompts drawn.

    image: RGB uint8 [H, W, 3]; masks: bool [H, W] each; points (x, y, label): green
    foreground / red background dots; boxes (x0, y0, x1, y1): white rectangles.
    Returns RGB uint8 [H, W, 3].
    """
    import cv2

    out = np.asarray(image, dtype=np.uint8).copy()
    h, w = out.shape[:2]
    thick = max(1, round(min(h, w) / 300))
    for i, m in enumerate(masks):
        m = np.asarray(m, dtype=bool)
        color = _PALETTE[i % len(_PALETTE)]
        out[m] = (out[m].astype(np.float32) * (1 - alpha) + color.astype(np.float32) * alpha).astype(np.uint8)
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, tuple(int(c) for c in color), thick)
    for x0, y0, x1, y1 in boxes:
        cv2.rectangle(out, (round(x0), round(y0)), (round(x1), round(y1)), (255, 255, 255), thick + 1)
    radius = max(3, round(min(h, w) / 100))
    for x, y, label in points:
        color = (0, 220, 0) if label == 1 else (230, 0, 0)
        cv2.circle(out, (round(x), round(y)), radius, color, -1)
        cv2.circle(out, (round(x), round(y)), radius, (255, 255, 255), max(1, thick // 2 + 1))
    return out
