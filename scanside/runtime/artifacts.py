"""manifest.json: what an engine directory holds, and the checks before anything runs.

Like llm.c's checkpoints, the manifest carries a magic string and a format version; a
mismatch says which command rebuilds the directory instead of failing somewhere inside a run.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from scanside.errors import EngineError
from scanside.files import files_hash
from scanside.runtime.onnxfile import check_external_data

from . import noise_level
from .iospec import IOSpec

MAGIC = "scanside-engine"
FORMAT_VERSION = 3  # 2: per-component precision and accuracy figures; 3: image divisor
MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"
COMPONENTS = ("text_encoder", "unet", "vae_encoder", "vae_decoder")


class Precision(str, enum.Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


class Conditioning(str, enum.Enum):
    TEXT = "text"  # img2img (SDEdit) and text-to-image on a plain UNet
    CONCAT = "concat"  # the image's latent sits beside the noisy latent at every step


@dataclass(frozen=True)
class Component:
    name: str
    file: str
    sha256: str
    bytes: int  # the .onnx file plus its external data
    spec: IOSpec
    parity_max_abs_diff: float  # measured at export on held-out inputs
    parity_tolerance: float
    precision: Precision = Precision.FP32
    parity_reference: str = "torch"  # fp32 graphs vs torch; reduced precision vs the fp32 graph
    quantization: Optional[Mapping[str, Any]] = None  # int8: method, activations, kept in float

    @property
    def weight_range(self) -> Optional[str]:
        """An int8 component's weight range: "s7" ([-64, 64]) or "s8" (full range; also every
        engine exported before the range was recorded). None for float components."""
        if self.precision is not Precision.INT8:
            return None
        return (self.quantization or {}).get("weight_range", "s8")

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "sha256": self.sha256, "bytes": self.bytes,
                "precision": self.precision.value, "iospec": self.spec.to_json(),
                "parity": {"max_abs_diff": self.parity_max_abs_diff,
                           "tolerance": self.parity_tolerance,
                           "reference": self.parity_reference},
                "quantization": self.quantization}

    @classmethod
    def from_json(cls, name: str, data: Mapping[str, Any]) -> "Component":
        parity = data["parity"]
        return cls(name, data["file"], data["sha256"], int(data["bytes"]),
                   IOSpec.from_json(data["iospec"]), float(parity["max_abs_diff"]),
                   float(parity["tolerance"]), Precision(data["precision"]), parity["reference"],
                   data.get("quantization"))


class Attention(str, enum.Enum):
    """How the attention layers were exported (scanside/export/attention.py)."""

    PLAIN = "plain"  # MatMul/Softmax/MatMul: every backend, TensorRT included
    FUSED = "fused"  # com.microsoft.MultiHeadAttention: ONNX Runtime only


@dataclass(frozen=True)
class Manifest:
    source_hash: str
    precision: Precision
    opset: int
    height: int
    width: int
    dynamic: bool
    image_channels: int
    vae_factor: int
    # What image sizes must be multiples of: the VAE factor x 2 ** (UNet downsamplings), so
    # every UNet level halves a whole number of latents (SD 1.5: 64; padding to 8 alone broke
    # a dynamic engine on a 300 x 484 image).
    divisor: int
    vae_scaling_factor: float
    conditioning: Conditioning
    concat_scale: float  # multiplies the conditioning latent (instruct-pix2pix: 1.0)
    scheduler_config: Mapping[str, Any]
    components: Mapping[str, Component]
    versions: Mapping[str, str]
    # Reduced precision only: PSNR (dB, [0, 1] images) of a fixed enhancement of a held-out
    # image against the fp32 engine, and where the calibration images came from.
    final_image_psnr_db: Optional[float] = None
    calibration: Optional[str] = None
    # The model's own enhancement settings (prompt, strength, steps, guidance, scheduler), from
    # the checkpoint's scanside.json; arguments a caller gives win over them.
    enhance_defaults: Mapping[str, Any] = field(default_factory=dict)
    attention: Attention = Attention.PLAIN
    # A VAE measured at export to be a per-pixel affine map (scanside/export/affine.py): its
    # encode weight/bias/std and decode weight/bias, run in numpy instead of its graphs.
    vae_affine: Optional[Mapping[str, Any]] = None
    # int8 engines: the host whose kernels the quantisation choices were timed on
    # ({"host_class": "x86-avx512-vnni", "cpu": ...}).
    tuned_on: Optional[Mapping[str, str]] = None
    # A TAESD-format VAE exported in place of the checkpoint's (export/tiny_vae.py): which
    # components, its folder's hash, and its measured quality against the checkpoint's VAE.
    tiny_vae: Optional[Mapping[str, Any]] = None
    # A noise-conditioned UNet: its last input channel is the image's estimated noise level
    # ({"estimator": ..., "scale": ...}, runtime/noise_level.py), after the image's latent.
    noise_level: Optional[Mapping[str, Any]] = None
    # Where the model's weights came from, when that limits where it may go: a model adapted
    # on a site's own scans (training/adapt.py) is derived from patient images and stays on
    # site ({"derived_from_patient_images": true, "statement": ...}, from scanside.json).
    provenance: Optional[Mapping[str, Any]] = None
    # What the model does: "enhance" (its sample is the image) or "segment" (its sample is a
    # mask: runtime/segment.py), with a segmentation model's own sampling settings and its
    # labels ({"label", "name", "category", "type"}, codes as {"scheme", "value", "meaning"}).
    task: str = "enhance"
    segment_defaults: Mapping[str, Any] = field(default_factory=dict)
    labels: tuple[Mapping[str, Any], ...] = ()
    # The maps' calibration, measured on held-out data (runtime/maps.py, training/mapseval.py):
    # {"uncertainty": {"spread_scale": b, "noise_scale": c, "measured_on": ...}}; None: the
    # raw spread.
    maps: Optional[Mapping[str, Any]] = None

    def to_json(self) -> dict[str, Any]:
        return {
            "magic": MAGIC, "format_version": FORMAT_VERSION, "source_hash": self.source_hash,
            "precision": self.precision.value, "opset": self.opset,
            "image": {"height": self.height, "width": self.width, "dynamic": self.dynamic,
                      "channels": self.image_channels, "vae_factor": self.vae_factor,
                      "divisor": self.divisor},
            "vae_scaling_factor": self.vae_scaling_factor,
            "conditioning": {"mode": self.conditioning.value, "concat_scale": self.concat_scale,
                             "noise_level": self.noise_level},
            "scheduler_config": dict(self.scheduler_config),
            "components": {n: c.to_json() for n, c in self.components.items()},
            "versions": dict(self.versions),
            "accuracy": {"final_image_psnr_db": self.final_image_psnr_db,
                         "reference": "fp32 engine of the same checkpoint",
                         "calibration": self.calibration},
            "enhance_defaults": dict(self.enhance_defaults),
            "attention": self.attention.value,
            "vae_affine": self.vae_affine,
            "tuned_on": self.tuned_on,
            "tiny_vae": self.tiny_vae,
            "provenance": self.provenance,
            "task": self.task,
            "segment_defaults": dict(self.segment_defaults),
            "labels": [dict(label) for label in self.labels],
            "maps": self.maps,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Manifest":
        image, cond = data["image"], data["conditioning"]
        return cls(
            source_hash=data["source_hash"], precision=Precision(data["precision"]),
            opset=int(data["opset"]), height=int(image["height"]), width=int(image["width"]),
            dynamic=bool(image["dynamic"]), image_channels=int(image["channels"]),
            vae_factor=int(image["vae_factor"]), divisor=int(image["divisor"]),
            vae_scaling_factor=float(data["vae_scaling_factor"]),
            conditioning=Conditioning(cond["mode"]), concat_scale=float(cond["concat_scale"]),
            scheduler_config=data["scheduler_config"],
            components={n: Component.from_json(n, c) for n, c in data["components"].items()},
            versions=data["versions"],
            final_image_psnr_db=data["accuracy"]["final_image_psnr_db"],
            calibration=data["accuracy"]["calibration"],
            enhance_defaults=data.get("enhance_defaults", {}),
            attention=Attention(data.get("attention", Attention.PLAIN.value)),
            vae_affine=data.get("vae_affine"),
            tuned_on=data.get("tuned_on"),
            tiny_vae=data.get("tiny_vae"),
            provenance=data.get("provenance"),
            task=check_task(data.get("task", "enhance")),
            segment_defaults=data.get("segment_defaults", {}),
            labels=tuple(data.get("labels", ())),
            maps=data.get("maps"),
            noise_level=(None if cond.get("noise_level") is None else
                         noise_level.check_spec(cond["noise_level"], "conditioning")),
        )


TASKS = ("enhance", "segment")


def check_task(task: Any) -> str:
    if task not in TASKS:
        raise ValueError(f"task {task!r} (this scanside runs {', '.join(TASKS)}; upgrade it)")
    return task


def rebuild_hint(engine_dir: Path) -> str:
    return f"rebuild it with `scanside export MODEL_DIR --out {engine_dir}`"


def sha256_file(path: Path) -> str:
    return files_hash([path])


def onnx_files(onnx_file: Path) -> list[Path]:
    """An ONNX file and, when its weights are external, the NAME.onnx.data beside it."""
    data_file = onnx_file.with_name(onnx_file.name + ".data")
    return [onnx_file] + ([data_file] if data_file.exists() else [])


def content_hash(onnx_file: Path) -> str:
    """A component's sha256 as its manifest records it: over the ONNX file, then its external
    data when it has some. A graph whose weights are external is the same file for any weights
    of the same shapes, so its hash alone would let two models share derived UIDs and a
    TensorRT plan. For a file alone this is the file's own sha256, as it always was."""
    return files_hash(onnx_files(onnx_file))


