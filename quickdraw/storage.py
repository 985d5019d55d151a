"""Where datasets and experiments live: a local folder or a URI Ray Tune accepts (s3://, gs://).

Both go through pyarrow's filesystems, the ones Ray Tune itself uses, so an S3-compatible server
named by AWS_ENDPOINT_URL (or by the URI's ?endpoint_override=) works for our files exactly as it does for Tune's.
What pyarrow cannot do on S3 goes through boto3's client from `s3_client`, at the same endpoint.
"""

from __future__ import annotations

import dataclasses
import errno
import glob
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs

import pyarrow
import pyarrow.fs as pafs

from quickdraw.errors import UserError
from quickdraw.safe_files import (RECORD_LIMIT, check_replaceable, check_size, inside, read_regular, staged_folder,
                                  staged_prefix, swap_in, write_through)

FULL_BELOW_BYTES = 2**20  # less than this left, and the next checkpoint or state file does not fit


@dataclass(frozen=True)
class Location:
    """A file or folder in storage: its filesystem, its path there, and the URI users and Tune know it by (`base`,
    then the URI's query, which holds the filesystem's options, such as `endpoint_override=`, for every path under
    it). A local one with a `root` (see `confined`) reads and writes nothing that a link takes out of that folder."""

    filesystem: pafs.FileSystem
    path: str
    base: str
    query: str = ""
    root: str | None = None  # a resolved local folder

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
        base, _, query = text.partition("?")
        return cls(filesystem, path.rstrip("/"), base.rstrip("/"), query)

    def confined(self) -> Location:
        """This folder, and every Location under it, reading and writing only inside it (an experiment folder: what
        it holds is data from anywhere, and a link in it never leads out)."""
        return dataclasses.replace(self, root=os.path.realpath(self.path)) if self.is_local else self

    @classmethod
    def local(cls, path: str) -> Location:
        path = os.path.abspath(path)
        return cls(pafs.LocalFileSystem(), path, path)

    def __truediv__(self, name: str) -> Location:
        return Location(self.filesystem, f"{self.path}/{name}", f"{self.base}/{name}", self.query, self.root)

    def __str__(self) -> str:
        return self.uri

    @property
    def uri(self) -> str:
        return f"{self.base}?{self.query}" if self.query else self.base

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def parent(self) -> Location:
        return Location(self.filesystem, self.path.rsplit("/", 1)[0] or "/", self.base.rsplit("/", 1)[0] or "/",
                        self.query)

    @property
    def endpoint(self) -> str | None:
        """The S3 endpoint that every request goes to, as pyarrow picks it: the URI's endpoint_override (with its
        scheme, https unless the URI says otherwise), else AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL; None for AWS's
        own, and for other storage."""
        if self.is_local or self.filesystem.type_name != "s3":
            return None
        options = parse_qs(self.query)
        if override := options.get("endpoint_override", [""])[-1]:
            return override if "://" in override else f"{options.get('scheme', ['https'])[-1]}://{override}"
        return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")

    @property
    def endpoint_source(self) -> str:
        """Where `endpoint` comes from, for a message that says what to check."""
        if "endpoint_override" in parse_qs(self.query):
            return "the URI's endpoint_override"
        return "AWS_ENDPOINT_URL_S3" if os.environ.get("AWS_ENDPOINT_URL_S3") else "AWS_ENDPOINT_URL"

    @property
    def bucket(self) -> str:
        return self.path.split("/", 1)[0]

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

    def _folder(self) -> str:
        """The local folder that holds this file, once it is known not to lead out of `root`."""
        return inside(os.path.dirname(self.path), self.root)

    def delete(self) -> None:
        if self.is_local:
            self._folder()
        self.filesystem.delete_file(self.path)

    def read_bytes(self, limit: int = RECORD_LIMIT) -> bytes:
        """The whole file; an UnsafeFile (quickdraw.safe_files) when it holds more than `limit` bytes (one of
        safe_files' limits) or, locally, is not a regular file inside `root`."""
        if self.is_local:
            return read_regular(self.path, limit, self.root)
        with self.filesystem.open_input_stream(self.path) as stream:
            data = stream.read(limit + 1)
        check_size(self.uri, len(data), limit)
        return data

    def read_text(self, limit: int = RECORD_LIMIT) -> str:
        return self.read_bytes(limit).decode()

    def write_bytes(self, data: bytes) -> None:
        """Readers see the old file or the whole new one: locally through a rename, on object
        storage because an upload becomes visible only when it completes."""
        self.parent.write_files({self.name: data}, self.root)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def write_files(self, files: dict[str, bytes], root: str | None = None) -> None:
        """Write the files into this folder, each whole: locally every one is written beside its name before any is
        renamed over it, in `files`' order (a link there is replaced, not followed); on object storage each upload
        becomes visible only when it completes. `root`: the folder they must not lead out of (this one's own by
        default)."""
        if not self.is_local:
            for name, data in files.items():
                with self.filesystem.open_output_stream(f"{self.path}/{name}") as stream:
                    stream.write(data)
            return
        folder = inside(self.path, root or self.root)
        os.makedirs(folder, exist_ok=True)
        staged = {name: os.path.join(folder, f"{name}.tmp-{uuid.uuid4().hex}") for name in files}
        try:
            for name, data in files.items():
                with open(staged[name], "xb") as f:
                    f.write(data)
            for name, tmp in staged.items():
                os.replace(tmp, os.path.join(folder, name))
        finally:
            for tmp in staged.values():
                if os.path.exists(tmp):  # a full disk: the old files stay, and no partial copy beside them
                    os.unlink(tmp)

    def write_folder(self, write: Callable[[Path], None], last: str | None = None, replace: bool = False) -> None:
        """Fill a local folder with `write`, then make it appear here whole.

        Locally it is written beside the target and renamed into place; when another process renamed its copy there
        first, that copy wins and ours is dropped, unless `replace`: then ours is swapped in for what is there (a
        folder or a link; quickdraw.safe_files.swap_in). On object storage the files are uploaded one by one, `last`
        (the file readers check for) after all the others; with `replace`, the old `last` is deleted first and the old
        folder's other files after the uploads, so that the folder is never taken for a mix of the two.
        """
        if self.is_local:
            self._folder()
            staged = Path(staged_folder(self.path))
        else:
            staged = Path(tempfile.mkdtemp(prefix=f".{self.name}.tmp-"))  # only uploaded from
        try:
            write(staged)
            if not self.is_local:
                self._upload(staged, last, replace)
            elif replace:
                swap_in(str(staged), self.path)
            else:
                self._rename_in(staged)
        finally:
            if os.path.isdir(staged) and not os.path.islink(staged):
                shutil.rmtree(staged, ignore_errors=True)

    def staged_folders(self) -> list[Path]:
        """The local folders that `write_folder` staged beside this one and has not renamed into place: being written,
        or left by a write that was killed."""
        parent = Path(os.path.dirname(self.path))
        staged = parent.glob(f"{glob.escape(staged_prefix(self.name))}*")
        return sorted(path for path in staged if path.is_dir() and not path.is_symlink())

    def check_replaceable(self) -> None:
        """A UserError, before any work, when write_folder(replace=True) would find a file where its folder goes."""
        if self.is_local:
            check_replaceable(self.path)

    def _rename_in(self, staged: Path) -> None:
        try:
            os.rename(staged, self.path)
        except OSError:
            if not os.path.isdir(self.path):
                raise

    def _upload(self, staged: Path, last: str | None, replace: bool) -> None:
        names = sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file())
        if replace and last and (self / last).is_file():
            (self / last).delete()
        for name in (n for n in names if n != last):
            (self / name).write_bytes((staged / name).read_bytes())
        if replace:
            for old in self.children():
                if old.name not in names and old.is_file():
                    old.delete()
        if last in names:
            (self / last).write_bytes((staged / last).read_bytes())

    def check_writable(self, flag: str = "--storage") -> None:
        """Fail before any work when the folder cannot be written: no bucket, no credentials, no permission."""
        probe = self / f".write-check-{uuid.uuid4().hex}"
        if self.is_local and os.path.isfile(self.path):
            raise UserError(f"{flag} {self.uri} is a file: give a folder (created if missing) or a URI such as "
                            "s3://bucket/prefix")
        try:
            if not self.is_local and self.filesystem.get_file_info(self.bucket).type == pafs.FileType.NotFound:
                raise UserError(f"{flag} {self.uri}: there is no bucket {self.bucket}{self._at}; create it, or check "
                                f"the URI and {self.endpoint_source}")
            probe.write_bytes(b"")
            self.filesystem.delete_file(probe.path)
        except OSError as e:
            raise UserError(f"{flag} {self.uri} cannot be written: {first_line(e)}") from None

    @property
    def _at(self) -> str:
        return f" at {self.endpoint}" if self.endpoint else ""

    def fault(self, error: BaseException) -> Fault | None:
        """When this object storage location, not the code, is why `error` happened: the store out of reach, its
        bucket gone (a store restarted without its data), or files deleted under this location. None otherwise, and
        for local storage."""
        if self.is_local:
            return None
        # An error that says so already spares a second wait through pyarrow's retries (seconds).
        unreachable = error if "AWS Error NETWORK_CONNECTION" in str(error) else None
        if unreachable is None:
            try:
                bucket, here = self.filesystem.get_file_info([self.bucket, self.path])
            except OSError as e:
                unreachable = e
        if unreachable is not None:
            return Fault(f"the storage {self} cannot be reached{self._at} ({store_reason(unreachable)}); check that "
                         f"the store runs and that {self.endpoint_source} names it", "unreachable")
        if bucket.type == pafs.FileType.NotFound:
            return Fault(f"the storage {self} is gone: there is no bucket {self.bucket}{self._at} any more (was the "
                         f"store restarted without its data?); check the URI and {self.endpoint_source}", "gone")
        if here.type == pafs.FileType.NotFound or isinstance(error, FileNotFoundError):
            missing = getattr(error, "filename", None) or self
            return Fault(f"{missing} was deleted from the storage while the command ran; leave {self} to the "
                         "command while it runs", "deleted")
        return None


