#!/usr/bin/env python3
"""Out-of-distribution sets for `make ood-table` (scripts/ood_table.sh, scripts/ood_tabular.sh),
made from data we have.

Standard library only; every random draw is seeded, so the sets (and the tables) are the same
on every run.

    make_ood_sets.py images FASHION_DIR OUT_DIR [--n-in 2000] [--n-ood 500] [--seed 0]
    make_ood_sets.py digits64 CLASS OUT_DIR

Image sets, each written as OUT_DIR/<name>/t10k-images-idx3-ubyte (an IDX folder, which
flowzoo reads as one) except `digits` (PNG files). The test images are shuffled once (seeded):
the first N_IN are the in-distribution set, the next N_OOD the source of the transformed sets,
so no transformed image is a copy of an in-distribution one.
- in:       N_IN Fashion-MNIST test images, as they are (the negatives);
- train:    N_OOD Fashion-MNIST *training* images, as they are: a control, not out of
            distribution (an AUROC near 0.5 says the scores do not merely flag unseen images);
- noise:    N_OOD images of independent uniform pixels 0..255;
- constant: N_OOD images of one grey level each, uniform in 0..255;
- digits:   N_OOD of the 1,797 bundled 8x8 digits (data/digits, copied as PNGs: flowzoo
            resizes them to 28x28, bilinear, on loading, as it would any folder of smaller images);
- shuffled: N_OOD test images with their pixels in a random order (the same grey levels,
            no structure);
- inverted: N_OOD test images as negatives (255 - k): light objects become dark on a light
            background;
- flipped:  N_OOD test images upside down (the same pixels, the same PNG length: only the
            shape is new).

digits64: three CSV files of data/digits64.csv's rows (labels from data/digits' file names,
`<split>/<label>/<row>.png`, the row's index in data/digits64.csv): `train.csv` (the training
split's rows of every other class), `test.csv` (the test split's rows of every other class) and
`ood.csv` (every row of CLASS, both splits).
"""
import argparse
import gzip
import os
import random
import shutil
import struct
import sys

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SIDE = 28
PIXELS = SIDE * SIDE


def read_idx_images(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 16:
        sys.exit(f"{path}: {len(data)} bytes, too short for an IDX header")
    magic, n, rows, cols = struct.unpack(">IIII", data[:16])
    if magic != 0x803 or (rows, cols) != (SIDE, SIDE):
        sys.exit(f"{path}: not 28x28 IDX images (magic 0x{magic:08x}, {rows}x{cols})")
    body = data[16:]
    if len(body) < n * PIXELS:
        sys.exit(f"{path}: truncated, {len(body)} bytes of pixels for {n} images of 28x28")
    return [body[i * PIXELS:(i + 1) * PIXELS] for i in range(n)]


def fashion_part(folder, part):
    """The images of Fashion-MNIST's `t10k` or `train` part, under either naming."""
    for name in (f"{part}-images-idx3-ubyte", f"{part}-images.idx3-ubyte"):
        for suffix in ("", ".gz"):
            p = os.path.join(folder, name + suffix)
            if os.path.isfile(p):
                return read_idx_images(p)
    sys.exit(f"{folder}: no Fashion-MNIST {part} images ({part}-images-idx3-ubyte[.gz]); see data/README.md")


def write_idx(folder, images):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "t10k-images-idx3-ubyte"), "wb") as f:
        f.write(struct.pack(">IIII", 0x803, len(images), SIDE, SIDE))
        for img in images:
            f.write(bytes(img))


def flip_upside_down(img):
    return b"".join(img[r * SIDE:(r + 1) * SIDE] for r in reversed(range(SIDE)))


def shuffle_pixels(img, rng):
    px = list(img)
    rng.shuffle(px)
    return bytes(px)


