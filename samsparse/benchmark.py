"""Encoder benchmark: the original SAM image encoder against patched ones, in one run.

Used by ``scripts/bench_encoder.py`` (the full table recorded in
benchmarks/RESULTS.md) and ``samsparse bench`` (a quick table on the user's
device). Every number is measured in the same process, against baselines timed
in that process, with the same inputs and the same weights.
"""

from __future__ import annotations

import copy
import logging
import math
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .attention import MaskSource, SparseAttention
from .fast import GELU_MODES, encoder_of, optimize
from .patch import patch
from .tanh_gelu import use_tanh_gelu
from .windows import WindowsInPlaceBlock, use_windows_in_place, use_windows_partitioned

__all__ = [
    "EncoderResult", "build_encoder", "bench_encoder", "interleaved_ratios", "quick_table", "time_fn", "ENCODER_CONFIGS",
    "markdown_table",
]

log = logging.getLogger(__name__)

ENCODER_CONFIGS: dict[str, dict[str, Any]] = {
    "vit_b": dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "vit_l": dict(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
    "tiny": dict(embed_dim=64, depth=4, num_heads=4, global_attn_indexes=(1, 3)),
}

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


@dataclass
class EncoderResult:
    """One row of the encoder table."""

    model: str
    variant: str
    batch: int
    dtype: str
    ms: float  # median time of one forward pass of the batch
    ms_p90: float
    images_per_s: float
    peak_mem_gb: float
    max_dev: float  # max |embedding - original fp32 embedding|
    rel_dev: float  # ||embedding - original fp32|| / ||original fp32||
    first_call_s: float
    speedup: float = float("nan")  # images/s over the original eager encoder in the same dtype
    backend: str = ""
    error: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def build_encoder(model_type: str = "vit_b", img_size: int = 1024, seed: int = 0) -> nn.Module:
    """segment_anything's ImageEncoderViT of an official size with seeded random weights.

    The rel-pos tables are randomised (zero in a fresh SAM) so the bias matters
    in every comparison. Speed does not depend on the weights' values.
    """
    from segment_anything.modeling import ImageEncoderViT

    if model_type not in ENCODER_CONFIGS:
        raise ValueError(f"unknown model type {model_type!r}; choose one of {', '.join(ENCODER_CONFIGS)}")
    cfg = ENCODER_CONFIGS[model_type]
    torch.manual_seed(seed)
    with torch.device("meta"):
        enc = ImageEncoderViT(
            img_size=img_size, patch_size=16, mlp_ratio=4, qkv_bias=True, use_rel_pos=True, window_size=14,
            out_chans=256, norm_layer=lambda d: nn.LayerNorm(d, eps=1e-6), **cfg,
        )
    enc = enc.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if p.dim() >= 2 and "rel_pos" not in name and "pos_embed" not in name:
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 / math.sqrt(p[0].numel())))
            elif "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02 if "bias" in name else torch.randn(p.shape, generator=g) * 0.1)
    return enc.eval()


