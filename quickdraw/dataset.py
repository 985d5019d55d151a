"""The seeded split, its fingerprint, the conversion into storage (once, atomically) and PNG export."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import shutil
import tempfile
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from filelock import FileLock
from PIL import Image

from quickdraw import strict_json
from quickdraw.bitmaps import BitmapFile, check_drawings, find_class_files, load_drawings
from quickdraw.config import DataConfig
from quickdraw.errors import UserError
from quickdraw.safe_files import UnsafeFile, not_a_file
from quickdraw.storage import Location, first_line

FORMAT_VERSION = 1
PARTS = ("train", "validation", "test")
ARRAYS_FILE = "split.npz"
MANIFEST_FILE = "manifest.json"
SPLIT_HASH_KEY = "split_sha256"  # the manifest's record of split.npz's SHA-256, written once at the conversion
STALE_STAGING_S = 300  # a staged PNG folder left unwritten this long belongs to a killed `convert --png`
DATASETS_DIR = "datasets"  # in the storage: a folder per conversion, named by its fingerprint


@dataclass
class Split:
    """Drawings as (N, 28, 28) uint8, strokes white (255) on black (0), with int64 class labels."""

    classes: tuple[str, ...]
    x_train: np.ndarray
    y_train: np.ndarray
    x_validation: np.ndarray
    y_validation: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def part(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")

    def counts(self) -> dict[str, int]:
        return {name: len(self.part(name)[1]) for name in PARTS}


@dataclass(frozen=True)
class Conversion:
    """Where a split is stored, and whether this run converted it or found it there."""

    directory: Location
    reused: bool
    counts: dict[str, int]


def fingerprint(config: DataConfig, sources: list[BitmapFile]) -> str:
    """A short hash of everything the conversion depends on; files are known by name, size and mtime."""
    inputs = {
        "format_version": FORMAT_VERSION,
        "classes": list(config.classes),
        "split": dataclasses.asdict(config.split),
        "seed": config.seed,
        "files": [[s.path.name, s.size, s.mtime_ns] for s in sources],
    }
    return hashlib.sha256(strict_json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def conversion_fingerprint(config: DataConfig) -> str:
    return fingerprint(config, find_class_files(config.data_dir, config.classes))


def _conversion_dir(storage: Location, config: DataConfig, sources: list[BitmapFile]) -> Location:
    return storage / DATASETS_DIR / fingerprint(config, sources)


def _is_converted(directory: Location) -> bool:
    return (directory / MANIFEST_FILE).is_file()  # published last, after the arrays


def check_inputs(config: DataConfig, storage: Location) -> None:
    """Fail fast, before any Ray start-up: the class files exist and, unless a stored conversion
    will be reused, their headers promise uint8 bitmaps enough for the split."""
    sources = find_class_files(config.data_dir, config.classes)
    if not _is_converted(_conversion_dir(storage, config, sources)):
        needed = config.drawings_per_class()
        for source in sources:
            check_drawings(source, needed[source.class_name])


def prepare_split(config: DataConfig, storage: Location) -> tuple[Split, Conversion]:
    """The split for `config`: read back from storage when converted before, otherwise converted now."""
    sources = find_class_files(config.data_dir, config.classes)
    target = _conversion_dir(storage, config, sources)
    with conversion_lock(target):
        reused = _is_converted(target)
        if reused:
            split = load_split(target)
        else:
            split = split_drawings(config, sources)
            target.write_folder(lambda tmp: _write_split(tmp, split, config, sources), last=MANIFEST_FILE)
    return split, Conversion(target, reused, split.counts())


def conversion_lock(target: Location) -> contextlib.AbstractContextManager:
    """On local storage, a file lock beside the dataset folder: two drivers on one machine, each with its own Ray
    (so each with its own converter actor, quickdraw.search.Converter), convert once; the second waits and reuses.
    Object storage has no such lock; there the drivers of one cluster share its converter actor."""
    if not target.is_local:
        return contextlib.nullcontext()
    key = hashlib.sha256(target.path.encode()).hexdigest()[:16]  # kept out of the storage, as download's lock is
    return FileLock(Path(tempfile.gettempdir()) / f"quickdraw-convert-{key}.lock")


def split_drawings(config: DataConfig, sources: list[BitmapFile]) -> Split:
    """Each class's first train+validation+test drawings, shuffled by a seeded permutation and cut."""
    parts: dict[str, list[np.ndarray]] = {name: [] for name in PARTS}
    labels: dict[str, list[np.ndarray]] = {name: [] for name in PARTS}
    for label, (source, counts) in enumerate(zip(sources, config.split.per_class(len(sources)))):
        drawings = load_drawings(source, sum(counts))
        # Seeded by class name too: reordering classes, or adding some at the same sizes, keeps each class's split.
        rng = np.random.default_rng([config.seed, zlib.crc32(source.class_name.encode())])
        order = rng.permutation(len(drawings))
        bounds = np.cumsum(counts)[:-1]
        for name, indices in zip(PARTS, np.split(order, bounds)):
            parts[name].append(drawings[indices])
            labels[name].append(np.full(len(indices), label, dtype=np.int64))
    arrays = {}
    for name in PARTS:
        arrays[f"x_{name}"] = np.concatenate(parts[name])
        arrays[f"y_{name}"] = np.concatenate(labels[name])
    return Split(classes=tuple(config.classes), **arrays)


