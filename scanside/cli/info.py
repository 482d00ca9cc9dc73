"""`scanside info`: what an engine directory holds."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .export import print_accuracy


def add_parser(sub: "argparse._SubParsersAction") -> None:
    """`scanside info` on the subcommand parser ``sub``."""
    p = sub.add_parser("info", help="describe an engine directory")
    p.add_argument("engine_dir", type=Path)
    p.add_argument("--verify", action="store_true", help="re-hash every ONNX file and its external weights")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(func=cmd_info)


def cmd_info(args: argparse.Namespace) -> int:
    from scanside.runtime.artifacts import engine_folder, read_manifest

    args.engine_dir = engine_folder(args.engine_dir)
    manifest = read_manifest(args.engine_dir, verify=args.verify)
    if args.json:
        print(json.dumps(manifest.to_json(), indent=2))
        return 0
    m = manifest
    size = "dynamic H/W" if m.dynamic else f"{m.height}x{m.width}"
    print(f"engine      {args.engine_dir}")
    print(f"precision   {m.precision.value}   opset {m.opset}   image {size}, {m.image_channels} channel(s)")
    print(f"conditioning {m.conditioning.value}   VAE factor {m.vae_factor}, scaling {m.vae_scaling_factor}")
    print(f"scheduler   {m.scheduler_config.get('_class_name', '?')}   source {m.source_hash[:16]}")
    fused = " (ONNX Runtime's MultiHeadAttention: not for TensorRT)" if m.attention.value == "fused" else ""
    print(f"attention   {m.attention.value}{fused}")
    if m.vae_affine:
        parity = m.vae_affine["parity"]
        print(f"VAE         a per-pixel affine map, run in numpy instead of its graphs (max|diff| "
              f"{parity['max_abs_diff']:.3g} vs torch, tolerance {parity['tolerance']:.3g})")
    if m.tiny_vae:
        q = m.tiny_vae["quality"]
        print(f"tiny VAE    {m.tiny_vae['source']} for {' and '.join(m.tiny_vae['components'])}: "
              f"round trip {q['tiny_round_trip_psnr_db']} dB (checkpoint's VAE "
              f"{q['full_round_trip_psnr_db']} dB), decode vs the checkpoint's "
              f"{q['tiny_decode_vs_full_psnr_db']} dB")
    if m.tuned_on:
        ranges = sorted({c.weight_range for c in m.components.values() if c.weight_range})
        print(f"tuned on    {m.tuned_on.get('host_class')} ({m.tuned_on.get('cpu')}): int8 "
              f"choices timed there; weights {'/'.join(ranges)} (s7: 7 bits, for x86 without VNNI)")
    if m.provenance:
        print(f"provenance  {m.provenance.get('statement', m.provenance)}")
    if m.task != "enhance":
        labels = ", ".join(f"{label['label']} {label['name']} ({label['type']['scheme']} "
                           f"{label['type']['value']})" for label in m.labels)
        print(f"task        {m.task}: {labels}; " + ", ".join(
            f"{k} {v}" for k, v in m.segment_defaults.items() if k != "prompt"))
    uncertainty = (m.maps or {}).get("uncertainty")
    if uncertainty:
        print(f"maps        uncertainty calibrated: spread x {uncertainty['spread_scale']:g}, "
              f"local noise x {uncertainty['noise_scale']:g} "
              f"({uncertainty.get('measured_on', 'measured')})")
    print_accuracy(m)
    print("built with  " + ", ".join(f"{k} {v}" for k, v in m.versions.items()))
    if args.verify:
        print("hashes      verified")
    from scanside.runtime.engines.tensorrt import cache_root, cached_plans

    for line in cached_plans(cache_root(Path(args.engine_dir), m.source_hash)):
        print(f"plan        {line}")
    return 0