def component_files(engine_dir: Path, component: Component) -> list[Path]:
    return onnx_files(engine_dir / component.file)


ENGINE_SUBDIR = "engine"  # a model folder (the built-in one, an adapted one) keeps its engine here


def engine_folder(path: "str | Path") -> Path:
    """``path`` itself when it holds a manifest; its ``engine/`` when ``path`` is a model
    folder (a checkpoint and card beside the engine, as ``scanside models adapt`` writes)."""
    path = Path(path)
    if not (path / MANIFEST).is_file() and (path / ENGINE_SUBDIR / MANIFEST).is_file():
        return path / ENGINE_SUBDIR
    return path


def read_manifest(engine_dir: "str | Path", verify: bool = False) -> Manifest:
    """Read and check ENGINE_DIR/manifest.json (or MODEL_DIR/engine/manifest.json); with
    ``verify``, re-hash every component."""
    engine_dir = engine_folder(engine_dir)
    path = engine_dir / MANIFEST
    if not engine_dir.is_dir():
        raise EngineError(f"{engine_dir}: no such engine directory; create one with "
                          f"`scanside export MODEL_DIR --out {engine_dir}`")
    if not path.is_file():
        raise EngineError(f"{engine_dir}: no {MANIFEST}, so this is not a scanside engine "
                          f"directory; {rebuild_hint(engine_dir)}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EngineError(f"{path}: unreadable ({exc}); {rebuild_hint(engine_dir)}") from exc
    if not isinstance(data, dict) or data.get("magic") != MAGIC:
        raise EngineError(f"{path}: not a scanside manifest (magic {data.get('magic') if isinstance(data, dict) else None!r}, "
                          f"expected {MAGIC!r}); {rebuild_hint(engine_dir)}")
    if data.get("format_version") != FORMAT_VERSION:
        raise EngineError(f"{path}: format version {data.get('format_version')!r}, this scanside "
                          f"reads version {FORMAT_VERSION}; {rebuild_hint(engine_dir)}")
    try:
        manifest = Manifest.from_json(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise EngineError(f"{path}: malformed entry {exc}; {rebuild_hint(engine_dir)}") from exc
    check_components(engine_dir, manifest, verify)
    return manifest


def check_components(engine_dir: Path, manifest: Manifest, verify: bool) -> None:
    missing = sorted(set(COMPONENTS) - set(manifest.components))
    if missing:
        raise EngineError(f"{engine_dir / MANIFEST}: component(s) {missing} missing; "
                          f"{rebuild_hint(engine_dir)}")
    for component in manifest.components.values():
        files = component_files(engine_dir, component)
        if not files[0].is_file():
            raise EngineError(f"{files[0]}: missing; {rebuild_hint(engine_dir)}")
        size = sum(f.stat().st_size for f in files)
        if size != component.bytes:
            raise EngineError(f"{files[0]}: {size} bytes, the manifest says {component.bytes}; "
                              f"the file was changed or truncated; {rebuild_hint(engine_dir)}")
        check_external_data(files[0], engine_dir)
        if verify and content_hash(files[0]) != component.sha256:
            if len(files) > 1 and sha256_file(files[0]) == component.sha256:
                raise EngineError(f"{files[1]}: the manifest's hash covers {files[0].name} alone "
                                  "(exported before scanside hashed external weights), so "
                                  "these weights cannot be verified; "
                                  f"{rebuild_hint(engine_dir)} (its derived UIDs then change)")
            raise EngineError(f"{files[0]}: content hash differs from the manifest; "
                              f"{rebuild_hint(engine_dir)}")
