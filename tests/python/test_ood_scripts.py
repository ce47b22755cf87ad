"""The scripts behind `make ood-table`: scripts/make_ood_sets.py (the out-of-distribution image
sets and the digits64 split without one class) and scripts/ood_tables.py (the tables and the
README blocks), on small inputs made here. Standard library only, like the scripts."""
import json
import os
import pathlib
import random
import struct
import subprocess
import sys
import zlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SETS = ROOT / "scripts" / "make_ood_sets.py"
TABLES = ROOT / "scripts" / "ood_tables.py"
SIDE = 28


def run(script, *args, ok=True):
    r = subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True)
    if ok:
        assert r.returncode == 0, r.stderr
    else:
        assert r.returncode != 0, f"{script.name} {args} should have failed"
    return r


def write_idx(path, images):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack(">IIII", 0x803, len(images), SIDE, SIDE) + b"".join(images))


def read_idx(path):
    data = path.read_bytes()
    magic, n, rows, cols = struct.unpack(">IIII", data[:16])
    assert (magic, rows, cols) == (0x803, SIDE, SIDE) and len(data) == 16 + n * SIDE * SIDE
    return [data[16 + i * SIDE * SIDE:16 + (i + 1) * SIDE * SIDE] for i in range(n)]


def png_grey_pixels(path):
    """The pixels of an 8-bit greyscale PNG (what data/make_digits.py writes)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, colour = struct.unpack(">IIBB", body[:10])
            assert (depth, colour) == (8, 0), path
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw, rows, prev = zlib.decompress(idat), [], bytes(w)
    for r in range(h):
        f, line = raw[r * (w + 1)], bytearray(raw[r * (w + 1) + 1:(r + 1) * (w + 1)])
        for i in range(w):
            a, b, c = line[i - 1] if i else 0, prev[i], prev[i - 1] if i else 0
            p = a + b - c
            pred = [0, a, b, (a + b) // 2, a if abs(p - a) <= min(abs(p - b), abs(p - c)) else (b if abs(p - b) <= abs(p - c) else c)][f]
            line[i] = (line[i] + pred) % 256
        rows.append(bytes(line))
        prev = rows[-1]
    return b"".join(rows)


def fake_fashion(folder, n_test=40, n_train=30):
    rng = random.Random(1)
    test = [bytes(rng.randrange(256) for _ in range(SIDE * SIDE)) for _ in range(n_test)]
    train = [bytes(rng.randrange(256) for _ in range(SIDE * SIDE)) for _ in range(n_train)]
    write_idx(folder / "t10k-images-idx3-ubyte", test)
    write_idx(folder / "train-images-idx3-ubyte", train)
    return test, train


def flip(img):
    return b"".join(img[r * SIDE:(r + 1) * SIDE] for r in reversed(range(SIDE)))


def test_image_sets_are_seeded_disjoint_and_what_they_say(tmp_path):
    test, train = fake_fashion(tmp_path / "fashion")
    run(SETS, "images", tmp_path / "fashion", tmp_path / "a", "--n-in", 10, "--n-ood", 6, "--seed", 3)
    sets = {name: read_idx(tmp_path / "a" / name / "t10k-images-idx3-ubyte") for name in ("in", "train", "noise", "constant", "shuffled", "inverted", "flipped")}
    assert {k: len(v) for k, v in sets.items()} == {"in": 10, "train": 6, "noise": 6, "constant": 6, "shuffled": 6, "inverted": 6, "flipped": 6}
    inliers = sets["in"]
    assert len(set(inliers)) == 10 and all(img in test for img in inliers)
    assert all(img in train for img in sets["train"])
    assert all(len(set(img)) == 1 for img in sets["constant"])
    # The transformed sets come from the same test images, none of them in the in-distribution set.
    sources = [bytes(255 - v for v in img) for img in sets["inverted"]]
    assert all(s in test and s not in inliers for s in sources)
    assert [flip(img) for img in sets["flipped"]] == sources
    assert [sorted(img) for img in sets["shuffled"]] == [sorted(s) for s in sources]
    assert all(img != s for img, s in zip(sets["shuffled"], sources))
    digits = sorted((tmp_path / "a" / "digits").rglob("*.png"))
    assert len(digits) == 6 and all(d.parent.name in "0123456789" for d in digits)
    # Seeded: the same arguments give the same bytes, another seed other inputs.
    run(SETS, "images", tmp_path / "fashion", tmp_path / "b", "--n-in", 10, "--n-ood", 6, "--seed", 3)
    run(SETS, "images", tmp_path / "fashion", tmp_path / "c", "--n-in", 10, "--n-ood", 6, "--seed", 4)
    for name in sets:
        a = (tmp_path / "a" / name / "t10k-images-idx3-ubyte").read_bytes()
        assert a == (tmp_path / "b" / name / "t10k-images-idx3-ubyte").read_bytes(), name
    assert read_idx(tmp_path / "c" / "in" / "t10k-images-idx3-ubyte") != inliers
    assert sorted(p.name for p in digits) == sorted(p.name for p in (tmp_path / "b" / "digits").rglob("*.png"))


def test_image_sets_refuse_too_many_and_bad_files(tmp_path):
    fake_fashion(tmp_path / "fashion", n_test=12)
    r = run(SETS, "images", tmp_path / "fashion", tmp_path / "o", "--n-in", 10, "--n-ood", 3, ok=False)
    assert "more than the 12 test images" in r.stderr
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "t10k-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, 5, SIDE, SIDE) + bytes(100))
    r = run(SETS, "images", tmp_path / "bad", tmp_path / "o", ok=False)
    assert "truncated" in r.stderr and "t10k-images-idx3-ubyte" in r.stderr
    r = run(SETS, "images", tmp_path / "nothing", tmp_path / "o", ok=False)
    assert "no Fashion-MNIST t10k images" in r.stderr


def test_digits64_without_one_class(tmp_path):
    # Which class each row is, from the bundled PNGs' pixels (make_digits.py writes round(v*255/16)).
    by_pixels = {}
    for png in (ROOT / "data" / "digits").rglob("*.png"):
        by_pixels.setdefault(png_grey_pixels(png), set()).add((png.parent.parent.name, png.parent.name))
    header, *rows = (ROOT / "data" / "digits64.csv").read_text().splitlines()

    def where(row):
        return by_pixels[bytes((int(v) * 255 * 2 + 16) // 32 for v in row.split(","))]

    run(SETS, "digits64", "3", tmp_path)
    parts = {name: (tmp_path / name).read_text().splitlines() for name in ("train.csv", "test.csv", "ood.csv")}
    assert all(p[0] == header for p in parts.values())
    assert sum(len(p) - 1 for p in parts.values()) == len(rows) == 1797
    assert all(w[1] == "3" for r in parts["ood.csv"][1:] for w in [next(iter(where(r)))])
    assert len(parts["ood.csv"]) - 1 == sum(1 for r in rows if ("3" in {lab for _, lab in where(r)}))
    for split in ("train", "test"):
        for r in parts[f"{split}.csv"][1:]:
            assert any(s == split and lab != "3" for s, lab in where(r)), (split, r)
    r = run(SETS, "digits64", "x", tmp_path / "bad", ok=False)
    assert "no digit class 'x'" in r.stderr


def write_scores(path, column, values, extra=None):
    cols = [column] + ([extra[0]] if extra else [])
    lines = [",".join(["path"] + cols)]
    for i, v in enumerate(values):
        lines.append(",".join([f"x#{i}", str(v)] + ([str(extra[1][i])] if extra else [])))
    path.write_text("\n".join(lines) + "\n")


def metrics(nll, typ, cx=None):
    s = {"nll": {"auroc": nll, "auprc": 0.5, "fpr95": 0.9}, "typicality": {"auroc": typ, "auprc": 0.6, "fpr95": 0.4}}
    if cx is not None:
        s["complexity"] = {"auroc": cx, "auprc": 0.99, "fpr95": 0.01}
    return s


def test_tables_and_readme_blocks(tmp_path):
    work, model = tmp_path / "work", tmp_path / "model"
    work.mkdir()
    model.mkdir()
    (model / "state.json").write_text(json.dumps({"step": 100, "best_step": 90, "best_test_bpd": 3.25}))
    write_scores(work / "in.scores.csv", "bits_per_dim", [3.0, 3.2], ("input_complexity", [2.0, 2.2]))
    for name, auroc in (("train", metrics(0.5, 0.49, 0.51)), ("noise", metrics(1.0, 0.9, 0.9996)), ("constant", metrics(0.2, 0.3, 0.99))):
        (work / f"{name}.ood.json").write_text(json.dumps({"n_in": 2, "n_ood": 3, "scores": auroc}))
        write_scores(work / f"{name}.scores.csv", "bits_per_dim", [5.0, 6.0, 7.0], ("input_complexity", [1.0, 1.0, 4.0]))
    out = tmp_path / "docs" / "t"
    run(TABLES, "images", work, model, 7, out, "train=training images", "noise=uniform noise", "constant=constant images")
    md = (out.with_suffix(".md")).read_text()
    assert "2 Fashion-MNIST test images drawn with seed 7; 3 images per other set" in md
    assert "| training images | 3 | 6.000 | 2.000 | 0.500 | 0.490 | 0.510 |" in md  # a control: no best
    assert "| uniform noise | 3 | 6.000 | 2.000 | **1.000** | 0.900 | **1.000** |" in md
    assert "| constant images | 3 | 6.000 | 2.000 | 0.200 | 0.300 | **0.990** |" in md
    assert "| constant images | 0.500 / 0.900 | 0.600 / 0.400 | 0.990 / 0.010 |" in md
    j = json.loads(out.with_suffix(".json").read_text())
    assert j["in_distribution"]["mean_bits_per_dim"] == pytest.approx(3.1) and j["seed"] == 7
    assert j["sets"]["constant"]["scores"]["complexity"]["auroc"] == 0.99
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- ood-table-images: written by make ood-table -->\nold\n<!-- /ood-table-images -->\nb\n")
    run(TABLES, "readme", readme, "ood-table-images", out.with_suffix(".md"))
    text = readme.read_text()
    assert text.startswith("a\n<!-- ood-table-images: written by make ood-table -->\nModel `") and "\nold\n" not in text and text.endswith("<!-- /ood-table-images -->\nb\n")
    r = run(TABLES, "readme", readme, "ood-table-tabular", out.with_suffix(".md"), ok=False)
    assert "has no <!-- ood-table-tabular" in r.stderr


def test_tabular_table(tmp_path):
    for c, (nll, typ) in (("3", (0.8, 0.7)), ("5", (0.6, 0.9))):
        folder = tmp_path / f"no{c}"
        (folder / "run").mkdir(parents=True)
        (folder / "run" / "state.json").write_text(json.dumps({"step": 500, "best_step": 200, "best_test_bpd": 112.5}))
        (folder / "ood.json").write_text(json.dumps({"n_in": 4, "n_ood": 2, "scores": metrics(nll, typ)}))
        (folder / "in.scores.csv").write_text("line,log_likelihood,nll\n2,-10,10\n3,-20,20\n")
        (folder / "ood.scores.csv").write_text("line,log_likelihood,nll\n2,-100,100\n3,-300,300\n")
    out = tmp_path / "t"
    run(TABLES, "tabular", tmp_path, out, 3, 5)
    md = out.with_suffix(".md").read_text()
    assert "| 3 | 4 | 2 | 15.0 | 200.0 | **0.800** | 0.700 | 0.500 / 0.900 | 0.600 / 0.400 |" in md
    assert "| 5 | 4 | 2 | 15.0 | 200.0 | 0.600 | **0.900** |" in md
    assert "| mean | | | | | 0.700 | 0.800 | | |" in md
    j = json.loads(out.with_suffix(".json").read_text())
    assert j["classes"]["5"]["model"]["best_validation_nll"] == 112.5 and j["mean_auroc"]["nll"] == pytest.approx(0.7)
