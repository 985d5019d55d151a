"""Faults of the storage a search keeps its files in, each one line, exit code 2 and the command that goes on: an S3
store out of reach, going away or restarted empty while a search runs, files deleted under it (a real moto server on
loopback, stopped to make it go away); one endpoint for every request; and damaged or foreign drivers' claims."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import weakref
from pathlib import Path

import pytest

from conftest import SYNTHETIC_CLASSES, copy_experiment, run_in_process, write_class_files
from quickdraw.errors import UserError
from quickdraw.lease import DRIVERS_DIR, claim
from quickdraw.storage import Location
from quickdraw.trainable import unraisable_except_exit
from ray_cluster import free_port

BUCKET = "faults"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


class Store:
    """A moto server on loopback: started, stopped (the store going away) and started again empty, as a restarted
    store without its data is."""

    def __init__(self, log: Path):
        self.port, self.log, self.process = free_port(), log, None
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}

    def start(self, bucket: bool = True) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                        stdout=self.log.open("a"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.client().list_buckets()
                break
            except Exception:
                assert time.monotonic() < deadline and self.process.poll() is None, "moto server did not start"
                time.sleep(0.2)
        if bucket:
            self.client().create_bucket(Bucket=BUCKET)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1", aws_access_key_id="testing",
                            aws_secret_access_key="testing")

    def keys(self, prefix: str) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One moto server for the module; a test that stops it starts it again (empty) when it is done."""
    store = Store(tmp_path_factory.mktemp("moto") / "moto.log")
    store.start()
    yield store
    store.stop()


@pytest.fixture
def in_process_env(monkeypatch, store):
    for name, value in {**CREDENTIALS, "AWS_ENDPOINT_URL": store.endpoint}.items():
        monkeypatch.setenv(name, value)
    return store


def nothing_listens() -> str:
    return f"http://127.0.0.1:{free_port()}"


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr and len(lines) == 1, stderr[-3000:]
    return lines[0]


# --- an endpoint out of reach -----------------------------------------------------------------------------------------

