"""Google's `numpy_bitmap` files over HTTP: only the drawings a split needs (Range requests), resumed after an
interruption, checked, and renamed into place when complete."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlparse

import numpy as np
import requests
import urllib3
from filelock import FileLock
from tqdm import tqdm

from quickdraw import strict_json
from quickdraw.bitmaps import PIXELS, checked_row_count, class_file, file_header, missing_classes, read_bitmap_header
from quickdraw.config import DataConfig
from quickdraw.errors import UserError
from quickdraw.storage import full_disk

HEADER_BYTES = 4096  # read before the header is parsed; Google's headers are 128 bytes
ATTEMPTS = 3  # per class, each one resuming where the last stopped
RETRY_PAUSE_S = 0.5
TIMEOUT_S = (10, 60)  # connect, read
CHUNK_BYTES = 1 << 16
RETRIED_STATUSES = {429, 500, 502, 503, 504}


class ConnectionBroke(Exception):
    """The connection failed or broke off; what arrived is kept in the `.part` file for the next attempt."""


@dataclass(frozen=True)
class ClassDownload:
    """One class's file: where it comes from, where it goes, and how many drawings it needs (None: all)."""

    class_name: str
    url: str
    target: Path
    rows: int | None

    @property
    def part(self) -> Path:
        """The bytes received so far, a prefix of the file on the server."""
        return self.target.with_name(self.target.name + ".part")

    @property
    def state(self) -> Path:
        """What a resume must ask for: the URL, its validator (ETag), the length wanted, the server's MD5."""
        return self.target.with_name(self.target.name + ".part.json")


def class_url(base_url: str, name: str) -> str:
    return f"{base_url.rstrip('/')}/{quote(name)}.npy"


