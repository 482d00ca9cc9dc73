"""Benchmark output: a terminal table, JSON, and a PNG chart of the stage breakdown."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scanside.files import atomic_path

from .machine import cpu_label

ORDER = ("dicom_read", "text", "vae_encode", "unet_step", "unet_total", "scheduler",
         "vae_decode", "dicom_write", "total")
LABELS = {"dicom_read": "DICOM read", "text": "tokenise + text encoder", "vae_encode": "VAE encode",
          "unet_step": "UNet step (each)", "unet_total": "UNet, all steps",
          "scheduler": "scheduler overhead", "vae_decode": "VAE decode",
          "dicom_write": "DICOM write", "total": "end to end"}


def table(result: dict[str, Any]) -> str:
    s, mem = result["settings"], result["memory"]
    cpu = result["machine"]["cpu"]
    lines = [
        f"scanside bench  {result['engine']}  ({result['precision']}, {result['backend']})",
        f"{s['task']} {s['size']}x{s['size']}, {s['steps']} steps ({s['unet_steps']} UNet calls), "
        f"strength {s['strength']}, guidance {s['guidance']}, {s['scheduler']}; "
        f"{s['repeat']} runs after {s['warmup']} warm-up",
        f"machine: {cpu_label(cpu)}, flags {' '.join(cpu['flags'])}",
        "",
        f"{'stage':26} {'median s':>9} {'p90 s':>9} {'min s':>9} {'GFLOP':>8} {'GFLOP/s':>8} {'of peak':>8}",
    ]
    for name in ORDER:
        st = result["stages"].get(name)
        if st is None:
            continue
        flop = f"{st['gflop']:8.1f} {st['gflops_achieved']:8.1f} {st['fraction_of_peak']:8.0%}" if "gflop" in st else ""
        lines.append(f"{LABELS[name]:26} {st['median']:9.3f} {st['p90']:9.3f} {st['min']:9.3f} {flop}")
    loop = result["stages"]["unet_total"]["median"] + result["stages"]["scheduler"]["median"]
    lines += [
        "",
        f"scheduler overhead: {result['stages']['scheduler']['median'] / loop:.2%} of the loop",
        f"peak RSS {mem['peak_rss_bytes'] / 2**30:.2f} GiB = {mem['peak_rss_over_weights']:.2f} x "
        f"engine weights ({mem['engine_weight_bytes'] / 2**30:.2f} GiB)"
        + (f"; GPU memory used {mem['gpu_used_mib']:.0f} MiB" if mem.get("gpu_used_mib") else "")
        + (f"; taken on the device {mem['device_memory_taken_bytes'] / 2**20:.0f} MiB"
           if mem.get("device_memory_taken_bytes") is not None else ""),
        f"machine peak: {result['peak']['gflops']:.1f} GFLOP/s ({result['peak']['how']})"
        + (f"; int8 {result['peak']['int8_gops']:.1f} GOP/s (u8 x s8 MatMulInteger), the "
           "peak of the int8 stages" if "int8_gops" in result["peak"] else ""),
    ]
    if result.get("peers"):
        lines += ["", peers_table(result)]
    return "\n".join(lines)


def peers_table(result: dict[str, Any]) -> str:
    ours = result["stages"]["total"]["median"]
    lines = [f"{'system':40} {'median s':>9} {'min s':>9} {'scanside speed-up':>18}",
             f"{'scanside (' + result['precision'] + ', ' + result['backend'] + ')':40} {ours:9.2f} "
             f"{result['stages']['total']['min']:9.2f} {'1.00x':>18}"]
    for peer in result["peers"]:
        if peer.get("skipped"):
            lines.append(f"{peer['name']:40} skipped: {peer['skipped']}")
            continue
        t = peer["total"]
        lines.append(f"{peer['name']:40} {t['median']:9.2f} {t['min']:9.2f} "
                     f"{t['median'] / ours:17.2f}x")
    return "\n".join(lines)


def write_json(result: dict[str, Any], path: Path) -> None:
    with atomic_path(Path(path), overwrite=True) as tmp:
        tmp.write_text(json.dumps(result, indent=2), encoding="utf-8")


def plot(result: dict[str, Any], path: Path) -> None:
    """Horizontal stacked bar of where one end-to-end run's median time goes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [(LABELS[n], result["stages"][n]["median"]) for n in
             ("dicom_read", "text", "vae_encode", "unet_total", "scheduler", "vae_decode", "dicom_write")
             if n in result["stages"]]
    fig, ax = plt.subplots(figsize=(9, 2.2))
    left = 0.0
    for label, seconds in parts:
        ax.barh([0], [seconds], left=left, label=f"{label} {seconds:.2f} s")
        left += seconds
    s = result["settings"]
    ax.set_title(f"scanside {s['task']} {s['size']}px, {s['unet_steps']} UNet steps "
                 f"({result['precision']}, {result['backend']}): {result['stages']['total']['median']:.2f} s")
    ax.set_xlabel("seconds (medians)")
    ax.set_yticks([])
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.45), ncol=3, fontsize=8, frameon=False)
    with atomic_path(Path(path), overwrite=True) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