def time_stream(fn: Callable[[], Any], device: torch.device, calls: int = 10) -> float:
    """Milliseconds per call of ``calls`` back-to-back calls of ``fn()`` (one synchronisation at the end).

    The throughput regime (a stream of batches): the host queues the next call while the GPU
    runs this one, so the host's launch latency at the start of each call is hidden, unlike
    :func:`time_fn`, which synchronises after every call (the latency regime).
    """
    fn()
    _sync(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / calls
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) * 1e3 / calls


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], Any], device: torch.device, warmup: int = 3, repeat: int = 10) -> tuple[float, float]:
    """Median and p90 time of ``fn()`` in milliseconds (CUDA events on GPU, perf_counter on CPU)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return times[len(times) // 2], times[min(len(times) - 1, int(math.ceil(0.9 * len(times))) - 1)]


def patch_global_recipe(model: nn.Module, recipe: str, backend: str = "auto") -> nn.Module:
    """Patch every block of a SAM model or encoder: ``recipe`` on the global blocks, the
    windowed blocks dense (on the same fast kernel). Returns ``model``."""
    patch(model, mask=recipe, backend=backend, blocks="all")
    dense = MaskSource(None)
    for blk in encoder_of(model).blocks:
        if blk.window_size > 0:
            blk.attn.mask_source = dense
    return model


def _variant_model(base: nn.Module, variant: str, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """The encoder for one table row.

    'original', 'sdpa', 'dense', 'sparse:<recipe>[@all]', each optionally with
    '+compile' (``optimize(compile="default")``; for 'original', torch.compile of the
    whole encoder) or '+graphs' (mode "reduce-overhead": CUDA graphs); '-encoder' after
    either ('+compile-encoder') compiles the patched encoder as one graph instead of
    block by block. '+tanhgelu' before those (e.g. 'dense+tanhgelu+compile') swaps the
    MLPs for the approximate fused-GELU ones (``optimize(gelu="tanh")``). Patched variants
    read SAM's windows in place, as ``optimize`` makes them; '+partition' before the compile
    suffix (e.g. 'dense+partition+compile') keeps SAM's window partition instead.
    """
    for suffix, mode, scope in (
        ("+compile-encoder", "default", "encoder"),
        ("+graphs-encoder", "reduce-overhead", "encoder"),
        ("+compile", "default", "blocks"),
        ("+graphs", "reduce-overhead", "blocks"),
    ):
        if variant.endswith(suffix):
            model = _variant_model(base, variant[: -len(suffix)], device, dtype)
            if variant.startswith("original"):
                model.forward = torch.compile(model.forward, dynamic=False, mode=None if mode == "default" else mode)
            else:
                in_place = any(type(m) is WindowsInPlaceBlock for m in model.modules())
                optimize(model, dtype=None, compile=mode, compile_scope=scope,
                         windows="in_place" if in_place else "partition")
            return model
    if variant.endswith("+tanhgelu"):
        model = _variant_model(base, variant[: -len("+tanhgelu")], device, dtype)
        use_tanh_gelu(encoder_of(model))
        return model
    if variant.endswith("+partition"):
        model = _variant_model(base, variant[: -len("+partition")], device, dtype)
        use_windows_partitioned(model)
        return model
    model = copy.deepcopy(base)
    if variant == "original":
        pass
    elif variant == "sdpa":
        patch(model, backend="sdpa", blocks="all")
    elif variant == "dense":
        patch(model, backend="auto", blocks="all")
    elif variant.startswith("sparse:"):
        recipe = variant[len("sparse:"):]
        if recipe.endswith("@all"):
            patch(model, mask=recipe[: -len("@all")], backend="auto", blocks="all")
        else:
            patch_global_recipe(model, recipe)
    else:
        raise ValueError(f"unknown variant {variant!r}")
    if variant != "original":
        use_windows_in_place(model)
    return model.to(device=device, dtype=dtype).eval()


def _device_and_dtype(device: torch.device | str | None, dtype: torch.dtype | str) -> tuple[torch.device, torch.dtype]:
    """The device (default: CUDA if present) and the dtype (a name from ``DTYPES`` or a torch dtype)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return device, DTYPES[dtype] if isinstance(dtype, str) else dtype


