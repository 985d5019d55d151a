"""Shared test helpers and fixtures: synthetic class files, the real drawings, running the command as a user would,
the finished experiment that the tests which only read results share, a loopback HTTP mirror and S3 server, and a
real browser (Debian's Chromium driven by Playwright) for what only a browser shows.

Markers (pytest.ini): `slow` marks tests that run a real search, start the command as its own process or compile with
Inductor; `browser` those that drive Chromium. `python -m pytest -q -m "not slow"` is the fast tier."""

from __future__ import annotations

import os

# Settings of every test process and of the processes it starts, set before numpy, torch and Ray read them.
# - One OpenMP thread per test process: the suite runs two (pytest.ini: -n 2), one a core, and each starts commands
#   and Ray workers of its own; OpenMP's threads of two processes that each take every core wait on each other. A
#   trial still sets its own threads from its CPUs (quickdraw.trainable).
# - The suite joins no Ray it did not start (issue 28): not RAY_ADDRESS's from the shell, and none through a Ray
#   started implicitly (Ray's on a first ray.get or ray.put, Tune's in fit), which joins the cluster `ray start` last
#   started on this machine.
# - Ray starts no idle workers ahead of need: by default it starts one a CPU when a driver connects, which a trial's
#   actor mostly does not take (a run of the suite ended some fifty of them unused, at half a CPU-second each).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.pop("RAY_ADDRESS", None)
os.environ.update(RAY_ENABLE_AUTO_CONNECT="0", TUNE_DISABLE_AUTO_INIT="1", RAY_prestart_worker_first_driver="0")

import collections
import contextlib
import io
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from filelock import FileLock

from http_mirror import Mirror, serve
from ray_cluster import free_port

REPO = Path(__file__).resolve().parents[1]

SHARED_DRAWINGS = Path(os.environ.get("QUICKDRAW_DATA", REPO.parent / "shared" / "quickdraw"))
SHARED_CLASSES = ("apple", "bicycle", "cat", "diamond", "eye", "fish")
SYNTHETIC_CLASSES = ("circle", "line", "hot dog")


SEARCH_FIXTURES = {"grid_experiment", "real_experiment"}  # each runs a real search the first time a test needs it


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(items):
    """A test that needs a search fixture is slow, as the marker says. Then the files with the most slow tests first,
    each file's tests in their own order. pytest-xdist hands a worker a whole file at a time (pytest.ini: --dist
    loadfile, in this order: --no-loadscope-reorder); by default it starts the files with the most tests first, which
    leaves the few long searches of a file such as test_benchmarks.py to the end, one core idle beside them."""
    for item in items:
        if SEARCH_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)
    slow = collections.Counter(item.path for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.path])  # stable



def synthetic_drawings(label: int, count: int, seed: int = 0) -> np.ndarray:
    """(count, 784) uint8 drawings a small CNN can tell apart: class `label` lights its own band of
    rows, on noise. Every drawing is unique (its index is written into the first four pixels),
    so tests can check that splits never share a drawing."""
    rng = np.random.default_rng([seed, label])
    images = rng.integers(0, 60, size=(count, 28, 28), dtype=np.uint8)
    band = slice(4 + 7 * label, 8 + 7 * label)
    images[:, band, 4:24] = 255
    index = np.arange(count, dtype=np.uint32).view(np.uint8).reshape(count, 4)
    images.reshape(count, 784)[:, :4] = index
    return images.reshape(count, 784)


def synthetic_tensors(count: int, seed: int):
    """`count` synthetic drawings of each of three classes as a trial holds them: (N, 1, 28, 28) uint8, labels."""
    import torch

    drawings = [torch.from_numpy(synthetic_drawings(label, count, seed)) for label in range(3)]
    return torch.cat(drawings).reshape(-1, 1, 28, 28), torch.arange(3).repeat_interleave(count)


def write_class_files(folder: Path, classes=SYNTHETIC_CLASSES, count: int = 200) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for label, name in enumerate(classes):
        np.save(folder / f"{name}.npy", synthetic_drawings(label, count))
    return folder


def write_confusable_class_files(folder: Path, count: int = 200, exist_ok: bool = False) -> Path:
    """Synthetic class files in which every fifth drawing looks like the next class: no model gets them all
    right, so accuracies are not simply 100%."""
    folder.mkdir(parents=True, exist_ok=exist_ok)
    for label, name in enumerate(SYNTHETIC_CLASSES):
        drawings = synthetic_drawings(label, count)
        drawings[::5] = synthetic_drawings((label + 1) % len(SYNTHETIC_CLASSES), count, seed=1)[::5]
        np.save(folder / f"{name}.npy", drawings)
    return folder


@pytest.fixture
def synthetic_data(tmp_path) -> Path:
    return write_class_files(tmp_path / "data")


def cli_command(*args, python_flags: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, *python_flags, "tune_search.py", *map(str, args)]


