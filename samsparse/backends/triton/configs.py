"""Tile configs for the Triton attention kernel, and their autotuning cache.

A config is (BLOCK_M, BLOCK_N, num_warps, num_stages). The first call of a
*shape class* (GPU, Triton version, dtype, head dim, key-loop mode, mask
geometry, size buckets; see :func:`shape_key`) times a few candidates on the
real inputs and keeps the fastest; the choice is stored in a small JSON file
under ``$SAMSPARSE_HOME/triton/`` (default ``~/.cache/samsparse/triton/``), so
later processes start with it. Every later call is a dict lookup: no timing,
no host synchronisation.

Environment:

- ``SAMSPARSE_TRITON_AUTOTUNE=0`` — never time candidates; use
  :func:`default_config` (also used under ``TRITON_INTERPRET=1`` and while a
  CUDA graph is being captured).
- ``SAMSPARSE_HOME`` — cache root.

Shipped tuning: ``tuned/*.json`` next to this module holds the choices the autotuner
made for SAM's shape classes on the GPUs we measured (H100 80GB HBM3 and H200 with Triton
3.6, recorded by benchmark runs, timings included, and filed by ``scripts/ship_tuning.py``). They are
read after the user's cache (which wins) so that a cold first call on those GPUs
skips the ~17 s of candidate compiles; keys name the GPU and Triton version, so other
setups tune as before. ``SAMSPARSE_TRITON_SHIPPED=0`` ignores them.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch

from ..._atomic import atomic_path

__all__ = [
    "TileConfig",
    "INTERPRET_CONFIG",
    "autotune_enabled",
    "cache_path",
    "candidates",
    "window_candidates",
    "default_config",
    "device_name",
    "head_dim_split",
    "lookup_or_tune",
    "next_pow2",
    "smaller_configs",
    "shape_key",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TileConfig:
    """One launch configuration of the attention kernel."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int

    def __str__(self) -> str:
        return f"M{self.block_m}/N{self.block_n}/w{self.num_warps}/s{self.num_stages}"

    def __hash__(self) -> int:  # part of every launch's plan key: a plain tuple hash, not the generated one
        return hash((self.block_m, self.block_n, self.num_warps, self.num_stages))


# Under TRITON_INTERPRET=1 (numpy on the CPU): big tiles mean fewer interpreted ops.
INTERPRET_CONFIG = TileConfig(block_m=32, block_n=32, num_warps=4, num_stages=1)


def next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def head_dim_split(d: int) -> tuple[int, int]:
    """(D1, D2): power-of-two parts covering head dim d, each >= 16 (80 -> 64 + 16).

    The kernel runs one ``tl.dot`` per part, so a head dim of 80 costs 80/64 of
    d=64 instead of 128/64 when padded to the next power of two.
    """
    if d <= 16:
        return 16, 0
    d1 = 1 << (d.bit_length() - 1)  # largest power of two <= d
    rest = d - d1
    if rest == 0:
        return d1, 0
    d2 = max(16, next_pow2(rest))
    if d2 >= d1:  # e.g. d=17..31 -> one padded part is as good
        return next_pow2(d), 0
    return d1, d2


def default_config(head_dim: int, dtype: torch.dtype) -> TileConfig:
    """A good config without timing (H100-minded)."""
    if dtype == torch.float32:  # exact fp32 products (no tf32): CUDA-core FMAs, keep tiles small
        return TileConfig(16, 16, 4, 2) if head_dim > 128 else TileConfig(16, 32, 4, 2)
    if head_dim > 128:
        return TileConfig(64, 32, 4, 2)
    if head_dim > 64:
        return TileConfig(128, 64, 8, 3)
    # H100, d=64: within 1% of the autotuned best in every SAM shape class measured (global dense,
    # 14x14 windows, B=1 and 8), where (128, 64, 8, 3) was 18% slower on the global dense shape
    return TileConfig(64, 64, 4, 3)


