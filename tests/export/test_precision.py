"""fp16 and int8 engines: they export, load, stay within the per-precision tolerance of the
fp32 engine on held-out inputs, and say what they cost in the manifest."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from PIL import Image

from scanside import Pipeline
from scanside.errors import InputError
from scanside.export import export_model
from scanside.runtime.artifacts import Precision, read_manifest

from tests.dicom.conftest import ct_phantom, ct_slice


@pytest.fixture(scope="module")
def fp16_engine(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("fp16") / "engine"
    export_model(tiny_model, out, precision="fp16")
    return out


@pytest.fixture(scope="module")
def calibration_folder(tmp_path_factory):
    """The real-workload shape: a mix of PNG and DICOM images."""
    folder = tmp_path_factory.mktemp("calibration")
    rng = np.random.default_rng(0)
    for k in range(3):
        Image.fromarray((rng.random((80, 70)) * 255).astype(np.uint8)).save(folder / f"p{k}.png")
    for k in range(3):
        ct_slice(folder / "ct" / f"s{k}.dcm", ct_phantom(seed=k), float(k), k + 1, "1.2.826.0.1.7")
    return folder


@pytest.fixture(scope="module")
def int8_engine(tiny_model, calibration_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "engine"
    export_model(tiny_model, out, precision="int8", calibration=calibration_folder)
    return out


@pytest.mark.slow
def test_fp16_graph_loads_and_matches(fp16_engine, tiny_engine):
    manifest = read_manifest(fp16_engine, verify=True)
    for c in manifest.components.values():
        assert c.precision is Precision.FP16
        assert c.parity_max_abs_diff <= c.parity_tolerance
        assert c.parity_reference.startswith("fp32 onnx")
    unet = onnx.load(str(fp16_engine / "unet.onnx"))
    types = {i.data_type for i in unet.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in types
    # fp32 at the engine boundary, so the runtime feeds it like any other engine
    assert unet.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert manifest.final_image_psnr_db > 45
    out = Pipeline.load(fp16_engine).enhance(np.full((64, 64), 0.5, np.float32), steps=4, strength=0.5)
    assert np.isfinite(out).all()


@pytest.mark.slow
def test_fp16_keeps_the_timestep_embedding_in_fp32(fp16_engine):
    unet = onnx.load(str(fp16_engine / "unet.onnx"))
    producers = {o: n for n in unet.graph.node for o in n.output}
    trig = [n for n in unet.graph.node if n.op_type in ("Sin", "Cos")]
    assert trig
    for node in trig:  # no Cast to fp16 feeds the sinusoid
        parent = producers.get(node.input[0])
        assert parent is None or parent.op_type != "Cast" or all(
            a.i != onnx.TensorProto.FLOAT16 for a in parent.attribute if a.name == "to")


@pytest.mark.slow
def test_int8_from_png_and_dicom_calibration(int8_engine, tiny_engine, calibration_folder):
    manifest = read_manifest(int8_engine, verify=True)
    assert manifest.calibration == str(calibration_folder)
    assert all(c.precision is Precision.INT8 for c in manifest.components.values())
    assert all(c.parity_max_abs_diff <= c.parity_tolerance for c in manifest.components.values())
    assert np.isfinite(manifest.final_image_psnr_db)
    unet = onnx.load(str(int8_engine / "unet.onnx"))
    ops = {n.op_type for n in unet.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ form
    # On the tiny model graph structure and fp32 biases/scales weigh more than on SD 1.5
    # (where the benchmark measures the issue's <= 30 %): here int8 is under half of fp32.
    fp32_bytes = read_manifest(tiny_engine).components["unet"].bytes
    assert manifest.components["unet"].bytes <= 0.5 * fp32_bytes


@pytest.mark.slow
def test_per_component_override(tiny_model, tmp_path):
    manifest = export_model(tiny_model, tmp_path / "mixed", precision="fp32",
                            component_precision={"unet": "fp16", "vae_decoder": "fp16"})
    got = {n: c.precision.value for n, c in manifest.components.items()}
    assert got == {"text_encoder": "fp32", "unet": "fp16", "vae_encoder": "fp32",
                   "vae_decoder": "fp16"}


def test_int8_without_calibration_says_how(tiny_model, tmp_path):
    with pytest.raises(InputError, match="--calibration PATH.*--synthetic-calibration"):
        export_model(tiny_model, tmp_path / "e", precision="int8")
    assert not (tmp_path / "e").exists() and not (tmp_path / "e.partial").exists()


@pytest.mark.slow
def test_int8_text_encoder_alone_needs_no_calibration(tiny_model, tmp_path):
    manifest = export_model(tiny_model, tmp_path / "e", component_precision={"text_encoder": "int8"})
    assert manifest.components["text_encoder"].precision is Precision.INT8


@pytest.mark.parametrize("kwargs,fragment", [
    ({"precision": "int4"}, "--precision: 'int4' is not a precision"),
    ({"component_precision": {"vae": "fp16"}}, r"unknown component\(s\) \['vae'\]"),
    ({"precision": "int8", "calibration": "/no/such/folder"}, "does not exist"),
    ({"precision": "int8", "int8_weights": "s6"}, "--int8-weights: 's6'; choose one of auto, s8, s7"),
])
def test_bad_precision_arguments(tiny_model, tmp_path, kwargs, fragment):
    from pathlib import Path

    if "calibration" in kwargs:
        kwargs["calibration"] = Path(kwargs["calibration"])
    with pytest.raises(InputError, match=fragment):
        export_model(tiny_model, tmp_path / "e", **kwargs)


@pytest.mark.slow
def test_cli_export_int8_and_info(tiny_model, calibration_folder, tmp_path, capsys):
    from scanside.cli import main

    out = tmp_path / "e"
    assert main(["export", str(tiny_model), "--out", str(out), "--precision", "fp32",
                 "--component-precision", "unet=int8", "--calibration", str(calibration_folder)]) == 0
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "final image PSNR" in text and "int8" in text
    assert main(["export", str(tiny_model), "--out", str(tmp_path / "f"),
                 "--component-precision", "unet"]) == 2
    assert "is not NAME=PRECISION" in capsys.readouterr().err


@pytest.mark.slow
def test_int8_keeps_attention_matmuls_in_float(int8_engine):
    manifest = read_manifest(int8_engine)
    how = manifest.components["unet"].quantization
    assert how["activations"] == "u8" and how["kept_in_float"] > 0
    unet = onnx.load(str(int8_engine / "unet.onnx"))
    producers = {o: n for n in unet.graph.node for o in n.output}
    weights = {i.name for i in unet.graph.initializer}
    quantised_inputs = 0
    for node in (n for n in unet.graph.node if n.op_type == "MatMul"):
        parents = [producers.get(i) for i in node.input]
        from_dq = [p is not None and p.op_type == "DequantizeLinear" for p in parents]
        if all(from_dq) and not any(p.input[0] in weights for p in parents):
            quantised_inputs += 1  # both operands activations, both quantised: must not happen
    assert quantised_inputs == 0


@pytest.mark.slow
def test_int8_symmetric_activations_for_tensorrt(tiny_model, calibration_folder, tmp_path):
    out = tmp_path / "s8"
    manifest = export_model(tiny_model, out, component_precision={"unet": "int8"},
                            calibration=calibration_folder, int8_activations="s8")
    assert manifest.components["unet"].quantization["activations"] == "s8"
    unet = onnx.load(str(out / "unet.onnx"))
    zero_points = [onnx.numpy_helper.to_array(i) for i in unet.graph.initializer
                   if i.name.endswith("_zero_point")]
    eight_bit = [z for z in zero_points if z.dtype.itemsize == 1]  # (int32 ones are biases')
    assert eight_bit and all(z.dtype == np.int8 and not z.any() for z in eight_bit)


def unet_weights(engine) -> list[np.ndarray]:
    """The int8 weight tensors of an engine's UNet (zero points and int32 biases left out)."""
    unet = onnx.load(str(engine / "unet.onnx"))
    return [a for a in (onnx.numpy_helper.to_array(i) for i in unet.graph.initializer)
            if a.dtype == np.int8 and a.size > 1]


