"""Small synthetic "site" series for the site tests: ctsim phantoms written as CT DICOM."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydicom.uid import generate_uid

from scanside.dicom.synthetic import simulated_ct
from scanside.training import ctsim


def write_series(folder: Path, seeds: "tuple[int, ...]", size: int = 96, pixel_mm: float = 0.8,
                 uid_root: "str | None" = None, **attributes: Any) -> list[Path]:
    """One CT series of ctsim phantoms (one per seed) in ``folder``; ``attributes`` are set on
    every file (e.g. Modality="MR", ImageType=[...]); ``uid_root``: the series' and instances'
    UIDs start with it."""
    folder.mkdir(parents=True, exist_ok=True)
    uid, paths = (generate_uid() if uid_root is None else f"{uid_root}.0"), []
    for k, seed in enumerate(seeds):
        ds = simulated_ct(ctsim.make_phantom(seed, size).hu, "site test", pixel_mm)
        ds.SeriesInstanceUID, ds.InstanceNumber = uid, k + 1
        if uid_root is not None:
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{uid_root}.{k + 1}"
        ds.ImagePositionPatient = [0.0, 0.0, float(k)]
        for keyword, value in attributes.items():
            if value is None:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        path = folder / f"{k:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_nifti(path: Path, volume: np.ndarray, pixel_mm: float = 0.8) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(volume.astype(np.int16), np.diag([pixel_mm, pixel_mm, 2.0, 1.0])),
             str(path))
    return path