@pytest.mark.slow  # pyarrow retries a request for 6 s before it gives up
@pytest.mark.parametrize("command", ["report", "predict", "resume", "play"])
def test_a_store_out_of_reach_is_one_line_naming_it(monkeypatch, tmp_path, command):
    endpoint = nothing_listens()
    for name, value in {**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(name, value)
    experiment = f"s3://{BUCKET}/runs/exp"
    drawing = tmp_path / "drawing.npy"
    result = run_in_process(command, experiment, *([drawing] if command == "predict" else []))
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    assert line.startswith(f"tune_search.py: error: the storage {experiment} cannot be reached at {endpoint} ("), line
    assert "check that the store runs and that AWS_ENDPOINT_URL names it" in line
    then = f"go on: python tune_search.py resume {experiment}" if command == "resume" else "run the command again"
    assert line.endswith(f", then {then}"), line


def test_files_deleted_under_an_experiment_are_named_as_deleted_not_as_a_bug(in_process_env):
    """What a command that read or wrote a file someone deleted under the experiment while it ran is told (the files
    left stay as they are: nothing here deletes)."""
    experiment = Location.parse(f"s3://{BUCKET}/deleted/exp")
    (experiment / "summary.csv").write_text("kept\n")
    gone = FileNotFoundError(2, "Path does not exist", f"{BUCKET}/deleted/exp/search.json")
    fault = experiment.fault(gone)
    assert fault.kind == "deleted"
    assert str(fault) == (f"{BUCKET}/deleted/exp/search.json was deleted from the storage while the command ran; leave "
                          f"{experiment} to the command while it runs")
    assert experiment.fault(ValueError("a bug")) is None  # the store answers and the experiment is there
    assert (experiment / "summary.csv").read_text() == "kept\n"


# --- one endpoint for every request -----------------------------------------------------------------------------------

def test_an_endpoint_in_the_uri_takes_every_request_there_the_claim_too(monkeypatch, store):
    """Before, boto3 sent the claim to AWS_ENDPOINT_URL (or AWS itself), not to the URI's endpoint_override, and the
    experiment's URI had its name appended after the query string."""
    for name, value in {**CREDENTIALS, "AWS_ENDPOINT_URL": nothing_listens()}.items():
        monkeypatch.setenv(name, value)
    query = f"endpoint_override=127.0.0.1:{store.port}&scheme=http"
    storage = Location.parse(f"s3://{BUCKET}/uri/runs?{query}")
    experiment = storage / "exp"
    assert experiment.uri == f"s3://{BUCKET}/uri/runs/exp?{query}"
    assert experiment.endpoint == store.endpoint and Location.parse(experiment.uri).path == f"{BUCKET}/uri/runs/exp"
    with claim(experiment, "wait") as lease:
        assert lease.file.uri == f"s3://{BUCKET}/uri/runs/exp/{DRIVERS_DIR}/0001.json?{query}"
        assert store.keys("uri/") == [f"uri/runs/exp/{DRIVERS_DIR}/0001.json"]
    assert json.loads(lease.file.read_text())["released"] is True


# --- drivers' claims --------------------------------------------------------------------------------------------------

DAMAGED = {
    "renewed as text": '{"host": "elsewhere", "pid": 1, "renewed": "soon", "released": false}',
    "renewed null": '{"host": "elsewhere", "pid": 1, "renewed": null, "released": false}',
    "renewed 1e999": '{"host": "elsewhere", "pid": 1, "renewed": 1e999, "released": false}',
    "renewed true": '{"host": "elsewhere", "pid": 1, "renewed": true, "released": false}',
    "a list": '[{"host": "elsewhere", "pid": 1, "renewed": 0}]',
}


@pytest.mark.parametrize("damage", DAMAGED)
def test_a_damaged_claim_holds_nothing(tmp_path, damage):
    (tmp_path / DRIVERS_DIR).mkdir()
    (tmp_path / DRIVERS_DIR / "0001.json").write_text(DAMAGED[damage])
    with claim(Location.parse(str(tmp_path)), "wait") as lease:
        assert lease.file.name == "0002.json"


def test_a_claim_named_with_other_digits_is_not_a_claim(tmp_path):
    (tmp_path / DRIVERS_DIR).mkdir()
    (tmp_path / DRIVERS_DIR / "².json").write_text(json.dumps({"renewed": time.time(), "host": "elsewhere"}))
    with claim(Location.parse(str(tmp_path)), "wait") as lease:
        assert lease.file.name == "0001.json"
    assert (tmp_path / DRIVERS_DIR / "².json").exists()  # someone's file: left as it was


def test_drivers_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / DRIVERS_DIR).write_text("not a folder")
    with pytest.raises(UserError) as refused:
        claim(Location.parse(str(tmp_path)), "wait")
    assert str(refused.value) == (f"{tmp_path / DRIVERS_DIR} is not a folder, and drivers' claims go there: move it "
                                  "away, then run the command again")
    assert (tmp_path / DRIVERS_DIR).read_text() == "not a folder"


@contextlib.contextmanager
def unwritable(folder: Path):
    """`folder` that nobody, root included, can create files in: immutable (chattr +i) as root, read-only otherwise."""
    root = os.geteuid() == 0
    if root and shutil.which("chattr") is None:
        pytest.skip("root writes anywhere, and chattr is not installed to make a folder immutable")
    subprocess.run(["chattr", "+i", str(folder)], check=True) if root else folder.chmod(0o555)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True) if root else folder.chmod(0o755)


def test_drivers_that_cannot_be_written_is_one_line(tmp_path):
    (tmp_path / DRIVERS_DIR).mkdir()
    with unwritable(tmp_path / DRIVERS_DIR), pytest.raises(UserError) as refused:
        claim(Location.parse(str(tmp_path)), "wait")
    assert str(refused.value).startswith(f"{tmp_path / DRIVERS_DIR} cannot be written (")
    assert str(refused.value).endswith("make it writable, or copy the experiment somewhere writable")
    assert os.listdir(tmp_path / DRIVERS_DIR) == []


def foreign_claim_a_day_ahead(experiment: Path) -> Path:
    (experiment / DRIVERS_DIR).mkdir(exist_ok=True)
    file = experiment / DRIVERS_DIR / "0007.json"
    file.write_text(json.dumps({"host": "elsewhere", "pid": 4242, "process_started": 0, "released": False,
                                "renewed": time.time() + 86400}))
    return file


def test_a_claim_dated_a_day_ahead_says_the_clocks_disagree_and_how_to_take_it_over(tmp_path):
    file = foreign_claim_a_day_ahead(tmp_path)
    with pytest.raises(UserError) as refused:
        claim(Location.parse(str(tmp_path)), "wait")
    message = str(refused.value)
    assert message.startswith(f"{tmp_path} is being run by another driver, pid 4242 on elsewhere, whose claim is "
                              "dated 8640"), message
    assert message.endswith(f" s ahead of this machine's clock (the two clocks disagree); if you know that driver has "
                            f"stopped, delete {file} to take the experiment over, then run the command again")
    file.unlink()  # as the message says
    with claim(Location.parse(str(tmp_path)), "wait") as lease:
        assert lease.file.name == "0001.json"