@pytest.mark.slow
@pytest.mark.parametrize("weights,limit", [("s7", 64), ("s8", 127)])
def test_int8_weight_range_is_recorded_and_kept(tiny_model, calibration_folder, tmp_path,
                                                weights, limit, monkeypatch, caplog):
    """7-bit weights for x86 CPUs without VNNI, whose u8 x s8 kernels saturate on 8-bit ones
    (tests/runtime/test_int8_kernels.py): every weight within the range the manifest names,
    and 8-bit ones run on ONNX Runtime's exact kernels on such a CPU."""
    from scanside.runtime import host

    out = tmp_path / weights
    manifest = export_model(tiny_model, out, component_precision={"unet": "int8"},
                            calibration=calibration_folder, int8_weights=weights)
    assert manifest.components["unet"].quantization["weight_range"] == weights
    peak = max(int(np.abs(w.astype(np.int16)).max()) for w in unet_weights(out))
    assert peak == limit  # per-channel symmetric: each channel's largest weight maps to the edge
    monkeypatch.setattr(host, "host_class", lambda flags=None, machine="": "x86-avx2")
    with caplog.at_level("WARNING"):
        Pipeline.load(out)
    assert ("exact, slower kernels" in caplog.text) == (weights == "s8")


def test_auto_int8_weights_follow_the_export_host():
    from scanside.export.precision import Int8Layout

    def weights(host, activations="u8"):
        return Int8Layout.for_host(activations, "auto", host).weights.value

    assert [weights(h) for h in ("x86-avx2", "x86-avx512", "x86_64")] == ["s7"] * 3
    assert [weights(h) for h in ("x86-avx512-vnni", "x86-avx-vnni", "x86-amx",
                                 "arm64-dotprod")] == ["s8"] * 4
    assert weights("x86-avx2", "s8") == "s8"  # TensorRT's layout: no x86 integer kernel runs it
    assert Int8Layout.for_host("u8", "s8", "x86-avx2").weights.value == "s8"  # asked for


