"""``scanside export``: a diffusers checkpoint in, an engine directory out."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import onnx
from typing import Mapping, Optional

from tqdm.auto import tqdm

from scanside.errors import InputError
from scanside.files import folder_hash
from scanside.runtime.iospec import size_bindings
from scanside.runtime.artifacts import (
    COMPONENTS, MANIFEST, TOKENIZER, Attention, Component, Conditioning, Manifest, Precision,
    content_hash, onnx_files,
)

from . import affine
from . import checkpoint as ckpt
from . import tiny_vae as tiny
from .attention import use_fused_attention
from .calibration import gather
from .onnx import OPSET, ParityError, parity, to_onnx, wrap
from .precision import Int8Activations, Int8Layout, Int8Weights
from .reduce import needs_calibration, reduce
from .specs import ModelShape, build_specs
from .trt_compat import check_compat, decompose_layernorm

log = logging.getLogger(__name__)


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("scanside", "torch", "diffusers", "transformers", "onnx", "onnxruntime"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def conditioning_of(shape: ModelShape, model_dir: Path, noise_level: Optional[dict]) -> Conditioning:
    """How the UNet's input channels are laid out; a noise-conditioned UNet (scanside.json's
    noise_level) takes one channel more than an image-conditioned one."""
    extra = 1 if noise_level else 0
    if shape.unet_in_channels == shape.latent_channels and not extra:
        return Conditioning.TEXT
    if shape.unet_in_channels == 2 * shape.latent_channels + extra:
        return Conditioning.CONCAT
    raise InputError(
        f"{model_dir / 'unet' / 'config.json'}: in_channels={shape.unet_in_channels}; scanside "
        f"runs UNets with {shape.latent_channels} (text/img2img), "
        f"{2 * shape.latent_channels} (image-conditioned) or {2 * shape.latent_channels + 1} "
        f"(image- and noise-conditioned, with a noise_level entry in {ckpt.SETTINGS_FILE}) "
        "input channels"
    )


def check_size(height: int, width: int, shape: ModelShape) -> None:
    """Sizes the UNet can halve down to its lowest level (multiples of the model's divisor)."""
    least = max(8 * shape.vae_factor, shape.divisor)
    for name, value in (("--height", height), ("--width", width)):
        if value < least or value % shape.divisor:
            raise InputError(f"{name}: {value} is not a multiple of {shape.divisor} (this model's "
                             f"VAE factor x 2 ** UNet downsamplings) that is at least {least}; "
                             "use e.g. 512")


def staging_dir(out: Path, overwrite: bool) -> Path:
    if out.exists() and not overwrite:
        raise InputError(f"{out}: already exists; choose another --out or pass --overwrite")
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def publish(staging: Path, out: Path) -> None:
    """Swap the finished directory in, so a crash never leaves a half-written engine."""
    old = out.with_name(out.name + ".old")
    if out.exists():
        out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def export_model(model_dir: "str | Path", out: "str | Path", *, height: Optional[int] = None,
                 width: Optional[int] = None, dynamic: bool = False, opset: int = OPSET,
                 concat_scale: float = 1.0, overwrite: bool = False, progress: bool = False,
                 precision: "Precision | str" = Precision.FP32,
                 component_precision: Optional[Mapping[str, "Precision | str"]] = None,
                 calibration: Optional[Path] = None,
                 synthetic_calibration: bool = False,
                 int8_activations: "Int8Activations | str" = Int8Activations.U8,
                 int8_weights: "Int8Weights | str" = Int8Weights.AUTO,
                 trt_compat: Optional[str] = None,
                 attention: "Attention | str" = Attention.PLAIN,
                 tiny_vae: Optional[Path] = None,
                 tiny_vae_parts: "tiny.TinyVaeParts | str" = tiny.TinyVaeParts.BOTH) -> Manifest:
    """Export every component of ``model_dir`` to ONNX in ``out``; returns the manifest.

    ``trt_compat="8.5"`` rewrites the graphs for TensorRT 8.5's parser (JetPack 5.1; see
    trt_compat.py); the rewritten graphs pass the same parity check against torch.

    ``attention="fused"`` exports the UNet's and the VAE's attention as ONNX Runtime's fused
    MultiHeadAttention (less memory and time on ONNX Runtime; not TensorRT: see attention.py).

    ``precision`` applies to every component unless ``component_precision`` names another
    (e.g. {"unet": "int8", "vae_decoder": "fp16"}); int8 needs ``calibration`` images.
    ``int8_weights``: "s8" (full range), "s7" ([-64, 64], for x86 hosts without VNNI, whose
    integer kernels saturate on full-range weights) or "auto" (s7 if this host is one).

    ``tiny_vae``: a TAESD folder whose decoder (and encoder, ``tiny_vae_parts="both"``) replace
    the checkpoint's VAE (tiny_vae.py); what it costs in quality goes to the manifest.
    """
    model_dir, out = Path(model_dir), Path(out)
    check_compat(trt_compat)
    attention = parse_attention(attention)
    layout = parse_int8_layout(int8_activations, int8_weights)
    if attention is Attention.FUSED and trt_compat:
        raise InputError("attention: fused, with trt_compat set: the fused node is ONNX "
                         "Runtime's own, which TensorRT cannot parse; export TensorRT engines "
                         "with plain attention")
    precisions = resolve_precisions(precision, component_precision or {})
    ckpt.check_folder(model_dir)
    task = ckpt.read_task(model_dir)  # labels without codes are refused before any export work
    if concat_scale == 1.0:  # the model's own, when it was trained with another (train.py)
        concat_scale = float(ckpt.read_settings(model_dir, "concat_scale") or 1.0)
    if opset < 17:
        raise InputError(f"opset: {opset} is below 17, the first with LayerNormalization; use 17+")
    parts = parse_tiny_vae_parts(tiny_vae_parts)
    checkpoint = ckpt.load(model_dir)
    shape = ModelShape.from_configs(checkpoint.configs)
    small = None
    if tiny_vae is not None:  # before any work: a wrong folder fails in seconds
        tiny_vae = Path(tiny_vae)
        small = tiny.load(tiny_vae)
        tiny.check_fits(small, shape, tiny_vae)
    default = int(checkpoint.vae.config.sample_size)
    height, width = height or default, width or default
    check_size(height, width, shape)
    noise_level = ckpt.read_noise_level(model_dir)
    conditioning = conditioning_of(shape, model_dir, noise_level)
    if dynamic and any(p is not Precision.FP32 for p in precisions.values()):
        raise InputError("precision: reduced precision with dynamic sizes: it is calibrated and "
                         "checked at one static size; export at one height and width instead")
    calibration_set = None
    if needs_calibration(precisions):  # before any work: a missing folder fails in a second
        calibration_set = gather(calibration, synthetic_calibration, height, width,
                                 shape.image_channels, shape.vae_factor)
    specs = build_specs(shape, height, width, dynamic)
    staging = staging_dir(out, overwrite)
    components = {}
    for name in tqdm(COMPONENTS, desc="export", disable=not progress):
        spec = specs[name]
        if small is not None and name in parts.components:
            module = tiny.wrap(name, small, checkpoint.vae.config.scaling_factor)
        else:
            module = wrap(name, checkpoint)
        if attention is Attention.FUSED:
            log.info("%s: %d attention layer(s) fused", name, use_fused_attention(module))
        bindings = {**size_bindings(height, width, shape.vae_factor),
                    "vocab": shape.vocab_size}
        feeds = spec.dummy_inputs(bindings)
        path = staging / f"{name}.onnx"
        to_onnx(module, spec, feeds, path, opset)
        if trt_compat:
            graph = onnx.load(str(path), load_external_data=False)  # weights stay where they are
            if decompose_layernorm(graph):
                onnx.save(graph, str(path))
        # Held-out inputs for the parity check: another seed than the trace's.
        diff, tolerance = parity(path, module, spec, spec.dummy_inputs(bindings, seed=1))
        log.info("%s: ORT vs torch max abs diff %.3g (tolerance %.3g)", name, diff, tolerance)
        if not diff <= tolerance:
            shutil.rmtree(staging, ignore_errors=True)
            raise ParityError(f"{name}: ONNX Runtime differs from torch by {diff:.3g}, above "
                              f"the tolerance {tolerance:.3g}; the export is wrong, not saved")
        components[name] = Component(name, path.name, content_hash(path),
                                     sum(f.stat().st_size for f in onnx_files(path)), spec, diff,
                                     tolerance)
    vae_affine, tiny_record = None, None
    if small is not None:
        measured = tiny.quality(small, checkpoint.vae, checkpoint.vae.config.scaling_factor,
                                shape.image_channels, height, width)
        log.info("tiny VAE (%s): %s", ", ".join(parts.components), measured)
        tiny_record = tiny.record(tiny_vae, parts, folder_hash(tiny_vae), measured)
    else:  # an affine map is the checkpoint's VAE's: not measured when a tiny one replaces it
        vae_affine = affine.measure(wrap("vae_encoder", checkpoint), wrap("vae_decoder", checkpoint),
                                    shape.image_channels, shape.latent_channels, shape.vae_factor)
    if vae_affine:
        log.info("VAE: a per-pixel affine map (max abs diff %.3g vs torch); the runtime applies "
                 "it instead of the VAE graphs", vae_affine["parity"]["max_abs_diff"])
        for name in ("vae_encoder", "vae_decoder"):
            # Reducing graphs that never run would only cost time (and ORT's quantiser
            # crashed on the identity VAE's shared zero weights).
            if precisions[name] is not Precision.FP32:
                log.warning("%s: kept fp32, not %s: the runtime applies the VAE's affine map, "
                            "not its graphs", name, precisions[name].value)
                precisions[name] = Precision.FP32
    manifest = Manifest(
        source_hash=folder_hash(model_dir), precision=Precision.FP32, opset=opset,
        height=height, width=width, dynamic=dynamic, image_channels=shape.image_channels,
        vae_factor=shape.vae_factor, divisor=shape.divisor,
        vae_scaling_factor=float(checkpoint.vae.config.scaling_factor),
        conditioning=conditioning, concat_scale=concat_scale, noise_level=noise_level,
        scheduler_config=checkpoint.scheduler_config, components=components,
        versions=library_versions(), enhance_defaults=ckpt.read_enhance_defaults(model_dir),
        attention=attention, vae_affine=vae_affine, tiny_vae=tiny_record,
        provenance=ckpt.read_settings(model_dir, "provenance"), **task,
    )
    (staging / TOKENIZER).write_text(json.dumps(checkpoint.tokenizer.to_json(), ensure_ascii=False),
                                     encoding="utf-8")
    (staging / MANIFEST).write_text(json.dumps(manifest.to_json(), indent=2), encoding="utf-8")
    if any(p is not Precision.FP32 for p in precisions.values()):
        try:
            manifest = reduce(staging, dataclasses.replace(manifest, precision=Precision(precision)),
                              precisions, calibration_set, progress, layout)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    publish(staging, out)
    return manifest


def parse_tiny_vae_parts(value: "tiny.TinyVaeParts | str") -> "tiny.TinyVaeParts":
    try:
        return tiny.TinyVaeParts(value)
    except ValueError:
        raise InputError(f"tiny_vae_parts: {value!r}; choose both (encoder and decoder) or "
                         "decoder") from None


def parse_int8_layout(activations: "Int8Activations | str",
                      weights: "Int8Weights | str") -> Int8Layout:
    """The int8 layout asked for, "auto" weights resolved for this host."""
    from scanside.runtime.host import host_class

    parsed = []
    for flag, value, enum_type in (("--int8-activations", activations, Int8Activations),
                                   ("--int8-weights", weights, Int8Weights)):
        try:
            parsed.append(enum_type(value))
        except ValueError:
            raise InputError(f"{flag}: {value!r}; choose one of "
                             f"{', '.join(e.value for e in enum_type)}") from None
    return Int8Layout.for_host(*parsed, host_class())


def parse_attention(value: "Attention | str") -> Attention:
    try:
        return Attention(value)
    except ValueError:
        raise InputError(f"attention: {value!r}; choose plain (every backend) or fused (ONNX "
                         "Runtime only)") from None


def resolve_precisions(default: "Precision | str",
                       overrides: Mapping[str, "Precision | str"]) -> dict[str, Precision]:
    """Every component's precision, refusing unknown names and values with the choices."""
    def parse(value, where: str) -> Precision:
        try:
            return Precision(value)
        except ValueError:
            raise InputError(f"{where}: {value!r} is not a precision; choose fp32, fp16 or int8") from None

    unknown = sorted(set(overrides) - set(COMPONENTS))
    if unknown:
        raise InputError(f"component_precision: unknown component(s) {unknown}; choose from "
                         f"{list(COMPONENTS)}")
    base = parse(default, "--precision")
    return {name: parse(overrides.get(name, base), f"--component-precision {name}")
            for name in COMPONENTS}
