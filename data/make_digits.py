#!/usr/bin/env python3
"""Export the scikit-learn 8x8 handwritten digits as PNG files.

Source
    ``sklearn.datasets.load_digits()``: scikit-learn's bundled copy of the
    test set of the UCI Machine Learning Repository data set "Optical
    Recognition of Handwritten Digits" by E. Alpaydin and C. Kaynak
    (https://doi.org/10.24432/C50P49). 1,797 images, 8x8 pixels, each pixel
    an integer 0..16, labels 0..9.

Licence
    The UCI data set is distributed under the Creative Commons Attribution
    4.0 International licence (CC BY 4.0). The PNGs written by this script
    are a derived form of that data and carry the same licence.

Output (relative to this script's folder)
    digits/train/<label>/<index:04d>.png   1,437 images
    digits/test/<label>/<index:04d>.png      360 images

    <index> is the image's index in load_digits() order, <label> its class.
    Each PNG is 8-bit greyscale (Pillow mode "L"), 8x8, with pixel value
    round(v * 255 / 16) (halves round up; only v = 8 -> 127.5 -> 128 is a
    half), so the images use only 17 distinct grey levels.

Split
    perm = numpy.random.default_rng(0).permutation(1797); perm[:1437] are the
    training indices, perm[1437:] the test indices.

Reproducibility
    The script deletes and recreates digits/ on every run and writes PNGs
    with no metadata chunks (no timestamps), so two runs give byte-identical
    files (check with ``sha256sum``).

How to run (any Python 3 with these packages; a throwaway venv is enough)
    python3 -m venv /tmp/skvenv
    /tmp/skvenv/bin/pip install scikit-learn pillow numpy
    /tmp/skvenv/bin/python data/make_digits.py
"""

import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

N_IMAGES = 1797
N_TRAIN = 1437
SEED = 0

OUT_DIR = Path(__file__).resolve().parent / "digits"


def to_grey(image):
    """Map values 0..16 to 0..255 as round(v * 255 / 16), halves up."""
    v = np.asarray(image, dtype=np.int64)
    if v.shape != (8, 8) or v.min() < 0 or v.max() > 16:
        raise ValueError(f"unexpected image: shape {v.shape}, range {v.min()}..{v.max()}")
    # floor(v * 255 / 16 + 1/2) in exact integer arithmetic.
    return ((v * 255 * 2 + 16) // 32).astype(np.uint8)


def main():
    digits = load_digits()
    images, labels = digits.images, digits.target
    if len(images) != N_IMAGES:
        raise SystemExit(f"expected {N_IMAGES} images, got {len(images)}")

    perm = np.random.default_rng(SEED).permutation(N_IMAGES)
    splits = {"train": perm[:N_TRAIN], "test": perm[N_TRAIN:]}

    if OUT_DIR.exists():
        shutil.rmtree(OUT_DIR)
    for split in splits:
        for label in range(10):
            (OUT_DIR / split / str(label)).mkdir(parents=True)

    for split, indices in splits.items():
        for index in sorted(int(i) for i in indices):
            label = int(labels[index])
            img = Image.fromarray(to_grey(images[index]))
            assert img.mode == "L" and img.size == (8, 8)
            path = OUT_DIR / split / str(label) / f"{index:04d}.png"
            # No pnginfo / no optimize: output depends only on the pixels.
            img.save(path, format="PNG")
        print(f"{split}: {len(indices)} images")


if __name__ == "__main__":
    main()
