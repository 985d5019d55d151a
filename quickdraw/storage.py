"""Where datasets and experiments live: a local folder or a URI Ray Tune accepts (s3://, gs://).

Both go through pyarrow's filesystems, the ones Ray Tune itself uses, so an S3-compatible server
named by AWS_ENDPOINT_URL works for our files exactly as it does for Tune's.
"""

from __future__ import annotations

import errno
import glob
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pyarrow
import pyarrow.fs as pafs

from quickdraw.errors import UserError

FULL_BELOW_BYTES = 2**20  # less than this left, and the next checkpoint or state file does not fit


@dataclass(frozen=True)
class Location:
    """A file or folder in storage: its filesystem, its path there, and the name users and Tune know it by."""

    filesystem: pafs.FileSystem
    path: str
    uri: str

    @classmethod
    def parse(cls, text: str, flag: str = "--storage") -> Location:
        if "://" not in text:
            return cls.local(os.path.expanduser(text))
        try:
            filesystem, path = pafs.FileSystem.from_uri(text)
        except (pyarrow.ArrowException, OSError, ValueError) as e:
            raise UserError(
                f"{flag} {text}: {first_line(e)}; give a local path or a URI such as s3://bucket/prefix"
            ) from None
        if isinstance(filesystem, pafs.LocalFileSystem):  # file:///path: the path, as Ray Tune takes local storage
            return cls.local(path)
        return cls(filesystem, path.rstrip("/"), text.rstrip("/"))

    @classmethod
    def local(cls, path: str) -> Location:
        path = os.path.abspath(path)
        return cls(pafs.LocalFileSystem(), path, path)

    def __truediv__(self, name: str) -> Location:
        return Location(self.filesystem, f"{self.path}/{name}", f"{self.uri}/{name}")

    def __str__(self) -> str:
        return self.uri

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def parent(self) -> Location:
        return Location(self.filesystem, self.path.rsplit("/", 1)[0], self.uri.rsplit("/", 1)[0])

    @property
    def is_local(self) -> bool:
        return isinstance(self.filesystem, pafs.LocalFileSystem)

    def exists(self) -> bool:
        return self._type() != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self._type() == pafs.FileType.File

    def is_dir(self) -> bool:
        return self._type() == pafs.FileType.Directory

    def _type(self) -> pafs.FileType:
        return self.filesystem.get_file_info(self.path).type

    def children(self) -> list[Location]:
        """The files and folders directly inside this folder; none when it does not exist."""
        if not self.is_dir():
            return []
        infos = self.filesystem.get_file_info(pafs.FileSelector(self.path))
        return [self / info.base_name for info in sorted(infos, key=lambda info: info.base_name)]

    def delete(self) -> None:
        self.filesystem.delete_file(self.path)

    def read_bytes(self) -> bytes:
        with self.filesystem.open_input_stream(self.path) as stream:
            return stream.read()

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def write_bytes(self, data: bytes) -> None:
        """Readers see the old file or the whole new one: locally through a rename, on object
        storage because an upload becomes visible only when it completes."""
        if not self.is_local:
            with self.filesystem.open_output_stream(self.path) as stream:
                stream.write(data)
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = f"{self.path}.tmp-{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):  # a full disk: the old file stays, and no partial copy beside it
                os.unlink(tmp)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def write_folder(self, write: Callable[[Path], None], last: str | None = None) -> None:
        """Fill a local folder with `write`, then make it appear here whole.

        Locally it is written beside the target and renamed into place; when another process renamed
        its copy there first, that copy wins and ours is dropped. On object storage the files are
        uploaded one by one, `last` (the file readers check for) after all the others.
        """
        if self.is_local:
            # Beside the target, and made by mkdir, not mkdtemp: its mode (0777 less the umask) is the published
            # folder's, readable by the cluster's other users as any folder they make; mkdtemp's 0700 is not.
            staged = Path(os.path.dirname(self.path)) / f"{self._staged_prefix}{uuid.uuid4().hex}"
            staged.parent.mkdir(parents=True, exist_ok=True)
            staged.mkdir()
        else:
            staged = Path(tempfile.mkdtemp(prefix=f".{self.name}.tmp-"))  # only uploaded from
        try:
            write(staged)
            self._publish(staged, last)
        finally:
            shutil.rmtree(staged, ignore_errors=True)

    @property
    def _staged_prefix(self) -> str:
        return f".{self.name}.tmp-"

    def staged_folders(self) -> list[Path]:
        """The local folders that `write_folder` staged beside this one and has not renamed into place: being written,
        or left by a write that was killed."""
        parent = Path(os.path.dirname(self.path))
        staged = parent.glob(f"{glob.escape(self._staged_prefix)}*")
        return sorted(path for path in staged if path.is_dir() and not path.is_symlink())

    def _publish(self, staged: Path, last: str | None) -> None:
        if self.is_local:
            try:
                os.rename(staged, self.path)
            except OSError:
                if not os.path.isdir(self.path):
                    raise
            return
        files = sorted((p for p in staged.rglob("*") if p.is_file()), key=lambda p: p.name == last)
        for file in files:
            (self / file.relative_to(staged).as_posix()).write_bytes(file.read_bytes())

    def check_writable(self, flag: str = "--storage") -> None:
        """Fail before any work when the folder cannot be written: no bucket, no credentials, no permission."""
        probe = self / f".write-check-{uuid.uuid4().hex}"
        if self.is_local and os.path.isfile(self.path):
            raise UserError(f"{flag} {self.uri} is a file: give a folder (created if missing) or a URI such as "
                            "s3://bucket/prefix")
        try:
            bucket = self.path.split("/", 1)[0]
            if not self.is_local and self.filesystem.get_file_info(bucket).type == pafs.FileType.NotFound:
                endpoint = os.environ.get("AWS_ENDPOINT_URL")
                raise UserError(
                    f"{flag} {self.uri}: there is no bucket {bucket}{f' at {endpoint}' if endpoint else ''}; "
                    "create it, or check the URI and AWS_ENDPOINT_URL"
                )
            probe.write_bytes(b"")
            self.filesystem.delete_file(probe.path)
        except OSError as e:
            raise UserError(f"{flag} {self.uri} cannot be written: {first_line(e)}") from None