def run_cli(*args, timeout: int = 300, env: dict | None = None, python_flags: tuple[str, ...] = ()
            ) -> subprocess.CompletedProcess:
    """`python tune_search.py ARGS` from the repository root, as the README runs it."""
    return subprocess.run(cli_command(*args, python_flags=python_flags), cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)


def run_in_process(*args) -> subprocess.CompletedProcess:
    """The command through the same `main` that tune_search.py calls, in this process: the same output and exit
    code, without starting Python and importing the package again (for commands that end before Ray starts)."""
    from quickdraw.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(arg) for arg in args])
        except SystemExit as exited:  # argparse's errors and --help
            code = exited.code
    return subprocess.CompletedProcess(["tune_search.py", *map(str, args)], code, out.getvalue(), err.getvalue())


def imported_modules(*args) -> tuple[subprocess.CompletedProcess, set[str]]:
    """`python -X importtime tune_search.py ARGS`, and every module it imported (from importtime's lines)."""
    result = run_cli(*args, python_flags=("-X", "importtime"))
    lines = [line for line in result.stderr.splitlines() if line.startswith("import time:")]
    return result, {line.rsplit("|", 1)[1].strip() for line in lines[1:]}  # the first line is importtime's header


def is_ray(module: str) -> bool:
    return module == "ray" or module.startswith("ray.")


