"""The runtime imports no torch, diffusers, transformers or scanside.export."""

from __future__ import annotations

import subprocess
import sys

BLOCKED = ("torch", "diffusers", "transformers", "scanside.export")

SCRIPT = f"""
import sys
for name in {BLOCKED!r}:
    sys.modules[name] = None  # any import of these now raises ImportError
import scanside, scanside.runtime, scanside.cli, scanside.files
from scanside import Pipeline
from scanside.runtime import schedulers, tokenizer, artifacts, images
from scanside.runtime.engines import onnxruntime
loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers', 'transformers'))
assert not [m for m in loaded if sys.modules[m] is not None], loaded
print("ok")
"""


def test_runtime_imports_without_torch_or_export():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_runtime_pipeline_runs_without_torch(tiny_engine):
    """Not just importable: a whole enhancement runs with torch & co. unimportable."""
    script = SCRIPT.replace('print("ok")', f"""
import numpy as np
pipe = Pipeline.load({str(tiny_engine)!r})
out = pipe.enhance(np.full((64, 64), 0.5, np.float32), steps=4, strength=0.5)
assert out.shape == (64, 64) and np.isfinite(out).all()
print("ok")
""")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
