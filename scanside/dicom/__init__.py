"""DICOM in and out with pydicom: real value scales in, derived series out.

    collect(paths)                      validate headers, group and order series
    enhance_series(paths, pipeline, out_dir, window=..., sampling=...)   the batch, with a report
    enhance_dataset(ds, pipeline, sampling, window=...)  one in-memory dataset -> derived dataset
    Window                              the value window to the model's [0, 1]
"""

from .read import collect, read_header, read_values
from .series import Report, enhance_dataset, enhance_series
from .window import Window

__all__ = ["Report", "Window", "collect", "enhance_dataset", "enhance_series", "read_header",
           "read_values"]
