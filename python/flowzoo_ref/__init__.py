"""PyTorch reference implementations used to check and benchmark flowzoo."""
from .glow import (
    ActNorm,
    FlowStep,
    Glow,
    InvConv1x1,
    ZeroConv2d,
    dequantize,
    gaussian_log_p,
    preprocess,
    squeeze2d,
    unsqueeze2d,
)

__all__ = [
    "ActNorm",
    "FlowStep",
    "Glow",
    "InvConv1x1",
    "ZeroConv2d",
    "dequantize",
    "gaussian_log_p",
    "preprocess",
    "squeeze2d",
    "unsqueeze2d",
]