def output_file(text: str, flag: str = "--output") -> Location:
    """A file the user asked a command to write; a local one's folder is checked before any work."""
    if not text.strip():
        raise UserError(f"{flag} needs a file name")
    output = Location.parse(text, flag=flag)
    if output.is_local:
        folder = os.path.dirname(output.path)
        if os.path.isdir(output.path):
            raise UserError(f"{flag} {text} is a folder: give a file name")
        if not os.path.isdir(folder):
            raise UserError(f"{flag} {text}: there is no folder {folder}; create it or write somewhere else")
        if not os.access(folder, os.W_OK):
            raise UserError(f"{flag} {text}: the folder {folder} is not writable")
    return output


def write_output(output: Location, text: str, flag: str = "--output") -> None:
    try:
        output.write_text(text)
    except OSError as e:
        raise UserError(f"{flag} {output} cannot be written: {e.strerror or first_line(e)}") from None


def full_disk(path: str, error: BaseException | None = None) -> str | None:
    """When the local file system holding `path` is full (`error` says so, or under FULL_BELOW_BYTES are left), that
    disk described for an error message; None otherwise, and for object storage."""
    if "://" in str(path):
        return None
    folder = os.path.abspath(path)
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    usage = shutil.disk_usage(folder)
    said = isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)
    if not said and usage.free >= FULL_BELOW_BYTES:
        return None
    mount = folder
    while not os.path.ismount(mount):
        mount = os.path.dirname(mount)
    return (f"the disk that holds {path} is full ({mount}: {usage.free / 2**20:.1f} MiB of {usage.total / 2**20:.0f} "
            "MiB free)")


def first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
