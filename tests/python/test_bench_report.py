"""bench/report.py (the `make bench` table) and bench_torch.py's torch.compile reference."""
import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
PY = sys.executable


def raw_line(case, impl, rnd, rate, compile_s=None):
    res = {"train_steps_per_s": rate, "runs": {"train_steps_per_s": [rate]}, "torch": "2.11.0"}
    if compile_s is not None:
        res["compile_seconds"] = {"train": compile_s}
    return json.dumps({"case": case, "impl": impl, "round": rnd, "result": res})


def test_report_pairs_rounds_and_adds_the_compile_column(tmp_path):
    lines = [
        raw_line("glow", "flowzoo", 1, 10.0), raw_line("glow", "pytorch", 1, 5.0), raw_line("glow", "pytorch_compile", 1, 8.0, 61.5),
        raw_line("glow", "flowzoo", 2, 12.0), raw_line("glow", "pytorch", 2, 4.0),
        raw_line("glow", "flowzoo", 3, 9.0), raw_line("glow", "pytorch", 3, 6.0),
    ]
    raw = tmp_path / "raw.jsonl"
    raw.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.json"
    r = subprocess.run([PY, str(ROOT / "bench" / "report.py"), "--raw", str(raw), "--out", str(out), "--threads", "2", "--rounds", "3"],
                       capture_output=True, text=True, check=True)
    t = json.loads(out.read_text())["table"][0]
    # paired ratios per round: 2.0, 3.0, 1.5 -> median 2.0; against the compiled reference only round 1: 10/8
    assert t["ratio"] == 2.0 and t["ratio_min"] == 1.5 and t["ratio_max"] == 3.0
    assert t["compile"] == 8.0 and t["compile_ratio"] == 1.25 and t["compile_seconds"] == 61.5
    assert "compiled" in r.stdout and "1.25x" in r.stdout and "62" in r.stdout


def test_bench_torch_times_the_compiled_reference(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="2")
    r = subprocess.run([PY, str(ROOT / "bench" / "bench_torch.py"), "--image-size", "4", "--channels", "1", "--K", "1", "--L", "1",
                        "--width", "8", "--batch", "4", "--n-bits", "4", "--steps", "2", "--warmup", "1", "--repeats", "1",
                        "--metrics", "log_prob", "--compile"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout)
    assert res["impl"] == "pytorch_compile" and res["log_prob_images_per_s"] > 0
    assert res["compile_seconds"]["log_prob"] > 0 and "train" not in res["compile_seconds"]
