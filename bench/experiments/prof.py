"""Per-op-type time of one engine's UNet at 512 px (ONNX Runtime's profiler, 2 threads).

    python bench/experiments/prof.py ENGINE [RUNS]

Prints the table; ONNX Runtime's profile goes to a temporary directory."""
import sys, json, collections, tempfile, numpy as np, onnxruntime as ort
from pathlib import Path
eng = Path(sys.argv[1]); runs = int(sys.argv[2]) if len(sys.argv) > 2 else 4
o = ort.SessionOptions(); o.intra_op_num_threads = 2; o.enable_profiling = True; o.log_severity_level = 3
o.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "unetprof")
s = ort.InferenceSession(str(eng / "unet.onnx"), o, providers=["CPUExecutionProvider"])
rng = np.random.default_rng(0)
ins = s.get_inputs()
feed = {"sample": (rng.standard_normal((1, 8, 512, 512)) * 0.5).astype(np.float32),
        "timestep": np.array([1], np.float32 if "float" in ins[1].type else np.int64),
        "encoder_hidden_states": rng.standard_normal((1, 77, 64)).astype(np.float32)}
for _ in range(runs + 1): s.run(None, feed)
f = s.end_profiling()
ev = json.load(open(f))
by = collections.Counter(); total = 0; runs_seen = 0
for e in ev:
    if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
        by[e["args"]["op_name"]] += e["dur"]
    if e.get("cat") == "Session" and e["name"] == "model_run":
        total += e["dur"]; runs_seen += 1
per_run = total / runs_seen / 1e6
node = sum(by.values())
print(f"model_run mean {per_run:.3f} s over {runs_seen} runs (incl. warm-up)")
for op, d in by.most_common(12):
    print(f"{op:28s} {d/node*100:5.1f} %  {d/runs_seen/1e6:.3f} s/run")
