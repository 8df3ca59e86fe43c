"""Prompts for SAM: parse them from the command line and from JSON/CSV files, check them.

Coordinates are pixels of the original image, ``x`` to the right and ``y`` down,
as in ``SamPredictor.predict``. A point is ``(x, y, label)`` with label 1
(foreground, the default) or 0 (background); a box is ``(x0, y0, x1, y1)``.

Command line (``samsparse segment``)::

    --point 500,375          # foreground point
    --point 80,40,0          # background point
    --box 10,20,300,400      # repeatable: one prompt per box

Prompt file, JSON (keys are image file names, paths relative to the working
directory, or absolute paths)::

    {"photo.jpg": {"points": [[500, 375, 1], [80, 40, 0]], "boxes": [[10, 20, 300, 400]]}}

Prompt file, CSV: a header with ``image`` and, per row, either a point
(``x,y[,label]``) or a box (``x0,y0,x1,y1``)::

    image,x,y,label,x0,y0,x1,y1
    photo.jpg,500,375,1,,,,
    photo.jpg,,,,10,20,300,400

How prompts become SAM calls (see :func:`Prompts.groups`): all points of an
image together are one prompt (SAM's multi-click); each box is one prompt
(several boxes are batched into one ``predict_torch`` call); when there is
exactly one box, the points are added to it (SAM's "box + points").
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

__all__ = [
    "PromptError",
    "Prompts",
    "PromptGroup",
    "parse_point",
    "parse_box",
    "load_prompt_file",
    "prompts_for_image",
    "check_points",
    "check_box",
    "centre_point",
    "mask_to_logits",
]

log = logging.getLogger(__name__)


class PromptError(ValueError):
    """A prompt (point, box, prompt file) is malformed or does not fit the image."""


def _numbers(text: str, what: str, example: str) -> list[float]:
    parts = [p.strip() for p in str(text).replace(";", ",").split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise PromptError(f"{what} {text!r} is not a list of numbers; expected e.g. {example!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise PromptError(f"{what} {text!r} contains a non-finite number; expected e.g. {example!r}")
    return values


def _label(value: Any, where: str) -> int:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise PromptError(f"{where}: label {value!r} must be 1 (foreground) or 0 (background)") from None
    if f not in (0.0, 1.0):
        raise PromptError(f"{where}: label {value!r} must be 1 (foreground) or 0 (background)")
    return int(f)


def parse_point(text: str) -> tuple[float, float, int]:
    """``"x,y"`` or ``"x,y,label"`` -> ``(x, y, label)``; label defaults to 1 (foreground)."""
    values = _numbers(text, "point", "500,375 or 500,375,0")
    if len(values) not in (2, 3):
        raise PromptError(f"point {text!r} must be x,y or x,y,label (2 or 3 numbers), got {len(values)} numbers")
    label = _label(values[2], f"point {text!r}") if len(values) == 3 else 1
    return (values[0], values[1], label)


def parse_box(text: str) -> tuple[float, float, float, float]:
    """``"x0,y0,x1,y1"`` -> ``(x0, y0, x1, y1)`` with ``x0 <= x1`` and ``y0 <= y1`` (checked)."""
    values = _numbers(text, "box", "10,20,300,400")
    return _box_tuple(values, f"box {text!r}")


def _box_tuple(values: Iterable[Any], where: str) -> tuple[float, float, float, float]:
    try:
        vals = [float(v) for v in values]
    except (TypeError, ValueError):
        raise PromptError(f"{where}: a box must be 4 numbers x0,y0,x1,y1") from None
    if len(vals) != 4:
        raise PromptError(f"{where}: a box must be 4 numbers x0,y0,x1,y1, got {len(vals)}")
    if not all(math.isfinite(v) for v in vals):
        raise PromptError(f"{where}: box coordinates must be finite numbers")
    x0, y0, x1, y1 = vals
    if x1 < x0 or y1 < y0:
        raise PromptError(
            f"{where}: box (x0={x0:g}, y0={y0:g}, x1={x1:g}, y1={y1:g}) has x1 < x0 or y1 < y0; "
            "give the top-left corner first, then the bottom-right corner"
        )
    return (x0, y0, x1, y1)


def _point_tuple(values: Any, where: str) -> tuple[float, float, int]:
    if isinstance(values, Mapping):
        values = [values.get("x"), values.get("y"), values.get("label", 1)]
    try:
        vals = list(values)
    except TypeError:
        raise PromptError(f"{where}: a point must be [x, y] or [x, y, label], got {values!r}") from None
    if len(vals) not in (2, 3):
        raise PromptError(f"{where}: a point must be [x, y] or [x, y, label], got {values!r}")
    try:
        x, y = float(vals[0]), float(vals[1])
    except (TypeError, ValueError):
        raise PromptError(f"{where}: point coordinates must be numbers, got {values!r}") from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise PromptError(f"{where}: point coordinates must be finite numbers, got {values!r}")
    label = _label(vals[2], where) if len(vals) == 3 else 1
    return (x, y, label)


@dataclass(frozen=True)
class PromptGroup:
    """One SAM prompt: optional points (with labels) and an optional box, in image pixels."""

    points: tuple[tuple[float, float, int], ...] = ()
    box: tuple[float, float, float, float] | None = None

    def to_dict(self) -> dict:
        out: dict[str, Any] = {}
        if self.points:
            out["points"] = [[x, y, lab] for x, y, lab in self.points]
        if self.box is not None:
            out["box"] = list(self.box)
        return out

    @property
    def is_single_point(self) -> bool:
        """A lone click: ambiguous, so SAM recommends multimask output and picking the best."""
        return len(self.points) == 1 and self.box is None


@dataclass
class Prompts:
    """The prompts of one image: points ``(x, y, label)`` and boxes ``(x0, y0, x1, y1)``."""

    points: list[tuple[float, float, int]] = field(default_factory=list)
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.points or self.boxes)

    def __add__(self, other: "Prompts") -> "Prompts":
        return Prompts(points=self.points + other.points, boxes=self.boxes + other.boxes)

    def scaled(self, scale_x: float, scale_y: float | None = None) -> "Prompts":
        """The same prompts for the image resized by ``scale_x`` (and ``scale_y``, default the same);
        see ``io.read_image(max_pixels=...)``."""
        sy = scale_x if scale_y is None else scale_y
        sx = scale_x
        if sx == 1.0 and sy == 1.0:
            return self
        return Prompts(
            points=[(x * sx, y * sy, lab) for x, y, lab in self.points],
            boxes=[(x0 * sx, y0 * sy, x1 * sx, y1 * sy) for x0, y0, x1, y1 in self.boxes],
        )

    def clamped(self, height: int, width: int) -> "Prompts":
        """Coordinates clamped into ``[0, width] x [0, height]`` (after :meth:`scaled`, against rounding)."""
        cx = lambda v: min(max(v, 0.0), float(width))  # noqa: E731
        cy = lambda v: min(max(v, 0.0), float(height))  # noqa: E731
        return Prompts(
            points=[(cx(x), cy(y), lab) for x, y, lab in self.points],
            boxes=[(cx(x0), cy(y0), cx(x1), cy(y1)) for x0, y0, x1, y1 in self.boxes],
        )

    def groups(self) -> list[PromptGroup]:
        """Split into SAM calls: the points are one prompt; each box is one prompt; one box takes the points."""
        pts = tuple(self.points)
        if len(self.boxes) == 1:
            return [PromptGroup(points=pts, box=self.boxes[0])]
        out = [PromptGroup(points=pts)] if pts else []
        out += [PromptGroup(box=b) for b in self.boxes]
        return out

    def to_dict(self) -> dict:
        return {"points": [list(p) for p in self.points], "boxes": [list(b) for b in self.boxes]}

    @classmethod
    def from_obj(cls, obj: Any, where: str) -> "Prompts":
        """From ``{"points": [[x, y, label], ...], "boxes": [[x0, y0, x1, y1], ...]}`` (both optional)."""
        if not isinstance(obj, Mapping):
            raise PromptError(f'{where}: expected {{"points": [...], "boxes": [...]}}, got {type(obj).__name__}')
        unknown = set(obj) - {"points", "boxes", "point", "box"}
        if unknown:
            raise PromptError(f"{where}: unknown keys {sorted(unknown)}; use 'points' and 'boxes'")
        points_in = obj.get("points", [])
        boxes_in = obj.get("boxes", [])
        if "point" in obj:
            points_in = list(points_in) + [obj["point"]]
        if "box" in obj:
            boxes_in = list(boxes_in) + [obj["box"]]
        if not isinstance(points_in, (list, tuple)) or not isinstance(boxes_in, (list, tuple)):
            raise PromptError(f"{where}: 'points' and 'boxes' must be lists")
        points = [_point_tuple(p, f"{where} points[{i}]") for i, p in enumerate(points_in)]
        boxes = [_box_tuple(b, f"{where} boxes[{i}]") for i, b in enumerate(boxes_in)]
        return cls(points=points, boxes=boxes)


def centre_point(height: int, width: int) -> Prompts:
    """The default prompt of ``eval``: one foreground point at the image centre."""
    return Prompts(points=[(width / 2.0, height / 2.0, 1)])


def load_prompt_file(path: str | os.PathLike) -> dict[str, Prompts]:
    """Read a prompt file (``.json`` or ``.csv``; see the module docstring) -> {image key: Prompts}.

    Raises:
        PromptError: the file cannot be read or is malformed (the message names the file,
            the entry and the expected format).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise PromptError(f"prompt file {str(p)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptError(f"cannot read prompt file {str(p)!r}: {exc}") from None
    if p.suffix.lower() == ".csv":
        return _load_csv(text, p)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PromptError(
            f"prompt file {str(p)!r} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
            'expected {"image.jpg": {"points": [[x, y, label], ...], "boxes": [[x0, y0, x1, y1], ...]}}'
        ) from None
    if not isinstance(data, Mapping):
        raise PromptError(
            f"prompt file {str(p)!r} must hold a JSON object mapping image names to prompts, "
            f"got a {type(data).__name__}"
        )
    return {str(k): Prompts.from_obj(v, f"prompt file {p.name}, entry {k!r}") for k, v in data.items()}


def _load_csv(text: str, p: Path) -> dict[str, Prompts]:
    reader = csv.DictReader(text.splitlines())
    cols = [c.strip() for c in (reader.fieldnames or [])]
    if "image" not in cols:
        raise PromptError(
            f"prompt file {str(p)!r}: CSV needs a header with an 'image' column and x,y[,label] "
            f"and/or x0,y0,x1,y1 columns; got columns {cols}"
        )
    out: dict[str, Prompts] = {}
    for n, row in enumerate(reader, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None}
        where = f"prompt file {p.name}, line {n}"
        name = row.get("image", "")
        if not name:
            raise PromptError(f"{where}: the 'image' column is empty")
        entry = out.setdefault(name, Prompts())
        has_point = bool(row.get("x")) or bool(row.get("y"))
        has_box = any(row.get(c) for c in ("x0", "y0", "x1", "y1"))
        if has_point:
            entry.points.append(_point_tuple([row.get("x"), row.get("y"), row.get("label") or 1], where))
        if has_box:
            entry.boxes.append(_box_tuple([row.get(c) for c in ("x0", "y0", "x1", "y1")], where))
        if not (has_point or has_box):
            raise PromptError(f"{where}: the row has neither a point (x,y) nor a box (x0,y0,x1,y1)")
    return out


def prompts_for_image(table: Mapping[str, Prompts], image_path: str | os.PathLike) -> Prompts | None:
    """The entry of a prompt file for ``image_path``: exact path, absolute path, then file name."""
    path = Path(image_path)
    candidates = [str(image_path), path.as_posix(), os.path.abspath(path), path.name]
    for key in candidates:
        if key in table:
            return table[key]
    resolved = path.resolve()
    for key, value in table.items():
        try:
            if Path(key).resolve() == resolved:
                return value
        except OSError:
            continue
    return None


def check_points(points: np.ndarray, height: int, width: int, name: str = "image") -> None:
    """Raise PromptError if any (x, y) of ``points`` [N, 2] lies outside ``[0, width] x [0, height]``."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    for i, (x, y) in enumerate(pts):
        if not (np.isfinite(x) and np.isfinite(y)):
            raise PromptError(f"point {i} ({x}, {y}) of {name} is not finite")
        if not (0.0 <= x <= width and 0.0 <= y <= height):
            raise PromptError(
                f"point ({x:g}, {y:g}) is outside {name} of size {width}x{height} (width x height); "
                f"points are (x, y) pixels with 0 <= x <= {width} and 0 <= y <= {height}"
            )


def check_box(box: Any, height: int, width: int, name: str = "image") -> np.ndarray:
    """Check one box (x0, y0, x1, y1) against the image; return it clipped to the image as float array [4].

    A malformed box (not 4 finite numbers, x1 < x0 or y1 < y0) or one entirely outside
    the image raises PromptError; a box that sticks out of the image is clipped, with a
    logged warning (boxes from detectors often overshoot the border by a pixel or two).
    """
    arr = np.asarray(box, dtype=np.float64)
    if arr.size != 4:
        raise PromptError(f"box {box!r} for {name} must be 4 numbers x0,y0,x1,y1 (shape [4]), got shape {arr.shape}")
    x0, y0, x1, y1 = _box_tuple(arr.reshape(4).tolist(), f"box for {name}")
    if x0 >= width or y0 >= height or x1 <= 0 or y1 <= 0:
        raise PromptError(
            f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) lies entirely outside {name} of size {width}x{height} "
            "(width x height); boxes are x0,y0,x1,y1 pixels"
        )
    clipped = np.array([max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height))])
    if not np.array_equal(clipped, np.array([x0, y0, x1, y1])):
        log.warning(
            "box (%g, %g, %g, %g) extends past %s of size %dx%d; clipped to (%g, %g, %g, %g)",
            x0, y0, x1, y1, name, width, height, *clipped,
        )
    return clipped


#: Magnitude of the logits :func:`mask_to_logits` gives well inside (+) and well outside (-) a mask.
MASK_LOGIT = 10.0


def mask_to_logits(
    mask: Any, image_size: int = 1024, low_res_side: int = 256, logit: float = MASK_LOGIT
) -> np.ndarray:
    """A binary mask at the original image's resolution -> the low-res mask logits SAM takes as ``mask_input``.

    SAM's ``mask_input`` is low-res logits [1, 256, 256] in its input frame: the image resized so its longer
    side is ``image_size`` (1024), padded at the bottom and right to a square, seen at ``low_res_side`` (256)
    pixels a side. This puts ``mask`` in that frame (bilinear resize with antialiasing, zero padding, then the
    mean of each low-res pixel's ``image_size / low_res_side`` squared block) and maps the covered fraction f to
    ``logit * (2 f - 1)``: +logit inside, -logit outside and in the padding, 0 on the mask's edge.

    Args:
        mask: [H, W] array, bool / integer / float; nonzero (> 0) is the object (0/255 PNGs work as they are).
        image_size: the model's input side (``sam.image_encoder.img_size``).
        low_res_side: the side of ``mask_input`` (4 x the image embedding's side).
        logit: magnitude of the logits away from the edge (> 0).

    Returns:
        float32 [1, low_res_side, low_res_side], for ``SamPredictor.predict(mask_input=...)``.

    Raises:
        ValueError: ``mask`` not 2-D, empty, not numeric, or sizes that do not divide.
    """
    import torch
    import torch.nn.functional as F

    arr = np.asarray(mask)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"mask must be a 2-D [H, W] array at the image's resolution, got shape {arr.shape}")
    if not (arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.number)):
        raise ValueError(f"mask must be bool or numeric (nonzero = the object), got dtype {arr.dtype}")
    if low_res_side < 1 or image_size % low_res_side:
        raise ValueError(f"image_size ({image_size}) must be a multiple of low_res_side ({low_res_side})")
    if not logit > 0:
        raise ValueError(f"logit must be > 0, got {logit}")
    from .masks.region import _preprocess_shape  # SAM's ResizeLongestSide geometry

    h, w = arr.shape
    new_h, new_w = _preprocess_shape(h, w, image_size)
    m = torch.from_numpy(np.ascontiguousarray(arr > 0, dtype=np.float32))[None, None]
    m = F.interpolate(m, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=new_h < h)
    m = F.pad(m, (0, image_size - new_w, 0, image_size - new_h))
    frac = F.avg_pool2d(m, image_size // low_res_side).clamp_(0.0, 1.0)
    return (logit * (2.0 * frac[0] - 1.0)).numpy().astype(np.float32)
