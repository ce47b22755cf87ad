#!/usr/bin/env python3
"""Out-of-distribution sets for `make ood-table` (scripts/ood_table.sh), from data we have.

Standard library only; every random draw is seeded, so the sets (and the table) are the same on
every run.

    make_ood_sets.py images FASHION_DIR OUT_DIR    # image sets, each OUT_DIR/<name>/ an IDX folder
    make_ood_sets.py digits64 CLASS OUT_DIR        # digits64.csv split for "find the left-out class"

Image sets (28x28 grey, written as OUT_DIR/<name>/t10k-images-idx3-ubyte, which flowzoo reads
as an IDX folder):
- noise:    2,000 images of independent uniform pixels 0..255;
- constant: 2,000 images of one grey level each, uniform in 0..255;
- flipped:  the 10,000 Fashion-MNIST test images upside down;
- inverted: the 10,000 test images as negatives (255 - k);
- shuffled: 2,000 test images with their pixels in a random order (the same grey levels,
            no structure);
- digits:   the 1,797 bundled 8x8 digits (data/digits, copied as PNGs: flowzoo resizes them to
            28x28 on loading, as it would any folder of smaller images).

digits64: three CSV files of data/digits64.csv's rows (labels from data/digits' file names,
`<split>/<label>/<row>.png`): `train.csv` (the training split's rows of every other class),
`test.csv` (the test split's rows of every other class) and `ood.csv` (every row of CLASS).
"""
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
    magic, n, rows, cols = struct.unpack(">IIII", data[:16])
    if magic != 0x803 or (rows, cols) != (SIDE, SIDE):
        sys.exit(f"{path}: not 28x28 IDX images (magic 0x{magic:08x}, {rows}x{cols})")
    body = data[16:]
    return [body[i * PIXELS:(i + 1) * PIXELS] for i in range(n)]


def fashion_test(folder):
    for name in ("t10k-images-idx3-ubyte", "t10k-images-idx3-ubyte.gz", "t10k-images.idx3-ubyte", "t10k-images.idx3-ubyte.gz"):
        p = os.path.join(folder, name)
        if os.path.isfile(p):
            return read_idx_images(p)
    sys.exit(f"{folder}: no Fashion-MNIST test images (t10k-images-idx3-ubyte[.gz]); see data/README.md")


def write_idx(folder, images):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "t10k-images-idx3-ubyte"), "wb") as f:
        f.write(struct.pack(">IIII", 0x803, len(images), SIDE, SIDE))
        for img in images:
            f.write(bytes(img))


def flip_upside_down(img):
    return b"".join(img[r * SIDE:(r + 1) * SIDE] for r in reversed(range(SIDE)))


def images(fashion_dir, out):
    test = fashion_test(fashion_dir)
    rng = random.Random(0)
    sets = {
        "noise": [bytes(rng.randrange(256) for _ in range(PIXELS)) for _ in range(2000)],
        "constant": [bytes([rng.randrange(256)]) * PIXELS for _ in range(2000)],
        "flipped": [flip_upside_down(img) for img in test],
        "inverted": [bytes(255 - v for v in img) for img in test],
    }
    shuffled = []
    for img in rng.sample(test, 2000):
        px = list(img)
        rng.shuffle(px)
        shuffled.append(bytes(px))
    sets["shuffled"] = shuffled
    for name, imgs in sets.items():
        write_idx(os.path.join(out, name), imgs)
    digits = os.path.join(out, "digits")
    shutil.rmtree(digits, ignore_errors=True)
    src = os.path.join(REPO, "data", "digits")
    for split in ("train", "test"):
        for label in sorted(os.listdir(os.path.join(src, split))):
            os.makedirs(os.path.join(digits, label), exist_ok=True)
            for f in os.listdir(os.path.join(src, split, label)):
                shutil.copyfile(os.path.join(src, split, label, f), os.path.join(digits, label, f))


def digits64(left_out, out):
    labels = {}  # row -> (split, label)
    for split in ("train", "test"):
        root = os.path.join(REPO, "data", "digits", split)
        for label in os.listdir(root):
            for f in os.listdir(os.path.join(root, label)):
                labels[int(f.split(".")[0])] = (split, label)
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


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "images":
        images(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 4 and sys.argv[1] == "digits64":
        digits64(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