@pytest.mark.slow
def test_int8_choices_are_measured_and_recorded(int8_engine):
    """Static vs dynamic for the text encoder and VAE, and the layers kept in float for
    accuracy, are decided by measurement at export and written down with their figures."""
    components = read_manifest(int8_engine).components
    for name in ("text_encoder", "vae_encoder", "vae_decoder"):
        how = components[name].quantization
        assert set(how["candidates"]) == {"static", "dynamic"}
        for figures in how["candidates"].values():
            assert figures["max_abs_diff"] >= 0 and figures["latency_vs_fp32"] > 0
        assert how["method"].split()[0] in how["candidates"]
    unet = components["unet"].quantization
    assert unet["median_input_sqnr_db"] > 0 and unet["quantised_nodes"] > 0
    for item in unet["sensitive_in_float"]:
        assert item["sqnr_db"] < 30
    assert unet["kept_in_float"] == unet["attention_in_float"] + len(unet["sensitive_in_float"])


def test_sensitivity_ranks_a_clipped_tensor_worst():
    from scanside.export.sensitivity import sqnr_db

    x = np.linspace(-1, 1, 10001, dtype=np.float32)
    fine = sqnr_db(x, 2 / 255, 128, 0, 255)  # range covers the tensor
    clipped = sqnr_db(x, 0.5 / 255, 128, 0, 255)  # range a quarter of it: clipping noise
    assert fine > 40 and clipped < 10


@pytest.mark.slow
def test_quantising_twice_does_not_grow_the_weight_file(tiny_engine, tmp_path):
    """onnx appends to an existing external-data file: a rewrite must start from nothing."""
    from scanside.export.precision import to_int8_dynamic

    dst = tmp_path / "unet.onnx"
    to_int8_dynamic(tiny_engine / "unet.onnx", dst, external=True)
    first = (tmp_path / "unet.onnx.data").stat().st_size
    to_int8_dynamic(tiny_engine / "unet.onnx", dst, external=True)
    assert (tmp_path / "unet.onnx.data").stat().st_size == first


@pytest.mark.slow
def test_sensitivity_leaves_no_files_beside_a_large_model(tiny_engine, tmp_path):
    """The measurement copy of a model with external weights is removed once loaded."""
    import shutil

    from scanside.export import sensitivity
    from scanside.export.precision import save, to_int8_dynamic

    src = tmp_path / "unet.onnx"
    save(onnx.load(str(tiny_engine / "unet.onnx")), src, 0)  # force external weights
    qdq = tmp_path / "q" / "unet.onnx"
    qdq.parent.mkdir()
    shutil.copy(tiny_engine / "unet.onnx", tmp_path / "plain.onnx")
    to_int8_dynamic(tmp_path / "plain.onnx", qdq)
    before = sorted(p.name for p in tmp_path.iterdir())
    sensitivity.measure(src, qdq, [], ["Conv"])
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.slow
def test_bench_sets_int8_stages_beside_the_int8_peak(int8_engine):
    """An int8 UNet's FLOP rate over the float32 peak read 230 % on a VNNI host."""
    from scanside.bench.harness import Settings, run_bench

    result = run_bench(int8_engine, Settings(repeat=1, warmup=0, size=64, steps=4, strength=0.5))
    assert result["peak"]["int8_gops"] > 0
    unet = result["stages"]["unet_step"]
    assert unet["peak_used"] == "int8"
    assert unet["fraction_of_peak"] == unet["gflops_achieved"] / result["peak"]["int8_gops"]


@pytest.mark.slow
def test_int8_records_the_host_it_was_tuned_on_and_warns_elsewhere(int8_engine, monkeypatch,
                                                                    caplog, capsys):
    from scanside.cli import main
    from scanside.runtime import host
    from scanside.runtime.artifacts import read_manifest

    tuned = read_manifest(int8_engine).tuned_on
    assert tuned["host_class"] == host.host_class() and tuned["cpu"]
    assert main(["info", str(int8_engine)]) == 0
    assert f"tuned on    {tuned['host_class']}" in capsys.readouterr().out
    with caplog.at_level("WARNING"):
        Pipeline.load(int8_engine)
    assert "timed on" not in caplog.text  # the same host: nothing to say
    other = "x86-avx2" if tuned["host_class"] == "x86-amx" else "x86-amx"  # not this host's
    monkeypatch.setattr(host, "host_class", lambda flags=None, machine="": other)
    with caplog.at_level("WARNING"):
        Pipeline.load(int8_engine)
    assert f"timed on {tuned['host_class']}" in caplog.text and f"this CPU is {other}" in caplog.text
