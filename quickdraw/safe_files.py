"""Local files read and written safely, whoever planted them: only regular files are opened for reading, no bigger
than what they hold allows (the limits below, the one place for them), never through a link out of the folder being
read (an experiment); folders are published whole by swapping a staged copy in; and a path the user names for output
is written as what it is (a device, a pipe, a link). quickdraw.storage's Location reads and writes local files
through here.

A FIFO opened for reading blocks until a writer comes, and a link to /dev/zero reads until memory runs out: a file is
checked with stat before it is opened (opening some devices does something), opened with O_NONBLOCK, and checked again
with fstat before a byte is read."""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import stat
import uuid

from quickdraw.errors import UserError

# The most bytes a file is read whole, by what it holds: far above what a search writes, far below what would
# exhaust a machine's memory.
RECORD_LIMIT = 16 * 2**20  # JSON and text records: search.json, params.json, config.json, classes.txt, a manifest
LOG_LIMIT = 1 * 2**30  # what grows with trials and epochs: Tune's experiment state and pickles, result.json
MODEL_LIMIT = 2 * 2**30  # a checkpoint, a member's weights, model.onnx (ONNX's own limit is 2 GiB)
PREDICTIONS_LIMIT = 4 * 2**30  # predictions.npz: every validation and test drawing's probabilities, twice if mirrored


class UnsafeFile(UserError, OSError):
    """A file that is not read or written: not a regular file, too big, or reached through a link out of its folder.
    Both a UserError (one line, exit code 2, where nothing handles it) and an OSError (a file that cannot be read,
    where the caller goes on without it)."""


def kind(mode: int) -> str:
    """What a file of this mode is, in words."""
    kinds = {stat.S_ISREG: "a file", stat.S_ISDIR: "a folder", stat.S_ISFIFO: "a named pipe (FIFO)",
             stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device", stat.S_ISSOCK: "a socket",
             stat.S_ISLNK: "a symbolic link"}
    return next((words for test, words in kinds.items() if test(mode)), "an unknown kind of file")


def not_a_file(path: str | os.PathLike) -> str | None:
    """Why `path` cannot be read as a file ("no such file", "a folder, not a file", ...); None for a regular file."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "no such file"
    except OSError as e:
        return e.strerror.lower()
    return None if stat.S_ISREG(mode) else f"{kind(mode)}, not a file"


def inside(path: str, root: str | None) -> str:
    """`path` with every link resolved; an UnsafeFile when a link takes it out of `root` (a resolved folder; None:
    anywhere)."""
    real = os.path.realpath(path)
    if root is not None and real != root and not real.startswith(root.rstrip(os.sep) + os.sep):
        raise UnsafeFile(f"{path} is a link out of {root} (to {real}), which is never followed")
    return real


def read_regular(path: str, limit: int, root: str | None = None) -> bytes:
    """The bytes of the regular file at `path`, inside `root`; an UnsafeFile when it is something else (a FIFO, a
    device, a folder), reached through a link out of `root`, or larger than `limit`."""
    real = inside(path, root)
    mode = os.stat(real).st_mode
    if not stat.S_ISREG(mode):
        raise UnsafeFile(f"{path} is {kind(mode)}, not a file; only regular files are read")
    fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    with open(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):  # it changed since
            raise UnsafeFile(f"{path} is {kind(info.st_mode)}, not a file; only regular files are read")
        check_size(path, info.st_size, limit)
        data = f.read(limit + 1)
    check_size(path, len(data), limit)  # it grew since
    return data


def check_size(name: str, size: int, limit: int) -> None:
    if size > limit:
        raise UnsafeFile(f"{name} holds {size / 2**20:.0f} MiB, more than such a file holds (at most "
                         f"{limit / 2**20:.0f} MiB); it is not read")


def staged_prefix(name: str) -> str:
    """How the names of the folders staged for `name` begin (staged_folder's)."""
    return f".{name}.tmp-"


def staged_folder(target: str) -> str:
    """A new empty folder beside `target` to fill and then publish as `target`. Made by mkdir, not mkdtemp: its mode
    (0777 less the umask) is the published folder's, readable by the cluster's other users as any folder they make."""
    staged = os.path.join(os.path.dirname(target), f"{staged_prefix(os.path.basename(target))}{uuid.uuid4().hex}")
    os.makedirs(os.path.dirname(staged), exist_ok=True)
    os.mkdir(staged)
    return staged


def swap_in(staged: str, target: str) -> None:
    """Make the whole folder `staged` appear as `target`, in place of what was there: a folder (removed), a link
    (removed, never followed) or nothing. On Linux one atomic rename exchanges them, so a kill leaves either the old
    folder or the new one; elsewhere the old one is renamed aside first, a moment without either."""
    check_replaceable(target)
    if not os.path.lexists(target):
        os.rename(staged, target)
        return
    if not exchanged(staged, target):
        aside = f"{staged}.old"
        os.rename(target, aside)
        os.rename(staged, target)
        staged = aside
    remove(staged)  # now what `target` was


def check_replaceable(target: str) -> None:
    """A UserError unless `target` is a folder, a link (which is replaced, not followed) or nothing: a file there is
    not ours to remove."""
    if not os.path.lexists(target):
        return
    mode = os.lstat(target).st_mode
    if not (stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
        raise UserError(f"{target} is {kind(mode)}, where a folder is written: move it out of the way, and run the "
                        "command again")


def exchanged(first: str, second: str) -> bool:
    """Swap the two paths' entries at once with Linux's renameat2(RENAME_EXCHANGE); False where that is not offered
    (another system, an old kernel, a file system without it)."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), second)


def remove(path: str) -> None:
    """Remove a folder and what it holds, or a link (never what it points to)."""
    if os.path.islink(path) or not os.path.isdir(path):
        os.unlink(path)
    else:
        shutil.rmtree(path)


def write_through(path: str, data: bytes) -> None:
    """Write `data` to what `path` is, as a shell's `>` does: a device, a named pipe, or a link's target, opened and
    written in place (never replaced by a regular file). A pipe that no process reads is an OSError (ENXIO), not waited
    on."""
    truncate = os.O_TRUNC if not_a_file(path) is None else 0  # a regular file, through a link
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC | truncate)
    os.set_blocking(fd, True)
    with open(fd, "wb") as f:
        f.write(data)