def images(fashion_dir, out, n_in, n_ood, seed):
    test = fashion_part(fashion_dir, "t10k")
    if n_in + n_ood > len(test):
        sys.exit(f"--n-in {n_in} + --n-ood {n_ood} is more than the {len(test)} test images")
    rng = random.Random(seed)
    order = list(range(len(test)))
    rng.shuffle(order)
    inliers = [test[i] for i in order[:n_in]]
    sources = [test[i] for i in order[n_in:n_in + n_ood]]
    train = fashion_part(fashion_dir, "train")
    sets = {
        "in": inliers,
        "train": [train[i] for i in rng.sample(range(len(train)), n_ood)],
        "noise": [bytes(rng.randrange(256) for _ in range(PIXELS)) for _ in range(n_ood)],
        "constant": [bytes([rng.randrange(256)]) * PIXELS for _ in range(n_ood)],
        "shuffled": [shuffle_pixels(img, rng) for img in sources],
        "inverted": [bytes(255 - v for v in img) for img in sources],
        "flipped": [flip_upside_down(img) for img in sources],
    }
    for name, imgs in sets.items():
        shutil.rmtree(os.path.join(out, name), ignore_errors=True)
        write_idx(os.path.join(out, name), imgs)
    digits = os.path.join(out, "digits")
    shutil.rmtree(digits, ignore_errors=True)
    src = os.path.join(REPO, "data", "digits")
    files = sorted(
        (split, label, f)
        for split in ("train", "test")
        for label in os.listdir(os.path.join(src, split))
        for f in os.listdir(os.path.join(src, split, label))
    )
    if n_ood > len(files):
        sys.exit(f"--n-ood {n_ood} is more than the {len(files)} bundled digits")
    for split, label, f in rng.sample(files, n_ood):
        os.makedirs(os.path.join(digits, label), exist_ok=True)
        shutil.copyfile(os.path.join(src, split, label, f), os.path.join(digits, label, f))


def digits64(left_out, out):
    labels = {}  # row -> (split, label)
    for split in ("train", "test"):
        root = os.path.join(REPO, "data", "digits", split)
        for label in os.listdir(root):
            for f in os.listdir(os.path.join(root, label)):
                labels[int(f.split(".")[0])] = (split, label)
    if left_out not in {label for _, label in labels.values()}:
        sys.exit(f"no digit class {left_out!r} in data/digits (classes 0..9)")
    with open(os.path.join(REPO, "data", "digits64.csv")) as f:
        header, *rows = f.read().splitlines()
    if len(rows) != len(labels):
        sys.exit(f"data/digits64.csv has {len(rows)} rows, data/digits {len(labels)} images")
    parts = {"train.csv": [], "test.csv": [], "ood.csv": []}
    for i, row in enumerate(rows):
        split, label = labels[i]
        if label == left_out:
            parts["ood.csv"].append(row)
        else:
            parts[f"{split}.csv"].append(row)
    os.makedirs(out, exist_ok=True)
    for name, part in parts.items():
        with open(os.path.join(out, name), "w") as f:
            f.write("\n".join([header] + part) + "\n")


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    im = sub.add_parser("images", help="the image sets")
    im.add_argument("fashion_dir")
    im.add_argument("out")
    im.add_argument("--n-in", type=int, default=2000, help="in-distribution test images (default 2000)")
    im.add_argument("--n-ood", type=int, default=500, help="images per out-of-distribution set (default 500)")
    im.add_argument("--seed", type=int, default=0)
    tab = sub.add_parser("digits64", help="digits64.csv without one class")
    tab.add_argument("left_out", metavar="CLASS")
    tab.add_argument("out")
    a = p.parse_args(argv)
    if a.what == "images":
        if a.n_in < 1 or a.n_ood < 1:
            sys.exit("--n-in and --n-ood must be >= 1")
        images(a.fashion_dir, a.out, a.n_in, a.n_ood, a.seed)
    else:
        digits64(a.left_out, a.out)


if __name__ == "__main__":
    main(sys.argv[1:])
