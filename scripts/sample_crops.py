"""Natural-image crops for INT8 calibration and checks when no dataset is at hand.

    python scripts/sample_crops.py OUT [--count 128] [--size 288] [--seed 0]

Random square crops (25-100 % of the short side, half of them mirrored) of the two photographs
scikit-learn ships (``china.jpg``, ``flower.jpg``), saved as JPEG. Natural-image statistics, no
labels, no download: what we calibrate and check flexivit_small's INT8 bundle on here. With
``build --calib-dir OUT --parity-samples N`` the first N files (sorted) check, the next 64 calibrate.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=128)
    parser.add_argument("--size", type=int, default=288)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(image) for image in load_sample_images().images]
    rng = np.random.default_rng(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    for i in range(args.count):
        photo = photos[rng.integers(len(photos))]
        w, h = photo.size
        side = int(rng.uniform(0.25, 1.0) * min(w, h))
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        crop = photo.crop((x, y, x + side, y + side)).resize((args.size, args.size), Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crop.save(args.out / f"crop_{i:04d}.jpg", quality=92)
    print(f"wrote {args.count} crops to {args.out}")


if __name__ == "__main__":
    main()
