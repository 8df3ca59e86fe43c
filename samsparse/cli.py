"""The ``samsparse`` command line.

::

    samsparse segment photo.jpg --point 500,375 -o out/          # masks for prompts
    samsparse amg photos/ -o out/                                # automatic masks
    samsparse patch --checkpoint sam_vit_b.pth --mask hierarchical:density=0.25 -o vit_b_sparse.pth
    samsparse download vit_b                                     # into $SAMSPARSE_HOME or ~/.cache/samsparse
    samsparse backends                                           # what runs here, and why not
    samsparse masks hierarchical:density=0.25 -o mask.png        # draw a recipe
    samsparse bench                                              # a quick speed table
    samsparse eval photos/ --mask hierarchical:density=0.25      # dense vs sparse on your images

Exit status: 0 all inputs done (or already done), 1 some inputs failed (each is
reported on one line and the rest are still processed), 2 usage error (bad options,
unknown recipe/backend, absent device, unusable checkpoint: things that would fail
every input), 130 interrupted. Options default to None and only what the user sets
is passed on, so the library's defaults apply otherwise.

Per-image outputs are written atomically; an image whose outputs are complete (its
``masks.json`` / ``metadata.csv`` / ``<name>.json`` is written last) is skipped on a
re-run unless ``--overwrite``, so an interrupted run is finished by running the same
command again.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["main", "build_parser", "UsageError"]

log = logging.getLogger("samsparse.cli")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

#: Images with more pixels are downscaled before processing (``--max-pixels`` changes it;
#: 0 keeps full size). ``amg`` upsamples points_per_batch x 3 float masks to full size, so
#: its limit is lower.
DEFAULT_MAX_PIXELS = {"segment": 40_000_000, "amg": 2048 * 2048, "eval": 40_000_000}

AMG_METADATA_COLUMNS = (
    "id", "area", "bbox_x0", "bbox_y0", "bbox_w", "bbox_h", "point_input_x", "point_input_y",
    "predicted_iou", "stability_score", "crop_box_x0", "crop_box_y0", "crop_box_w", "crop_box_h",
)
SEGMENT_MARKER = "masks.json"
AMG_MARKER = "metadata.csv"


class UsageError(Exception):
    """Something that makes every input fail: reported once, exit status 2."""


# --------------------------------------------------------------------------------------
# Logging and output
# --------------------------------------------------------------------------------------


class _Formatter(logging.Formatter):
    def __init__(self, verbose: bool) -> None:
        super().__init__()
        self.verbose = verbose

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        prefix = "samsparse"
        if self.verbose and record.name != log.name:
            prefix += f" [{record.name}]"
        if record.levelno >= logging.WARNING:
            prefix += f": {record.levelname.lower()}"
        text = f"{prefix}: {msg}"
        if record.exc_info and self.verbose:
            text += "\n" + self.formatException(record.exc_info)
        return text


class _TqdmHandler(logging.Handler):
    """Writes log lines through tqdm so they do not break a progress bar (stderr)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm.auto import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001
            self.handleError(record)


def _setup_logging(verbose: bool, quiet: bool) -> Callable[[], None]:
    """Send samsparse's log records to stderr (one line each); returns a function that undoes it."""
    pkg = logging.getLogger("samsparse")
    saved = (pkg.level, pkg.propagate, log.level)
    handler = _TqdmHandler()
    handler.setFormatter(_Formatter(verbose))
    pkg.addHandler(handler)
    pkg.propagate = False
    if verbose:
        pkg.setLevel(logging.DEBUG)
        log.setLevel(logging.DEBUG)
    elif quiet:
        pkg.setLevel(logging.WARNING)
        log.setLevel(logging.WARNING)
    else:
        pkg.setLevel(logging.WARNING)
        log.setLevel(logging.INFO)

    def restore() -> None:
        pkg.removeHandler(handler)
        pkg.setLevel(saved[0])
        pkg.propagate = saved[1]
        log.setLevel(saved[2])

    return restore


def _progress(args: argparse.Namespace) -> bool:
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


