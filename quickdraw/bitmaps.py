"""Finding Quick Draw `numpy_bitmap` files and reading them safely (never unpickling)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quickdraw.errors import UserError

SIDE = 28
PIXELS = SIDE * SIDE
ACCEPTED_SHAPES = "(N, 784), (N, 1, 784) or (N, 28, 28)"


@dataclass(frozen=True)
class BitmapFile:
    """A class's `.npy` file as found on disk, described without reading its drawings."""

    class_name: str
    path: Path
    size: int
    mtime_ns: int


def find_class_files(data_dir: Path, classes: tuple[str, ...]) -> list[BitmapFile]:
    """Each class's file, named `<class>.npy` or Google's `full_numpy_bitmap_<class>.npy`."""
    if not data_dir.is_dir():
        raise UserError(
            f"data folder {data_dir} does not exist: put one <class>.npy per class there "
            "or point --data-dir at the folder that has them"
        )
    found = []
    for name in classes:
        candidates = [data_dir / f"{name}.npy", data_dir / f"full_numpy_bitmap_{name}.npy"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise UserError(
                f"no file for class {name!r} in {data_dir}: expected {candidates[0].name} or "
                f"{candidates[1].name} (Google's numpy_bitmap file), or drop the class from --classes"
            )
        stat = path.stat()
        found.append(BitmapFile(name, path, stat.st_size, stat.st_mtime_ns))
    return found


def load_drawings(source: BitmapFile, count: int) -> np.ndarray:
    """The first `count` drawings of a class file as a (count, 28, 28) uint8 array.

    The header is checked before any drawing is read, so a file that is not a bitmap array
    fails with a message that says what it is instead.
    """
    check_drawings(source, count)
    array = np.load(source.path, mmap_mode="r", allow_pickle=False)
    return np.ascontiguousarray(array[:count]).reshape(count, SIDE, SIDE)


def check_drawings(source: BitmapFile, count: int) -> None:
    """Fail unless the file is a uint8 bitmap array with at least `count` drawings (reads the header only)."""
    rows = _validated_row_count(source.path)
    if rows < count:
        raise UserError(
            f"{source.path} has {rows} drawings but the split needs {count} of class "
            f"{source.class_name!r}: use a larger file or a smaller --split"
        )


def _validated_row_count(path: Path) -> int:
    with open(path, "rb") as f:
        start = f.read(6)
        f.seek(0)
        if start != b"\x93NUMPY":
            raise UserError(f"{path} is not a .npy file (it starts with {start!r}); download it again")
        try:
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read_header(f)
        except ValueError as e:
            raise UserError(f"{path} has a damaged .npy header ({e}); download it again") from None
        data_offset = f.tell()
    if dtype.hasobject:
        raise UserError(f"{path} holds pickled Python objects, not bitmaps; it is not a numpy_bitmap file")
    if dtype != np.uint8:
        raise UserError(f"{path} has dtype {dtype}, expected uint8 bitmaps; use Google's numpy_bitmap files")
    if not _is_bitmap_shape(shape):
        raise UserError(f"{path} has shape {shape}, expected {ACCEPTED_SHAPES}")
    expected = data_offset + shape[0] * PIXELS
    actual = path.stat().st_size
    if actual < expected:
        raise UserError(
            f"{path} is truncated: {actual} bytes where its header promises {expected}; download it again"
        )
    return shape[0]


def _is_bitmap_shape(shape: tuple[int, ...]) -> bool:
    return shape[1:] in ((PIXELS,), (1, PIXELS), (SIDE, SIDE))