@dataclass(frozen=True)
class Fault:
    """How object storage failed a command: `text` says what happened and what to check; `kind` is "unreachable",
    "gone" (the bucket, and every file in it) or "deleted" (files under the location)."""

    text: str
    kind: str

    def __str__(self) -> str:
        return self.text


STDOUT = "-"  # as --output: standard output


def output_file(text: str, flag: str = "--output", experiment: Location | None = None) -> Location | None:
    """A file the user asked a command to write (None for STDOUT), checked before any work: a local one's folder, and
    that it is not inside `experiment`, whose files are the command's to write."""
    if not text.strip():
        raise UserError(f"{flag} needs a file name")
    if text == STDOUT:
        return None
    output = Location.parse(text, flag=flag)
    if output.is_local and not written_through(output.path):
        folder = os.path.dirname(output.path)
        if os.path.isdir(output.path):
            raise UserError(f"{flag} {text} is a folder: give a file name")
        if not os.path.isdir(folder):
            raise UserError(f"{flag} {text}: there is no folder {folder}; create it or write somewhere else")
        if not os.access(folder, os.W_OK):
            raise UserError(f"{flag} {text}: the folder {folder} is not writable")
    if experiment is not None and is_inside(output, experiment):
        raise UserError(f"{flag} {text} is inside the experiment {experiment}, whose files are the report's and the "
                        "search's: write the table somewhere else")
    return output


