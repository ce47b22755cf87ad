"""Writes data/breast_cancer.csv: the Breast Cancer Wisconsin (Diagnostic) data, 569 rows of 30
numeric features and the diagnosis, from scikit-learn's bundled copy of the UCI data set
(sklearn.datasets.load_breast_cancer). Source and licence (CC BY 4.0): see data/README.md.
Columns: the 30 feature names with spaces replaced by underscores, in scikit-learn's order,
then `benign` (1 = benign, 0 = malignant, scikit-learn's target). Values are written with %.10g,
which reproduces the bundled file's values exactly. Run with any Python that has scikit-learn:
    python data/make_breast_cancer.py
"""
import os

from sklearn.datasets import load_breast_cancer

here = os.path.dirname(os.path.abspath(__file__))
d = load_breast_cancer()
names = [n.replace(" ", "_") for n in d.feature_names] + ["benign"]
with open(os.path.join(here, "breast_cancer.csv"), "w") as f:
    f.write(",".join(names) + "\n")
    for row, y in zip(d.data, d.target):
        f.write(",".join("%.10g" % v for v in row) + ",%d\n" % y)
print(f"wrote {len(d.data)} rows to data/breast_cancer.csv")
