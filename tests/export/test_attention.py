"""--attention fused: every diffusers attention becomes ONNX Runtime's MultiHeadAttention, the
engine enhances as the plain one does, and TensorRT refuses it with the fix."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from scanside import Pipeline
from scanside.errors import BackendUnavailable, InputError
from scanside.export import export_model
from scanside.runtime.artifacts import Attention, read_manifest
from scanside.runtime.engines import Backend
from scanside.runtime.engines.devices import choose


@pytest.fixture(scope="module")
def fused_engine(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("fused") / "engine"
    export_model(tiny_model, out, attention="fused")
    return out


def attention_layers(model_dir, component: str) -> int:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.models.attention_processor import Attention as DiffusersAttention

    if component == "unet":
        module = UNet2DConditionModel.from_pretrained(model_dir / "unet")
    else:
        vae = AutoencoderKL.from_pretrained(model_dir / "vae")
        module = vae.encoder if component == "vae_encoder" else vae.decoder
    return sum(isinstance(m, DiffusersAttention) for m in module.modules())


@pytest.mark.slow
@pytest.mark.parametrize("component", ["unet", "vae_encoder", "vae_decoder"])
def test_every_attention_is_one_fused_node_and_no_score_softmax_is_left(
        fused_engine, tiny_model, tiny_engine, component):
    fused = onnx.load(str(fused_engine / f"{component}.onnx")).graph
    plain = onnx.load(str(tiny_engine / f"{component}.onnx")).graph
    layers = attention_layers(tiny_model, component)
    assert layers > 0
    assert sum(n.op_type == "MultiHeadAttention" and n.domain == "com.microsoft"
               for n in fused.node) == layers
    assert sum(n.op_type == "Softmax" for n in plain.node) == layers
    assert not any(n.op_type == "Softmax" for n in fused.node)


@pytest.mark.slow
def test_the_fused_engine_enhances_as_the_plain_one(fused_engine, tiny_engine):
    assert read_manifest(fused_engine).attention is Attention.FUSED
    assert read_manifest(tiny_engine).attention is Attention.PLAIN
    image = np.random.default_rng(0).random((64, 64, 3)).astype(np.float32)
    plain = Pipeline.load(tiny_engine).enhance(image, steps=10, strength=0.5)
    fused = Pipeline.load(fused_engine).enhance(image, steps=10, strength=0.5)
    assert np.abs(plain - fused).max() < 1e-4
    generated = [Pipeline.load(e).generate("a scan", steps=3, height=64, width=64)
                 for e in (tiny_engine, fused_engine)]
    assert np.abs(generated[0] - generated[1]).max() < 1e-4


@pytest.mark.slow
def test_tensorrt_refuses_a_fused_engine_and_auto_passes_it_over(fused_engine):
    with pytest.raises(BackendUnavailable, match="--attention plain"):
        Pipeline.load(fused_engine, "tensorrt")
    present = dict(ort_providers=lambda: ["CPUExecutionProvider"])
    from scanside.runtime.pipeline import unfit_backends

    unfit = unfit_backends(read_manifest(fused_engine), fused_engine)
    assert set(unfit) == {Backend.TENSORRT}
    backend, notes = choose("auto", unfit, **present)
    assert backend is Backend.CPU and "attention fused" in notes[0]


def test_export_refuses_fused_attention_for_tensorrt(tiny_model, tmp_path, capsys):
    from scanside.cli import main

    assert main(["export", str(tiny_model), "--out", str(tmp_path / "e"), "--attention", "fused",
                 "--trtexec-script", str(tmp_path / "t.sh")]) == 2
    assert "TensorRT cannot parse" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()
    with pytest.raises(InputError, match="^attention: 'flash'"):
        export_model(tiny_model, tmp_path / "e", attention="flash")
    with pytest.raises(InputError, match="^attention: fused, with trt_compat set"):
        export_model(tiny_model, tmp_path / "e", attention="fused", trt_compat="8.5")


def test_a_masked_attention_keeps_diffusers_processor():
    import torch
    from diffusers.models.attention_processor import Attention as DiffusersAttention

    from scanside.export.attention import FusedAttnProcessor

    attn = DiffusersAttention(16, heads=2, dim_head=8)
    processor = FusedAttnProcessor()
    assert processor.fusable(attn, None)
    assert not processor.fusable(attn, torch.zeros(1, 4, 4))
    x = torch.randn(1, 4, 16)
    reference = attn(x)
    attn.set_processor(processor)
    assert torch.allclose(attn(x), reference, atol=1e-6)


@pytest.mark.slow
def test_the_fused_node_counts_the_flops_of_the_products_it_replaced(fused_engine, tiny_engine):
    from scanside.bench.flops import count_flops

    for component, sizes in (("unet", {"UB": 1, "h": 8, "w": 8}), ("vae_decoder", {"B": 1})):
        plain = count_flops(tiny_engine / f"{component}.onnx", sizes)
        fused = count_flops(fused_engine / f"{component}.onnx", sizes)
        assert fused.unknown_nodes == plain.unknown_nodes == 0
        assert fused.flops == plain.flops > 0
