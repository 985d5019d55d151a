"""Local storage for Ray Tune in which a file is whole or not there.

Ray Tune keeps a search's state and each trial's driver-side files (params.json, result.json, progress.csv) in a
staging folder, and at each sync copies that whole folder into storage, rewriting every file in place. A driver
killed, or a disk filled, during a copy leaves files cut short: the experiment state, and the results of trials that
had long finished. Through this filesystem, Tune's storage_filesystem for local storage, every file is written beside
its destination and renamed over it once whole (a rename is atomic on local disks and NFS). Object stores (s3://,
gs://) need none of this: an object appears whole or not at all."""

from __future__ import annotations

import contextlib
import os
import re
import uuid

import pyarrow
import pyarrow.fs as pafs


# What a write of ours leaves while it is under way: this module's files and Location.write_bytes' (storage.py).
STAGED_NAME = re.compile(r".+\.tmp-[0-9a-f]{8}(?:[0-9a-f]{24})?")


def tune_filesystem(local: bool) -> pafs.FileSystem | None:
    """The filesystem to give Ray Tune for storage: this one for a local folder, Ray's own choice (None) otherwise."""
    return pafs.PyFileSystem(WholeFilesHandler()) if local else None


def remove_staged_files(folder: str, keep: str) -> int:
    """Remove the staged files that writes killed halfway left under `folder` (nothing reads them), but for those in
    its subfolder `keep`; how many."""
    removed = 0
    for parent, subfolders, names in os.walk(folder):
        if parent == folder and keep in subfolders:
            subfolders.remove(keep)
        for name in filter(STAGED_NAME.fullmatch, names):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(parent, name))
                removed += 1
    return removed


class WholeFilesHandler(pafs.FileSystemHandler):
    """pyarrow's LocalFileSystem, but for output streams: those write a staged file and rename it when closed."""

    def __init__(self):
        self.local = pafs.LocalFileSystem()

    def __eq__(self, other):
        return isinstance(other, WholeFilesHandler)

    def __ne__(self, other):
        return not self == other

    def __reduce__(self):  # Tune ships its storage to every trial's process
        return WholeFilesHandler, ()

    def get_type_name(self):
        return "local-whole-files"

    def normalize_path(self, path):
        return self.local.normalize_path(path)

    def get_file_info(self, paths):
        return self.local.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.local.get_file_info(selector)

    def create_dir(self, path, recursive):
        self.local.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.local.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.local.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise OSError("refusing to delete everything under /")

    def delete_file(self, path):
        self.local.delete_file(path)

    def move(self, src, dest):
        self.local.move(src, dest)

    def copy_file(self, src, dest):
        with self.local.open_input_stream(src) as source, self.open_output_stream(dest, None) as target:
            while chunk := source.read(2**24):
                target.write(chunk)

    def open_input_stream(self, path):
        return self.local.open_input_stream(path)

    def open_input_file(self, path):
        return self.local.open_input_file(path)

    def open_output_stream(self, path, metadata):
        return pyarrow.PythonFile(StagedFile(path), mode="w")

    def open_append_stream(self, path, metadata):
        return self.local.open_append_stream(path)


class StagedFile:
    """A file written as `.<name>.tmp-<random>` beside `path` and renamed to `path` when closed. A write that fails (a
    full disk) removes the staged file at once, leaving what `path` held: pyarrow may drop a stream that failed
    without closing it."""

    def __init__(self, path: str):
        folder, name = os.path.split(path)
        self.path, self.staged = path, os.path.join(folder, f".{name}.tmp-{uuid.uuid4().hex[:8]}")
        self.file = open(self.staged, "xb")

    @property
    def closed(self) -> bool:
        return self.file.closed

    def write(self, data) -> int:
        return self.discarding_on_error(self.file.write, data)

    def flush(self) -> None:
        self.discarding_on_error(self.file.flush)

    def tell(self) -> int:
        return self.file.tell()

    def close(self) -> None:
        if self.file.closed:
            return
        self.discarding_on_error(self.file.close)  # writes out what is buffered, so a full disk may show here
        os.replace(self.staged, self.path)

    def discarding_on_error(self, operation, *args):
        try:
            return operation(*args)
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.staged)
