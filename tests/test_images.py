"""A drawing given to `predict` as an image of any size or colouring becomes the bitmap the model was trained on."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from conftest import SHARED_DRAWINGS, synthetic_drawings
from quickdraw.bitmaps import BitmapFile, checked_row_count, load_drawings
from quickdraw.errors import UserError
from quickdraw.images import image_bitmap, read_drawings


def quick_draw_like() -> np.ndarray:
    """Drawings laid out as Google's: the real ones when they are here, else a drawn fish, 26 pixels long, centred."""
    if (SHARED_DRAWINGS / "fish.npy").is_file():
        return np.load(SHARED_DRAWINGS / "fish.npy", mmap_mode="r")[:50].reshape(-1, 28, 28).copy()
    image = Image.new("L", (280, 280))  # drawn ten times as large, then reduced: anti-aliased like Google's
    draw = ImageDraw.Draw(image)
    draw.ellipse((10, 80, 190, 190), outline=255, width=16)
    draw.line((190, 135, 262, 60), fill=255, width=16)
    draw.line((190, 135, 262, 210), fill=255, width=16)
    return np.asarray(image.resize((28, 28), Image.Resampling.BOX))[np.newaxis]


def ink_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of the clearly inked pixels."""
    a, b = a > 64, b > 64
    return (a & b).sum() / (a | b).sum()


def bigger(drawing: np.ndarray, factor: int) -> Image.Image:
    return Image.fromarray(drawing).resize((28 * factor, 28 * factor), Image.Resampling.NEAREST)


def on_a_large_page(drawing: np.ndarray) -> Image.Image:
    """Black strokes, three times as large, off-centre on a white 400x300 page."""
    page = Image.new("L", (400, 300), 255)
    page.paste(Image.fromarray(255 - drawing).resize((84, 84), Image.Resampling.BICUBIC), (250, 30))
    return page


def transparent(drawing: np.ndarray) -> Image.Image:
    """Black strokes on a transparent background, as drawing apps save them, 20 times as large."""
    rgba = np.dstack([np.zeros((28, 28, 3), np.uint8), drawing])
    return Image.fromarray(rgba, "RGBA").resize((560, 560), Image.Resampling.NEAREST)


CONVERSIONS = {
    "white on black, x10": lambda d: bigger(d, 10),
    "black on white, x10": lambda d: bigger(255 - d, 10),
    "black on white, off-centre on a page": on_a_large_page,
    "transparent background, x20": transparent,
    "colour, x4": lambda d: bigger(255 - d, 4).convert("RGB"),
}


def ink_box(drawing: np.ndarray) -> np.ndarray:
    rows, columns = np.nonzero(drawing > 64)
    return np.array([rows.min(), rows.max(), columns.min(), columns.max()])


@pytest.mark.parametrize("kind", CONVERSIONS)
def test_an_image_of_any_size_and_colouring_becomes_the_training_bitmap(kind):
    for drawing in quick_draw_like():
        bitmap = image_bitmap(CONVERSIONS[kind](drawing), Path("x.png"))
        assert bitmap.shape == (28, 28) and bitmap.dtype == np.uint8 and bitmap.max() == 255
        # Same place and size, give or take the half pixel that rounding a big image's ink box can move it.
        assert np.abs(ink_box(bitmap) - ink_box(drawing)).max() <= 1
        assert ink_overlap(bitmap, drawing) > 0.65


def test_a_28_pixel_png_is_taken_as_it_is(tmp_path):
    """The PNGs `convert --png` writes (black on white) give back the bitmaps exactly."""
    for n, drawing in enumerate(quick_draw_like()[:10]):
        Image.fromarray(255 - drawing).save(tmp_path / f"{n}.png")
        np.testing.assert_array_equal(read_drawings(tmp_path / f"{n}.png"), drawing[np.newaxis])


ACCEPTED = [(5, 784), (5, 1, 784), (5, 28, 28), (5, 1, 28, 28), (784,), (28, 28), (1, 784)]
REFUSED = [(5, 100), (5, 28), (784, 1), (5, 2, 784), (28, 28, 1), (5, 28, 28, 1), (5, 1, 1, 784), (2, 392)]


@pytest.mark.parametrize("shape", ACCEPTED + REFUSED, ids=str)
def test_training_and_predict_accept_the_same_shapes_of_bitmaps(tmp_path, shape):
    """One rule (quickdraw.bitmaps.drawing_count) for a class file and for a .npy given to predict."""
    drawings = synthetic_drawings(0, 5)[: max(1, int(np.prod(shape)) // 784)]
    path = tmp_path / "cat.npy"
    np.save(path, np.resize(drawings, shape))
    source = BitmapFile("cat", path, path.stat().st_size, path.stat().st_mtime_ns)
    if shape in REFUSED:
        for read in (lambda: checked_row_count(path), lambda: read_drawings(path)):
            with pytest.raises(UserError, match=re.escape(f"has shape {shape}, expected (N, 784)")):
                read()
        return
    count = len(drawings)
    assert checked_row_count(path) == count
    for_training, for_predict = load_drawings(source, count), read_drawings(path)
    np.testing.assert_array_equal(for_training, drawings.reshape(count, 28, 28))
    np.testing.assert_array_equal(for_predict, for_training)
