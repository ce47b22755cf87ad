"""Writes the small PyTorch files tests/import.rs reads (run once with torch 2.x; the files are
committed so the Rust tests need no Python):  python tests/data/import/make_fixtures.py"""
import collections
import pathlib

import torch
import torch.nn as nn

HERE = pathlib.Path(__file__).resolve().parent


def tensors():
    base = torch.arange(10, dtype=torch.float32)
    return collections.OrderedDict(
        a=torch.arange(6, dtype=torch.float32).reshape(2, 3),
        t=torch.arange(6, dtype=torch.float64).reshape(2, 3).t(),  # non-contiguous (stride 1, 3)
        v=base[3:7],  # a view with a storage offset
        s=base[:2],  # shares the storage of v
        u=torch.tensor(1, dtype=torch.uint8),  # 0-dim
        i=torch.tensor([5, -2, 7], dtype=torch.int64),
        h=torch.tensor([0.5, -1.25], dtype=torch.float16),
    )


class Inner(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.arange(4, dtype=torch.float32).reshape(2, 2))
        self.register_buffer("initialized", torch.tensor(1.0))

    def forward(self, x):
        return x @ self.weight


class Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = Inner()
        self.bias = nn.Parameter(torch.tensor([1.0, 2.0]))
        self.register_buffer("perm", torch.tensor([1, 0]))
        self.dim = 2

    def forward(self, x):
        return self.inner(x) + self.bias


def main():
    torch.save(tensors(), HERE / "state_dict.pt")
    torch.save({"model": tensors(), "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}, "epoch": 3},
               HERE / "checkpoint.pt")
    torch.save({"module.w": torch.ones(2), "module.b": torch.zeros(1)}, HERE / "data_parallel.pt")
    torch.jit.save(torch.jit.script(Outer()), str(HERE / "scripted.pt"))
    torch.save(Outer(), HERE / "whole_module.pt")
    torch.save({"w": torch.ones(2)}, HERE / "legacy.pt", _use_new_zipfile_serialization=False)
    torch.save({"b": torch.tensor([True, False])}, HERE / "bool.pt")
    torch.save({"a": {"w": torch.ones(1)}, "b": {"w": torch.ones(1)}}, HERE / "two_dicts.pt")


if __name__ == "__main__":
    main()
