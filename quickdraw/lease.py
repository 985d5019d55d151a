"""Which driver runs an experiment: one at a time, claimed atomically, renewed while it runs.

A driver that runs or resumes an experiment claims the next generation, `<experiment>/drivers/<n>.json`, by creating
that file only when it does not exist yet: a hard link from a finished temporary file locally (atomic on local file
systems and NFS alike), a conditional PUT (If-None-Match: *) on S3. Of drivers that race for one generation exactly
one creates it, and the others see its claim. The holder rewrites its file every RENEW_S seconds and marks it released
when it ends. A claim is live until it is released or STALE_S seconds without a renewal old, or at once when it names
a process on this host that no longer runs (a SIGKILLed driver).
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field

import psutil

from quickdraw import strict_json
from quickdraw.errors import UserError
from quickdraw.storage import Location, first_line

DRIVERS_DIR = "drivers"
RENEW_S = 10
STALE_S = 60  # six missed renewals; also the clock difference between machines that it tolerates


@dataclass
class Lease:
    """This driver's claim on an experiment; a context manager that renews it while the block runs, then releases."""

    file: Location
    record: dict
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> Lease:
        threading.Thread(target=self._renew, name="quickdraw-lease", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._write(released=True)

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_S):
            self._write()

    @property
    def text(self) -> str:
        return strict_json.dumps(self.record, indent=2) + "\n"

    def _write(self, **changes) -> None:
        self.record = {**self.record, **changes, "renewed": time.time()}
        try:
            self.file.write_text(self.text)
        except OSError:
            pass  # a full disk or a lost bucket: the claim goes stale, which only lets another driver in later


def claim(experiment: Location, advice: str) -> Lease:
    """Claim `experiment` for this driver, or a UserError naming the live driver that holds it, then `advice`."""
    for _ in range(3):
        number, holder = newest(experiment)
        if holder is not None and is_live(holder):
            raise UserError(busy_message(experiment, holder, advice))
        lease = Lease(experiment / DRIVERS_DIR / f"{number + 1:04d}.json", own_record())
        if create_exclusively(lease.file, lease.text) and holds(lease):
            return lease
    raise UserError(f"{experiment}: other drivers keep claiming it; {advice}")


def holds(lease: Lease) -> bool:
    """Whether the claim file is still ours when read back: a second guard where a store's conditional write is not
    (pyarrow's check-then-write on gs://)."""
    try:
        return json.loads(lease.file.read_text()).get("token") == lease.record["token"]
    except (OSError, ValueError, UnicodeDecodeError):
        return False


def newest(experiment: Location) -> tuple[int, dict | None]:
    """The newest claim's generation (0 when there is none) and its record (None when it cannot be read)."""
    claims = [(int(f.name[:-5]), f) for f in (experiment / DRIVERS_DIR).children()
              if f.name.endswith(".json") and f.name[:-5].isdigit()]
    if not claims:
        return 0, None
    number, file = max(claims, key=lambda pair: pair[0])
    try:
        return number, json.loads(file.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return number, None  # a damaged claim (its file is always written whole) holds nothing


def own_record() -> dict:
    me = psutil.Process()
    command = shlex.join([os.path.basename(sys.executable), *sys.argv])
    return {"token": uuid.uuid4().hex, "host": socket.gethostname(), "pid": me.pid, "process_started": me.create_time(),
            "command": command, "claimed": time.time(), "renewed": time.time(), "released": False}


def is_live(record: dict) -> bool:
    if record.get("released"):
        return False
    here = record.get("host") == socket.gethostname()
    if here and not process_runs(record.get("pid"), record.get("process_started")):
        return False
    return time.time() - float(record.get("renewed", 0)) < STALE_S


def process_runs(pid, started) -> bool:
    """Whether the process `pid`, started at `started`, still runs on this host (not another that reuses its pid)."""
    try:
        return abs(psutil.Process(int(pid)).create_time() - float(started)) < 1
    except (psutil.Error, TypeError, ValueError):
        return False


def busy_message(experiment: Location, holder: dict, advice: str) -> str:
    age = max(0, round(time.time() - float(holder.get("renewed", 0))))
    return (f"{experiment} is being run by another driver, pid {holder.get('pid')} on {holder.get('host')} "
            f"(alive {age} s ago): {advice}")


def create_exclusively(file: Location, text: str) -> bool:
    """Create `file` holding `text` only when it does not exist yet: True when this call created it."""
    if file.is_local:
        return link_exclusively(file.path, text.encode())
    if file.filesystem.type_name == "s3":
        return put_if_absent(file, text.encode())
    # Other object stores (gs://) go through pyarrow, which has no conditional write: check, then write.
    if file.exists():
        return False
    file.write_text(text)
    return True


def link_exclusively(path: str, data: bytes) -> bool:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    staged = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        with open(staged, "wb") as f:
            f.write(data)
        os.link(staged, path)  # fails when `path` exists, whoever made it
        return True
    except FileExistsError:
        return False
    finally:
        if os.path.exists(staged):  # also after a full disk cut the write short
            os.unlink(staged)


def put_if_absent(file: Location, data: bytes) -> bool:
    """S3's conditional write: one PUT of many racing for a key succeeds, the others get 412 (or 409 while the first
    is in flight). Through boto3, as pyarrow's S3 filesystem cannot send If-None-Match."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, key = file.path.partition("/")
    try:
        client = boto3.client("s3", region_name=file.filesystem.region)
        client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        return True
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
            return False
        raise UserError(f"{file}: could not claim the experiment ({first_line(e)})") from None
    except BotoCoreError as e:
        raise UserError(f"{file}: could not claim the experiment ({first_line(e)})") from None
