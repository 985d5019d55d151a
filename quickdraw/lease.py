"""Which driver runs an experiment: one at a time, claimed atomically, renewed while it runs.

A driver that runs or resumes an experiment claims the next generation, `<experiment>/drivers/<n>.json`, by creating
that file only when it does not exist yet: a hard link from a finished temporary file locally (atomic on local file
systems and NFS alike), a conditional PUT (If-None-Match: *) on S3. Of drivers that race for one generation exactly
one creates it, and the others see its claim. The holder rewrites its file every RENEW_S seconds and marks it released
when it ends. A claim is live until it is released or STALE_S seconds without a renewal old, or at once when it names
a process on this host that no longer runs (a SIGKILLed driver). A damaged claim (not a JSON object with a finite
"renewed" time) holds nothing. A claim whose driver is known to be dead is taken over by deleting its file.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
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
from quickdraw.storage import Location, first_line, s3_client

DRIVERS_DIR = "drivers"
RENEW_S = 10
STALE_S = 60  # six missed renewals; also the clock difference between machines that it tolerates
CLAIM_NAME = re.compile(r"([0-9]+)\.json")  # ASCII digits only: int() also reads "²" or "١"


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
    drivers = experiment / DRIVERS_DIR
    if drivers.exists() and not drivers.is_dir():
        raise UserError(f"{drivers} is not a folder, and drivers' claims go there: move it away, then run the command "
                        "again")
    for _ in range(3):
        number, file, holder = newest(experiment)
        if holder is not None and is_live(holder):
            raise UserError(busy_message(file, holder, advice))
        lease = Lease(drivers / f"{number + 1:04d}.json", own_record())
        try:
            created = create_exclusively(lease.file, lease.text)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise  # a full disk: the command line names it
            raise UserError(f"{drivers} cannot be written ({e.strerror}), and this driver claims the experiment "
                            "there: make it writable, or copy the experiment somewhere writable") from None
        if created and holds(lease):
            return lease
    raise UserError(f"{experiment}: other drivers keep claiming it; {advice}")


def holds(lease: Lease) -> bool:
    """Whether the claim file is still ours when read back: a second guard where a store's conditional write is not
    (pyarrow's check-then-write on gs://)."""
    try:
        record = json.loads(lease.file.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(record, dict) and record.get("token") == lease.record["token"]


def newest(experiment: Location) -> tuple[int, Location | None, dict | None]:
    """The newest claim's generation (0 when there is none), its file and its record (None when it cannot be read)."""
    claims = [(int(named.group(1)), f) for f in (experiment / DRIVERS_DIR).children()
              if (named := CLAIM_NAME.fullmatch(f.name))]
    if not claims:
        return 0, None, None
    number, file = max(claims, key=lambda pair: pair[0])
    try:
        record = json.loads(file.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return number, file, None  # a damaged claim (its file is always written whole) holds nothing
    return number, file, record if is_claim(record) else None


def is_claim(record) -> bool:
    """Whether a claim file's JSON is a claim: an object whose "renewed" is a finite time."""
    renewed = record.get("renewed") if isinstance(record, dict) else None
    return isinstance(renewed, (int, float)) and not isinstance(renewed, bool) and math.isfinite(renewed)


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
    return time.time() - record["renewed"] < STALE_S


def process_runs(pid, started) -> bool:
    """Whether the process `pid`, started at `started`, still runs on this host (not another that reuses its pid)."""
    try:
        return abs(psutil.Process(int(pid)).create_time() - float(started)) < 1
    except (psutil.Error, TypeError, ValueError):
        return False


def busy_message(file: Location, holder: dict, advice: str) -> str:
    """Who holds the claim in `file`, then `advice`; for a claim dated ahead of this machine's clock by more than
    STALE_S, which would hold until this clock catches up, that the clocks disagree and how to take it over."""
    experiment = file.parent.parent
    driver = f"{experiment} is being run by another driver, pid {holder.get('pid')} on {holder.get('host')}"
    age = round(time.time() - holder["renewed"])
    if age >= -STALE_S:
        return f"{driver} (alive {max(0, age)} s ago): {advice}"
    return (f"{driver}, whose claim is dated {-age} s ahead of this machine's clock (the two clocks disagree); if "
            f"you know that driver has stopped, delete {file} to take the experiment over, then run the command again")


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
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, key = file.path.partition("/")
    try:
        client = s3_client(file)
        client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        return True
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
            return False
        raise UserError(f"{file}: could not claim the experiment ({first_line(e)})") from None
    except BotoCoreError as e:
        raise UserError(f"{file}: could not claim the experiment ({first_line(e)})") from None