def candidates(head_dim: int, dtype: torch.dtype, block_n_fixed: int | None = None) -> list[TileConfig]:
    """Configs worth timing for this head dim / dtype (BLOCK_N fixed in the key-row mode)."""
    if dtype == torch.float32:
        base = [TileConfig(16, 32, 4, 2), TileConfig(16, 16, 4, 2), TileConfig(32, 32, 4, 2)]
    elif head_dim > 128:
        base = [TileConfig(64, 32, 4, 2), TileConfig(64, 64, 8, 2), TileConfig(128, 32, 8, 2)]
    else:
        base = [
            TileConfig(128, 64, 8, 3),
            TileConfig(128, 64, 4, 3),
            TileConfig(128, 64, 8, 2),
            TileConfig(128, 64, 8, 4),
            TileConfig(128, 128, 8, 2),
            TileConfig(128, 128, 8, 3),
            TileConfig(64, 64, 4, 3),
            TileConfig(64, 64, 4, 4),
        ]
        if head_dim > 64:
            base = [c for c in base if not (c.block_n == 128 and c.num_stages > 2)]
    out: list[TileConfig] = []
    for c in base:
        if block_n_fixed is not None:
            c = TileConfig(c.block_m, block_n_fixed, c.num_warps, c.num_stages)
        if c not in out:
            out.append(c)
    return out


def window_candidates(head_dim: int) -> list[TileConfig]:
    """Configs worth timing for short sequences with the one-hot bias (SAM's 196-token windows).

    BLOCK_N = 256 reads a whole window in one step (no online-softmax rescaling).
    """
    if head_dim > 128:
        return [TileConfig(64, 64, 4, 2), TileConfig(32, 128, 4, 2), TileConfig(64, 128, 8, 2)]
    # narrow key steps waste less on the 196 -> 224 (N=32) than 196 -> 256 (N>=64) padding: on an
    # H100 (bf16, B=8) M64/N32/w4/s3 beat the best N>=64 config by 10% at d=64 and M128/N32/w8/s3
    # by 17% at d=80 (scripts/sweep_window_configs.py)
    out = [
        TileConfig(64, 32, 4, 3),
        TileConfig(64, 32, 4, 2),
        TileConfig(128, 32, 8, 3),
        TileConfig(64, 64, 4, 3),
        TileConfig(64, 256, 4, 2),
        TileConfig(64, 128, 4, 2),
        TileConfig(128, 256, 8, 2),
    ]
    if head_dim > 64:
        # d=80 (vit_h) with BLOCK_N=256 computed wrong results and then faulted (illegal memory
        # access) on an H100 with Triton 3.6, while the interpreter agrees with the reference: a
        # code-generation problem of the 64 + 16 split at that tile width, so not a candidate
        out = [c for c in out if c.block_n < 256]
    return out


def smaller_configs(config: TileConfig, head_dim: int | None = None) -> list[TileConfig]:
    """Configs with a smaller shared-memory footprint than ``config``, largest first.

    Fewer pipeline stages first (each stage holds a K and a V tile), then narrower key
    tiles, then fewer query rows; down to (16, 16, 4 warps, 1 stage). For a head dim that
    is split in two parts (e.g. 80 = 64 + 16) the floor is 2 stages: a 1-stage window
    config computed wrong results at d=80 on an H100 (see NOTES.md).
    """
    out: list[TileConfig] = []
    m, n, w, s = config.block_m, config.block_n, config.num_warps, config.num_stages
    min_stages = 2 if head_dim is not None and head_dim_split(head_dim)[1] > 0 else 1
    s = max(s, min_stages)
    while True:
        if s > min_stages:
            s -= 1
        elif n > 16:
            n, s = n // 2, max(min_stages, min(config.num_stages, 2))
        elif m > 16:
            m, s = m // 2, max(min_stages, min(config.num_stages, 2))
        else:
            break
        c = TileConfig(m, n, w if m >= 128 else 4, s)
        if c not in out and c != config:
            out.append(c)
    return out


# ---------------------------------------------------------------------------- keys
_DEVICE_NAMES: dict[int, str] = {}


def device_name(device: torch.device) -> str:
    """'NVIDIA H100 80GB HBM3/sm90' (cached per device index)."""
    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    name = _DEVICE_NAMES.get(index)
    if name is None:
        props = torch.cuda.get_device_properties(index)
        name = f"{props.name}/sm{props.major}{props.minor}"
        _DEVICE_NAMES[index] = name
    return name


def _size_bucket(n: int) -> int:
    return next_pow2(max(int(n), 1))


def shape_key(device: torch.device, dtype: torch.dtype, head_dim: int, **geometry) -> str:
    """The shape class a tuned config is stored under."""
    import triton

    parts = [device_name(device), f"triton{triton.__version__}", str(dtype).replace("torch.", ""), f"d{head_dim}"]
    for name in sorted(geometry):
        value = geometry[name]
        if name in ("nq", "nk"):
            value = _size_bucket(value)
        parts.append(f"{name}={value}")
    return "|".join(parts)


