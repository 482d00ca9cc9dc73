"""From an fp32 engine directory to one at fp16/int8, component by component, with the
accuracy it cost measured against the fp32 engine on held-out inputs."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Mapping, Optional

import numpy as np
from tqdm.auto import tqdm

from scanside.errors import ScansideError
from scanside.runtime.artifacts import (
    COMPONENTS, MANIFEST, TOKENIZER, Conditioning, Manifest, Precision, component_files,
    content_hash, onnx_files,
)

from . import precision as convert
from . import sensitivity
from .calibration import Calibration, unet_feeds
from .onnx import EXTERNAL_DATA_BYTES

log = logging.getLogger(__name__)
# Max |reduced - fp32| on held-out real inputs, relative to the output's scale. int8 noise
# predictions are allowed coarse per-element error; the final-image PSNR is the real measure.
TOLERANCE = {Precision.FP16: 5e-2, Precision.INT8: 1.0}
CALIBRATION_PROMPTS = ("low-dose CT, denoise", "")
HELD_OUT_PROMPT = "a held-out prompt, chest CT"
# Prompts the text encoder is calibrated on when it is quantised statically.
TEXT_CALIBRATION_PROMPTS = CALIBRATION_PROMPTS + (
    "low-dose CT of the abdomen, denoise", "MR brain T2, enhance", "chest radiograph",
    "a photo of a cat", "CT lung window, reduce noise and streaks")


class AccuracyError(ScansideError):
    """A reduced-precision component produced non-finite or far-off values."""


def needs_calibration(precisions: Mapping[str, Precision]) -> bool:
    """Image calibration is needed for int8 image components; the text encoder's prompts are
    built in."""
    return any(p is Precision.INT8 for n, p in precisions.items() if n != "text_encoder")


def link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def stash_fp32(staging: Path) -> Path:
    """Move the fp32 engine into staging/fp32, where it stays loadable as a reference."""
    fp32 = staging / "fp32"
    fp32.mkdir()
    for path in list(staging.iterdir()):
        if path != fp32:
            path.rename(fp32 / path.name)
    shutil.copyfile(fp32 / TOKENIZER, staging / TOKENIZER)
    return fp32


def feeds_for(name: str, pipe, pixels: list[np.ndarray], prompts, scheduler_config, seed: int):
    """Real inputs for one component: images, their latents, noisy latents, prompt ids."""
    if name == "text_encoder":
        return [{"input_ids": pipe.tokenizer([p])} for p in prompts]
    if name == "vae_encoder":
        return [{"image": p} for p in pixels]
    means = [pipe.encode(p)[0] for p in pixels]  # (1, 4, h, w) each
    if name == "vae_decoder":
        return [{"latent": m} for m in means]
    sf = np.float32(pipe.manifest.vae_scaling_factor)
    condition = None
    if pipe.manifest.conditioning is Conditioning.CONCAT:
        condition = [pipe.unet_condition(p, m) for p, m in zip(pixels, means)]
    embeddings = [pipe.embed(p) for p in prompts]
    return unet_feeds([m * sf for m in means], embeddings, scheduler_config, condition, seed=seed,
                      guidance_dim=pipe.guidance_embedding_dim)


WEIGHT_RANGES = {convert.Int8Weights.S8: "int8 symmetric per channel",
                 convert.Int8Weights.S7: "int8 symmetric per channel in [-64, 64] (7 bits: u8 x s8 "
                                         "kernels without VNNI saturate on full-range weights)"}


def static_report(report: "convert.Int8Report", layout: convert.Int8Layout) -> dict:
    return {"method": "static QDQ, MinMax calibration", "activations": layout.activations.value,
            "weights": WEIGHT_RANGES[layout.weights], "weight_range": layout.weights.value,
            "quantised_nodes": report.quantised_nodes,
            "median_input_sqnr_db": round(report.median_sqnr_db, 1),
            "kept_in_float": report.attention_in_float + len(report.sensitive_in_float),
            "attention_in_float": report.attention_in_float,
            "why_attention": "activation-by-activation MatMuls: quantising both operands per "
                             "call measured slower than float on ONNX Runtime CPU",
            "sensitive_in_float": report.sensitive_in_float,
            "why_sensitive": f"input SQNR under {sensitivity.FLOOR_DB:g} dB on calibration "
                             f"inputs (worst first, at most {sensitivity.MAX_FRACTION:.0%} of nodes)"}


def convert_component(name: str, p: Precision, src: Path, dst: Path, feeds,
                      layout: convert.Int8Layout, method: str = "static") -> Optional[dict]:
    """Write ``dst``; for int8, return what the manifest should say about how."""
    external = sum(f.stat().st_size for f in onnx_files(src)) > EXTERNAL_DATA_BYTES
    if p is Precision.FP16:
        convert.to_fp16(src, dst, EXTERNAL_DATA_BYTES)
        return None
    if method == "dynamic":
        convert.to_int8_dynamic(src, dst, external, layout.weights)
        return {"method": "dynamic (weights int8 per channel, activations quantised per call)",
                "weights": WEIGHT_RANGES[layout.weights], "weight_range": layout.weights.value}
    return static_report(convert.to_int8_static(src, dst, feeds, layout, external=external),
                         layout)


def best_int8(name: str, src: Path, dst: Path, feeds, check, fp32_dir: Path,
              layout: convert.Int8Layout) -> tuple[dict, float, float]:
    """Text encoder and VAE: static and dynamic int8 both built and measured; the more
    accurate of those faster than fp32 is kept (the fastest if none is). The UNet is static
    only: it is where the time goes, and static QDQ is the form TensorRT consumes."""
    methods = ("static", "dynamic") if name in ("text_encoder", "vae_encoder", "vae_decoder") \
        else ("static",)
    results = []
    for method in methods:
        candidate = dst if len(methods) == 1 else dst.with_name(f"{dst.stem}.{method}.onnx")
        how = convert_component(name, Precision.INT8, src, candidate, feeds, layout, method)
        diff, scale, slowdown = held_out_diff(name, fp32_dir, candidate, check)
        results.append((diff, method, candidate, how, scale, slowdown))
    faster = [r for r in results if r[5] < 1.0]
    best = min(faster, key=lambda r: r[0]) if faster else min(results, key=lambda r: r[5])
    diff, method, chosen, how, scale, _ = best
    if chosen != dst:
        move_onnx(chosen, dst)
    for files in (onnx_files(r[2]) for r in results if r[2] not in (chosen, dst)):
        for f in files:
            f.unlink()
    how = {**how, "chosen_by": "lowest held-out max abs diff among candidates faster than fp32",
           "candidates": {r[1]: {"max_abs_diff": round(r[0], 6), "latency_vs_fp32": round(r[5], 3)}
                          for r in results}}
    return how, diff, scale


def move_onnx(src: Path, dst: Path) -> None:
    """Rename an ONNX file; one with external weights is re-saved, since it names its .data."""
    if not src.with_name(src.name + ".data").exists():
        src.rename(dst)
        return
    import onnx

    convert.save(onnx.load(str(src)), dst, 0)
    for f in onnx_files(src):
        f.unlink()


def timed_run(session, feed) -> tuple[list, float]:
    start = time.perf_counter()
    outputs = session.run(None, feed)
    return outputs, time.perf_counter() - start


def held_out_diff(name: str, fp32_dir: Path, reduced: Path, feeds) -> tuple[float, float, float]:
    """(max |reduced - fp32|, scale of the fp32 outputs, reduced/fp32 latency) on held-out feeds."""
    import onnxruntime as ort

    ref = ort.InferenceSession(str(fp32_dir / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    new = ort.InferenceSession(str(reduced), providers=["CPUExecutionProvider"])
    diff, scale = 0.0, 1.0
    ref.run(None, feeds[0]), new.run(None, feeds[0])  # warm-up, then one timed call each
    slowdown = timed_run(new, feeds[0])[1] / max(timed_run(ref, feeds[0])[1], 1e-9)
    for feed in feeds:
        for a, b in zip(ref.run(None, feed), new.run(None, feed)):
            if not np.isfinite(b).all():
                raise AccuracyError(f"{name}: the reduced-precision graph returns NaN/inf on "
                                    "held-out inputs; keep it at fp32 with --component-precision "
                                    f"{name}=fp32")
            diff = max(diff, float(np.abs(a - b).max()))
            scale = max(scale, float(np.abs(a).max()))
    return diff, scale, slowdown


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def final_psnr(fp32_dir: Path, staging: Path, image: np.ndarray) -> float:
    """A fixed enhancement of the held-out image by both engines, compared."""
    from scanside import Pipeline

    reference = Pipeline.load(fp32_dir)
    # The model's own settings where it has them (the default CT model does), so the figure is
    # the accuracy of the enhancement users get; otherwise a fixed mid-strength img2img.
    kwargs = dict(seed=0) if reference.manifest.enhance_defaults else dict(
        prompt=CALIBRATION_PROMPTS[0], strength=0.5, steps=20, seed=0)
    ref = reference.enhance(image, **kwargs)
    return psnr(Pipeline.load(staging).enhance(image, **kwargs), ref)


def reduce(staging: Path, manifest: Manifest, precisions: Mapping[str, Precision],
           calibration: Optional[Calibration], progress: bool,
           layout: convert.Int8Layout = convert.Int8Layout()) -> Manifest:
    from scanside import Pipeline

    fp32_dir = stash_fp32(staging)
    todo = [n for n in COMPONENTS if precisions[n] is not Precision.FP32]
    # Every input is computed with the fp32 engine first, which is then closed: quantising a
    # full-size UNet needs the memory its sessions held.
    ref = Pipeline.load(fp32_dir)
    cal_pixels = calibration.images if calibration else []
    held_image = calibration.held_out if calibration else _image(ref)
    held = [ref_pixels(ref, held_image)]
    calibration_feeds = {n: feeds_for(n, ref, cal_pixels, TEXT_CALIBRATION_PROMPTS,
                                      manifest.scheduler_config, 0)
                         for n in todo if precisions[n] is Precision.INT8}
    check_feeds = {n: feeds_for(n, ref, held, (HELD_OUT_PROMPT,), manifest.scheduler_config, 1)
                   for n in todo}
    del ref
    components = dict(manifest.components)
    for name in tqdm(COMPONENTS, desc="precision", disable=not progress):
        p, src, dst = precisions[name], fp32_dir / f"{name}.onnx", staging / f"{name}.onnx"
        if p is Precision.FP32:
            for f in component_files(fp32_dir, manifest.components[name]):
                link_or_copy(f, staging / f.name)
            continue
        if p is Precision.INT8:
            how, diff, scale = best_int8(name, src, dst, calibration_feeds.get(name),
                                         check_feeds[name], fp32_dir, layout)
        else:
            how = convert_component(name, p, src, dst, None, layout)
            diff, scale, _ = held_out_diff(name, fp32_dir, dst, check_feeds[name])
        tolerance = TOLERANCE[p] * scale
        log.info("%s %s: max abs diff vs fp32 %.3g (tolerance %.3g)", name, p.value, diff, tolerance)
        if diff > tolerance:
            raise AccuracyError(f"{name} at {p.value}: max abs diff {diff:.3g} vs fp32 on held-out "
                                f"inputs, above {tolerance:.3g}; keep it at higher precision with "
                                f"--component-precision {name}=fp16 (or fp32)")
        components[name] = dataclasses.replace(
            manifest.components[name], sha256=content_hash(dst),
            bytes=sum(f.stat().st_size for f in onnx_files(dst)), precision=p,
            parity_max_abs_diff=diff, parity_tolerance=tolerance,
            parity_reference="fp32 onnx, held-out inputs", quantization=how)
    tuned_on = None
    if any(p is Precision.INT8 for p in precisions.values()):
        # The static/dynamic and float-fallback choices were timed here: on another matrix
        # unit (VNNI vs AMX vs ARM dot product) another layout may be the faster one.
        from scanside.runtime.host import cpu_info

        cpu = cpu_info()
        tuned_on = {"host_class": cpu["host_class"], "cpu": str(cpu["model"])}
    reduced = dataclasses.replace(manifest, components=components,
                                  calibration=calibration.source if calibration else None,
                                  tuned_on=tuned_on)
    (staging / MANIFEST).write_text(json.dumps(reduced.to_json(), indent=2), encoding="utf-8")
    reduced = dataclasses.replace(reduced, final_image_psnr_db=final_psnr(fp32_dir, staging, held_image))
    (staging / MANIFEST).write_text(json.dumps(reduced.to_json(), indent=2), encoding="utf-8")
    shutil.rmtree(fp32_dir)
    return reduced


def _image(pipe) -> np.ndarray:
    from .calibration import phantom

    m = pipe.manifest
    return phantom(m.height, seed=99)[: m.height, : m.width]


def ref_pixels(pipe, image: np.ndarray) -> np.ndarray:
    from scanside.runtime import images

    m = pipe.manifest
    return images.prepare(image, m.image_channels, (m.height, m.width), m.divisor).pixels
