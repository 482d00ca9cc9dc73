#!/usr/bin/env bash
# On the GPU machine, in the last call (bench/gpu/README.md): join the parts the earlier calls
# left in /tmp/parts, install them beside the image's own packages, then measure
# (python -m scanside.bench.gpu), writing $OUT/gpu.json and $OUT/gpu-log.txt.
set -uo pipefail
parts=${PARTS:-/tmp/parts}
wheels=/tmp/wheels
site=/tmp/site
out=${OUT:-/tmp/out}
mkdir -p "$wheels" "$site" "$out"
for sum in "$parts"/*.sha256; do
  name=$(basename "$sum" .sha256)
  cat "$parts/$name".part?? > "$wheels/$name"
  (cd "$wheels" && sha256sum -c --quiet "$sum") || { echo "$name: parts missing or damaged"; exit 1; }
done
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target "$site" "$wheels"/*.whl || exit 1
export PYTHONPATH="$site:$PWD"
# onnxruntime-gpu loads CUDA and cuDNN from the torch environment's nvidia-* packages: scanside
# calls onnxruntime.preload_dlls(); the library path is the fallback for any other process.
nvidia_libs=$(python3 - <<'PY'
import glob, os, site
found = []
for base in site.getsitepackages():
    found += glob.glob(os.path.join(base, "nvidia", "*", "lib"))
    found += glob.glob(os.path.join(base, "nvidia", "*", "*", "lib"))
print(":".join(sorted(set(found))))
PY
)
export LD_LIBRARY_PATH="$nvidia_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
python3 -c "import onnxruntime as ort; ort.preload_dlls(); print('onnxruntime', ort.__version__, ort.get_available_providers())" \
  2>&1 | tee "$out/gpu-log.txt"
PYTHONUNBUFFERED=1 python3 -m scanside.bench.gpu --out "$out" --deadline "${DEADLINE:-480}" \
  "$@" 2>&1 | tee -a "$out/gpu-log.txt"
