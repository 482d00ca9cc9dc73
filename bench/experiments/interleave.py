"""The built-in model's UNet at 512 px, engines interleaved in one process: fp32, int8 with
full-range weights (fast u8 x s8 kernels, saturating here), the same with ONNX Runtime's exact
path (session.x64quantprecision), int8 with 7-bit weights. Median and min of N rounds.

    python bench/experiments/interleave.py FP32_ENGINE INT8_S8_ENGINE INT8_S7_ENGINE [ROUNDS [OUT.json]]

OUT.json defaults to bench/results/<UTC date>-<host class>/interleave-512.json."""
import sys, numpy as np
from pathlib import Path
from ortrun import session, interleaved
fp32, s8, s7 = map(Path, sys.argv[1:4]); rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 8
rng = np.random.default_rng(0)
runs = {"fp32": session(fp32), "int8 s8 (fast kernels)": session(s8),
        "int8 s8 + x64quantprecision": session(s8, {"session.x64quantprecision": "1"}),
        "int8 s7 (fast kernels)": session(s7)}
feed = {"sample": rng.standard_normal((1, 8, 512, 512)).astype(np.float32) * 0.5,
        "timestep": np.array([1], np.int64), "encoder_hidden_states": rng.standard_normal((1, 77, 64)).astype(np.float32)}
i = runs["fp32"].get_inputs()
feed["timestep"] = feed["timestep"].astype(np.float32 if "float" in i[1].type else np.int64)
times = interleaved(runs, feed, rounds)
base = np.median(times["fp32"])
out = {}
for k, t in times.items():
    out[k] = {"median_s": float(np.median(t)), "min_s": float(np.min(t)), "speedup_vs_fp32": float(base / np.median(t))}
    print(f"{k:32s} median {np.median(t):.3f} s  min {np.min(t):.3f} s  {base/np.median(t):.2f}x fp32")
from scanside.bench import report
from scanside.runtime.host import cpu_info
path = Path(sys.argv[5]) if len(sys.argv) > 5 else report.results_dir() / "interleave-512.json"
report.write_json({"cpu": cpu_info(), "rounds": rounds, "unet_512": out}, path, engine=fp32)
print(f"wrote {path}")
