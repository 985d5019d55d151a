"""Finding Quick Draw `numpy_bitmap` files and reading them safely (never unpickling)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

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
    candidates = (data_dir / f"{name}.npy", data_dir / f"full_numpy_bitmap_{name}.npy")
    return next((path for path in candidates if path.is_file()), None)


def missing_classes(data_dir: Path, classes: tuple[str, ...]) -> list[str]:
    return [name for name in classes if class_file(data_dir, name) is None]


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


@dataclass(frozen=True)
class BitmapHeader:
    """What a `.npy` header says about a bitmap array: its drawings and where they start."""

    shape: tuple[int, ...]
    data_offset: int

    @property
    def rows(self) -> int:
        return self.shape[0]

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
    if not _is_bitmap_shape(shape):
        raise UserError(f"{name} has shape {shape}, expected {ACCEPTED_SHAPES}")
    return BitmapHeader(shape=shape, data_offset=f.tell())


def _is_bitmap_shape(shape: tuple[int, ...]) -> bool:
    return shape[1:] in ((PIXELS,), (1, PIXELS), (SIDE, SIDE))
