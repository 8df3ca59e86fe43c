"""Shared fixtures: a tiny random SAM (and its checkpoint), generated test images, a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

#: Image side of the tiny test model (token grid 8x8); small and fast on CPU.
TINY_IMG = 128


def make_tiny_sam(img_size: int = TINY_IMG, seed: int = 0):
    """A tiny random-init SAM whose masks are not trivial.

    The random decoder's mask logits are ~0.03 in size, so every pixel sits next to the
    threshold; scaling the hypernetwork output layers makes logits O(1), the masks
    varied and the comparison with tiny numerical differences meaningful.
    """
    from samsparse.checkpoints import build_tiny_sam

    sam = build_tiny_sam(img_size=img_size, seed=seed, window_size=4, global_attn_indexes=(1,))
    with torch.no_grad():
        for mlp in sam.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(30.0)
    return sam.eval()


@pytest.fixture
def tiny_sam():
    return make_tiny_sam()


def synthetic_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """RGB uint8 [H, W, 3]: a background, two coloured shapes and a little noise."""
    rng = np.random.default_rng(seed)
    img = np.full((height, width, 3), 40, np.uint8)
    img[height // 5 : height // 2, width // 4 : (3 * width) // 4] = (200, 60, 50)
    yy, xx = np.mgrid[:height, :width]
    circle = (yy - 0.7 * height) ** 2 + (xx - 0.3 * width) ** 2 < (min(height, width) / 6) ** 2
    img[circle] = (50, 180, 220)
    img = img.astype(np.int16) + rng.integers(-10, 10, img.shape)
    return img.clip(0, 255).astype(np.uint8)


def save_png(path: Path, array: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(array).save(path)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """An original-format checkpoint (plain Sam state dict) of the tiny model."""
    from samsparse.checkpoints import save_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "tiny_sam.pth"
    save_checkpoint(path, make_tiny_sam().state_dict())
    return path


@pytest.fixture(scope="session")
def good_images(tmp_path_factory) -> list[Path]:
    """Two small RGB PNGs of different sizes."""
    d = tmp_path_factory.mktemp("good")
    return [save_png(d / "a.png", synthetic_image(90, 120, 1)), save_png(d / "b.png", synthetic_image(150, 100, 2))]


def cli_env(**extra: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("SAMSPARSE_TEST_INTERRUPT", None)
    env.update(extra)
    return env


def run_cli(*args: str, env: dict | None = None, timeout: float = 180, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m samsparse.cli ARGS`` (the console script's code) in a subprocess."""
    cmd = [sys.executable, "-m", "samsparse.cli", *map(str, args)]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=env or cli_env(), cwd=cwd, stdin=subprocess.DEVNULL
    )


@pytest.fixture
def cli():
    return run_cli


def tmp_leftovers(root: Path) -> list[Path]:
    """Temporary files of atomic writes under ``root`` (there must never be any after a clean exit)."""
    return [p for p in root.rglob("*") if p.name.endswith(".samsparse-tmp") or p.name.endswith(".tmp")]