def start_cli(*args, env: dict | None = None) -> subprocess.Popen:
    """The command started in the background, its output (stdout and stderr together) kept for asserts.

    Ctrl-C (SIGINT) reaches it as it reaches a command in a terminal, even when pytest itself was started
    in the background, which leaves SIGINT ignored in every process it starts and Python without its handler."""
    return subprocess.Popen(
        cli_command(*args), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


needs_shared_drawings = pytest.mark.skipif(
    not all((SHARED_DRAWINGS / f"{c}.npy").is_file() for c in SHARED_CLASSES),
    reason=f"real drawings not found in {SHARED_DRAWINGS} (set QUICKDRAW_DATA)",
)


CHROMIUM = Path(os.environ.get("QUICKDRAW_CHROMIUM", "/usr/bin/chromium"))
INSTALL_CHROMIUM = "apt-get install -y chromium"


@pytest.fixture(scope="session")
def browser():
    """Chromium, headless, through Playwright. Without it the browser tests skip, saying how to install it, unless
    QUICKDRAW_REQUIRE_BROWSER=1 (as .ci/run sets): CI never skips them silently."""
    if not CHROMIUM.is_file():
        message = f"no Chromium at {CHROMIUM}: install it with `{INSTALL_CHROMIUM}` (as root) to run the browser tests"
        if os.environ.get("QUICKDRAW_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield chromium
        chromium.close()


# --- the finished experiment that tests which only read results share ------------------------------------------------

# lr 3e-5 stays near chance, lr 0.01 learns all but the confusable fifth: validation and test accuracy differ between
# trials, mostly with the learning rate, so there is a best trial to choose and something for What mattered to
# explain; in four epochs lr 0.01 has an epoch that does not improve before its last, so no checkpoint there.
GRID = SimpleNamespace(lrs=(0.01, 0.00003), batch_sizes=(16, 32), epochs=4, split="300,60,60", name="grid")


def grid_flags(data: Path, storage: Path, name: str = GRID.name) -> list:
    return ["--data-dir", data, "--classes", ",".join(SYNTHETIC_CLASSES), "--split", GRID.split,
            "--lrs", ",".join(map(str, GRID.lrs)), "--batch-sizes", ",".join(map(str, GRID.batch_sizes)),
            "--epochs", GRID.epochs, "--storage", storage, "--name", name]


def shared_folder(tmp_path_factory) -> Path:
    """A folder every test process of the session sees: pytest-xdist's workers each have a base temp of their own,
    beside one another."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def grid_experiment(tmp_path_factory) -> Path:
    """One finished grid of GRID's learning rates x batch sizes on confusable synthetic drawings, run once per session
    as users run it, by two drivers started together with the same --name: one runs the search, the other is refused
    (their exit codes and output are in `grid_drivers`). The first test process to need it runs it; the others wait
    and read it. Read it only: a test that changes it works on `copy_experiment`'s copy."""
    root = shared_folder(tmp_path_factory) / "shared-grid"
    root.mkdir(exist_ok=True)
    with FileLock(root / "lock"):
        if not (root / "drivers.json").exists():
            shutil.rmtree(root / "results", ignore_errors=True)
            data = write_confusable_class_files(root / "data", exist_ok=True)
            drivers = [start_cli(*grid_flags(data, root / "results")) for _ in range(2)]
            outcomes = [(driver.communicate(timeout=600)[0], driver.returncode) for driver in drivers]
            assert 0 in [code for _, code in outcomes], outcomes
            (root / "drivers.json").write_text(json.dumps(outcomes))
    return root / "results" / GRID.name


def grid_drivers(experiment: Path) -> list[tuple[str, int]]:
    """The output (stdout and stderr) and exit code of the two drivers that ran `grid_experiment`, in no order."""
    return [tuple(outcome) for outcome in json.loads((experiment.parent.parent / "drivers.json").read_text())]


def copy_experiment(experiment: Path, target: Path) -> Path:
    """A copy of an experiment folder to change; its search.json still names the original's split."""
    shutil.copytree(experiment, target / experiment.name)
    return target / experiment.name


# The search on real drawings that test_real_drawings checks and test_play draws with: the seed's proportions, smaller.
REAL = SimpleNamespace(lrs=(0.001,), batch_sizes=(64, 128), epochs=2, split="6000,1200,600", name="real")


@pytest.fixture(scope="session")
def real_experiment(tmp_path_factory) -> Path:
    """One finished search on the six real classes of ../shared/quickdraw, which it fetches as a new user's run does:
    from a mirror over HTTP (a real server on loopback), first rows only, into the data folder beside the results. Run
    once per session, as `grid_experiment` is; read it only."""
    if not all((SHARED_DRAWINGS / f"{c}.npy").is_file() for c in SHARED_CLASSES):
        pytest.skip(f"real drawings not found in {SHARED_DRAWINGS} (set QUICKDRAW_DATA)")
    root = shared_folder(tmp_path_factory) / "shared-real"
    root.mkdir(exist_ok=True)
    with FileLock(root / "lock"):
        if not (root / "done").exists():
            for folder in ("data", "results"):
                shutil.rmtree(root / folder, ignore_errors=True)
            mirror = Mirror({f"{name}.npy": (SHARED_DRAWINGS / f"{name}.npy").read_bytes() for name in SHARED_CLASSES})
            server = serve(mirror)
            try:
                result = run_cli("--data-dir", root / "data", "--base-url", mirror.base_url,
                                 "--classes", ",".join(SHARED_CLASSES), "--split", REAL.split,
                                 "--lrs", ",".join(map(str, REAL.lrs)),
                                 "--batch-sizes", ",".join(map(str, REAL.batch_sizes)), "--epochs", REAL.epochs,
                                 "--storage", root / "results", "--name", REAL.name)
            finally:
                server.shutdown()
            assert result.returncode == 0, result.stderr[-3000:]
            (root / "done").touch()
    return root / "results" / REAL.name


# --- a loopback HTTP mirror of Google's files ------------------------------------------------------------------------

DOWNLOADED_CLASSES = ("cat", "hot dog")  # "hot dog" travels as hot%20dog.npy


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def source_drawings(name: str) -> np.ndarray:
    real = SHARED_DRAWINGS / f"{name}.npy"
    return np.load(real) if real.is_file() else synthetic_drawings(len(name), 2500)


@pytest.fixture
def mirror():
    mirror = Mirror({f"{name}.npy": npy_bytes(source_drawings(name)) for name in DOWNLOADED_CLASSES})
    server = serve(mirror)
    yield mirror
    server.shutdown()


def split_for(classes, per_class=(100, 20, 10)) -> str:
    """The --split that takes `per_class` drawings (130 in all) of each class."""
    return ",".join(str(count * len(classes)) for count in per_class)


def download(mirror: Mirror, data: Path, *flags, classes=DOWNLOADED_CLASSES, split=None):
    split = split or split_for(classes)
    return run_cli("download", "--data-dir", data, "--classes", ",".join(classes), "--split", split,
                   "--base-url", mirror.base_url, *flags, timeout=120)


# --- an S3-compatible server on loopback (moto's server mode) --------------------------------------------------------

BUCKET = "quickdraw-results"


@pytest.fixture(scope="session")
def s3_env(tmp_path_factory):
    """The environment of a process that stores in s3://BUCKET on a moto server of this session."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=log, stderr=subprocess.STDOUT)
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    try:
        client = s3_client(env)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.create_bucket(Bucket=BUCKET)
                break
            except Exception:
                assert time.monotonic() < deadline and server.poll() is None, "moto server did not start"
                time.sleep(0.3)
        yield env
    finally:
        server.kill()
        server.wait()
        log.close()


def s3_client(env):
    import boto3

    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_DEFAULT_REGION"],
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def s3_keys(env, prefix: str) -> set[str]:
    pages = s3_client(env).get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {item["Key"] for page in pages for item in page.get("Contents", [])}


def copy_from_bucket(env, prefix: str, target: Path) -> Path:
    """The bucket's folder `prefix` copied to the local folder `target`, through pyarrow's S3 file system."""
    import pyarrow.fs as pafs

    s3 = pafs.S3FileSystem(endpoint_override=env["AWS_ENDPOINT_URL"], access_key="testing", secret_key="testing",
                           region=env["AWS_DEFAULT_REGION"])
    pafs.copy_files(f"{BUCKET}/{prefix}", str(target), source_filesystem=s3,
                    destination_filesystem=pafs.LocalFileSystem())
    return target