def _table(rows: Sequence[dict], columns: Sequence[str] | None = None, headers: dict | None = None) -> str:
    """A plain-text table (for stdout)."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())
    headers = headers or {}

    def cell(v: Any) -> str:
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    body = [[cell(r.get(c)) for c in columns] for r in rows]
    head = [headers.get(c, c) for c in columns]
    widths = [max(len(head[i]), *(len(b[i]) for b in body)) for i in range(len(columns))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(b, widths)).rstrip() for b in body]
    return "\n".join(lines)


def _user_set(args: argparse.Namespace, mapping: dict[str, str]) -> dict:
    """{library kwarg: value} for the options the user set (argparse dest -> kwarg)."""
    return {kw: getattr(args, dest) for dest, kw in mapping.items() if getattr(args, dest, None) is not None}


def _error_line(path: Any, exc: BaseException) -> str:
    msg = str(exc) or type(exc).__name__
    return msg if msg.startswith(str(path)) else f"{path}: {msg}"


def _check_single_output(path: Path, overwrite: bool | None) -> None:
    if path.exists() and not overwrite:
        raise UsageError(f"{path} already exists; pass --overwrite to replace it, or choose another -o")


# --------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------


def _parse_grid(text: str) -> tuple[int, int]:
    parts = text.lower().replace("*", "x").split("x")
    try:
        vals = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"grid {text!r} must be like 64x64 or 64") from None
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2 or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"grid {text!r} must be like 64x64 or 64")
    return (vals[0], vals[1])


def _int_list(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be comma-separated integers, e.g. 1,2,4") from None
    if not vals:
        raise argparse.ArgumentTypeError("give at least one integer")
    return vals


def _blocks(text: str) -> Any:
    if text in ("global", "all", "windowed"):
        return text
    return _int_list(text)


def _shard(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise argparse.ArgumentTypeError(f"expected K/N with 0 <= K < N (e.g. 0/2), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def _point(text: str):
    from .prompts import PromptError, parse_point

    try:
        return parse_point(text)
    except PromptError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _box(text: str):
    from .prompts import PromptError, parse_box

    try:
        return parse_box(text)
    except PromptError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class _Parser(argparse.ArgumentParser):
    """ArgumentParser that takes "-20,0,400,300" (a box/point with a negative first number) as a value."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-\.?\d[\d.,eE+-]*$")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser with all subcommands."""
    general = argparse.ArgumentParser(add_help=False)
    general.add_argument("-v", "--verbose", action="store_true", default=None, help="debug logging and tracebacks")
    general.add_argument("-q", "--quiet", action="store_true", default=None, help="only warnings and errors; no progress bar")

    model = argparse.ArgumentParser(add_help=False)
    g = model.add_argument_group("model")
    g.add_argument("--model", default=None, help="official model: vit_b (default), vit_l, vit_h; downloaded on first use")
    g.add_argument("--checkpoint", default=None, help="a SAM checkpoint file (original or patched by samsparse)")
    g.add_argument("--mask", default=None, help='mask recipe, e.g. "hierarchical:density=0.25" (default: dense, or the patched checkpoint\'s)')
    g.add_argument("--backend", default=None, help="attention backend (default auto; see `samsparse backends`)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:N, mps (default: cuda if available, else cpu)")
    g.add_argument("--dtype", default=None, help="encoder dtype: fp32 (default), bf16, fp16")

    out = argparse.ArgumentParser(add_help=False)
    out.add_argument("--overwrite", action="store_true", default=None, help="replace existing outputs (default: keep them, skip done images)")

    prompts = argparse.ArgumentParser(add_help=False)
    p = prompts.add_argument_group("prompts (x, y in pixels of the original image)")
    p.add_argument("--point", action="append", type=_point, default=None, metavar="X,Y[,LABEL]", help="a point; label 1 foreground (default), 0 background; repeatable")
    p.add_argument("--box", action="append", type=_box, default=None, metavar="X0,Y0,X1,Y1", help="a box; repeatable (one prompt per box)")
    p.add_argument("--prompts", default=None, metavar="FILE", help='per-image prompts, JSON {"img.jpg": {"points": [[x, y, label]], "boxes": [[x0, y0, x1, y1]]}} or CSV')

    images = argparse.ArgumentParser(add_help=False)
    images.add_argument("images", nargs="+", metavar="IMAGES", help="image files, directories or glob patterns")
    images.add_argument("--max-pixels", type=int, default=None,
                        help="downscale images with more pixels (default 40000000; amg 4194304; 0 = never)")

    shard = argparse.ArgumentParser(add_help=False)
    shard.add_argument("--shard", type=_shard, default=None, metavar="K/N",
                       help="process only images K, K+N, K+2N, ... of the inputs, in order (K from 0): run N commands "
                            "side by side, one per GPU (e.g. --shard 0/2 --device cuda:0 and --shard 1/2 --device cuda:1) "
                            "into the same output directory")

    parser = _Parser(
        prog="samsparse",
        description="Segment Anything with a block-sparse image encoder.",
        epilog="Exit status: 0 ok, 1 some inputs failed, 2 usage error. Run `samsparse CMD -h` for each command.",
    )
    parser.add_argument("--version", action="version", version=f"samsparse {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    s = sub.add_parser("segment", parents=[general, model, out, prompts, images, shard], help="masks for point/box prompts -> PNG, overlay, COCO RLE JSON")
    s.add_argument("-o", "--output", required=True, help="output directory (one folder per image)")
    s.add_argument("--multimask", action="store_true", default=None, help="write SAM's 3 masks per prompt (default: the best one)")
    s.add_argument("--no-overlay", action="store_true", default=None, help="do not write overlay.png")
    s.set_defaults(func=cmd_segment)

    a = sub.add_parser("amg", parents=[general, model, out, images, shard], help="automatic mask generation")
    a.add_argument("-o", "--output", required=True, help="output directory")
    a.add_argument("--output-mode", choices=["binary_mask", "coco_rle", "uncompressed_rle"], default=None,
                   help="binary_mask (default): a folder of PNGs + metadata.csv per image; coco_rle/uncompressed_rle: one JSON per image")
    for flag, typ, hlp in (
        ("--points-per-side", int, "points sampled along one side (default 32)"),
        ("--points-per-batch", int, "points run together (default 64; lower it to save memory)"),
        ("--pred-iou-thresh", float, "keep masks with predicted IoU above this (default 0.88)"),
        ("--stability-score-thresh", float, "keep masks with stability above this (default 0.95)"),
        ("--stability-score-offset", float, "stability score offset (default 1.0)"),
        ("--box-nms-thresh", float, "box NMS IoU within a crop (default 0.7)"),
        ("--crop-n-layers", int, "extra crop layers (default 0)"),
        ("--crop-nms-thresh", float, "box NMS IoU between crops (default 0.7)"),
        ("--crop-overlap-ratio", float, "crop overlap (default 512/1500)"),
        ("--crop-n-points-downscale-factor", int, "points per side shrink per crop layer (default 1)"),
        ("--min-mask-region-area", int, "remove holes/islands smaller than this (default 0)"),
    ):
        a.add_argument(flag, type=typ, default=None, help=hlp)
    a.set_defaults(func=cmd_amg)

    pa = sub.add_parser("patch", parents=[general, model, out], help="write a patched checkpoint (weights + samsparse config)")
    pa.add_argument("-o", "--output", required=True, help="the patched checkpoint to write")
    pa.add_argument("--blocks", type=_blocks, default=None, help="blocks to patch: global (default), all, windowed, or 2,5,8")
    pa.set_defaults(func=cmd_patch)

    d = sub.add_parser("download", parents=[general], help="download an official checkpoint (verified)")
    d.add_argument("name", help="vit_b, vit_l or vit_h (or any name with --url)")
    d.add_argument("--url", default=None, help="download from this http(s) URL instead (a mirror)")
    d.add_argument("--sha256", default=None, help="expected SHA-256 (for --url files not in the registry)")
    d.add_argument("--dir", default=None, help="target directory (default $SAMSPARSE_HOME or ~/.cache/samsparse)")
    d.add_argument("--force", action="store_true", default=None, help="download again even if a verified file exists")
    d.set_defaults(func=cmd_download)

    b = sub.add_parser("backends", parents=[general], help="list attention backends: available here, and why not")
    b.add_argument("--json", action="store_true", default=None, help="print JSON instead of a table")
    b.set_defaults(func=cmd_backends)

    m = sub.add_parser("masks", parents=[general, out], help="render a mask recipe as a picture (one panel per head)")
    m.add_argument("recipe", help='mask recipe, e.g. "hierarchical:density=0.25"')
    m.add_argument("-o", "--output", required=True, help="PNG to write")
    m.add_argument("--grid", type=_parse_grid, default=None, help="token grid HxW (default 64x64, a 1024 px image)")
    m.add_argument("--heads", type=int, default=None, help="heads (default 12, vit_b)")
    m.set_defaults(func=cmd_masks)

    be = sub.add_parser("bench", parents=[general, model, out], help="quick encoder speed table for this device")
    be.add_argument("--batch-sizes", type=_int_list, default=None, help="e.g. 1,4")
    be.add_argument("--recipes", nargs="+", default=None, help='recipes to time (default: dense and "hierarchical:density=0.25")')
    be.add_argument("--image-size", type=int, default=None, help="input side in pixels (default: the model's, 1024)")
    be.add_argument("--compile", choices=["default", "reduce-overhead"], default=None,
                    help="also time each variant compiled: samsparse.optimize(compile=...) "
                         "(reduce-overhead: CUDA graphs); the first-call column shows the compile time")
    be.add_argument("--gelu", choices=["exact", "tanh"], default=None,
                    help="tanh: also time each recipe with the opt-in approximate GELU (optimize(gelu='tanh'))")
    be.add_argument("-o", "--output", default=None, help="also write the table as CSV")
    be.set_defaults(func=cmd_bench)

    e = sub.add_parser("eval", parents=[general, model, out, prompts, images], help="dense vs sparse on your images: mask IoU, embedding similarity, time")
    e.add_argument("-o", "--output", default=None, help="write the per-image rows as CSV")
    e.set_defaults(func=cmd_eval)
    return parser


def _version() -> str:
    try:
        from . import __version__

        return __version__
    except ImportError:  # pragma: no cover
        return "unknown"


# --------------------------------------------------------------------------------------
# Shared steps
# --------------------------------------------------------------------------------------


def _check_model_options(args: argparse.Namespace) -> None:
    """Fail fast (exit 2) on options that would fail every image."""
    from .predictor import DeviceError, resolve_device, resolve_dtype

    try:
        resolve_device(getattr(args, "device", None))
    except DeviceError as exc:
        raise UsageError(str(exc)) from None
    try:
        resolve_dtype(getattr(args, "dtype", None))
    except ValueError as exc:
        raise UsageError(f"--dtype: {exc}") from None
    backend = getattr(args, "backend", None)
    if backend is not None and backend != "auto":
        from .backends import registry

        try:
            chosen = registry.get(backend)
        except ValueError as exc:
            raise UsageError(f"--backend: {exc}") from None
        reason = chosen.is_available()
        if reason:
            raise UsageError(f"--backend {backend}: not available here ({reason}); use --backend auto, see `samsparse backends`")
    mask = getattr(args, "mask", None)
    if mask is not None and mask.strip() not in ("", "dense"):
        try:
            from .masks import parse_recipe
        except ImportError:
            raise UsageError("mask recipes are not available in this samsparse build; use --mask dense") from None
        try:
            parse_recipe(mask)
        except (ValueError, TypeError) as exc:
            raise UsageError(f"--mask: {exc}") from None


def _model_source(args: argparse.Namespace) -> tuple[str, str | None]:
    """(checkpoint path or official name, expected model type or None)."""
    if args.checkpoint is not None:
        return args.checkpoint, args.model
    return (args.model or "vit_b"), None


def _load_failure(source: str, exc: BaseException) -> UsageError:
    from .checkpoints import ChecksumError, DownloadError

    if isinstance(exc, (DownloadError, ChecksumError)):
        return UsageError(f"cannot get checkpoint {source!r}: {exc}")
    if isinstance(exc, (FileNotFoundError, IsADirectoryError)):
        return UsageError(f"--checkpoint: {exc}")
    return UsageError(f"cannot use checkpoint {source!r}: {exc}")


_LOAD_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, OSError, RuntimeError, KeyError)


def _build_predictor(args: argparse.Namespace):
    from .predictor import build_predictor

    _check_model_options(args)
    source, model_type = _model_source(args)
    kwargs = _user_set(args, {"mask": "mask", "backend": "backend", "device": "device", "dtype": "dtype"})
    try:
        return build_predictor(source, model_type=model_type, progress=_progress(args), **kwargs)
    except _LOAD_ERRORS as exc:
        raise _load_failure(source, exc) from exc


def _collect(args: argparse.Namespace):
    from .io import collect_images

    paths, problems = collect_images(args.images)
    for msg in problems:
        log.error("%s", msg)
    if not paths:
        raise UsageError("no input images found (give image files, directories or glob patterns)")
    return paths, len(problems)


def _load_prompt_table(args: argparse.Namespace):
    from .prompts import PromptError, Prompts, load_prompt_file

    table = {}
    if args.prompts is not None:
        try:
            table = load_prompt_file(args.prompts)
        except PromptError as exc:
            raise UsageError(f"--prompts: {exc}") from None
    base = Prompts(points=list(args.point or []), boxes=list(args.box or []))
    return base, table


def _max_pixels(args: argparse.Namespace, task: str) -> int | None:
    value = args.max_pixels if args.max_pixels is not None else DEFAULT_MAX_PIXELS[task]
    if value < 0:
        raise UsageError("--max-pixels must be >= 0 (0 = never downscale)")
    return value or None


def _run_images(
    args: argparse.Namespace,
    task: str,
    paths: list[Path],
    process: Callable[[Path, str], None],
    is_done: Callable[[Path, str], bool],
    failed_inputs: int = 0,
) -> int:
    """The per-image loop: skip done images, report each failure on one line, go on."""
    from tqdm.auto import tqdm

    from .io import output_names

    names = output_names(paths)  # from every input, so that the shards of one run agree on each name
    shard = getattr(args, "shard", None)
    if shard is not None:
        k, n = shard
        paths = paths[k::n]
        log.info("shard %d/%d: %d of %d image(s)", k, n, len(paths), len(names))
    done = skipped = 0
    failed = failed_inputs
    t0 = time.perf_counter()
    bar = tqdm(paths, desc=task, unit="img", disable=not _progress(args), file=sys.stderr)
    for path in bar:
        name = names[path]
        try:
            if not args.overwrite and is_done(path, name):
                skipped += 1
                log.info("%s: already done, outputs kept (--overwrite to redo)", path)
                continue
            process(path, name)
            done += 1
        except KeyboardInterrupt:
            raise
        except MemoryError as exc:
            failed += 1
            log.error("%s", _error_line(path, RuntimeError(f"out of memory ({exc}); lower --max-pixels")), exc_info=args.verbose)
        except Exception as exc:  # noqa: BLE001 - one bad input must not stop the batch
            failed += 1
            if _is_oom(exc):
                exc = RuntimeError("out of GPU memory; lower --max-pixels (or --points-per-batch for amg), or use --dtype bf16")
            log.error("%s", _error_line(path, exc), exc_info=args.verbose)
    elapsed = time.perf_counter() - t0
    rate = f", {done / elapsed:.2f} img/s" if done and elapsed > 0 else ""
    part = f" (shard {shard[0]}/{shard[1]})" if shard is not None else ""
    summary = f"{task}{part}: {done} done, {skipped} skipped (already done), {failed} failed{rate} -> {args.output}"
    if not args.quiet:
        print(summary, flush=True)
    return EXIT_FAILED if failed else EXIT_OK


def _is_oom(exc: BaseException) -> bool:
    import torch

    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom is not None and isinstance(exc, oom)) or "out of memory" in str(exc).lower()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------------------
# segment
# --------------------------------------------------------------------------------------


def _predict_groups(predictor, groups, multimask: bool):
    """[(group, masks [C, H, W] bool, scores [C])] for each prompt; boxes-only prompts batched."""
    import numpy as np

    results: list[Any] = [None] * len(groups)
    box_only = [i for i, g in enumerate(groups) if g.box is not None and not g.points]
    if len(box_only) > 1:
        boxes = np.array([groups[i].box for i in box_only], dtype=np.float64)
        masks, scores, _ = predictor.predict_batch(boxes=boxes, multimask_output=multimask)
        for j, i in enumerate(box_only):
            results[i] = (groups[i], masks[j], scores[j])
    for i, g in enumerate(groups):
        if results[i] is not None:
            continue
        coords = labels = None
        if g.points:
            coords = np.array([[x, y] for x, y, _ in g.points], dtype=np.float64)
            labels = np.array([lab for _, _, lab in g.points], dtype=np.int64)
        box = np.array(g.box, dtype=np.float64) if g.box is not None else None
        mm = multimask or g.is_single_point
        masks, scores, _ = predictor.predict(point_coords=coords, point_labels=labels, box=box, multimask_output=mm)
        if mm and not multimask:  # a lone click: SAM's advice is multimask output + the best mask
            k = int(np.argmax(scores))
            masks, scores = masks[k : k + 1], scores[k : k + 1]
        results[i] = (g, masks, scores)
    return results


def _segment_settings(args: argparse.Namespace, source: str, predictor) -> dict:
    from .patch import patch_config

    cfg = patch_config(predictor.model)
    return {
        "model": str(source),
        "mask": cfg.mask if cfg else None,
        "multimask": bool(args.multimask),
        "max_pixels": args.max_pixels,
    }


def cmd_segment(args: argparse.Namespace) -> int:
    import numpy as np

    from . import io as sio
    from .prompts import PromptError, Prompts, check_box, check_points, prompts_for_image

    base, table = _load_prompt_table(args)
    if not base and not table:
        raise UsageError("no prompts: give --point X,Y, --box X0,Y0,X1,Y1 or --prompts FILE (or use `samsparse amg` for automatic masks)")
    paths, bad_inputs = _collect(args)
    max_pixels = _max_pixels(args, "segment")
    predictor = _build_predictor(args)
    source, _ = _model_source(args)
    settings = _segment_settings(args, source, predictor)
    out_root = Path(args.output)

    def is_done(path: Path, name: str) -> bool:
        data = _read_json(out_root / name / SEGMENT_MARKER)
        if not isinstance(data, dict):
            return False
        files = [a.get("mask_file") for a in data.get("annotations", [])] + ([data["overlay"]] if data.get("overlay") else [])
        if not all(f and (out_root / name / f).is_file() for f in files):
            return False
        prompts = _prompts_of(path)
        if data.get("settings") != settings or data.get("prompts") != (prompts.to_dict() if prompts else None):
            log.warning("%s: outputs in %s come from a run with other settings or prompts; kept (--overwrite to redo)", path, out_root / name)
        return True

    def _prompts_of(path: Path):
        extra = prompts_for_image(table, path) if table else None
        return base + extra if extra else base

    def process(path: Path, name: str) -> None:
        prompts = _prompts_of(path)
        if not prompts:
            raise PromptError(f"no prompts for this image: add it to {args.prompts} (keys are file names or paths) or give --point/--box")
        img = sio.read_image(path, max_pixels=max_pixels)
        h0, w0 = img.original_size
        h, w = img.array.shape[:2]
        # check every prompt (in original pixels) before any model work or output
        if prompts.points:
            check_points(np.array([[x, y] for x, y, _ in prompts.points]), h0, w0, "the image")
        clipped = [tuple(check_box(b, h0, w0, "the image").tolist()) for b in prompts.boxes]
        work = Prompts(points=list(prompts.points), boxes=clipped).scaled(w / w0, h / h0).clamped(h, w)
        predictor.set_image(img.array)
        results = _predict_groups(predictor, work.groups(), bool(args.multimask))

        out = out_root / name
        out.mkdir(parents=True, exist_ok=True)
        sio.remove_stale_tmp(out)
        marker = out / SEGMENT_MARKER
        if marker.exists():
            marker.unlink()  # not done until the new marker is written
        annotations, all_masks = [], []
        for p_idx, (group, masks, scores) in enumerate(results):
            for k in range(masks.shape[0]):
                m = np.asarray(masks[k], dtype=bool)
                mask_file = f"mask_{len(annotations):03d}.png"
                sio.write_mask_png(out / mask_file, m)
                annotations.append({
                    "id": len(annotations),
                    "prompt_index": p_idx,
                    "prompt": group.to_dict(),
                    "multimask_index": k if masks.shape[0] > 1 else None,
                    "score": float(scores[k]),
                    "area": int(m.sum()),
                    "bbox": sio.mask_to_bbox(m),
                    "mask_file": mask_file,
                    "segmentation": sio.mask_to_rle(m),
                })
                all_masks.append(m)
        overlay = None
        if not args.no_overlay:
            overlay = "overlay.png"
            sio.write_image(out / overlay, sio.overlay_masks(img.array, all_masks, work.points, work.boxes))
        keep = {a["mask_file"] for a in annotations}
        for f in out.glob("mask_[0-9][0-9][0-9]*.png"):  # masks of an earlier or interrupted run
            if f.name not in keep:
                f.unlink()
        sio.write_json(marker, {
            "image": str(path),
            "height": int(h),
            "width": int(w),
            "original_height": int(img.original_size[0]),
            "original_width": int(img.original_size[1]),
            "scale": img.scale,
            "prompts": prompts.to_dict(),
            "settings": settings,
            "overlay": overlay,
            "annotations": annotations,
        })
        log.info("%s: %d mask(s) -> %s", path, len(annotations), out)

    return _run_images(args, "segment", paths, process, is_done, bad_inputs)


# --------------------------------------------------------------------------------------
# amg
# --------------------------------------------------------------------------------------

_AMG_OPTIONS = {
    "points_per_side": "points_per_side",
    "points_per_batch": "points_per_batch",
    "pred_iou_thresh": "pred_iou_thresh",
    "stability_score_thresh": "stability_score_thresh",
    "stability_score_offset": "stability_score_offset",
    "box_nms_thresh": "box_nms_thresh",
    "crop_n_layers": "crop_n_layers",
    "crop_nms_thresh": "crop_nms_thresh",
    "crop_overlap_ratio": "crop_overlap_ratio",
    "crop_n_points_downscale_factor": "crop_n_points_downscale_factor",
    "min_mask_region_area": "min_mask_region_area",
    "output_mode": "output_mode",
}


def cmd_amg(args: argparse.Namespace) -> int:
    from . import io as sio
    from .predictor import SparseAutomaticMaskGenerator

    paths, bad_inputs = _collect(args)
    max_pixels = _max_pixels(args, "amg")
    amg_kwargs = _user_set(args, _AMG_OPTIONS)
    mode = amg_kwargs.get("output_mode", "binary_mask")
    predictor = _build_predictor(args)
    try:
        generator = SparseAutomaticMaskGenerator(predictor, **amg_kwargs)
    except (ValueError, ImportError) as exc:
        raise UsageError(f"amg: {exc}") from None
    out_root = Path(args.output)

    def is_done(path: Path, name: str) -> bool:
        if mode != "binary_mask":
            return isinstance(_read_json(out_root / f"{name}.json"), list)
        meta = out_root / name / AMG_MARKER
        if not meta.is_file():
            return False
        import csv

        with open(meta, newline="", encoding="utf-8") as f:
            ids = [row.get("id") for row in csv.DictReader(f)]
        return all((out_root / name / f"{i}.png").is_file() for i in ids)

    def process(path: Path, name: str) -> None:
        img = sio.read_image(path, max_pixels=max_pixels)
        records = generator.generate(img.array)
        if mode != "binary_mask":
            out_root.mkdir(parents=True, exist_ok=True)
            sio.remove_stale_tmp(out_root)
            sio.write_json(out_root / f"{name}.json", records, indent=None)
            log.info("%s: %d mask(s) -> %s", path, len(records), out_root / f"{name}.json")
            return
        out = out_root / name
        out.mkdir(parents=True, exist_ok=True)
        sio.remove_stale_tmp(out)
        marker = out / AMG_MARKER
        if marker.exists():
            marker.unlink()
        rows = []
        for i, rec in enumerate(records):
            sio.write_mask_png(out / f"{i}.png", rec["segmentation"])
            rows.append([str(i), str(rec["area"]), *[str(x) for x in rec["bbox"]], *[str(x) for x in rec["point_coords"][0]],
                         str(rec["predicted_iou"]), str(rec["stability_score"]), *[str(x) for x in rec["crop_box"]]])
        i = len(records)
        while (out / f"{i}.png").is_file():  # masks of an earlier run with more masks
            (out / f"{i}.png").unlink()
            i += 1
        sio.write_csv(marker, rows, AMG_METADATA_COLUMNS)
        log.info("%s: %d mask(s) -> %s", path, len(records), out)

    return _run_images(args, "amg", paths, process, is_done, bad_inputs)


# --------------------------------------------------------------------------------------
# patch, download, backends, masks, bench
# --------------------------------------------------------------------------------------


def cmd_patch(args: argparse.Namespace) -> int:
    from .patch import patch_config
    from .predictor import load_model, resolve_checkpoint

    if args.checkpoint is None and args.model is None:
        raise UsageError("patch needs --checkpoint IN (an original or patched checkpoint) or --model NAME")
    out = Path(args.output)
    _check_single_output(out, args.overwrite)
    _check_model_options(args)
    source, model_type = _model_source(args)
    try:
        path = resolve_checkpoint(source, progress=_progress(args))
        sam = load_model(path, mask=args.mask, backend=args.backend, blocks=args.blocks, model_type=model_type)
    except _LOAD_ERRORS as exc:
        raise _load_failure(source, exc) from exc
    try:
        from .checkpoints.patched import save
    except ImportError:
        save = None
    if save is not None:
        save(sam, out)
    else:  # fallback while samsparse.save is not available
        from .checkpoints import infer_model_type, save_checkpoint

        cfg = patch_config(sam).to_dict()
        cfg["model_type"] = infer_model_type(sam.state_dict())
        save_checkpoint(out, sam.state_dict(), cfg)
    cfg = patch_config(sam)
    if not args.quiet:
        print(f"wrote {out} (mask={cfg.mask or 'dense'}, backend={cfg.backend}, blocks={cfg.blocks})")
    return EXIT_OK


def cmd_download(args: argparse.Namespace) -> int:
    import dataclasses
    from urllib.parse import urlparse

    from .checkpoints import CheckpointInfo, ChecksumError, DownloadError, download, get_checkpoint_info

    try:
        info = get_checkpoint_info(args.name)
        if args.sha256 is not None:
            info = dataclasses.replace(info, sha256=args.sha256, size=None)
    except ValueError as exc:
        if args.url is None:
            raise UsageError(str(exc)) from None
        filename = Path(urlparse(args.url).path).name or f"{args.name}.pth"
        try:
            info = CheckpointInfo(name=args.name, model_type="custom", url=args.url, filename=filename, sha256=args.sha256, size=None)
        except ValueError as exc2:
            raise UsageError(f"--sha256: {exc2}") from None
    try:
        path = download(info, dest_dir=args.dir, url=args.url, progress=_progress(args), force=bool(args.force))
    except ValueError as exc:
        if isinstance(exc, ChecksumError):
            log.error("%s", exc)
            return EXIT_FAILED
        raise UsageError(str(exc)) from None
    except DownloadError as exc:
        log.error("%s", exc)
        return EXIT_FAILED
    print(path)
    return EXIT_OK


def cmd_backends(args: argparse.Namespace) -> int:
    from .backends import backend_table

    rows = backend_table()
    if args.json:
        print(json.dumps(rows, indent=1))
        return EXIT_OK
    headers = {"why_not": "why not", "head_dims": "head dims"}
    print(_table(rows, ["name", "available", "why_not", "devices", "dtypes", "head_dims"], headers))
    return EXIT_OK


def cmd_masks(args: argparse.Namespace) -> int:
    out = Path(args.output)
    _check_single_output(out, args.overwrite)
    try:
        from .masks import parse_recipe, render_mask
    except ImportError:
        raise UsageError("mask recipes / rendering are not available in this samsparse build") from None
    try:
        recipe = parse_recipe(args.recipe)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"recipe: {exc}") from None
    grid = args.grid or (64, 64)
    heads = args.heads if args.heads is not None else 12
    if heads < 1:
        raise UsageError("--heads must be >= 1")
    if recipe.is_dynamic:
        raise UsageError(f"{args.recipe!r} is chosen at run time from each image's queries and keys; it has no fixed picture")
    try:
        mask = recipe.build(grid=grid, num_heads=heads)
        if mask is None:  # dense: every block read
            from .masks import BlockMask

            mask = BlockMask.full(grid[0] * grid[1]).expand(1, heads)
        picture = render_mask(mask)
    except (ValueError, TypeError, NotImplementedError) as exc:
        raise UsageError(f"cannot build {args.recipe!r} for a {grid[0]}x{grid[1]} grid with {heads} heads: {exc}") from None
    import numpy as np

    from . import io as sio

    picture = np.asarray(picture)
    if picture.dtype != np.uint8:
        picture = sio.to_uint8(picture)[0]
    sio.write_image(out, picture)
    density = mask.density()
    if not args.quiet:
        print(f"{args.recipe}: grid {grid[0]}x{grid[1]}, {heads} heads, density {density:.3f} -> {out}")
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    try:
        from . import benchmark
    except ImportError as exc:
        if getattr(exc, "name", "") in ("samsparse.benchmark", None) or "benchmark" in str(exc):
            raise UsageError("the benchmark module (samsparse.benchmark) is not part of this installation; "
                             "update samsparse, or run scripts/bench_encoder.py from a source checkout") from None
        raise
    if args.output is not None:
        _check_single_output(Path(args.output), args.overwrite)
    _check_model_options(args)
    kwargs = _user_set(args, {"model": "model_type", "checkpoint": "checkpoint", "device": "device", "dtype": "dtype",
                              "batch_sizes": "batch_sizes", "recipes": "recipes", "image_size": "image_size",
                              "compile": "compile", "gelu": "gelu"})
    if "batch_sizes" in kwargs:
        kwargs["batch_sizes"] = tuple(kwargs["batch_sizes"])
    if "recipes" in kwargs:
        kwargs["recipes"] = tuple(kwargs["recipes"])
    if args.mask is not None and "recipes" not in kwargs:
        kwargs["recipes"] = ("dense", args.mask)
    try:
        rows = benchmark.quick_table(**kwargs)
    except _LOAD_ERRORS as exc:
        raise UsageError(f"bench: {exc}") from exc
    print(_table(rows))
    if args.output is not None and rows:
        from .io import write_csv

        write_csv(args.output, rows, list(rows[0].keys()))
    return EXIT_OK


# --------------------------------------------------------------------------------------
# eval
# --------------------------------------------------------------------------------------


def cmd_eval(args: argparse.Namespace) -> int:
    from . import io as sio
    from .evaluate import EVAL_COLUMNS, build_pair, compare, summarize
    from .prompts import prompts_for_image

    if args.output is not None:
        _check_single_output(Path(args.output), args.overwrite)
    base, table = _load_prompt_table(args)
    paths, failed = _collect(args)
    max_pixels = _max_pixels(args, "eval")
    _check_model_options(args)
    source, model_type = _model_source(args)
    kwargs = _user_set(args, {"mask": "mask", "backend": "backend", "device": "device", "dtype": "dtype"})
    try:
        dense, sparse = build_pair(source, model_type=model_type, progress=_progress(args), **kwargs)
    except _LOAD_ERRORS as exc:
        raise _load_failure(source, exc) from exc
    from .patch import patch_config

    cfg = patch_config(sparse.model)
    if cfg is None or cfg.mask is None:
        log.warning("no sparse mask: comparing SAM's attention with the dense patch (exact by design); pass --mask RECIPE")

    from tqdm.auto import tqdm

    errors: list[str] = []

    def on_error(name: str, exc: Exception) -> None:
        errors.append(name)
        log.error("%s", _error_line(name, exc), exc_info=args.verbose)

    rows: list[dict] = []
    for path in tqdm(paths, desc="eval", unit="img", disable=not _progress(args), file=sys.stderr):
        try:  # one image at a time: memory stays bounded
            img = sio.read_image(path, max_pixels=max_pixels)
        except sio.ImageReadError as exc:
            on_error(str(path), exc)
            continue
        extra = prompts_for_image(table, path) if table else None
        prompts = base + extra if extra else base
        (h0, w0), (h, w) = img.original_size, img.array.shape[:2]
        # points outside the original image are left as they are: compare() reports them
        scaled = prompts.scaled(w / w0, h / h0) if prompts else None
        rows += compare([(str(path), img.array)], dense, sparse, [scaled], warmup=not rows, on_error=on_error)
    failed += len(errors)
    if rows:
        print(_table(rows, ["image", "prompts", "mask_iou", "mask_iou_min", "embedding_cosine", "dense_encoder_s", "sparse_encoder_s", "speedup"]))
    summary = summarize(rows)
    print(f"summary (mask={cfg.mask if cfg else None}): " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()))
    if args.output is not None:
        sio.write_csv(args.output, rows, EVAL_COLUMNS)
        print(f"wrote {args.output}")
    return EXIT_FAILED if failed else EXIT_OK


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------


def _on_sigterm(signum, frame):  # noqa: ARG001
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (argparse exits with 2 on bad options itself)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.verbose = bool(args.verbose)
    args.quiet = bool(args.quiet) and not args.verbose
    restore_logging = _setup_logging(args.verbose, args.quiet)
    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not in the main thread
        previous = None
    try:
        return int(args.func(args))
    except UsageError as exc:
        log.error("%s", exc, exc_info=args.verbose)
        return EXIT_USAGE
    except KeyboardInterrupt:
        log.error("interrupted: finished outputs are kept and no partial file is left; run the same command again to finish")
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001
        log.error("%s: %s%s", type(exc).__name__, exc, "" if args.verbose else " (run with -v for the traceback)", exc_info=args.verbose)
        return EXIT_FAILED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        restore_logging()


if __name__ == "__main__":
    sys.exit(main())
