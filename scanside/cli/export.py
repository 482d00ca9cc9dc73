"""`scanside export`: a diffusers checkpoint -> an ONNX engine directory (and TensorRT plans)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from scanside.errors import InputError


def add_parser(sub: "argparse._SubParsersAction") -> None:
    """`scanside export` on the subcommand parser ``sub``."""
    p = sub.add_parser("export", help="diffusers checkpoint -> ONNX engine directory")
    p.add_argument("model_dir", type=Path, help="diffusers Stable Diffusion folder")
    p.add_argument("--out", required=True, type=Path, help="engine directory to create")
    p.add_argument("--height", type=int, help="image height in pixels (default: the VAE's sample_size)")
    p.add_argument("--width", type=int, help="image width in pixels (default: the VAE's sample_size)")
    p.add_argument("--dynamic", action="store_true", help="dynamic H/W (256-1024) instead of static")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17, default 17)")
    p.add_argument("--concat-scale", type=float, default=1.0,
                   help="image-conditioned UNets: factor on the conditioning latent (default 1, as instruct-pix2pix)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"],
                   help="every component's precision (default fp32)")
    p.add_argument("--component-precision", metavar="NAME=P,...",
                   help="per-component override, e.g. unet=int8,vae_decoder=fp16")
    p.add_argument("--calibration", type=Path,
                   help="int8: folder of PNG or DICOM images from the real workload")
    p.add_argument("--synthetic-calibration", action="store_true",
                   help="int8 without real images: calibrate on synthetic phantoms (labelled so)")
    p.add_argument("--int8-activations", choices=["u8", "s8"], default="u8",
                   help="u8: asymmetric, ONNX Runtime's fast x86 path (default); s8: symmetric, "
                        "as TensorRT's explicit int8 requires")
    p.add_argument("--int8-weights", choices=["auto", "s8", "s7"], default="auto",
                   help="s8: full-range int8 weights (VNNI, AMX, ARM, TensorRT); s7: [-64, 64], "
                        "for x86 CPUs without VNNI, whose int8 kernels saturate on full-range "
                        "weights; auto (default): s7 if this CPU is one, else s8")
    p.add_argument("--attention", choices=["plain", "fused"], default="plain",
                   help="fused: the UNet's and VAE's attention as ONNX Runtime's MultiHeadAttention "
                        "(SD 1.5 at 512 px: far less memory, faster UNet steps; ONNX Runtime "
                        "only). plain (default): every backend, TensorRT included")
    p.add_argument("--tiny-vae", type=Path, metavar="DIR",
                   help="a TAESD folder (diffusers AutoencoderTiny, e.g. madebyollin/taesd saved "
                        "locally) run in place of the checkpoint's VAE: far faster, some quality "
                        "lost (measured, in the manifest)")
    p.add_argument("--tiny-vae-parts", choices=["both", "decoder"], default="both",
                   help="with --tiny-vae: replace encoder and decoder (default) or the decoder only")
    p.add_argument("--trt-compat", choices=["8.5"],
                   help="graphs TensorRT 8.5's parser takes (JetPack 5.1): LayerNormalization "
                        "decomposed")
    p.add_argument("--trtexec-script", type=Path, metavar="PATH",
                   help="also write the trtexec command lines that build this engine's plans")
    p.add_argument("--tensorrt", action="store_true",
                   help="also build the TensorRT plans now, on this machine's GPU (else they "
                        "are built on first use with --backend tensorrt)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing engine directory")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from scanside.export import export_model

    if args.attention == "fused" and (args.tensorrt or args.trtexec_script):
        raise InputError("--attention fused with --tensorrt/--trtexec-script: the fused node is "
                         "ONNX Runtime's own, which TensorRT cannot parse; export TensorRT "
                         "engines with --attention plain (TensorRT fuses attention itself)")

    manifest = export_model(args.model_dir, args.out, height=args.height, width=args.width,
                            dynamic=args.dynamic, opset=args.opset,
                            concat_scale=args.concat_scale, overwrite=args.overwrite,
                            progress=True, precision=args.precision,
                            component_precision=parse_component_precision(args.component_precision),
                            calibration=args.calibration,
                            synthetic_calibration=args.synthetic_calibration,
                            int8_activations=args.int8_activations,
                            int8_weights=args.int8_weights,
                            trt_compat=args.trt_compat, attention=args.attention,
                            tiny_vae=args.tiny_vae, tiny_vae_parts=args.tiny_vae_parts)
    print(f"exported {args.model_dir} -> {args.out} ({manifest.height}x{manifest.width})")
    print_accuracy(manifest)
    if args.trtexec_script:
        from scanside.export.tensorrt import trtexec_script
        from scanside.files import atomic_path

        major = 8 if args.trt_compat else 10
        with atomic_path(args.trtexec_script, overwrite=args.overwrite) as tmp:
            tmp.write_text(trtexec_script(args.out, manifest, major))
        args.trtexec_script.chmod(0o755)
        print(f"wrote {args.trtexec_script} (trtexec, TensorRT {major}.x)")
    if args.tensorrt:
        from scanside.export.tensorrt import build_plans

        for plan in build_plans(args.out, manifest):
            print(f"TensorRT plan {plan}")
    return 0


def print_accuracy(m) -> None:
    """Each component's precision, size and measured parity; the final-image PSNR."""
    print("component     precision  MB       max|diff|  tolerance  measured against")
    for c in m.components.values():
        print(f"{c.name:13} {c.precision.value:9} {c.bytes / 1e6:8.1f} {c.parity_max_abs_diff:10.3g} "
              f"{c.parity_tolerance:10.3g}  {c.parity_reference}")
    if m.final_image_psnr_db is not None:
        print(f"accuracy    final image PSNR {m.final_image_psnr_db:.1f} dB vs the fp32 engine "
              f"(held-out image; calibration: {m.calibration})")


def parse_component_precision(text: Optional[str]) -> dict[str, str]:
    """'unet=int8,vae_decoder=fp16' -> {'unet': 'int8', 'vae_decoder': 'fp16'}."""
    if not text:
        return {}
    out = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"--component-precision: {item!r} is not NAME=PRECISION; "
                             "e.g. unet=int8,vae_decoder=fp16")
        out[name.strip()] = value.strip()
    return out
