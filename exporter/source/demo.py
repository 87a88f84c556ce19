"""The shipped demo FlexiViT: where its files live and how its digit images are made.

The demo is a 4-block, 96-wide FlexiViT trained on scikit-learn's 8x8 digits upscaled to
64x64 (``scripts/train_demo.py``). Its held-out digits ship beside the weights so that a build
can check parity on real images and ``evaluate`` can measure accuracy with no download.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ASSETS = Path(__file__).resolve().parents[1] / "assets"
DEMO_WEIGHTS = ASSETS / "flexivit_demo.safetensors"
DEMO_SAMPLES = ASSETS / "demo_digits.npz"
DEMO_NAME = "flexivit-demo"
DEMO_IMG_SIZE = 64
DIGIT_MEAN = (0.5, 0.5, 0.5)
DIGIT_STD = (0.5, 0.5, 0.5)


def digits_to_pixels(digits: np.ndarray, img_size: int = DEMO_IMG_SIZE) -> np.ndarray:
    """``[N, 8, 8]`` digits (0..16) → normalised float32 ``[N, 3, img, img]`` pixel values.

    Bilinear upscaling, grey replicated to three channels, then mean/std 0.5 as recorded in
    the demo's config. The training script uses this very function.
    """
    import torch
    import torch.nn.functional as F

    grey = torch.as_tensor(np.asarray(digits, dtype=np.float32) / 16.0)[:, None]
    big = F.interpolate(grey, size=(img_size, img_size), mode="bilinear", align_corners=False)
    rgb = big.clamp(0.0, 1.0).expand(-1, 3, -1, -1)
    mean = torch.tensor(DIGIT_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(DIGIT_STD).view(1, 3, 1, 1)
    return ((rgb - mean) / std).numpy().astype(np.float32)


def load_demo_digits(split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """The shipped held-out (``"test"``) or calibration (``"calib"``) digits and labels."""
    with np.load(DEMO_SAMPLES) as data:
        return data[f"{split}_images"], data[f"{split}_labels"]


def digits_to_uint8(digits: np.ndarray, img_size: int = DEMO_IMG_SIZE) -> np.ndarray:
    """``digits_to_pixels`` before normalisation, as uint8 RGB ``[N, img, img, 3]``: the form in
    which a bundle stores real parity images (``exporter.bundle.reference``)."""
    pixels = digits_to_pixels(digits, img_size) * np.asarray(DIGIT_STD, dtype=np.float32).reshape(1, 3, 1, 1)
    pixels += np.asarray(DIGIT_MEAN, dtype=np.float32).reshape(1, 3, 1, 1)
    return np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
