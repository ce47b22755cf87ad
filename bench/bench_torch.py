#!/usr/bin/env python3
"""Time the PyTorch reference Glow (python/flowzoo_ref, y0ast style, affine, LU, learned top).

Example:
  python bench/bench_torch.py --image-size 8 --channels 1 --K 8 --L 2 --width 128 \
      --batch 64 --threads 2 --n-bits 5 --repeats 5 --steps 20 --dtype float32

Measures, after the ActNorm data init on one batch and a warm-up:
  (a) train_steps_per_s: Adam(lr 1e-3) steps of loss = mean bpd (dequantisation of the fixed
      uint8 batch with fresh uniform noise is part of each step);
  (b) log_prob_images_per_s: model.log_prob on a fixed dequantised batch under torch.no_grad;
  (c) sample_images_per_s: model.sample at temperature 0.7 under torch.no_grad (drawing the
      standard-normal eps of every level is part of each call).
Each repeat runs --steps calls; the reported value is the median over --repeats.
One JSON object goes to stdout; logs go to stderr.

--precision (CUDA): fp32 = IEEE float32 (cuDNN and cuBLAS TF32 off: stricter than PyTorch's
default, which lets cuDNN convolutions use TF32); tf32 = TF32 on in both; bf16 = each coupling
network runs under torch.autocast(bfloat16) and its output is cast back to float32, so the flow,
its log-dets and priors stay float32 (what `flowzoo bench --precision bf16` does).
--metrics chooses what is timed; --count-flops adds the FLOPs of one training step's forward and
backward (torch.utils.flop_counter; convolutions and matmuls) as train_step_flops.

--compile runs the same three calls through torch.compile (Inductor; --compile-mode picks the
mode: default, reduce-overhead, max-autotune): model.bpd (whose backward AOT autograd compiles
too) for the training step, model.log_prob and model.sample, each compiled after the ActNorm
init. The first call of each, where compilation happens, is timed apart and reported in
compile_seconds; the timed calls come after it. impl is then "pytorch_compile".
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
from flowzoo_ref import Glow, dequantize, preprocess  # noqa: E402


def log(msg: str) -> None:
    print(f"[bench_torch] {msg}", file=sys.stderr, flush=True)


class _Autocast(torch.nn.Module):
    """Runs `net` under autocast in `dtype` and returns float32."""

    def __init__(self, net: torch.nn.Module, device_type: str, dtype: torch.dtype):
        super().__init__()
        self.net, self.device_type, self.dtype = net, device_type, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype):
            h = self.net(x)
        return h.float()


def apply_precision(model: torch.nn.Module, precision: str, device: torch.device) -> None:
    tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    if precision == "bf16":
        from flowzoo_ref.glow import FlowStep
        for m in model.modules():
            if isinstance(m, FlowStep):
                key = "block" if "block" in m._modules else "coupling"
                if key == "block":
                    m._modules["block"] = _Autocast(m._modules["block"], device.type, torch.bfloat16)
                else:
                    m._modules["coupling"].net = _Autocast(m._modules["coupling"].net, device.type, torch.bfloat16)


def count_train_flops(model, x, args) -> int:
    """FLOPs of one training step's forward + backward (the optimizer's elementwise work and
    the elementwise ops of the flow are not counted: convolutions and matmuls only)."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc:
        loss = model.bpd(dequantize(x, args.n_bits)).mean()
        loss.backward()
    model.zero_grad(set_to_none=True)
    return int(fc.get_total_flops())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image-size", type=int, default=8)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--K", type=int, default=8)
    ap.add_argument("--L", type=int, default=2)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-bits", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20, help="timed calls per repeat")
    ap.add_argument("--warmup", type=int, default=2, help="untimed calls before each measurement")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", choices=["fp32", "tf32", "bf16"], default="fp32")
    ap.add_argument("--metrics", default="train,log_prob,sample", help="comma-separated: train, log_prob, sample")
    ap.add_argument("--count-flops", action="store_true")
    ap.add_argument("--compile", action="store_true", help="time the calls under torch.compile")
    ap.add_argument("--compile-mode", default="default", choices=["default", "reduce-overhead", "max-autotune"])
    args = ap.parse_args()
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    for m in metrics:
        if m not in ("train", "log_prob", "sample"):
            ap.error(f"unknown metric {m!r}")

    load_start = os.getloadavg()[0]
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    model = Glow(args.channels, args.image_size, K=args.K, L=args.L, width=args.width, affine=True,
                 lu=True, learn_top=True, n_bits=args.n_bits, style="y0ast").to(device=device, dtype=dtype)
    n_params = sum(p.numel() for p in model.parameters())
    apply_precision(model, args.precision, device)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    shape = (args.batch, args.channels, args.image_size, args.image_size)
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen, device=device)
    x = preprocess(images, args.n_bits, dtype)

    # ActNorm data-dependent init: first forward in training mode, on one batch
    model.train()
    with torch.no_grad():
        bpd0 = model.bpd(dequantize(x, args.n_bits, gen)).mean().item()
    log(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {n_params} params, "
        f"bpd after ActNorm init {bpd0:.4f}")

    cpu_ms = {}
    compile_seconds = {}
    bpd_fn, log_prob_fn, sample_fn = model.bpd, model.log_prob, model.sample
    if args.compile:
        kw = {} if args.compile_mode == "default" else {"mode": args.compile_mode}
        bpd_fn, log_prob_fn, sample_fn = (torch.compile(f, **kw) for f in (model.bpd, model.log_prob, model.sample))

    def timed(fn, n, name):
        if args.compile and name not in compile_seconds:
            # The first call compiles: timed apart, never in the rates.
            t0 = time.perf_counter()
            fn()
            sync()
            compile_seconds[name] = time.perf_counter() - t0
            log(f"{name}: first call (compilation) {compile_seconds[name]:.1f} s")
        for _ in range(args.warmup):
            fn()
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(n):
            fn()
        sync()
        cpu_ms.setdefault(name, []).append((time.process_time() - c0) * 1e3 / n)
        return time.perf_counter() - t0

    # (a) training steps
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    last = {}

    def train_step():
        opt.zero_grad(set_to_none=True)
        loss = bpd_fn(dequantize(x, args.n_bits, gen)).mean()
        loss.backward()
        opt.step()
        last["loss"] = loss.detach()

    flops = count_train_flops(model, x, args) if args.count_flops else None
    train = []
    for r in range(args.repeats if "train" in metrics else 0):
        dt = timed(train_step, args.steps, "train")
        train.append(args.steps / dt)
        log(f"train repeat {r}: {train[-1]:.3f} steps/s (loss {last['loss'].item():.4f} bpd)")

    # (b) log_prob
    model.eval()
    x_deq = dequantize(x, args.n_bits, gen)

    def log_prob_call():
        with torch.no_grad():
            last["lp"] = log_prob_fn(x_deq)

    lp = []
    for r in range(args.repeats if "log_prob" in metrics else 0):
        dt = timed(log_prob_call, args.steps, "log_prob")
        lp.append(args.steps * args.batch / dt)
        log(f"log_prob repeat {r}: {lp[-1]:.1f} images/s")

    # (c) sampling at temperature T
    def sample_call():
        with torch.no_grad():
            last["sample"] = sample_fn(n=args.batch, temperature=args.temperature, generator=gen)

    smp = []
    for r in range(args.repeats if "sample" in metrics else 0):
        dt = timed(sample_call, args.steps, "sample")
        smp.append(args.steps * args.batch / dt)
        log(f"sample repeat {r}: {smp[-1]:.1f} images/s")
    if "sample" in last and not torch.isfinite(last["sample"]).all():
        log("warning: the last samples contain non-finite values")

    result = {}
    for key, vals in (("train_steps_per_s", train), ("log_prob_images_per_s", lp), ("sample_images_per_s", smp)):
        if vals:
            result[key] = statistics.median(vals)
    result.update({
        "impl": "pytorch_compile" if args.compile else "pytorch",
        "precision": args.precision,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "config": {
            "image_size": args.image_size, "channels": args.channels, "K": args.K, "L": args.L,
            "width": args.width, "batch": args.batch, "n_bits": args.n_bits, "dtype": args.dtype,
            "repeats": args.repeats, "steps": args.steps, "warmup": args.warmup,
            "temperature": args.temperature, "device": str(device), "seed": args.seed,
            "style": "y0ast", "affine": True, "lu": True, "learn_top": True, "optimizer": "Adam(lr=1e-3)",
            "n_params": n_params, "last_train_loss_bpd": last["loss"].item() if "loss" in last else None,
        },
        # 1-min load average before and after: other processes on the machine skew the timings
        "loadavg_1min": [load_start, os.getloadavg()[0]],
        # process CPU ms per call (all threads; see flowzoo bench)
        "cpu_ms_per_call": {k: statistics.median(v) for k, v in cpu_ms.items()},
        "runs": {"train_steps_per_s": train, "log_prob_images_per_s": lp, "sample_images_per_s": smp},
    })
    if flops is not None:
        result["train_step_flops"] = flops
    if args.compile:
        result["compile_seconds"] = compile_seconds
        result["config"]["compile_mode"] = args.compile_mode
    print(json.dumps(result))


if __name__ == "__main__":
    main()
