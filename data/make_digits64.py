"""Writes data/digits64.csv: the same 1,797 scikit-learn 8x8 digits as data/digits/, as
64-dimensional vectors (columns p0..p63, row-major pixels, integer values 0..16, in
`load_digits()` order) for tabular density estimation. Source and licence: see data/README.md
(UCI Optical Recognition of Handwritten Digits, CC BY 4.0). Run with any Python that has
scikit-learn:  python data/make_digits64.py
"""
import os

from sklearn.datasets import load_digits

here = os.path.dirname(os.path.abspath(__file__))
images = load_digits().data.astype(int)
with open(os.path.join(here, "digits64.csv"), "w") as f:
    f.write(",".join(f"p{i}" for i in range(64)) + "\n")
    for row in images:
        f.write(",".join(str(v) for v in row) + "\n")
print(f"wrote {len(images)} rows to data/digits64.csv")
