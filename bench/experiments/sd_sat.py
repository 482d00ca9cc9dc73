"""SD 1.5-shaped UNet (fused attention) at one size: fp32, int8 with 8-bit weights on the fast
(saturating on non-VNNI x86) and exact kernels, int8 with 7-bit weights; interleaved timing and
SQNR of each output against fp32 on one feed.

    python bench/experiments/sd_sat.py FP32_ENGINE INT8_S8_ENGINE INT8_S7_ENGINE SIZE ROUNDS [OUT.json]

OUT.json defaults to bench/results/<UTC date>-<host class>/sd-unet-SIZE.json."""
import sys, numpy as np
from pathlib import Path
from ortrun import session, interleaved
fp32, s8, s7 = map(Path, sys.argv[1:4]); size = int(sys.argv[4]); rounds = int(sys.argv[5])
runs = {"fp32": session(fp32), "int8 8-bit weights, fast kernels": session(s8),
        "int8 8-bit weights, exact kernels": session(s8, {"session.x64quantprecision": "1"}),
        "int8 7-bit weights, fast kernels": session(s7)}
rng = np.random.default_rng(0)
ins = {i.name: i for i in runs["fp32"].get_inputs()}
lat = size // 8
feed = {"sample": rng.standard_normal((1, 4, lat, lat)).astype(np.float32),
        "timestep": np.array([300], np.float32 if "float" in ins["timestep"].type else np.int64),
        "encoder_hidden_states": (rng.standard_normal((1, 77, 768)) * 0.5).astype(np.float32)}
res = {k: s.run(None, feed)[0] for k, s in runs.items()}
times = interleaved(runs, feed, rounds)
ref = res["fp32"]; base = np.median(times["fp32"])
def sqnr(y): return float(20 * np.log10(np.linalg.norm(ref) / np.linalg.norm(y - ref)))
table = {}
for k in runs:
    table[k] = {"median_s": float(np.median(times[k])), "min_s": float(np.min(times[k])),
                "vs_fp32": float(base / np.median(times[k])), "sqnr_vs_fp32_db": None if k == "fp32" else sqnr(res[k])}
    print(f"{k:36s} {np.median(times[k]):.3f} s  {base/np.median(times[k]):.2f}x  SQNR {table[k]['sqnr_vs_fp32_db']}")
from scanside.bench import report
from scanside.runtime.host import cpu_info
out = Path(sys.argv[6]) if len(sys.argv) > 6 else report.results_dir() / f"sd-unet-{size}.json"
report.write_json({"cpu": cpu_info(), "size": size, "rounds": rounds, "unet": table}, out, engine=fp32)
print(f"wrote {out}")