def check_base_url(base_url: str) -> None:
    parsed = urlparse(base_url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise UserError(f"--base-url must be an http:// or https:// URL of a folder of <class>.npy files, got {base_url!r}")


def fetch_missing(config: DataConfig) -> None:
    """The main command's first step: fetch the drawings of classes with no file in --data-dir, unless --no-download."""
    if not config.download:
        return
    missing = missing_classes(config.data_dir, config.classes)
    if missing:
        rows = config.drawings_per_class()
        download_classes(config.data_dir, {name: rows[name] for name in missing}, config.base_url)


def download_classes(data_dir: Path, wanted: dict[str, int | None], base_url: str) -> list[Path]:
    """Fetch each class's file into `data_dir`, unless one with enough drawings is there; returns the files."""
    check_base_url(base_url)
    jobs = [ClassDownload(name, class_url(base_url, name), data_dir / f"{name}.npy", rows) for name, rows in wanted.items()]
    try:
        # Two commands started together on one machine take turns; the second finds the files there.
        with FileLock(lock_path(data_dir)), requests.Session() as session:
            session.headers["Accept-Encoding"] = "identity"  # byte ranges of the file itself, not of a compressed form
            for number, job in enumerate(jobs, 1):
                try:
                    fetch(session, job, label=f"[{number}/{len(jobs)}] {job.class_name}")
                except ConnectionBroke as e:
                    raise UserError(broken_off_message(jobs[number - 1:], data_dir, base_url, e)) from None
    except OSError as e:
        raise UserError(f"cannot download into {data_dir}: {e.strerror or e}; check --data-dir") from None
    return [class_file(data_dir, job.class_name) for job in jobs]


def lock_path(data_dir: Path) -> Path:
    """A lock file per data folder, kept out of the folder itself."""
    key = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"quickdraw-download-{key}.lock"


def broken_off_message(unfinished: list[ClassDownload], data_dir: Path, base_url: str, error: ConnectionBroke) -> str:
    job = unfinished[0]
    if job.part.is_file():
        return (f"download of {job.url} stopped at {job.part.stat().st_size} bytes after {ATTEMPTS} attempts "
                f"({error}): run the same command again to resume it")
    names = ", ".join(other.target.name for other in unfinished)
    return (f"cannot download {names} from {base_url} ({error}): put those files into {data_dir} yourself "
            "(see data/README.md), or give --base-url a mirror this machine can reach")


def fetch(session: requests.Session, job: ClassDownload, label: str) -> None:
    if job.rows is not None and has_rows(job, job.rows):
        return
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return fetch_once(session, job, label)
        except ConnectionBroke:
            if attempt == ATTEMPTS:
                raise
            time.sleep(RETRY_PAUSE_S * attempt)


def has_rows(job: ClassDownload, rows: int) -> bool:
    """Whether a usable file with at least `rows` drawings is already there (named either way)."""
    existing = class_file(job.target.parent, job.class_name)
    try:
        return existing is not None and checked_row_count(existing) >= rows
    except UserError:
        return False  # a damaged file is replaced


def fetch_once(session: requests.Session, job: ClassDownload, label: str) -> None:
    state = read_state(job)
    while state is None or job.part.stat().st_size < state["end"]:
        state = receive(session, job, state, label)
        if state is None:
            return  # a complete file (--full) is already there
    finish(job, state)


def receive(session: requests.Session, job: ClassDownload, state: dict | None, label: str) -> dict | None:
    """One request: the header's bytes when nothing is stored yet, otherwise the rest of the wanted bytes."""
    start = job.part.stat().st_size if state else 0
    with request_bytes(session, job, start, state) as response:
        chunks = body_chunks(response)
        if response.status_code == 206:
            check_range(job, response, start, state["end"] - 1 if state else None)
        if state is None or response.status_code == 200:
            # The header's range; or a server that ignores Range, or whose file changed: from byte 0.
            state = begin(job, response, chunks)
            if state is None or response.status_code == 206:
                return state  # the next request asks for the rest
        copy_body(job, chunks, job.part.stat().st_size, state["end"], label)
    return state


def request_bytes(session: requests.Session, job: ClassDownload, start: int, state: dict | None) -> requests.Response:
    end = state["end"] if state else HEADER_BYTES
    headers = {"Range": f"bytes={start}-{end - 1}"}
    if state and state["validator"]:
        headers["If-Range"] = state["validator"]  # a changed file comes back whole (200), not as a wrong slice
    try:
        response = session.get(job.url, headers=headers, stream=True, timeout=TIMEOUT_S)
    except requests.RequestException as e:
        raise ConnectionBroke(reason(e)) from None
    if response.status_code in (200, 206):
        return response
    response.close()
    if response.status_code == 416:  # the stored part does not fit the file any more
        remove_part(job)
        raise ConnectionBroke("the file on the server changed")
    if response.status_code in RETRIED_STATUSES:
        raise ConnectionBroke(f"HTTP {response.status_code} {response.reason}")
    raise UserError(
        f"{job.url} answered HTTP {response.status_code} {response.reason}: check the class name "
        "(Google's list: categories.txt in github.com/googlecreativelab/quickdraw-dataset) and --base-url"
    )


def body_chunks(response: requests.Response) -> Iterator[bytes]:
    """The body as it arrives (read1, not read: what came before a connection broke is kept)."""
    try:
        while chunk := response.raw.read1(CHUNK_BYTES):
            yield chunk
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as e:
        raise ConnectionBroke(reason(e)) from None


def begin(job: ClassDownload, response: requests.Response, chunks: Iterator[bytes]) -> dict | None:
    """Check the file's header from its first bytes, record what to fetch, and start the `.part` file;
    None when a complete file (--full) is already there."""
    head = b""
    for chunk in chunks:
        head += chunk
        if len(head) >= HEADER_BYTES:
            break
    header = read_bitmap_header_of(job, response, head)
    if job.rows is not None and header.rows < job.rows:
        raise UserError(
            f"{job.url} has {header.rows} drawings but the split needs {job.rows} of class {job.class_name!r}: "
            "use a smaller --split"
        )
    end = header.bytes_for(header.rows if job.rows is None else job.rows)
    total = total_length(response)
    if total is not None and total < end:
        raise UserError(
            f"{job.url} is {total} bytes long but its header promises {header.bytes_for(header.rows)}: "
            "the server's copy is truncated; try again later or another --base-url"
        )
    if job.rows is None and has_rows(job, header.rows):
        return None
    state = {"url": job.url, "rows": job.rows, "end": end, "validator": validator(response),
             "md5": server_md5(response) if job.rows is None else None}
    job.target.parent.mkdir(parents=True, exist_ok=True)
    job.state.write_text(strict_json.dumps(state))
    job.part.write_bytes(head[:end])
    return state


def read_bitmap_header_of(job: ClassDownload, response: requests.Response, head: bytes):
    if "html" in response.headers.get("Content-Type", "") or head.lstrip()[:1] == b"<":
        raise UserError(
            f"{job.url} answered with an HTML page, not a .npy file (a login or error page?): check --base-url"
        )
    return read_bitmap_header(io.BytesIO(head), job.url)


def check_range(job: ClassDownload, response: requests.Response, first: int, last: int | None = None) -> None:
    """A 206 answer must hold the bytes asked for: from `first` (to `last`, when the file's length is known)."""
    match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", response.headers.get("Content-Range", ""))
    if not match or int(match[1]) != first or (last is not None and int(match[2]) != last):
        raise UserError(
            f"{job.url} answered with bytes {response.headers.get('Content-Range')!r} where {first}-{last or ''} "
            f"were asked: the server does not serve byte ranges correctly; try another --base-url"
        )


def copy_body(job: ClassDownload, chunks: Iterator[bytes], start: int, end: int, label: str) -> None:
    """Append the body to the `.part` file until it holds `end` bytes; the rest is not read."""
    received = start
    with open(job.part, "ab") as part, tqdm(total=end, initial=start, desc=label, unit="B", unit_scale=True,
                                            unit_divisor=1024, leave=True) as bar:
        for chunk in chunks if received < end else ():
            chunk = chunk[: end - received]
            part.write(chunk)
            received += len(chunk)
            bar.update(len(chunk))
            if received == end:
                break
    if received < end:
        raise ConnectionBroke(f"the connection closed at byte {received} of {end}")


def finish(job: ClassDownload, state: dict) -> None:
    """Check the complete download and move it into place; a partial one gets its own header."""
    if state["md5"] and file_md5(job.part) != state["md5"]:
        remove_part(job)
        raise UserError(f"{job.url} arrived with a different MD5 than the server gives for it; run the command again")
    if job.rows is None:
        ready = job.part
    else:
        ready = job.target.with_name(job.target.name + ".tmp")
        try:
            write_first_rows(job.part, ready, job.rows)
        except OSError as e:  # numpy says only "N requested and M written"
            ready.unlink(missing_ok=True)  # no half-written file stays; the whole download does
            if disk := full_disk(str(job.target), e):
                raise UserError(f"{job.target} cannot be written: {disk}; free some space there, then run the "
                                "command again") from None
            raise
    rows = checked_row_count(ready)  # a whole file is checked against its own header's length
    if job.rows is not None and rows != job.rows:
        raise UserError(f"{job.url}: the downloaded file does not hold {job.rows} drawings; run the command again")
    os.replace(ready, job.target)
    remove_part(job)


def write_first_rows(part: Path, destination: Path, rows: int) -> None:
    """A `.npy` of the first `rows` drawings: the server's header promises them all, so it is rewritten."""
    header = file_header(part)
    drawings = np.memmap(part, dtype=np.uint8, mode="r", offset=header.data_offset, shape=(rows, PIXELS))
    with open(destination, "wb") as f:
        np.save(f, np.asarray(drawings), allow_pickle=False)


def read_state(job: ClassDownload) -> dict | None:
    """The unfinished download of this same file, if there is one; any other is discarded."""
    try:
        state = json.loads(job.state.read_text())
    except (OSError, ValueError):
        state = None
    if state and job.part.is_file() and state.get("url") == job.url and state.get("rows") == job.rows:
        return state
    remove_part(job)
    return None


def remove_part(job: ClassDownload) -> None:
    job.part.unlink(missing_ok=True)
    job.state.unlink(missing_ok=True)


def total_length(response: requests.Response) -> int | None:
    """The whole file's length, from Content-Range (206) or Content-Length (200)."""
    content_range = response.headers.get("Content-Range", "")
    if response.status_code == 206:
        match = re.search(r"/(\d+)$", content_range)
        return int(match[1]) if match else None
    length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def validator(response: requests.Response) -> str | None:
    etag = response.headers.get("ETag")
    if etag and not etag.startswith("W/"):  # If-Range takes only a strong ETag
        return etag
    return response.headers.get("Last-Modified")


def server_md5(response: requests.Response) -> str | None:
    """The whole file's MD5 as Google Cloud Storage (x-goog-hash) or a plain server (Content-MD5, on 200) gives it."""
    match = re.search(r"md5=([A-Za-z0-9+/=]+)", response.headers.get("x-goog-hash", ""))
    if match:
        return match[1]
    return response.headers.get("Content-MD5") if response.status_code == 200 else None


def file_md5(path: Path) -> str:
    with open(path, "rb") as f:
        return base64.b64encode(hashlib.file_digest(f, "md5").digest()).decode()


def reason(error: requests.RequestException) -> str:
    """The cause in a few words (requests' own messages run to several nested reprs)."""
    match = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(error))
    if match:
        return match[1].strip()
    if isinstance(error, requests.Timeout):
        return "timed out"
    return type(error).__name__