def _input_and_reference(
    base: nn.Module, batch: int, img_size: int, device: torch.device, ref_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images [batch, 3, S, S] float32 on the CPU, seeded by ``batch``; the original encoder's
    embedding of them in ``ref_dtype``, as float32 on ``device``)."""
    x = torch.randn(batch, 3, img_size, img_size, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        ref_model = copy.deepcopy(base).to(device=device, dtype=ref_dtype)
        ref = ref_model(x.to(device, ref_dtype)).float()
    return x, ref


def _first_call(model: nn.Module, x: torch.Tensor, ref: torch.Tensor, device: torch.device) -> tuple[float, torch.Tensor]:
    """(seconds of the first ``model(x)``, its float32 difference from ``ref``).

    The difference is taken at once: a CUDA-graph replay may reuse the output's memory later.
    """
    t0 = time.perf_counter()
    out = model(x)
    _sync(device)
    first = time.perf_counter() - t0
    return first, out.float() - ref


def _backends_used(model: nn.Module) -> str:
    names = sorted({b.name for m in model.modules() if isinstance(m, SparseAttention) for b in m._chosen.values()})
    return ",".join(names)


def bench_encoder(
    model_type: str = "vit_b",
    batch_sizes: Sequence[int] = (1, 8),
    dtype: torch.dtype | str = torch.bfloat16,
    device: torch.device | str | None = None,
    variants: Sequence[str] = ("original", "sdpa", "dense"),
    img_size: int = 1024,
    warmup: int = 3,
    repeat: int = 10,
    reference_fp32: bool = True,
    progress: Callable[[str], None] | None = None,
) -> list[EncoderResult]:
    """Time the original encoder and patched variants on one device, same inputs, same weights.

    Args:
        model_type: "vit_b", "vit_l", "vit_h" (or "tiny" for tests).
        batch_sizes: images per forward pass.
        dtype: compute dtype of every variant (weights cast with ``.to(dtype)``).
        variants: "original" (segment_anything eager), "sdpa" (patched, SDPA with a
            materialised bias: the best exact PyTorch path), "dense" (patched, fastest
            backend), "sparse:<recipe>" (mask on the global blocks), "sparse:<recipe>@all"
            (the recipe on every block).
        reference_fp32: compare embeddings with the original encoder in float32
            (else with the original in ``dtype``).

    Returns:
        One :class:`EncoderResult` per (batch, variant); ``speedup`` is images/s over
        "original" in the same dtype and batch (when "original" is among the variants).
    """
    device, dtype = _device_and_dtype(device, dtype)
    dtype_name = str(dtype).replace("torch.", "")
    base = build_encoder(model_type, img_size=img_size)
    results: list[EncoderResult] = []
    for batch in batch_sizes:
        x, ref = _input_and_reference(base, batch, img_size, device, torch.float32 if reference_fp32 else dtype)
        xin = x.to(device, dtype)
        row_base = None
        for variant in variants:
            if progress:
                progress(f"{model_type} B={batch} {variant}")
            try:
                model = _variant_model(base, variant, device, dtype)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                with torch.no_grad():
                    first, diff = _first_call(model, xin, ref, device)
                    ms, p90 = time_fn(lambda: model(xin), device, warmup, repeat)
                peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
                res = EncoderResult(
                    model=model_type, variant=variant, batch=batch, dtype=dtype_name, ms=ms, ms_p90=p90,
                    images_per_s=batch / ms * 1e3, peak_mem_gb=peak, max_dev=float(diff.abs().max()),
                    rel_dev=float(diff.norm() / ref.norm()), first_call_s=first, backend=_backends_used(model),
                )
                del model
            except Exception as exc:  # one failing contender must not hide the others
                log.exception("variant %s failed", variant)
                res = EncoderResult(model_type, variant, batch, dtype_name, *(float("nan"),) * 7, error=f"{type(exc).__name__}: {exc}")
            if variant == "original":
                row_base = res
            results.append(res)
        if row_base is not None:
            for res in results[-len(variants):]:
                res.speedup = res.images_per_s / row_base.images_per_s
    return results


def interleaved_ratios(
    model_type: str,
    variants: Sequence[str],
    batch: int = 8,
    dtype: torch.dtype | str = torch.bfloat16,
    device: torch.device | str | None = None,
    rounds: int = 7,
    repeat: int = 10,
    img_size: int = 1024,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Median time of each variant, measured in interleaved rounds, and each one's ratio to the first.

    All variants are built (and compiled) first and kept alive; then every round times
    each of them in turn, so clock and thermal drift during the run falls on all of them
    alike instead of on whichever ran last. Each round measures a variant twice: per call
    (``repeat`` synchronised calls, median: latency, host launch time included; "ms") and
    as a stream (``repeat`` back-to-back calls, one synchronisation: throughput; "stream_ms").
    The ratio of a variant is ``median over rounds of (first variant's ms / its ms)`` in the
    same round, for each of the two.

    Returns ``{"variants": {name: {"ms": [per round], "ms_median": .., "ratio_median": ..,
    "ratios": [per round], "stream_ms": [..], "stream_ms_median": .., "stream_ratios": [..],
    "stream_ratio_median": .., "rel_dev": .., "first_call_s": ..}}, "rounds": rounds, ...}``.
    """
    if rounds < 1 or repeat < 1:
        raise ValueError(f"rounds and repeat must be >= 1, got {rounds} and {repeat}")
    if not variants:
        raise ValueError("give at least one variant (the first is the baseline of the ratios)")
    # every compiled variant adds graphs to the same block forwards' code: past dynamo's recompile
    # limit (8) the later variants would silently run eagerly, so the limit grows with the variants
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    with config.patch(**{name: max(getattr(config, name), 8 * len(variants))}):
        return _interleaved_ratios(model_type, variants, batch, dtype, device, rounds, repeat, img_size, progress)