# ---------------------------------------------------------------------------- cache
def cache_path() -> Path:
    root = os.environ.get("SAMSPARSE_HOME")
    base = Path(root) if root else Path.home() / ".cache" / "samsparse"
    return base / "triton" / "autotune.json"


def autotune_enabled(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    if os.environ.get("SAMSPARSE_TRITON_AUTOTUNE", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    try:
        if torch.cuda.is_current_stream_capturing():
            return False
    except Exception:  # pragma: no cover - older torch
        pass
    return True


class _DiskCache:
    """key -> TileConfig, in memory, mirrored to a JSON file (best effort)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._mem: dict[str, TileConfig] = {}
        self._loaded_from: Path | None = None

    def _load(self) -> None:
        path = cache_path()
        if self._loaded_from == path:
            return
        self._loaded_from = path
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            data = {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable Triton autotune cache %s: %s", path, exc)
            data = {}
        self._merge(data)  # the user's own tuning first: setdefault keeps it over the shipped one
        self._load_shipped()

    def _merge(self, data: dict) -> None:
        for key, entry in data.items():
            try:
                self._mem.setdefault(key, TileConfig(**entry["config"]))
            except (TypeError, KeyError):
                continue

    def _load_shipped(self) -> None:
        if os.environ.get("SAMSPARSE_TRITON_SHIPPED", "1").strip().lower() in ("0", "false", "no", "off"):
            return
        aliases: dict = {}
        for path in sorted((Path(__file__).parent / "tuned").glob("*.json")):
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError) as exc:  # pragma: no cover - a broken install
                log.warning("ignoring unreadable shipped Triton tuning %s: %s", path, exc)
                continue
            self._merge(data)
            aliases.update(fixed_offset_aliases(data))
        self._merge(aliases)  # after every exact entry: a recorded ':fx' choice wins over its alias

    def get(self, key: str) -> TileConfig | None:
        with self._lock:
            self._load()
            return self._mem.get(key)

    def put(self, key: str, config: TileConfig, timings: dict[str, float]) -> None:
        with self._lock:
            self._mem[key] = config
            path = cache_path()
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                try:
                    data = json.loads(path.read_text())
                except (FileNotFoundError, ValueError):
                    data = {}
                data[key] = {"config": asdict(config), "ms": timings}
                with atomic_path(path) as tmp:
                    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            except OSError as exc:
                log.warning("could not write the Triton autotune cache %s: %s", path, exc)

    def clear_memory(self) -> None:
        with self._lock:
            self._mem.clear()
            self._loaded_from = None


CACHE = _DiskCache()


def fixed_offset_aliases(entries: dict) -> dict:
    """Shipped choices of key-row classes, also filed under their fixed-offset (``:fx``) key.

    The fixed-offset kernel is the running-max kernel of the same geometry with a cheaper softmax;
    for a GPU whose ``:fx`` classes were not recorded yet, the running-max choice is the starting
    point instead of a cold autotune on the first call (on an H200, the best running-max config
    was also the best fixed-offset one for vit_b at B=8 and B=1).
    """
    out = {}
    for key, entry in entries.items():
        if ":dot0|" in key:  # (masked classes too: masks with long rows take the pass)
            out[key.replace(":dot0|", ":dot0:fx|")] = entry
    return out


def lookup_or_tune(
    key: str,
    configs: Iterable[TileConfig],
    run: Callable[[TileConfig], None],
    fallback: TileConfig,
) -> TileConfig:
    """The cached config for ``key``, or the fastest of ``configs`` timed with ``run``.

    ``run(config)`` launches the kernel once with that config (on the real
    inputs; it must not mutate them). Configs that fail to compile or run
    (e.g. out of shared memory) are skipped; if all fail, ``fallback``.
    """
    hit = CACHE.get(key)
    if hit is not None:
        return hit
    from triton.testing import do_bench

    timings: dict[str, float] = {}
    best, best_ms = None, float("inf")
    for config in configs:
        try:
            run(config)  # compile + first launch
            ms = do_bench(lambda: run(config), warmup=5, rep=25, return_mode="median")
        except Exception as exc:  # compile error, out of resources, ...
            log.debug("Triton config %s failed for %s: %s", config, key, exc)
            continue
        timings[str(config)] = round(float(ms), 5)
        if ms < best_ms:
            best, best_ms = config, ms
    if best is None:
        log.warning("no Triton config ran for %s; using %s", key, fallback)
        best = fallback
    log.info("Triton autotune %s -> %s (%.3f ms) of %s", key, best, best_ms, timings)
    CACHE.put(key, best, timings)
    return best
