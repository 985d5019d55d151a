"""Drawings from the files a user hands `predict`, as Quick Draw bitmaps: 28x28 uint8, strokes white on black.

Google rendered each drawing with its longer side 26 pixels and centred it in 28x28 (measured on the
real files: 1 pixel of margin on the long side). An image of another size gets the same: its ink is cropped,
squared, scaled to 26 pixels and centred. A 28x28 image is already a bitmap and is taken as it is, so the
PNGs `convert --png` writes give back the training drawings exactly.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from quickdraw.bitmaps import ACCEPTED_SHAPES, SIDE as CANVAS, checked_row_count
from quickdraw.errors import UserError
from quickdraw.safe_files import not_a_file

INK_BOX = 26  # the longer side of a drawing's ink in Google's bitmaps
INK_THRESHOLD = 32  # of 255: fainter pixels are paper (scans, JPEG noise), not ink
PREPROCESSING = {
    "bitmap": f"{CANVAS}x{CANVAS} uint8, strokes white (255) on black (0), as in Google's numpy_bitmap files",
    "network_input": "bitmap / 255 as float32, shape (N, 1, 28, 28)",
    "images": "grayscale (alpha as ink when the background is transparent; 16-bit levels scaled to 8 bits); "
              "black-on-white inverted; "
              f"other sizes than {CANVAS}x{CANVAS}: ink (pixels above {INK_THRESHOLD}) cropped, padded square, "
              f"reduced to {INK_BOX} pixels (max over blocks, then area average), centred in {CANVAS}x{CANVAS}, "
              "brightest pixel stretched to 255",
    "npy": f"uint8 bitmaps shaped {ACCEPTED_SHAPES}, used as they are",
}


def read_drawings(path: Path) -> np.ndarray:
    """The drawings in one file as (N, 28, 28) uint8: a .npy of bitmaps, or an image holding one drawing."""
    if problem := not_a_file(path):
        raise UserError(f"{path}: {problem}; give PNG images of drawings or .npy files of 28x28 bitmaps")
    if path.suffix.lower() == ".npy":
        return read_bitmaps(path)
    return drawing_bitmap(path, str(path))[np.newaxis]


def drawing_bitmap(source: Path | BinaryIO, name: str, max_side: int | None = None) -> np.ndarray:
    """An image of one drawing (a file, or its bytes) as a 28x28 bitmap: how `predict` and `play` read a drawing.
    `name` is the drawing in error messages; an image more than `max_side` pixels a side is refused before decoding."""
    return image_bitmap(open_image(source, name, max_side), name)


def read_bitmaps(path: Path) -> np.ndarray:
    """The drawings of a .npy file, checked as a class file is (quickdraw.bitmaps): the same shapes are accepted."""
    if checked_row_count(path) == 0:
        raise UserError(f"{path} holds no drawings; give uint8 bitmaps shaped (N, 784) with N above 0")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise UserError(f"{path} is not a readable .npy file ({e}); give uint8 bitmaps shaped (N, 784)") from None
    return array.reshape(-1, CANVAS, CANVAS)


def open_image(source: Path | BinaryIO, name: str, max_side: int | None = None) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(source)
            if max_side is not None and max(image.size) > max_side:
                raise UserError(f"{name} is {image.width}x{image.height} pixels; give at most {max_side} a side")
            image.load()  # decodes now: a truncated or corrupt file fails here, not later
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombWarning,
            Image.DecompressionBombError) as e:
        detail = "not a format Pillow knows" if isinstance(e, UnidentifiedImageError) else e
        raise UserError(f"{name} is not an image that can be read ({detail}); give a PNG of a drawing, "
                        "or a .npy of 28x28 bitmaps") from None
    return ImageOps.exif_transpose(image)


def image_bitmap(image: Image.Image, name: str) -> np.ndarray:
    """One drawing as a 28x28 bitmap, converted the way Google's bitmaps were drawn."""
    ink = ink_of(image)
    rows, columns = np.nonzero(ink > INK_THRESHOLD)
    if not len(rows):
        raise UserError(f"{name}: no drawing found, the image is blank; give strokes on a plain background")
    if ink.shape == (CANVAS, CANVAS):
        return ink
    ink = ink[rows.min():rows.max() + 1, columns.min():columns.max() + 1]
    small = Image.fromarray(thin_strokes_kept(ink)).resize((INK_BOX, INK_BOX), Image.Resampling.BOX)
    bitmap = np.zeros((CANVAS, CANVAS), np.float32)
    margin = (CANVAS - INK_BOX) // 2
    bitmap[margin:margin + INK_BOX, margin:margin + INK_BOX] = np.asarray(small, np.float32)
    return np.round(bitmap * (255 / bitmap.max())).astype(np.uint8)


def ink_of(image: Image.Image) -> np.ndarray:
    """Ink as 0-255 per pixel: the alpha of a drawing on a transparent background, else the grey levels,
    inverted when the background (the border's median) is light."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        alpha = np.asarray(image.convert("RGBA").getchannel("A"))
        if alpha.min() < 255:
            return alpha
    gray = gray_levels(image)
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    return 255 - gray if np.median(border) > 127 else gray


def gray_levels(image: Image.Image) -> np.ndarray:
    """The image's grey levels as 0-255. A 16-bit greyscale image (a 16-bit PNG: Pillow's "I;16", or "I" as older
    Pillows opened it) is scaled by its depth, v / 257, so that it reads as its 8-bit version: Pillow's convert("L")
    clips it at 255 instead, and most drawings come out blank."""
    if image.mode == "I" or image.mode.startswith("I;16"):
        return np.round(np.clip(np.asarray(image, np.float64), 0, 65535) / 257).astype(np.uint8)
    return np.asarray(image.convert("L"))


def thin_strokes_kept(ink: np.ndarray) -> np.ndarray:
    """The ink box centred in a square (its longer side), shrunk by the maximum over blocks to about twice the ink
    box, so that strokes a few pixels wide in a big image survive the area average that follows instead of fading
    to grey. The blocks are taken over the ink alone, as they fall on the square: the square itself is never
    built, so a long thin image costs its own pixels, not its longer side squared."""
    side = max(ink.shape)
    top, left = (side - ink.shape[0]) // 2, (side - ink.shape[1]) // 2
    factor = side // (2 * INK_BOX)
    if factor < 2:  # a square under 104 pixels a side
        square = np.zeros((side, side), np.uint8)
        square[top:top + ink.shape[0], left:left + ink.shape[1]] = ink
        return square
    first_row, by_rows = block_max(ink, top, factor, axis=0)
    first_column, reduced = block_max(by_rows, left, factor, axis=1)
    blocks = -(-side // factor)
    small = np.zeros((blocks, blocks), np.uint8)  # the blocks that hold no ink are paper
    small[first_row:first_row + reduced.shape[0], first_column:first_column + reduced.shape[1]] = reduced
    return small


def block_max(ink: np.ndarray, offset: int, factor: int, axis: int) -> tuple[int, np.ndarray]:
    """The maximum of `ink` over each block of `factor` lines along `axis`, the blocks counted from `offset` lines
    before the ink: the first block that the ink reaches, and the maxima from it on."""
    first, last = offset // factor, (offset + ink.shape[axis] - 1) // factor
    starts = np.maximum(np.arange(first, last + 1) * factor - offset, 0)
    return first, np.maximum.reduceat(ink, starts, axis=axis)
