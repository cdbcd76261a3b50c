"""Decode one image file, safely, to a square uint8 RGB array — or say why it was skipped.

Packing runs :func:`decode_image` over every file of an image folder (ImageNet: 1.3M files,
a few of them broken). It never raises on a bad file: it returns a short reason string
instead, which packing records in ``meta.json`` and prints (principle 6: skip and report,
never silent damage). What it guards against:

* empty files, non-images (text saved as ``.jpg``), formats Pillow cannot read;
* truncated files: Pillow is made strict (``LOAD_TRUNCATED_IMAGES`` off), because its lenient
  mode pads the missing part with grey and nobody would ever notice;
* decompression bombs: a header claiming more than :data:`MAX_PIXELS` pixels is refused
  *before* any pixel is allocated (Pillow's own warning is turned into an error too).

Conversions (documented choices):

* greyscale, palette, CMYK, YCbCr, 1-bit, 16-bit -> RGB (16-bit is scaled down, not clipped);
* transparency is composited over **white**, as viewers show such images on a page;
  dropping alpha instead would expose whatever colour happens to sit under transparent
  pixels (often black), which is not what the image looks like;
* EXIF orientation is **not** applied, like the torchvision/timm loaders behind published
  ImageNet numbers, so packed pixels match theirs; ICC profiles are ignored likewise.

Geometry: ``"shorter-crop"`` (default) scales the shorter side to R and keeps the centre
R x R (done in one resampling of the centre square, which is the same thing without an
intermediate image); ``"stretch"`` scales the whole image to R x R. Resampling is bicubic
and antialiased, with Pillow's ``reducing_gap`` so large downscales first use the fast
box ``reduce`` and then a short, exact bicubic step. For JPEGs, *draft mode* lets libjpeg
decode at 1/2, 1/4 or 1/8 scale directly (several times faster on ImageNet-sized photos),
never below R on either side, so the final bicubic step still only shrinks.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

RESIZE_MODES = ("shorter-crop", "stretch")
RESAMPLE = Image.Resampling.BICUBIC
RESAMPLE_NAME = "bicubic"
# Beyond reducing_gap x the target size, Image.reduce (box filter) runs first; 3.0 is
# indistinguishable from a plain bicubic resize (Pillow docs) and much faster.
REDUCING_GAP = 3.0
# Pillow's own default (about 89 MP: a 3 bytes/pixel image of 256 MiB). ImageNet's largest
# photos are far below; a header claiming more is broken or hostile.
MAX_PIXELS = 89_478_485


def _as_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB; alpha composited over white, 16-bit scaled to 8-bit."""
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        # A palette may carry transparency; go through RGBA so it is composited, not lost.
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        values = np.asarray(img, dtype=np.float64)
        if values.max(initial=0) > 255:  # 16-bit data: keep the full range, not a clip
            values = values / 257.0
        img = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def resize_image(img: Image.Image, res: int, resize: str = "shorter-crop") -> Image.Image:
    """``img`` resampled to ``res`` x ``res`` by ``resize`` (see module docstring)."""
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    width, height = img.size
    if resize == "stretch":
        box = (0.0, 0.0, float(width), float(height))
    else:
        side = min(width, height)
        left, top = (width - side) / 2, (height - side) / 2
        box = (left, top, left + side, top + side)
    if img.size == (res, res):
        return img
    return img.resize((res, res), RESAMPLE, box=box, reducing_gap=REDUCING_GAP)


def resize_array(image: np.ndarray, res: int, resize: str = "shorter-crop") -> np.ndarray:
    """One decoded ``(H, W, 3)`` uint8 image to ``(res, res, 3)``, exactly as files are."""
    if image.shape[:2] == (res, res):
        return image
    resized = resize_image(Image.fromarray(np.ascontiguousarray(image), mode="RGB"), res, resize)
    return np.asarray(resized, dtype=np.uint8)


def decode_image(
    path: str | os.PathLike, res: int, *, resize: str = "shorter-crop", draft: bool = True
) -> np.ndarray | str:
    """``path`` as a ``(res, res, 3)`` uint8 RGB array, or a reason string why it is skipped.

    Never raises on a bad file (only on bad arguments), so one broken image among a million
    cannot stop a pack.
    """
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    path = Path(path)
    strict = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # someone else may have relaxed it; not here
    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
        with warnings.catch_warnings():
            # Pillow only *warns* between 1x and 2x its pixel limit; here that is a skip too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
        with img:
            width, height = img.size
            if width * height > MAX_PIXELS:  # refuse before a single pixel is allocated
                return f"decompression bomb: {width}x{height} pixels, over the {MAX_PIXELS} limit"
            if draft and img.format in ("JPEG", "MPO") and min(width, height) > res:
                # libjpeg decodes at the largest 1/2^k scale that keeps both sides >= res.
                img.draft("RGB", (res, res))
            img.load()  # strict: raises OSError on truncated data
            array = np.asarray(resize_image(_as_rgb(img), res, resize), dtype=np.uint8)
        if array.shape != (res, res, 3):  # defensive: a plugin returning something odd
            return f"decoded to unexpected shape {array.shape}"
        return array
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        return f"decompression bomb: {error}"
    except (FileNotFoundError, PermissionError, IsADirectoryError) as error:
        return f"unreadable: {error.strerror}"
    except UnidentifiedImageError:
        return "not an image (format not recognised)"
    except OSError as error:
        # Truncated data ("image file is truncated"), broken streams, unreadable files.
        return f"undecodable or truncated: {error}"
    except Exception as error:  # noqa: BLE001 - plugins raise anything; a bad file must not stop a pack
        return f"undecodable: {type(error).__name__}: {error}"
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = strict