@pytest.mark.slow  # imports Ray and torch, as resume does
def test_resume_refused_by_a_claim_from_ahead_is_one_line(grid_experiment, tmp_path):
    experiment = copy_experiment(grid_experiment, tmp_path)
    file = foreign_claim_a_day_ahead(experiment)
    result = run_in_process("resume", experiment)
    assert result.returncode == 2
    assert f"delete {file} to take the experiment over" in one_error_line(result.stderr)
    assert json.loads(file.read_text())["pid"] == 4242


# --- a store that goes away while a search runs (real searches: slow) -------------------------------------------------

def start_search(store: Store, data: Path, name: str) -> subprocess.Popen:
    """The smallest search: one trial of one epoch on a few synthetic drawings, stored in the store's bucket."""
    return subprocess.Popen(
        [sys.executable, "tune_search.py", "--data-dir", str(data), "--classes", ",".join(SYNTHETIC_CLASSES),
         "--split", "30,6,6", "--epochs", "1", "--lrs", "0.01", "--batch-sizes", "16",
         "--storage", f"s3://{BUCKET}/runs", "--name", name],
        cwd=Path(__file__).resolve().parents[1], env=store.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)


def when_stored(store: Store, search: subprocess.Popen, prefix: str, ending: str) -> list[str]:
    """Wait until a key under `prefix` ends with `ending`; every key then."""
    deadline = time.monotonic() + 240
    while True:
        keys = store.keys(prefix)
        if any(key.endswith(ending) for key in keys):
            return keys
        assert search.poll() is None and time.monotonic() < deadline, search.communicate()
        time.sleep(0.1)


@pytest.fixture
def data(tmp_path) -> Path:
    return write_class_files(tmp_path / "data", count=20)


@pytest.mark.slow
def test_a_store_that_goes_away_as_the_trial_ends_ends_the_search_in_one_line_that_resumes(store, data):
    search = start_search(store, data, "gone")
    when_stored(store, search, "runs/gone/", "predictions.npz")  # the trial has finished
    store.stop()
    try:
        _, stderr = search.communicate(timeout=300)
    finally:
        store.start()
    assert search.returncode == 2, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"tune_search.py: error: the storage s3://{BUCKET}/runs/gone cannot be reached at "
                           f"{store.endpoint} ("), last
    assert last.endswith(f", then go on: python tune_search.py resume s3://{BUCKET}/runs/gone"), last


def test_a_trial_process_that_ray_ends_prints_no_traceback(monkeypatch, capsys):
    """As the store went away above, the driver ended Ray and Ray its trial processes: SIGTERM, whose handler raises
    SystemExit. Landing in a garbage collector's callback, that exit cannot be raised, and Python printed it with a
    traceback, which Ray forwarded under the command's one line. A trial process's hook leaves it out; any other
    exception that cannot be raised is printed, as by default."""
    monkeypatch.setattr(sys, "unraisablehook", unraisable_except_exit)
    for exception in (SystemExit(1), ValueError("a fault of the trial")):
        def callback(_, exception=exception):
            raise exception

        ref = weakref.ref(Dropped(), callback)  # the object is dropped at once: Python calls back while the ref lives
        del ref
    printed = capsys.readouterr().err
    assert "SystemExit" not in printed and "ValueError: a fault of the trial" in printed, printed


class Dropped:
    pass


@pytest.mark.slow
def test_a_store_restarted_without_its_bucket_ends_the_search_in_one_line(store, data):
    search = start_search(store, data, "empty")
    when_stored(store, search, "runs/empty/", "trial_state.pt")  # the trial's first checkpoint
    store.stop()
    store.start(bucket=False)
    try:
        _, stderr = search.communicate(timeout=300)
    finally:
        store.client().create_bucket(Bucket=BUCKET)
    assert search.returncode == 2, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last == (f"tune_search.py: error: the storage s3://{BUCKET}/runs/empty is gone: there is no bucket {BUCKET} "
                    f"at {store.endpoint} any more (was the store restarted without its data?); check the URI and "
                    "AWS_ENDPOINT_URL; the search's files went with it: run the same command again to start it over")
    assert "No experiment snapshot file" not in stderr
