"""Does ONNX Runtime's u8 x s8 int8 path saturate on this host? The int8 UNet run three ways
on one real input: integer kernels (ORT_ENABLE_ALL), the same QDQ graph as float
(ORT_DISABLE_ALL: DequantizeLinear -> float op, no integer products, no saturation), and
integer kernels with session.x64quantprecision; plus the fp32 UNet. The final-image line loads
the int8 engine with Pipeline, which since this session runs an 8-bit-weight engine on the exact
kernels on such a host: the 48.6 dB in bench/README.md was measured before that change.

    python bench/experiments/sat.py FP32_ENGINE INT8_ENGINE      (prints; writes no JSON)"""
import sys, time, numpy as np, onnxruntime as ort
from ortrun import session
from pathlib import Path
from scanside import Pipeline
from scanside.training import realct
from scanside.training.evaluate import to_unit, psnr, HU_WINDOW
from scanside.runtime.engines import onnxruntime as ortmod

fp32_dir = Path(sys.argv[1]); int8_dir = Path(sys.argv[2])
pair = realct.real_pairs(names=("693_J2KI.dcm",), noise=(40,), repeats=1)[0]
feeds = []
orig = ortmod.OrtEngine.run
def spy(self, f):
    if "sample" in f: feeds.append({k: np.array(v) for k, v in f.items()})
    return orig(self, f)
ortmod.OrtEngine.run = spy
pipe = Pipeline.load(fp32_dir)
out32 = HU_WINDOW.from_unit(pipe.enhance(to_unit(pair.low)))
ortmod.OrtEngine.run = orig
feed = feeds[0]
print("feed", {k: v.shape for k, v in feed.items()})

def timed(s):
    s.run(None, feed); t = []
    for _ in range(3):
        a = time.perf_counter(); y = s.run(None, feed)[0]; t.append(time.perf_counter() - a)
    return y, min(t)

ref, t32 = timed(session(fp32_dir))
scale = np.abs(ref).max()
def rel(a, b): return 20 * np.log10(np.linalg.norm(b) / np.linalg.norm(a - b))
runs = {"int8 integer kernels": (ort.GraphOptimizationLevel.ORT_ENABLE_ALL, None),
        "int8 QDQ as float (no saturation)": (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, None),
        "int8 integer + x64quantprecision": (ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                             {"session.x64quantprecision": "1"})}
outs = {}
print(f"fp32 UNet {t32:.3f} s")
for name, (lvl, extra) in runs.items():
    try:
        y, t = timed(session(int8_dir, extra, lvl))
    except Exception as e:
        print(name, "failed:", e); continue
    outs[name] = y
    print(f"{name:38s} {t:.3f} s  SQNR vs fp32 {rel(y, ref):.1f} dB  max|d| {np.abs(y-ref).max():.3g}")
a, b = outs.get("int8 integer kernels"), outs.get("int8 QDQ as float (no saturation)")
if a is not None and b is not None:
    print(f"integer vs float-simulated: SQNR {rel(a, b):.1f} dB, max|d| {np.abs(a-b).max():.3g} (scale {scale:.3g})")
p8 = Pipeline.load(int8_dir)
out8 = HU_WINDOW.from_unit(p8.enhance(to_unit(pair.low)))
print(f"final image: fp32 {psnr(pair.full, out32):.2f} dB, int8 {psnr(pair.full, out8):.2f} dB, int8 vs fp32 {psnr(out32, out8):.1f} dB, input {psnr(pair.full, pair.low):.2f}")
