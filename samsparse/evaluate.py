"""Dense vs sparse on your own images: mask IoU, embedding similarity, encoder time.

::

    from samsparse.evaluate import build_pair, compare, summarize
    dense, sparse = build_pair("sam_vit_b_01ec64.pth", mask="hierarchical:density=0.25")
    rows = compare(["a.jpg", "b.jpg"], dense, sparse)          # centre-point prompts
    print(summarize(rows))

For each image both predictors compute the embedding (timed, synchronised on
CUDA, after one warm-up call), then predict masks for the same prompts (default:
one foreground point at the image centre). For each prompt the best mask (highest
predicted IoU; SAM's multimask output for a single click) of each model is taken
and their IoU computed. The embeddings are compared by cosine similarity.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from .io import LoadedImage, read_image
from .prompts import PromptGroup, Prompts, centre_point

__all__ = ["EVAL_COLUMNS", "compare", "summarize", "build_pair", "mask_iou", "best_mask"]

log = logging.getLogger(__name__)

#: Columns of the per-image rows returned by :func:`compare` (and of ``samsparse eval``'s CSV).
EVAL_COLUMNS = (
    "image",
    "height",
    "width",
    "prompts",
    "mask_iou",
    "mask_iou_min",
    "embedding_cosine",
    "dense_score",
    "sparse_score",
    "dense_encoder_s",
    "sparse_encoder_s",
    "speedup",
)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two binary masks (1.0 when both are empty)."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    union = np.logical_or(a, b).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(a, b).sum() / union)


def best_mask(predictor: Any, group: PromptGroup, image_index: int | None = None) -> tuple[np.ndarray, float]:
    """The highest-scoring mask [H, W] and its predicted IoU for one prompt."""
    coords = labels = None
    if group.points:
        coords = np.array([[x, y] for x, y, _ in group.points], dtype=np.float64)
        labels = np.array([lab for _, _, lab in group.points], dtype=np.int64)
    box = np.array(group.box, dtype=np.float64) if group.box is not None else None
    kwargs = {"image_index": image_index} if image_index is not None else {}
    masks, scores, _ = predictor.predict(
        point_coords=coords, point_labels=labels, box=box, multimask_output=group.is_single_point, **kwargs
    )
    i = int(np.argmax(scores))
    return masks[i], float(scores[i])


def _sync(predictor: Any) -> None:
    dev = getattr(predictor, "device", torch.device("cpu"))
    if torch.device(dev).type == "cuda":
        torch.cuda.synchronize(dev)


def _timed_set_image(predictor: Any, image: np.ndarray) -> float:
    _sync(predictor)
    t0 = time.perf_counter()
    predictor.set_image(image)
    _sync(predictor)
    return time.perf_counter() - t0


def _as_items(images: Iterable[Any]) -> list[tuple[str, Any]]:
    items = []
    for i, item in enumerate(images):
        if isinstance(item, LoadedImage):
            items.append((str(item.path), item.array))
        elif isinstance(item, (str, os.PathLike)):
            items.append((os.fspath(item), item))
        elif isinstance(item, tuple) and len(item) == 2:
            items.append((str(item[0]), item[1]))
        elif isinstance(item, np.ndarray):
            items.append((f"image_{i}", item))
        else:
            raise TypeError(f"images[{i}] must be a path, an array, (name, array) or LoadedImage, got {type(item).__name__}")
    return items


def _prompts_for(prompts: Any, index: int, name: str, shape: tuple[int, ...]) -> Prompts:
    found = None
    if prompts is None:
        found = None
    elif isinstance(prompts, Prompts):
        found = prompts
    elif isinstance(prompts, Mapping):
        from .prompts import prompts_for_image

        found = prompts_for_image(prompts, name)
    elif isinstance(prompts, Sequence):
        found = prompts[index] if index < len(prompts) else None
    else:
        raise TypeError(f"prompts must be None, Prompts, a list or a dict, got {type(prompts).__name__}")
    return found if found else centre_point(int(shape[0]), int(shape[1]))


def compare(
    images: Sequence[Any],
    dense_predictor: Any,
    sparse_predictor: Any,
    prompts: Any = None,
    *,
    warmup: bool = True,
    on_error: Callable[[str, Exception], None] | None = None,
    progress: bool = False,
) -> list[dict]:
    """Compare two predictors (e.g. dense and sparse) image by image.

    Args:
        images: paths, RGB uint8 arrays, ``(name, array)`` pairs or LoadedImage.
        dense_predictor, sparse_predictor: SamPredictor-like (``set_image``, ``predict``,
            ``get_image_embedding``).
        prompts: None (a centre point per image), one Prompts for all images, a list
            aligned with ``images``, or a dict {image name: Prompts} (a prompt file);
            images without prompts get the centre point.
        warmup: run each encoder once on the first image before timing.
        on_error: called with (image name, exception) for an image that fails, which is
            then skipped; None re-raises.
        progress: show a tqdm bar on stderr.

    Returns:
        One dict per image with the keys of :data:`EVAL_COLUMNS`: mask IoU (mean and min
        over prompts), embedding cosine similarity, the best mask's predicted IoU of
        each model, encoder seconds of each and speedup = dense / sparse time.
    """
    from tqdm.auto import tqdm

    rows: list[dict] = []
    warmed = not warmup
    items = _as_items(images)
    for index, (name, image) in enumerate(tqdm(items, desc="eval", unit="img", disable=not progress)):
        try:
            arr = read_image(image).array if isinstance(image, (str, os.PathLike)) else image
            if not warmed:
                dense_predictor.set_image(arr)
                sparse_predictor.set_image(arr)
                warmed = True
            t_dense = _timed_set_image(dense_predictor, arr)
            t_sparse = _timed_set_image(sparse_predictor, arr)
            e_d = dense_predictor.get_image_embedding().detach().double().flatten()
            e_s = sparse_predictor.get_image_embedding().detach().double().flatten()
            denom = float(e_d.norm() * e_s.norm())
            cosine = float(e_d @ e_s) / denom if denom > 0 else float("nan")
            groups = _prompts_for(prompts, index, name, np.shape(arr)).groups()
            ious, s_d, s_s = [], [], []
            for group in groups:
                m_d, score_d = best_mask(dense_predictor, group)
                m_s, score_s = best_mask(sparse_predictor, group)
                ious.append(mask_iou(m_d, m_s))
                s_d.append(score_d)
                s_s.append(score_s)
        except Exception as exc:  # noqa: BLE001 - reported per image through on_error
            if on_error is None:
                raise
            on_error(name, exc)
            continue
        rows.append(
            {
                "image": name,
                "height": int(np.shape(arr)[0]),
                "width": int(np.shape(arr)[1]),
                "prompts": len(groups),
                "mask_iou": float(np.mean(ious)),
                "mask_iou_min": float(np.min(ious)),
                "embedding_cosine": cosine,
                "dense_score": float(np.mean(s_d)),
                "sparse_score": float(np.mean(s_s)),
                "dense_encoder_s": t_dense,
                "sparse_encoder_s": t_sparse,
                "speedup": t_dense / t_sparse if t_sparse > 0 else float("nan"),
            }
        )
        log.debug("eval %s: %s", name, rows[-1])
    return rows


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict:
    """Means (and minima for quality) over the rows of :func:`compare`."""
    if not rows:
        return {"images": 0}
    col = lambda k: np.array([float(r[k]) for r in rows])  # noqa: E731
    dense_t, sparse_t = col("dense_encoder_s").mean(), col("sparse_encoder_s").mean()
    return {
        "images": len(rows),
        "mask_iou_mean": float(col("mask_iou").mean()),
        "mask_iou_min": float(col("mask_iou_min").min()),
        "embedding_cosine_mean": float(col("embedding_cosine").mean()),
        "embedding_cosine_min": float(col("embedding_cosine").min()),
        "dense_encoder_s_mean": float(dense_t),
        "sparse_encoder_s_mean": float(sparse_t),
        "speedup": float(dense_t / sparse_t) if sparse_t > 0 else float("nan"),
    }


def build_pair(
    model: Any = "vit_b",
    mask: Any = None,
    backend: Any = None,
    device: Any = None,
    dtype: Any = None,
    *,
    model_type: str | None = None,
    progress: bool = True,
):
    """(dense, sparse) predictors over the same weights, loaded once.

    The dense one runs SAM's original attention (an unpatched copy); the sparse one is
    patched with ``mask`` (or the patched checkpoint's recipe) and ``backend``.
    """
    from torch import nn

    from .patch import is_patched, patch, unpatch
    from .predictor import (
        SparseSamPredictor,
        dense_copy,
        load_model,
        resolve_checkpoint,
        resolve_device,
        resolve_dtype,
    )

    dev = resolve_device(device)
    dt = resolve_dtype(dtype)
    if isinstance(model, nn.Module):
        sam = model
    else:
        path = resolve_checkpoint(model, progress=progress)
        sam = load_model(Path(path), mask=mask, backend=backend, model_type=model_type)
    dense_model = dense_copy(sam)
    if not is_patched(sam):
        patch(sam, mask=mask, backend=backend or "auto")
    elif mask is not None and isinstance(model, nn.Module):
        unpatch(sam)
        patch(sam, mask=mask, backend=backend or "auto")
    for m in (sam, dense_model):
        m.to(dev)
        if dt != torch.float32:
            m.image_encoder.to(dt)
    dense = SparseSamPredictor(dense_model, patch_model=False, dtype=dt)
    sparse = SparseSamPredictor(sam, dtype=dt)
    return dense, sparse
