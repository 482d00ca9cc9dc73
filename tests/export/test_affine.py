"""A per-pixel affine VAE is measured at export and run as its map; any other VAE is not."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from scanside import Pipeline
from scanside.export import affine, export_model
from scanside.export.onnx import wrap
from scanside.training import build
from scanside.runtime.artifacts import read_manifest


class Vae:
    """What export's wrap() needs of a checkpoint: its ``vae``."""

    def __init__(self, vae):
        self.vae = vae


def autoencoder(identity: bool, factor_one: bool = True, seed: int = 0):
    from diffusers import AutoencoderKL

    from scanside.training import identity_vae

    torch.manual_seed(seed)
    config = identity_vae.config(32)
    if not factor_one:
        config.update(block_out_channels=(4, 4), down_block_types=("DownEncoderBlock2D",) * 2,
                      up_block_types=("UpDecoderBlock2D",) * 2)
    vae = AutoencoderKL(**config).eval()
    if identity:
        identity_vae.set_identity(vae)
    return Vae(vae)


def measured(checkpoint, factor: int = 1):
    return affine.measure(wrap("vae_encoder", checkpoint), wrap("vae_decoder", checkpoint), 1, 4,
                          factor)


def test_the_identity_vae_is_found_affine_and_its_map_matches_torch():
    checkpoint = autoencoder(identity=True)
    found = measured(checkpoint)
    assert found is not None
    assert found["parity"]["max_abs_diff"] <= found["parity"]["tolerance"]
    x = np.random.default_rng(5).uniform(-1, 1, (1, 1, 48, 40)).astype(np.float32)
    with torch.inference_mode():
        mean, _ = wrap("vae_encoder", checkpoint)(torch.from_numpy(x))
        back = wrap("vae_decoder", checkpoint)(mean).numpy()
    e, d = found["encode"], found["decode"]
    ours = affine.apply(d["weight"], d["bias"], affine.apply(e["weight"], e["bias"], x))
    assert np.abs(ours - back).max() < 1e-3


def test_a_learned_or_downsampling_vae_is_not_affine():
    assert measured(autoencoder(identity=False)) is None  # GroupNorm + SiLU: not affine
    assert measured(autoencoder(identity=False, factor_one=False), factor=2) is None


@pytest.fixture(scope="module")
def ct_tiny_engine(tmp_path_factory):
    model = build("ct-tiny", tmp_path_factory.mktemp("m") / "ct-tiny", seed=3)
    out = tmp_path_factory.mktemp("e") / "ct-tiny"
    export_model(model, out, height=64, width=64)
    return out


@pytest.mark.slow
def test_the_pipeline_runs_the_map_not_the_graphs_and_agrees_with_them(ct_tiny_engine):
    manifest = read_manifest(ct_tiny_engine)
    assert manifest.vae_affine is not None
    fast = Pipeline.load(ct_tiny_engine)
    assert set(fast.engines) == {"text_encoder", "unet"}  # the VAE graphs are never opened
    graphs = Pipeline.load(ct_tiny_engine)
    graphs.manifest = dataclasses.replace(manifest, vae_affine=None)
    from scanside.runtime.engines import Backend, open_engine

    for name in ("vae_encoder", "vae_decoder"):
        graphs.engines[name] = open_engine(ct_tiny_engine, manifest.components[name],
                                           manifest.source_hash, Backend.CPU)
    image = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    a, b = fast.enhance(image), graphs.enhance(image)
    assert np.abs(a - b).max() < 2e-3  # the graphs' float32 GroupNorm rounding, no more
    assert fast.fingerprint() != graphs.fingerprint()  # derived UIDs tell them apart


@pytest.mark.slow
def test_the_bench_sets_no_graph_flops_beside_an_affine_vae(ct_tiny_engine):
    """The VAE's graph FLOPs divided by the affine map's time read 500 % of the peak."""
    from scanside.bench.harness import flops_per_stage

    flops = flops_per_stage(Pipeline.load(ct_tiny_engine), 64, guidance=1.0)
    assert set(flops) == {"text", "unet_step"} and flops["unet_step"] > 0


@pytest.mark.slow
def test_int8_keeps_an_affine_vae_in_fp32_and_does_not_crash(tmp_path):
    """ONNX Runtime's quantiser crashed on the identity VAE's shared zero weights
    ("Expected ... conv2.weight to be an initializer"); graphs that never run are not reduced."""
    model = build("ct-tiny", tmp_path / "ct-tiny", seed=4)
    manifest = export_model(model, tmp_path / "e", height=64, width=64, precision="int8",
                            synthetic_calibration=True)
    assert manifest.vae_affine is not None
    precisions = {n: c.precision.value for n, c in manifest.components.items()}
    assert precisions == {"text_encoder": "int8", "unet": "int8", "vae_encoder": "fp32",
                          "vae_decoder": "fp32"}
    out = Pipeline.load(tmp_path / "e").enhance(np.full((64, 64), 0.5, np.float32))
    assert out.shape == (64, 64) and np.isfinite(out).all()
