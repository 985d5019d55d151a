"""Finding Quick Draw `numpy_bitmap` files and reading them safely (never unpickling)."""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from quickdraw.config import check_not_a_file
from quickdraw.errors import UserError
from quickdraw.safe_files import not_a_file

SIDE = 28
PIXELS = SIDE * SIDE
ONE_DRAWING = ((PIXELS,), (SIDE, SIDE))
DRAWINGS = ((PIXELS,), (1, PIXELS), (SIDE, SIDE), (1, SIDE, SIDE))  # each of N drawings, after the N
ACCEPTED_SHAPES = "(N, 784) as in Google's files, (N, 1, 784), (N, 28, 28), (N, 1, 28, 28), or one (784,) or (28, 28)"


@dataclass(frozen=True)
class BitmapFile:
    """A class's `.npy` file as found on disk, described without reading its drawings."""

    class_name: str
    path: Path
    size: int
    mtime_ns: int


def find_class_files(data_dir: Path, classes: tuple[str, ...]) -> list[BitmapFile]:
    """Each class's file, named `<class>.npy` or Google's `full_numpy_bitmap_<class>.npy`."""
    check_not_a_file(data_dir)
    if not data_dir.is_dir():
        raise UserError(
            f"data folder {data_dir} does not exist: put one <class>.npy per class there "
            "or point --data-dir at the folder that has them"
        )
    missing = missing_classes(data_dir, classes)
    if missing:
        command = f"python tune_search.py download --data-dir {shlex.quote(str(data_dir))} --classes {shlex.quote(','.join(missing))}"
        raise UserError(
            f"no {', '.join(f'{name}.npy' for name in missing)} in {data_dir} (Google's full_numpy_bitmap_<class>.npy "
            f"names work too): fetch them with `{command}`, or drop those classes from --classes"
        )
    found = []
    for name in classes:
        path = class_file(data_dir, name)
        stat = path.stat()
        found.append(BitmapFile(name, path, stat.st_size, stat.st_mtime_ns))
    return found


def class_file(data_dir: Path, name: str) -> Path | None:
    """The class's file; None when there is none, and a UserError when its name holds something else (a folder, a
    FIFO, a device, a broken link)."""
    candidates = (data_dir / f"{name}.npy", data_dir / f"full_numpy_bitmap_{name}.npy")
    if found := next((path for path in candidates if path.is_file()), None):
        return found
    for path in filter(os.path.lexists, candidates):
        raise UserError(f"{path}: {not_a_file(path)}; a class file is a .npy of Google's numpy_bitmap drawings "
                        "(move it away, and a missing one is downloaded)")
    return None


def missing_classes(data_dir: Path, classes: tuple[str, ...]) -> list[str]:
    return [name for name in classes if class_file(data_dir, name) is None]


def load_drawings(source: BitmapFile, count: int) -> np.ndarray:
    """The first `count` drawings of a class file as a (count, 28, 28) uint8 array.

    The header is checked before any drawing is read, so a file that is not a bitmap array
    fails with a message that says what it is instead.
    """
    check_drawings(source, count)
    array = np.load(source.path, mmap_mode="r", allow_pickle=False)
    return np.ascontiguousarray(array.reshape(-1, SIDE, SIDE)[:count])


def check_drawings(source: BitmapFile, count: int) -> None:
    """Fail unless the file is a uint8 bitmap array with at least `count` drawings (reads the header only)."""
    rows = checked_row_count(source.path)
    if rows < count:
        raise UserError(
            f"{source.path} has {rows} drawings but the split needs {count} of class "
            f"{source.class_name!r}: use a smaller --split, or a larger file (`python tune_search.py download` "
            "replaces it with the drawings the split needs)"
        )


def checked_row_count(path: Path) -> int:
    """The drawings in a bitmap `.npy` file, after checking its header and its length."""
    header = file_header(path)
    expected = header.data_offset + header.rows * PIXELS
    actual = path.stat().st_size
    if actual < expected:
        raise UserError(
            f"{path} is truncated: {actual} bytes where its header promises {expected}; download it again"
        )
    return header.rows


def file_header(path: Path) -> BitmapHeader:
    with open(path, "rb") as f:
        return read_bitmap_header(f, str(path))


def drawing_count(shape: tuple[int, ...]) -> int | None:
    """How many drawings an array of this shape holds, if it is a shape of Quick Draw bitmaps (ACCEPTED_SHAPES);
    None if not. The one rule for class files and for `predict`'s .npy files alike."""
    if shape in ONE_DRAWING:
        return 1
    return shape[0] if len(shape) > 1 and shape[1:] in DRAWINGS else None


@dataclass(frozen=True)
class BitmapHeader:
    """What a `.npy` header says about a bitmap array: its shape, its drawings and where they start."""

    shape: tuple[int, ...]
    rows: int  # drawings
    data_offset: int

    def bytes_for(self, rows: int) -> int:
        """The file's length up to the end of its first `rows` drawings."""
        return self.data_offset + rows * PIXELS


def read_bitmap_header(f: BinaryIO, name: str) -> BitmapHeader:
    """Read a `.npy` header from `f` and fail, naming `name` (a path or URL), unless it is a uint8 bitmap array."""
    start = f.read(6)
    f.seek(0)
    if start != b"\x93NUMPY":
        raise UserError(f"{name} is not a .npy file (it starts with {start!r}); download it again")
    try:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(f)
    except ValueError as e:
        raise UserError(f"{name} has a damaged .npy header ({e}); download it again") from None
    if dtype.hasobject:
        raise UserError(f"{name} holds pickled Python objects, not bitmaps; it is not a numpy_bitmap file")
    if dtype != np.uint8:
        raise UserError(f"{name} has dtype {dtype}, expected uint8 bitmaps; use Google's numpy_bitmap files")
    rows = drawing_count(shape)
    if rows is None:
        raise UserError(f"{name} has shape {shape}, expected {ACCEPTED_SHAPES}")
    return BitmapHeader(shape=shape, rows=rows, data_offset=f.tell())
