"""``scanside demo``: the built-in low-dose CT model on two CT images, end to end.

1. the engine: the fp32 engine shipped in the package (exported from the shipped checkpoint
   if an install lacks it and has the export extra);
2. inputs, written as DICOM into WORKDIR/input: a simulated low-dose CT slice of a held-out
   phantom (its full-dose reference is known) and pydicom's real CT_small.dcm;
3. each enhanced through the DICOM path into a new derived series under WORKDIR/enhanced,
   with scanside's preview PNG (source | result | difference);
4. a soft-tissue-window picture low-dose | enhanced | full-dose, and the quality figures of
   the simulated slice against its reference;
5. real anatomy at a clinical size: pydicom's 512 x 512 head CT (693_J2KI.dcm, never trained
   on) through the scan chain at 40 HU of added noise, enhanced through the DICOM path, with
   its PSNR, HU bias and a low-dose | enhanced | reference picture (brain window).

Steps 1-4 need only the base install (numpy, ONNX Runtime, pydicom, pillow); step 5 simulates
the scan with scikit-image (``pip install 'scanside[train]'``) and is skipped without it.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np

from scanside.files import atomic_path

log = logging.getLogger(__name__)
SOFT_TISSUE = (40.0, 400.0)  # window centre, width (HU): where low-dose noise shows
DEMO_PAIR = "demo_pair.npz"  # a held-out ctsim pair shipped with the model (test split)


def engine_dir(workdir: Path) -> Path:
    """The shipped engine, else one exported here from the shipped checkpoint."""
    from scanside.errors import EngineError
    from scanside.runtime.default import default_checkpoint_dir, default_engine_dir

    try:
        return default_engine_dir()
    except EngineError:
        from scanside.export import export_model  # needs the export extra

        engine = workdir / "engine"
        print(f"the built-in engine is missing; exporting {default_checkpoint_dir()} -> {engine}")
        export_model(default_checkpoint_dir(), engine, overwrite=True, progress=True)
        return engine


def window_png(path: Path, hu: np.ndarray, centre: float, width: float, zoom: int = 3) -> None:
    """``hu`` in the window, each pixel drawn as zoom x zoom (a 128-px slice is small on screen)."""
    from PIL import Image

    unit = np.clip((hu - (centre - width / 2)) / width, 0, 1)
    pixels = np.kron((unit * 255).round().astype(np.uint8), np.ones((zoom, zoom), np.uint8))
    with atomic_path(path, overwrite=True) as tmp:
        Image.fromarray(pixels).save(tmp, "PNG")


def load_pair() -> dict[str, np.ndarray]:
    from scanside.runtime.default import DEFAULT_MODEL

    with np.load(DEFAULT_MODEL / DEMO_PAIR, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def enhance_file(pipe, source: Path, out: Path) -> Path:
    from scanside.dicom import enhance_series
    from scanside.errors import ScansideError

    report = enhance_series([source], pipe, out, preview=True, progress=False)
    if report.failures:
        raise ScansideError(f"demo: {report.failures[0][0]}: {report.failures[0][1]}")
    return report.written[0]


def run_demo(workdir: Path) -> Path:
    import pydicom

    from scanside import Pipeline
    from scanside.dicom import read_header, read_values
    from scanside.dicom.synthetic import simulated_ct
    from scanside.dicom.write import save
    from scanside.training.ctsim import Lesion
    from scanside.training.evaluate import psnr, region_contrast

    workdir.mkdir(parents=True, exist_ok=True)
    pipe = Pipeline.load(engine_dir(workdir))
    own = pipe.resolve()  # the model's own settings, which the demo uses
    print(f"model: scanside's built-in low-dose CT model ({pipe.manifest.precision.value} engine "
          f"{pipe.engine_dir}); prompt {own.prompt!r}, {own.steps} steps, "
          f"strength {own.strength:g}, guidance {own.guidance:g}, "
          + ("one view" if own.ensemble == 1 else f"ensemble of {own.ensemble} views"))
    pair = load_pair()
    inputs, out = workdir / "input", workdir / "enhanced"
    shutil.rmtree(out, ignore_errors=True)  # the demo's own output from an earlier run
    inputs.mkdir(exist_ok=True)
    simulated = inputs / "simulated_low_dose_ct.dcm"
    save(simulated_ct(pair["low"].astype(np.float32), "scanside demo: simulated low-dose CT",
                      0.8), simulated, overwrite=True)
    ct_small = inputs / "CT_small.dcm"
    shutil.copyfile(Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm",
                    ct_small)

    pipe.enhance(np.zeros((pipe.manifest.height, pipe.manifest.width), np.float32))  # warm-up
    started = time.perf_counter()
    enhanced = enhance_file(pipe, simulated, out)
    seconds = time.perf_counter() - started
    enhanced_small = enhance_file(pipe, ct_small, out)

    low, full = pair["low"].astype(np.float64), pair["full"].astype(np.float64)
    result = read_values(read_header(enhanced))[1][0]
    picture = workdir / "low_dose__enhanced__full_dose.png"
    window_png(picture, np.concatenate([low, result, full], axis=1), *SOFT_TISSUE)
    print(f"\nsimulated low-dose CT ({low.shape[0]}x{low.shape[1]}, held-out phantom), "
          f"enhanced in {seconds:.2f} s incl. DICOM read/write:")
    print(f"  PSNR vs full dose (window [-1000, 1000] HU): low-dose {psnr(full, low):.2f} dB -> "
          f"enhanced {psnr(full, result):.2f} dB")
    for row in pair["lesions"]:
        lesion = Lesion(*map(float, row))

        def contrast(image: np.ndarray) -> float:
            return region_contrast(image, lesion, pair["phantom"])

        print(f"  lesion r={lesion.radius:.1f} px: contrast reference {contrast(full):+.1f} HU, "
              f"low-dose {contrast(low):+.1f}, enhanced {contrast(result):+.1f}")
    print(f"  DICOM:   {enhanced}  (derived, new series; preview {enhanced.with_suffix('.png')})")
    print(f"  picture: {picture}  (low-dose | enhanced | full dose, window L40/W400)")
    print("pydicom's CT_small.dcm (real CT, outside the training distribution):")
    print(f"  DICOM:   {enhanced_small}  (preview {enhanced_small.with_suffix('.png')})")
    real_slice(pipe, workdir, inputs, out)
    print("the held-out test set's figures: `scanside models evaluate` (see the model card, "
          "scanside/default_model/README.md)")
    return picture


BRAIN = (40.0, 120.0)  # window centre, width (HU)


def real_slice(pipe, workdir: Path, inputs: Path, out: Path) -> None:
    """Step 5 of the module docstring."""
    try:
        import skimage  # noqa: F401
    except ImportError:
        print("real 512 px head CT: skipped (the scan simulation needs scikit-image: "
              "pip install 'scanside[train]')")
        return
    from scanside.dicom import read_header, read_values
    from scanside.dicom.synthetic import simulated_ct
    from scanside.dicom.write import save
    from scanside.training import realct
    from scanside.training.evaluate import psnr

    print("\nreal anatomy: pydicom's 693_J2KI.dcm (512 x 512 head CT, never trained on), "
          "simulating a 40 HU low-dose scan of it ...")
    pair = realct.real_pairs(names=("693_J2KI.dcm",), noise=(40.0,))[0]
    source = inputs / "head_512_low_dose.dcm"
    save(simulated_ct(pair.low, "scanside demo: 693_J2KI at 40 HU low dose", pair.pixel_mm),
         source, overwrite=True)
    started = time.perf_counter()
    enhanced = enhance_file(pipe, source, out)
    seconds = time.perf_counter() - started
    result = read_values(read_header(enhanced))[1][0].astype(np.float64)
    picture = workdir / "head_low_dose__enhanced__reference.png"
    window_png(picture, np.concatenate([pair.low, result, pair.full], axis=1), *BRAIN, zoom=1)
    print(f"  enhanced in {seconds:.2f} s incl. DICOM read/write; PSNR vs reference: low-dose "
          f"{psnr(pair.full, pair.low):.2f} dB -> enhanced {psnr(pair.full, result):.2f} dB; "
          f"HU bias on flat tissue {realct.hu_bias(result, pair.full):+.1f} HU")
    print(f"  picture: {picture}  (low-dose | enhanced | reference, window L40/W120)")
