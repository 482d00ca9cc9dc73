"""torch -> ONNX for each component, parity-checked in ONNX Runtime against the torch module."""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from scanside.errors import ScansideError
from scanside.runtime.iospec import IOSpec

log = logging.getLogger(__name__)
OPSET = 17
# Above this many bytes of weights a component's tensors go to one NAME.onnx.data file beside
# it (protobuf cannot hold 2 GiB; smaller graphs stay in one file, easier to copy around).
EXTERNAL_DATA_BYTES = 512 * 2**20
# fp32 parity tolerance on max |ORT - torch|, relative to the output's scale: kernels differ
# in summation order, never in math.
FP32_TOLERANCE = 1e-3


class ParityError(ScansideError):
    """An exported graph disagrees with its torch module beyond the tolerance."""


class TextEncoder(torch.nn.Module):
    def __init__(self, model: Any):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # int32 ids at the boundary (TensorRT's native integer); CLIP's embedding wants int64.
        return self.model(input_ids.long(), return_dict=False)[0]  # (B, 77, D)


class UNet(torch.nn.Module):
    def __init__(self, model: Any):
        super().__init__()
        self.model = model

    def forward(self, sample, timestep, encoder_hidden_states, timestep_cond=None):
        # timestep_cond: an LCM-distilled UNet's guidance-scale embedding (specs.py)
        return self.model(sample, timestep, encoder_hidden_states, timestep_cond=timestep_cond,
                          return_dict=False)[0]


class VaeEncoder(torch.nn.Module):
    """Image -> the posterior's mean and std; the runtime samples or takes the mean."""

    def __init__(self, vae: Any):
        super().__init__()
        self.vae = vae

    def forward(self, image):
        posterior = self.vae.encode(image).latent_dist
        return posterior.mean, posterior.std  # (B, 4, h, w) each


class VaeDecoder(torch.nn.Module):
    def __init__(self, vae: Any):
        super().__init__()
        self.vae = vae

    def forward(self, latent):
        return self.vae.decode(latent, return_dict=False)[0]  # (B, C, H, W)


def wrap(component: str, checkpoint: Any) -> torch.nn.Module:
    modules = {
        "text_encoder": lambda: TextEncoder(checkpoint.text_encoder),
        "unet": lambda: UNet(checkpoint.unet),
        "vae_encoder": lambda: VaeEncoder(checkpoint.vae),
        "vae_decoder": lambda: VaeDecoder(checkpoint.vae),
    }
    return modules[component]().eval()


def to_onnx(module: torch.nn.Module, spec: IOSpec, feeds: dict[str, np.ndarray], out: Path,
            opset: int = OPSET) -> None:
    """Trace ``module`` on ``feeds`` and write ``out`` (+ ``out``.data when large)."""
    args = tuple(torch.from_numpy(feeds[t.name]) for t in spec.inputs)
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer chatter about python-side shape checks
        raw = Path(tmp) / out.name
        # The TorchScript exporter: dynamic_axes come straight from the IOSpec, and it is the
        # path ORT's and TensorRT's Stable Diffusion tools are tested on.
        torch.onnx.export(
            module, args, str(raw), input_names=[t.name for t in spec.inputs],
            output_names=[t.name for t in spec.outputs], dynamic_axes=spec.dynamic_axes(),
            opset_version=opset, do_constant_folding=True, dynamo=False,
        )
        model = onnx.load(str(raw))  # pulls in any per-tensor external files the tracer wrote
    weight_bytes = sum(t.ByteSize() for t in model.graph.initializer)
    external = weight_bytes > EXTERNAL_DATA_BYTES
    onnx.save_model(model, str(out), save_as_external_data=external,
                    all_tensors_to_one_file=True, location=out.name + ".data", size_threshold=1024)


def torch_outputs(module: torch.nn.Module, spec: IOSpec, feeds: dict[str, np.ndarray]):
    with torch.inference_mode():
        out = module(*(torch.from_numpy(feeds[t.name]) for t in spec.inputs))
    out = out if isinstance(out, tuple) else (out,)
    return {t.name: o.float().numpy() for t, o in zip(spec.outputs, out)}


def parity(path: Path, module: torch.nn.Module, spec: IOSpec,
           feeds: dict[str, np.ndarray]) -> tuple[float, float]:
    """(max abs diff ORT vs torch, the tolerance it must stay under) on ``feeds``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ours = dict(zip([t.name for t in spec.outputs], session.run(None, feeds)))
    reference = torch_outputs(module, spec, feeds)
    diff = max(float(np.abs(ours[k] - reference[k]).max()) for k in reference)
    scale = max(1.0, max(float(np.abs(v).max()) for v in reference.values()))
    return diff, FP32_TOLERANCE * scale