def _interleaved_ratios(model_type, variants, batch, dtype, device, rounds, repeat, img_size, progress) -> dict:
    device, dtype = _device_and_dtype(device, dtype)
    base = build_encoder(model_type, img_size=img_size)
    x, ref = _input_and_reference(base, batch, img_size, device, torch.float32)
    xin = x.to(device, dtype)
    models, info = {}, {}
    for variant in variants:
        if progress:
            progress(f"build {model_type} B={batch} {variant}")
        model = _variant_model(base, variant, device, dtype)
        with torch.no_grad():
            first, diff = _first_call(model, xin, ref, device)
        models[variant] = model
        info[variant] = {"first_call_s": first, "rel_dev": float(diff.norm() / ref.norm()), "max_dev": float(diff.abs().max()),
                         "ms": [], "ratios": [], "stream_ms": [], "stream_ratios": []}
    for r in range(rounds):
        if progress:
            progress(f"round {r + 1}/{rounds}")
        with torch.no_grad():
            for variant, model in models.items():
                ms, _ = time_fn(lambda: model(xin), device, warmup=2, repeat=repeat)
                info[variant]["ms"].append(ms)
                info[variant]["stream_ms"].append(time_stream(lambda: model(xin), device, calls=repeat))
        for key in ("", "stream_"):
            first_ms = info[variants[0]][key + "ms"][-1]
            for variant in variants:
                info[variant][key + "ratios"].append(first_ms / info[variant][key + "ms"][-1])
    for entry in info.values():
        for key in ("", "stream_"):
            entry[key + "ms_median"] = statistics.median(entry[key + "ms"])
            entry[key + "ratio_median"] = statistics.median(entry[key + "ratios"])
    return {"model": model_type, "batch": batch, "dtype": str(dtype).replace("torch.", ""), "rounds": rounds,
            "repeat": repeat, "device": _device_label(device), "variants": info}


def _device_label(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def markdown_table(results: Sequence[EncoderResult]) -> str:
    """The results as a markdown table."""
    head = "| model | variant | B | dtype | ms (p50) | ms (p90) | img/s | x original | peak GB | max dev | rel dev | first call s | backend |"
    lines = [head, "|" + "---|" * 13]
    for r in results:
        if r.error:
            lines.append(f"| {r.model} | {r.variant} | {r.batch} | {r.dtype} | failed: {r.error[:80]} |" + " |" * 8)
            continue
        lines.append(
            f"| {r.model} | {r.variant} | {r.batch} | {r.dtype} | {r.ms:.2f} | {r.ms_p90:.2f} | {r.images_per_s:.1f} | "
            f"{r.speedup:.2f} | {r.peak_mem_gb:.2f} | {r.max_dev:.3g} | {r.rel_dev:.3g} | {r.first_call_s:.1f} | {r.backend} |"
        )
    return "\n".join(lines)


_COMPILE_SUFFIX = {"default": "+compile", "reduce-overhead": "+graphs"}


def quick_variants(recipes: Sequence[str], compile: str | None = None, gelu: str = "exact") -> list[str]:
    """The variants of :func:`quick_table`: original and SDPA, then each recipe ("dense" or a
    mask recipe for the global blocks); with ``gelu="tanh"`` each recipe once more with the
    approximate fused-GELU MLPs (``optimize(gelu="tanh")``); with ``compile`` ("default" or
    "reduce-overhead"), the original and every recipe row once more through ``torch.compile`` /
    ``samsparse.optimize``."""
    if compile is not None and compile not in _COMPILE_SUFFIX:
        raise ValueError(f"compile must be one of {sorted(_COMPILE_SUFFIX)} or None, got {compile!r}")
    if gelu not in GELU_MODES:
        raise ValueError(f"gelu must be one of {GELU_MODES}, got {gelu!r}")
    patched = ["dense" if r == "dense" else f"sparse:{r}" for r in recipes]
    if gelu == "tanh":
        patched += [p + "+tanhgelu" for p in patched]
    variants = ["original", "sdpa"] + patched
    if compile is not None:
        suffix = _COMPILE_SUFFIX[compile]
        variants += [v + suffix for v in ["original"] + patched]
    return variants


def quick_table(
    model_type: str = "vit_b",
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    batch_sizes: Sequence[int] = (1,),
    recipes: Sequence[str] = ("dense", "hierarchical:density=0.25"),
    checkpoint: str | None = None,
    image_size: int | None = None,
    compile: str | None = None,
    gelu: str = "exact",
) -> list[dict]:
    """A quick table for this device (``samsparse bench``): original vs patched variants.

    ``recipes``: "dense" -> the dense patched encoder, anything else -> that recipe on
    the global blocks. ``compile``: also time the original under ``torch.compile`` and each
    recipe through ``samsparse.optimize(compile=...)`` ("default", or "reduce-overhead" for
    CUDA graphs); the "first call s" column then shows the compile time. ``gelu="tanh"`` adds
    rows with the opt-in approximate GELU (see :func:`quick_variants`).
    On CPU the default image size drops to 256 to stay quick.
    ``checkpoint`` is accepted for symmetry with the CLI; speed does not depend on weights,
    so random weights of the same size are used.
    """
    variants = quick_variants(recipes, compile, gelu)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    size = image_size or (1024 if device.type == "cuda" else 256)
    repeat = 10 if device.type == "cuda" else 2
    rows = bench_encoder(model_type, batch_sizes, dtype, device, variants, img_size=size, warmup=1, repeat=repeat)
    return [r.to_dict() for r in rows]
