"""SparseSamPredictor / SparseAutomaticMaskGenerator: SAM's user-facing classes on a patched encoder.

Both subclass segment_anything's ``SamPredictor`` / ``SamAutomaticMaskGenerator``,
so they take the same arguments and return exactly the same values; with a dense
patch (``mask=None``) the outputs equal the originals. What they add:

- the model is patched on construction (``mask``, ``backend``, ``blocks``) unless it
  already is;
- ``set_images([...])`` runs the image encoder on a batch; then choose the image with
  ``select_image(i)`` or ``predict(..., image_index=i)``;
- ``predict_batch(...)``: several prompts of one image (e.g. many boxes) in one
  decoder call, coordinates in original image pixels;
- input checks with clear errors instead of ``assert``: images must be uint8
  (``[H, W]`` grayscale and ``[H, W, 4]`` RGBA are converted, with a logged note),
  points must lie inside the image (``ValueError`` naming the point and the image
  size; they are not clamped, since an outside point is almost always swapped x/y or
  the wrong image), boxes must be 4 numbers with x0 <= x1, y0 <= y1 (``ValueError``);
  a box that only sticks out of the image is clipped with a warning;
- a dtype policy: ``dtype=torch.bfloat16`` / ``float16`` runs the image encoder under
  ``torch.autocast`` in that dtype (the encoder's weights may also be stored in it,
  as :func:`build_predictor` does); the embedding is cast back to float32 and the
  prompt encoder and mask decoder always run in float32, so masks and scores stay
  well-behaved.

``build_predictor("vit_b", mask="hierarchical:density=0.25")`` downloads (once) or
loads a checkpoint and returns a ready predictor.
"""

from __future__ import annotations

import copy
import logging
import os
from typing import Any, Optional, Sequence

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator, SamPredictor
from torch import nn

from .checkpoints.patched import resolve_checkpoint
from .io import ensure_rgb_uint8
from .patch import is_patched, patch, patch_config
from .prompts import check_box, check_points, mask_to_logits

__all__ = [
    "SparseSamPredictor",
    "SparseAutomaticMaskGenerator",
    "build_predictor",
    "load_model",
    "resolve_device",
    "resolve_dtype",
    "DeviceError",
]

log = logging.getLogger(__name__)

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


class DeviceError(RuntimeError):
    """The requested device does not exist on this machine (e.g. CUDA asked for but absent)."""


