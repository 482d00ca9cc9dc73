"""Which transfer syntaxes decode here, and what to install when one does not.

Compressed pixel data decodes through pydicom's pixel handlers. The permissively licensed
plugins cover every common syntax (``pip install 'scanside[codecs]'``):
  JPEG baseline / extended, JPEG 2000   pillow (already a base dependency)
  JPEG 2000, RLE (faster)                pylibjpeg + pylibjpeg-openjpeg / pylibjpeg-rle (MIT)
  JPEG-LS                                pyjpegls (CharLS, BSD-3)
  JPEG lossless (process 14)             python-gdcm (BSD)
pylibjpeg-libjpeg would also decode JPEG lossless but is GPL-3, so it is not required.
"""

from __future__ import annotations

from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID

from scanside.errors import InputError

INSTALL_HINT = "pip install 'scanside[codecs]'"


def check_decodable(tsyntax: UID, source: str) -> None:
    """Raise with the syntax's name and the package to install if it cannot be decoded."""
    if not tsyntax or not tsyntax.is_compressed:
        return
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        raise InputError(
            f"{source}: transfer syntax {tsyntax.name} ({tsyntax}) has no pixel decoder in "
            "pydicom; convert the file to an uncompressed syntax first (e.g. dcmdjpeg or "
            "gdcmconv --raw)"
        ) from None
    if not decoder.is_available:
        options = "; ".join(decoder.missing_dependencies)
        raise InputError(
            f"{source}: transfer syntax {tsyntax.name} needs a decoder that is not installed "
            f"({options}); {INSTALL_HINT}"
        )