def load_split(directory: Location, parts: tuple[str, ...] = PARTS) -> Split:
    """The stored split, or only its `parts` (the others empty): the archive is opened for random access, locally or
    on object storage, so only those parts are read, straight into their arrays (not through a copy of the file)."""
    archive = directory / ARRAYS_FILE
    try:
        manifest = json.loads((directory / MANIFEST_FILE).read_text())
        if archive.is_local and (problem := not_a_file(archive.path)):  # a FIFO would block the open below
            raise UnsafeFile(f"{archive}: {problem}")
        with archive.filesystem.open_input_file(archive.path) as file, np.load(file, allow_pickle=False) as arrays:
            loaded = {name: arrays[name] for part in parts for name in (f"x_{part}", f"y_{part}")}
        classes = tuple(manifest["classes"])
        check_unchanged(archive, manifest)  # after the load: a file cut short is damaged, a whole other one changed
    except (OSError, ValueError, KeyError, TypeError, AttributeError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"the split in {directory} cannot be read ({type(e).__name__}: {first_line(e)}): it is damaged; "
                        "put back a copy of that folder, or start a new search") from None
    empty = {"x": np.empty((0, 28, 28), np.uint8), "y": np.empty(0, np.int64)}
    return Split(classes=classes,
                 **{name: loaded.get(name, empty[name[0]]) for part in PARTS for name in (f"x_{part}", f"y_{part}")})


class SplitChanged(UserError):
    """split.npz is not the file its conversion wrote: the drawings of another split, which `resume` would go on
    training with and `report` would test on."""


def check_unchanged(archive: Location, manifest: dict) -> None:
    """Refuse a split.npz whose SHA-256 is not the one its manifest recorded at the conversion. Manifests written
    before the hash was recorded hold none: their splits are taken as they are (docs/data.md says why)."""
    recorded = manifest.get(SPLIT_HASH_KEY)
    if recorded is None:
        return
    with archive.filesystem.open_input_stream(archive.path) as stream:
        if _sha256(stream) != recorded:
            raise SplitChanged(
                f"{archive} has changed since it was converted (its SHA-256 is not the one {MANIFEST_FILE} records), "
                "so its drawings may not be the split the search trained and validated on; put back that folder's "
                f"own {ARRAYS_FILE}, or delete {archive.parent} so that the next run converts the split again")


def _write_split(directory: Path, split: Split, config: DataConfig, sources: list[BitmapFile]) -> None:
    arrays = {f.name: getattr(split, f.name) for f in dataclasses.fields(split) if f.name != "classes"}
    np.savez(directory / ARRAYS_FILE, **arrays)
    manifest = {
        "format_version": FORMAT_VERSION,
        SPLIT_HASH_KEY: _file_sha256(directory / ARRAYS_FILE),
        "classes": list(split.classes),
        "counts": split.counts(),
        "seed": config.seed,
        "split": dataclasses.asdict(config.split),
        "sources": [
            {"class": s.class_name, "file": s.path.name, "bytes": s.size, "sha256": _file_sha256(s.path)}
            for s in sources
        ],
    }
    (directory / MANIFEST_FILE).write_text(strict_json.dumps(manifest, indent=2) + "\n")


def write_pngs(split: Split, directory: Location) -> Location:
    """The seed's layout, `png/<train|validation|test>/<Class>/<n>.png`, black strokes on white."""
    if not directory.is_local:
        raise UserError(f"--png writes thousands of small files for browsing: give a local --storage, not {directory}")
    target = directory / "png"
    remove_stale_staging(target)
    if target.is_dir():
        return target

    def write(tmp: Path) -> None:
        for part in PARTS:
            drawings, labels = split.part(part)
            for label, name in enumerate(split.classes):
                folder = tmp / part / name.capitalize()
                folder.mkdir(parents=True)
                for n, drawing in enumerate(drawings[labels == label]):
                    Image.fromarray(255 - drawing).save(folder / f"{n}.png")

    target.write_folder(write)
    return target


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as file:
        return _sha256(file)


def _sha256(file: BinaryIO) -> str:
    """The SHA-256 of a file read from start to end in chunks (a local file or a pyarrow stream from object storage),
    never held whole."""
    return hashlib.file_digest(file, "sha256").hexdigest()


def remove_stale_staging(target: Location) -> None:
    """Remove the folders that killed `convert --png` runs staged for `target` (thousands of PNGs each): those nothing
    has been written into for STALE_STAGING_S. A live run adds a PNG, and so touches its class folder, every few
    milliseconds; only a run stopped that long (or its machine's clock that far behind) could still be writing."""
    for staged in target.staged_folders():
        folders = [staged, *staged.glob("*"), *staged.glob("*/*")]  # png/<part>/<Class>: each PNG touches its folder
        with contextlib.suppress(FileNotFoundError):  # another run removed it first
            if time.time() - max(folder.stat().st_mtime for folder in folders) > STALE_STAGING_S:
                shutil.rmtree(staged, ignore_errors=True)