def resolve_dtype(dtype: Any) -> torch.dtype:
    """None -> float32; "bf16"/"bfloat16", "fp16"/"float16"/"half", "fp32"/"float32" or a torch.dtype."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"dtype {dtype} is not supported; use float32, bfloat16 or float16")
        return dtype
    key = str(dtype).strip().lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of: fp32, bf16, fp16 (or float32, bfloat16, float16)")
    return _DTYPES[key]


def resolve_device(device: Any = None) -> torch.device:
    """None -> "cuda" when available, else "cpu". Raises DeviceError for an absent CUDA/MPS device."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise DeviceError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            built = "with" if torch.version.cuda else "without"
            raise DeviceError(
                f"CUDA was requested (device {device!r}) but no CUDA GPU is available "
                f"(torch {torch.__version__} built {built} CUDA, torch.cuda.is_available() is False); "
                "use device 'cpu', or install a CUDA build of PyTorch on a machine with an NVIDIA GPU"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DeviceError(f"device {device!r} was requested but Apple MPS is not available here; use 'cpu'")
    return dev


def _encoder_dtype(model: nn.Module) -> torch.dtype:
    for p in model.image_encoder.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _prepare_model(model: nn.Module, mask: Any, backend: Any, blocks: Any, patch_model: bool) -> None:
    if not isinstance(model, nn.Module) or not hasattr(model, "image_encoder"):
        raise TypeError(f"expected a segment_anything Sam model, got {type(model).__name__}")
    if is_patched(model):
        cfg = patch_config(model)
        if cfg is None:
            return
        if mask is not None:
            from .attention import MaskSource

            wanted = MaskSource(mask).describe()
            if wanted != cfg.mask:
                raise ValueError(
                    f"the model is already patched with mask {cfg.mask or 'dense'!r}, not {wanted or 'dense'!r}; "
                    "call samsparse.unpatch(model) first, or pass mask=None to keep the current patch"
                )
        if backend is not None and str(getattr(backend, "name", backend)) != cfg.backend:
            raise ValueError(
                f"the model is already patched with backend {cfg.backend!r}, not {backend!r}; "
                "call samsparse.unpatch(model) first, or pass backend=None to keep it"
            )
        return
    if not patch_model:
        if mask is not None:
            raise ValueError("patch_model=False runs the original attention; it cannot take a mask")
        return
    patch(model, mask=mask, backend=backend if backend is not None else "auto", blocks=blocks if blocks is not None else "global")


class SparseSamPredictor(SamPredictor):
    """``SamPredictor`` on a block-sparse image encoder, plus batched images and input checks.

    Args:
        sam_model: a segment_anything ``Sam``. Patched in place unless it already is.
        mask: mask recipe for the patch (None = dense, exact SAM), e.g.
            ``"hierarchical:density=0.25"``. For an already patched model it must be
            None or the same recipe.
        backend: backend name for the patch ("auto" when None).
        blocks: which encoder blocks to patch ("global" when None; see ``samsparse.patch``).
        dtype: encoder compute dtype: None = the dtype of the encoder's weights
            (float32 normally); bfloat16/float16 run the encoder under autocast and the
            decoder in float32 (see the module docstring).
        patch_model: False keeps an unpatched model unpatched (original attention; for
            baselines). Ignored for patched models.
        encoder_batch_size: images per encoder call in :meth:`set_images` (None = all).

    Batched use::

        predictor.set_images([img0, img1, img2])      # one encoder pass for the batch
        masks, scores, logits = predictor.predict(point_coords=pts, point_labels=lbl, image_index=1)
        predictor.select_image(2)                     # later calls use image 2
        masks, scores, logits = predictor.predict(box=np.array([10, 20, 200, 220]))

    ``set_image`` / ``set_torch_image`` replace the batch by one image (index 0).
    """

    def __init__(
        self,
        sam_model: nn.Module,
        mask: Any = None,
        backend: Any = None,
        blocks: Any = None,
        dtype: Any = None,
        *,
        patch_model: bool = True,
        encoder_batch_size: int | None = None,
    ) -> None:
        _prepare_model(sam_model, mask, backend, blocks, patch_model)
        self.dtype = resolve_dtype(dtype) if dtype is not None else _encoder_dtype(sam_model)
        self.encoder_batch_size = encoder_batch_size
        self._batch_features: torch.Tensor | None = None
        self._batch_original_sizes: list[tuple[int, int]] = []
        self._batch_input_sizes: list[tuple[int, int]] = []
        self.image_index: int | None = None
        super().__init__(sam_model)

    # -- images ---------------------------------------------------------------------

    def _check_image(self, image: np.ndarray, image_format: str, name: str = "image") -> np.ndarray:
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        if not isinstance(image, np.ndarray):
            raise TypeError(f"{name} must be a numpy array [H, W, 3] uint8, got {type(image).__name__}")
        arr, notes = ensure_rgb_uint8(image, name)
        for note in notes:
            log.info("%s: %s", name, note)
        return arr

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Compute the embedding of one image (uint8 [H, W, 3]; gray [H, W] and RGBA accepted)."""
        image = self._check_image(image, image_format)
        super().set_image(image, image_format)

    def _encode(self, input_image: torch.Tensor) -> torch.Tensor:
        """Run the image encoder on preprocessed images [B, 3, S, S]; float32 embedding [B, C, h, w]."""
        encoder = self.model.image_encoder
        if self.dtype == torch.float32 and _encoder_dtype(self.model) == torch.float32:
            return encoder(input_image)
        with torch.autocast(device_type=input_image.device.type, dtype=self.dtype):
            features = encoder(input_image)
        return features.float()

    def _check_torch_image(self, transformed_image: torch.Tensor) -> None:
        size = self.model.image_encoder.img_size
        if not (
            isinstance(transformed_image, torch.Tensor)
            and transformed_image.ndim == 4
            and transformed_image.shape[1] == 3
            and max(*transformed_image.shape[2:]) == size
        ):
            shape = tuple(transformed_image.shape) if isinstance(transformed_image, torch.Tensor) else type(transformed_image)
            raise ValueError(
                f"set_torch_image needs a [B, 3, H, W] tensor resized with ResizeLongestSide so that "
                f"max(H, W) == {size}; got {shape}"
            )

    @torch.no_grad()
    def set_torch_image(self, transformed_image: torch.Tensor, original_image_size: tuple[int, ...]) -> None:
        """As ``SamPredictor.set_torch_image``: input [1, 3, H, W] already resized (long side = img_size)."""
        self._check_torch_image(transformed_image)
        self.reset_image()
        self.original_size = tuple(original_image_size)
        self.input_size = tuple(transformed_image.shape[-2:])
        input_image = self.model.preprocess(transformed_image)
        self.features = self._encode(input_image)
        self.is_image_set = True

    @torch.no_grad()
    def set_images(self, images: Sequence[np.ndarray], image_format: str = "RGB") -> None:
        """Compute the embeddings of several images (any sizes) with batched encoder calls.

        Afterwards image 0 is selected; use :meth:`select_image` or ``image_index=`` of
        :meth:`predict` / :meth:`predict_torch` / :meth:`get_image_embedding` for the others.
        Batches hold ``encoder_batch_size`` images (all at once when None).
        """
        if isinstance(images, np.ndarray) and images.ndim == 4:
            images = list(images)
        if not isinstance(images, Sequence) or len(images) == 0:
            raise ValueError("set_images needs a non-empty list of images")
        checked = [self._check_image(img, image_format, f"images[{i}]") for i, img in enumerate(images)]
        self.reset_image()
        step = self.encoder_batch_size or len(checked)
        feats, orig_sizes, input_sizes = [], [], []
        for start in range(0, len(checked), step):
            batch = []
            for img in checked[start : start + step]:
                if image_format != self.model.image_format:
                    img = img[..., ::-1]
                t = torch.as_tensor(self.transform.apply_image(img), device=self.device)
                t = t.permute(2, 0, 1).contiguous()[None, :, :, :]
                orig_sizes.append(tuple(img.shape[:2]))
                input_sizes.append(tuple(t.shape[-2:]))
                batch.append(self.model.preprocess(t))
            feats.append(self._encode(torch.cat(batch, dim=0)))
        self._batch_features = torch.cat(feats, dim=0)
        self._batch_original_sizes = orig_sizes
        self._batch_input_sizes = input_sizes
        self.select_image(0)

    @property
    def num_images(self) -> int:
        """How many images have embeddings (from set_images; 1 after set_image; 0 when none)."""
        if self._batch_features is not None:
            return int(self._batch_features.shape[0])
        return 1 if self.is_image_set else 0

    def select_image(self, index: int) -> None:
        """Use image ``index`` of the last :meth:`set_images` batch for the next predictions."""
        n = self.num_images
        if self._batch_features is None:
            if n == 1 and index in (0, -1):
                return
            raise IndexError(f"image_index {index} is out of range: {n} image(s) set (use set_images for a batch)")
        if not -n <= index < n:
            raise IndexError(f"image_index {index} is out of range: set_images was given {n} image(s)")
        index = index % n
        self.features = self._batch_features[index : index + 1]
        self.original_size = self._batch_original_sizes[index]
        self.input_size = self._batch_input_sizes[index]
        self.is_image_set = True
        self.image_index = index

    def reset_image(self) -> None:
        """Forget the current image(s) and their embeddings."""
        super().reset_image()
        self._batch_features = None
        self._batch_original_sizes = []
        self._batch_input_sizes = []
        self.image_index = None

    def get_image_embedding(self, image_index: int | None = None) -> torch.Tensor:
        """The embedding [1, C, h, w] of the current (or ``image_index``) image, float32."""
        if image_index is not None:
            self.select_image(image_index)
        return super().get_image_embedding()

    # -- prompts --------------------------------------------------------------------

    def _check_prompts(self, point_coords, point_labels, box, mask_input, batched: bool = False):
        h, w = (int(v) for v in self.original_size)
        if point_coords is not None:
            coords = np.asarray(point_coords, dtype=np.float64)
            want = 3 if batched else 2
            if coords.ndim != want or coords.shape[-1] != 2:
                shape = "[B, N, 2]" if batched else "[N, 2]"
                raise ValueError(f"point_coords must have shape {shape} (x, y pixels), got {coords.shape}")
            if point_labels is None:
                raise ValueError("point_labels must be given with point_coords (1 = foreground, 0 = background)")
            labels = np.asarray(point_labels)
            if labels.shape != coords.shape[:-1]:
                raise ValueError(f"point_labels must have shape {coords.shape[:-1]} to match point_coords, got {labels.shape}")
            check_points(coords.reshape(-1, 2), h, w, "the image")
        elif point_labels is not None:
            raise ValueError("point_labels was given without point_coords")
        if box is not None:
            arr = np.asarray(box, dtype=np.float64)
            if batched:
                if arr.ndim != 2 or arr.shape[1] != 4:
                    raise ValueError(f"boxes must have shape [B, 4] (x0, y0, x1, y1), got {arr.shape}")
                box = np.stack([check_box(b, h, w, "the image") for b in arr])
            else:
                if arr.shape not in ((4,), (1, 4)):
                    raise ValueError(f"box must have shape [4] (x0, y0, x1, y1), got {arr.shape}")
                box = check_box(arr, h, w, "the image").reshape(arr.shape)
        if mask_input is not None:
            side = self._low_res_side
            shape = tuple(np.shape(mask_input))
            want_shape = ((None, 1, side, side) if batched else (1, side, side))
            ok = len(shape) == len(want_shape) and all(a is None or a == b for a, b in zip(want_shape, shape))
            if not ok:
                raise ValueError(
                    f"mask_input must be low-res logits of shape {'[B, 1' if batched else '[1'}, {side}, {side}] "
                    f"(the third output of a previous predict), got {shape}"
                )
        return box

    def predict(
        self,
        point_coords: Optional[np.ndarray] = None,
        point_labels: Optional[np.ndarray] = None,
        box: Optional[np.ndarray] = None,
        mask_input: Optional[np.ndarray] = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        image_index: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """As ``SamPredictor.predict`` (coordinates in original image pixels), plus ``image_index``.

        ``mask_input`` is SAM's low-res logits [1, 256, 256] (the third output of a previous call) or, forgiving,
        a binary mask [H, W] of the image's size (bool, 0/1 or 0/255), turned into such logits by
        :func:`samsparse.prompts.mask_to_logits`.

        Returns masks [C, H, W] (bool, or float logits with ``return_logits``), scores [C]
        and low-res logits [C, 256, 256]; C = 3 with ``multimask_output`` else 1.

        Raises:
            ValueError: a point outside the image, a malformed box, wrong shapes.
            RuntimeError: no image set.
        """
        if image_index is not None:
            self.select_image(image_index)
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")
        mask_input = self._mask_prompt(mask_input)
        box = self._check_prompts(point_coords, point_labels, box, mask_input)
        return super().predict(point_coords, point_labels, box, mask_input, multimask_output, return_logits)

    def _mask_prompt(self, mask_input):
        """A binary [H, W] mask of the image's size as low-res logits (``prompts.mask_to_logits``); else as given."""
        if mask_input is None or np.ndim(mask_input) != 2:
            return mask_input
        arr = np.asarray(mask_input)
        size = tuple(int(v) for v in self.original_size)
        if arr.shape != size:
            raise ValueError(
                f"a 2-D mask_input is taken as a binary mask of the image and must have its size "
                f"{size} (H, W), got {arr.shape}; or pass low-res logits [1, 256, 256]"
            )
        return mask_to_logits(arr, image_size=int(self.model.image_encoder.img_size), low_res_side=self._low_res_side)

    @property
    def _low_res_side(self) -> int:
        """Side of the decoder's low-res masks and of ``mask_input``: 4 x the image embedding's side (256)."""
        return 4 * self.model.prompt_encoder.image_embedding_size[0]

    def predict_torch(
        self,
        point_coords: Optional[torch.Tensor],
        point_labels: Optional[torch.Tensor],
        boxes: Optional[torch.Tensor] = None,
        mask_input: Optional[torch.Tensor] = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        image_index: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As ``SamPredictor.predict_torch`` (batched prompts already in the resized frame), plus ``image_index``."""
        if image_index is not None:
            self.select_image(image_index)
        return super().predict_torch(point_coords, point_labels, boxes, mask_input, multimask_output, return_logits)

    def predict_batch(
        self,
        point_coords: Optional[np.ndarray] = None,
        point_labels: Optional[np.ndarray] = None,
        boxes: Optional[np.ndarray] = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        image_index: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """B prompts of one image in one decoder call, in original image pixels.

        Args:
            point_coords: [B, N, 2] (x, y) or None; point_labels: [B, N].
            boxes: [B, 4] (x0, y0, x1, y1) or None. With both, prompt b is points b + box b.

        Returns:
            masks [B, C, H, W], scores [B, C], low-res logits [B, C, 256, 256] (NumPy).
        """
        if image_index is not None:
            self.select_image(image_index)
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")
        if point_coords is None and boxes is None:
            raise ValueError("predict_batch needs point_coords and/or boxes")
        boxes = self._check_prompts(point_coords, point_labels, boxes, None, batched=True)
        coords_t = labels_t = boxes_t = None
        b = None
        if point_coords is not None:
            pts = self.transform.apply_coords(np.asarray(point_coords, dtype=np.float64), self.original_size)
            coords_t = torch.as_tensor(pts, dtype=torch.float, device=self.device)
            labels_t = torch.as_tensor(np.asarray(point_labels), dtype=torch.int, device=self.device)
            b = coords_t.shape[0]
        if boxes is not None:
            bx = self.transform.apply_boxes(np.asarray(boxes, dtype=np.float64), self.original_size)
            boxes_t = torch.as_tensor(bx, dtype=torch.float, device=self.device)
            if b is not None and boxes_t.shape[0] != b:
                raise ValueError(f"point_coords has {b} prompts but boxes has {boxes_t.shape[0]}; they must match")
        masks, scores, low = self.predict_torch(coords_t, labels_t, boxes_t, None, multimask_output, return_logits)
        return masks.cpu().numpy(), scores.float().cpu().numpy(), low.float().cpu().numpy()


_AMG_OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")


class SparseAutomaticMaskGenerator(SamAutomaticMaskGenerator):
    """``SamAutomaticMaskGenerator`` on a block-sparse encoder: same parameters, same records.

    ``model`` is a ``Sam`` (patched here with ``mask`` / ``backend`` / ``blocks`` unless
    it already is) or a :class:`SparseSamPredictor` to share. Each record has
    ``segmentation`` (per ``output_mode``: "binary_mask" bool [H, W], "uncompressed_rle"
    or "coco_rle" dict), ``area``, ``bbox`` (XYWH), ``predicted_iou``, ``point_coords``,
    ``stability_score`` and ``crop_box`` (XYWH). ``generate`` accepts what
    :meth:`SparseSamPredictor.set_image` accepts (gray and RGBA are converted).
    """

    def __init__(
        self,
        model: nn.Module | SparseSamPredictor,
        points_per_side: Optional[int] = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: Optional[list[np.ndarray]] = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        *,
        mask: Any = None,
        backend: Any = None,
        blocks: Any = None,
        dtype: Any = None,
    ) -> None:
        if (points_per_side is None) == (point_grids is None):
            raise ValueError("give exactly one of points_per_side or point_grids")
        if output_mode not in _AMG_OUTPUT_MODES:
            raise ValueError(f"unknown output_mode {output_mode!r}; use one of {', '.join(_AMG_OUTPUT_MODES)}")
        if points_per_side is not None and int(points_per_side) < 1:
            raise ValueError(f"points_per_side must be >= 1, got {points_per_side}")
        if int(points_per_batch) < 1:
            raise ValueError(f"points_per_batch must be >= 1, got {points_per_batch}")
        if isinstance(model, SparseSamPredictor):
            predictor = model
            if mask is not None or backend is not None or dtype is not None:
                raise ValueError("mask/backend/dtype belong to the predictor you passed; leave them None here")
        else:
            predictor = SparseSamPredictor(model, mask=mask, backend=backend, blocks=blocks, dtype=dtype)
        super().__init__(
            predictor.model,
            points_per_side=points_per_side,
            points_per_batch=points_per_batch,
            pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_score_thresh,
            stability_score_offset=stability_score_offset,
            box_nms_thresh=box_nms_thresh,
            crop_n_layers=crop_n_layers,
            crop_nms_thresh=crop_nms_thresh,
            crop_overlap_ratio=crop_overlap_ratio,
            crop_n_points_downscale_factor=crop_n_points_downscale_factor,
            point_grids=point_grids,
            min_mask_region_area=min_mask_region_area,
            output_mode=output_mode,
        )
        self.predictor = predictor

    @torch.no_grad()
    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        """Masks for the whole image (uint8 [H, W, 3] RGB; gray / RGBA converted). See the class docstring."""
        image = self.predictor._check_image(image, "RGB")
        return super().generate(image)


# --------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------


def load_model(
    path: str | os.PathLike,
    mask: Any = None,
    backend: Any = None,
    blocks: Any = None,
    model_type: str | None = None,
) -> nn.Module:
    """Load a ``Sam`` from an original or patched checkpoint (CPU, float32).

    Uses ``samsparse.load`` (patched checkpoints keep their recipe unless ``mask`` is
    given); an original checkpoint is patched with ``mask`` / ``backend`` / ``blocks``.
    ``model_type`` ("vit_b", "vit_l", "vit_h", "custom"), when given, must match the
    type inferred from the weights' shapes (ValueError otherwise).
    """
    from .checkpoints.patched import load as _load

    kwargs = {k: v for k, v in (("mask", mask), ("backend", backend), ("blocks", blocks)) if v is not None}
    sam = _load(path, progress=False, **kwargs)
    if model_type is not None:
        from .checkpoints import infer_model_type

        found = infer_model_type(sam.state_dict())
        if found != model_type:
            raise ValueError(
                f"{path} holds a {found} model, but model type {model_type!r} was asked for; "
                "pass the matching checkpoint or drop the model type"
            )
    return sam


def build_predictor(
    model: str | os.PathLike | nn.Module = "vit_b",
    mask: Any = None,
    backend: Any = "auto",
    device: Any = None,
    dtype: Any = None,
    *,
    blocks: Any = None,
    model_type: str | None = None,
    progress: bool = True,
) -> SparseSamPredictor:
    """A ready :class:`SparseSamPredictor`.

    Args:
        model: official name ("vit_b", "vit_l", "vit_h": downloaded on first use into
            ``$SAMSPARSE_HOME`` or ``~/.cache/samsparse``), a checkpoint path (original
            SAM or patched by samsparse), or a ``Sam`` module (used as is).
        mask: mask recipe (None = dense, or the patched checkpoint's recipe).
        backend: attention backend ("auto" = fastest that supports each call).
        device: None = "cuda" when available, else "cpu". Asking for an absent CUDA
            device raises :class:`DeviceError`.
        dtype: None = float32. "bf16"/"fp16" store the image encoder's weights in that
            dtype and run it under autocast; the decoder stays float32.
        blocks: encoder blocks to patch (None = "global").
        model_type: expected model type; a checkpoint of another type raises ValueError.
        progress: show a download progress bar.
    """
    dev = resolve_device(device)
    dt = resolve_dtype(dtype)
    backend_arg = None if backend in (None, "auto") else backend
    if isinstance(model, nn.Module):
        sam = model
    else:
        path = resolve_checkpoint(model, progress=progress)
        sam = load_model(path, mask=mask, backend=backend_arg, blocks=blocks, model_type=model_type)
        if is_patched(sam):
            mask, backend_arg = None, None  # load_model applied them
    sam.to(dev)
    if dt != torch.float32:
        sam.image_encoder.to(dt)
    predictor = SparseSamPredictor(sam, mask=mask, backend=backend_arg, blocks=blocks, dtype=dt)
    cfg = patch_config(sam)
    log.info(
        "predictor ready: device=%s dtype=%s mask=%s backend=%s",
        dev, str(dt).removeprefix("torch."), (cfg.mask if cfg else None) or "dense", cfg.backend if cfg else "original",
    )
    return predictor


def dense_copy(model: nn.Module) -> nn.Module:
    """An unpatched deep copy of ``model`` (original SAM attention), e.g. as a baseline."""
    from .patch import unpatch

    return unpatch(copy.deepcopy(model))