def is_inside(location: Location, folder: Location) -> bool:
    """Whether `location` is in `folder` or below it (locally once links are resolved)."""
    if location.is_local != folder.is_local:
        return False
    if location.is_local:
        path, parent = os.path.realpath(location.path), os.path.realpath(folder.path)
    else:
        path, parent = location.path, folder.path
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def written_through(path: str) -> bool:
    """Whether an output at `path` is written as what it is (a device, a pipe, a link to anything) rather than
    replaced by a new regular file."""
    return os.path.islink(path) or (os.path.exists(path) and not os.path.isfile(path) and not os.path.isdir(path))


def write_output(output: Location, text: str, flag: str = "--output") -> None:
    try:
        if output.is_local and written_through(output.path):
            write_through(output.path, text.encode())
        else:
            output.write_text(text)
    except OSError as e:
        reason = "no process reads from it; start the reader first" if e.errno == errno.ENXIO else e.strerror
        raise UserError(f"{flag} {output} cannot be written: {reason or first_line(e)}") from None


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


def s3_client(location: Location):
    """boto3's S3 client for what pyarrow cannot send (a conditional PUT): the same endpoint and region as
    `location`'s own requests."""
    import boto3

    return boto3.client("s3", endpoint_url=location.endpoint, region_name=location.filesystem.region)


def store_reason(error: BaseException) -> str:
    """The part of a pyarrow S3 error that says why ("Could not connect to server"), not which request failed."""
    text = first_line(error)
    return text.rsplit("Details: ", 1)[-1] if "Details: " in text else text.split(": ", 1)[-1]


def first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
