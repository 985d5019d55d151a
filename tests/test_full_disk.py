"""A disk that fills up, and storage that cannot be written, on a real small file system: a size-limited tmpfs mounted
for these tests. Mounting needs root; without it they skip, saying so (pytest -rs in pytest.ini shows the reason)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import pyarrow.fs as pafs
import pytest

from conftest import DOWNLOADED_CLASSES as DOWNLOADED
from conftest import (download, npy_bytes, source_drawings, split_for, SYNTHETIC_CLASSES, run_cli, run_in_process,
                      start_cli, write_class_files)
from experiment_checks import trial_dirs
from http_mirror import Mirror, serve
from quickdraw.experiment import read_results
from quickdraw.storage import Location
from quickdraw.whole_files import tune_filesystem

pytestmark = pytest.mark.slow  # real searches on a full disk

EPOCHS = 4


def mount_tmpfs(folder: Path, size: str) -> Path:
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root: run the tests as root to check full and read-only disks")
    folder.mkdir(parents=True, exist_ok=True)
    # huge=never: where the kernel gives tmpfs huge pages, each small file of a trial takes 2 MiB and the search alone
    # fills 64 MiB (as on CI; ten 3-byte files take 20 MiB of a huge=always tmpfs); it writes about 8 MiB with
    # small pages. A kernel without huge pages refuses the option.
    for options in (f"size={size},huge=never", f"size={size}"):
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                                 capture_output=True, text=True)
        if mounted.returncode == 0:
            break
    if mounted.returncode != 0:
        pytest.skip(f"could not mount a tmpfs ({mounted.stderr.strip()}): these checks need a file system to fill")
    return folder


def unmount(folder: Path) -> None:
    subprocess.run(["umount", "-l", str(folder)], check=True)


def fill(disk: Path) -> Path:
    """Write zeros into the disk until it has no byte left."""
    filler = disk / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 2**16)
                f.flush()
        except OSError:
            pass
    return filler


@pytest.fixture(scope="module")
def disk(tmp_path_factory):
    folder = mount_tmpfs(tmp_path_factory.mktemp("disk") / "mnt", "64m")
    yield folder
    unmount(folder)


@pytest.fixture(scope="module")
def filled_run(disk, tmp_path_factory):
    """A search on the small disk that fills up (another program's file) once its first trial has finished, while
    the other still trains: the driver's output and exit code, and the finished trial's results then."""
    data = write_class_files(tmp_path_factory.mktemp("data"), count=600)
    experiment = disk / "full"
    driver = start_cli("--data-dir", data, "--classes", ",".join(SYNTHETIC_CLASSES), "--split", "1500,150,75",
                       "--lrs", "0.001", "--batch-sizes", "8,512", "--epochs", EPOCHS, "--storage", disk,
                       "--name", experiment.name, "--max-failures", "0")
    finished = {}
    deadline = time.monotonic() + 240
    while not finished:
        assert driver.poll() is None and time.monotonic() < deadline, driver.stdout.read()[-3000:]
        time.sleep(0.2)
        logs = [t / "result.json" for t in trial_dirs(experiment)] if experiment.is_dir() else []
        finished = {log.parent.name: log.read_bytes() for log in logs
                    if log.is_file() and "test_accuracy" in log.read_text()}
    assert shutil.disk_usage(disk).free > 2**20, f"the search alone filled {disk}: {driver.communicate()[0][-3000:]}"
    filler = fill(disk)
    output = driver.communicate(timeout=240)[0]
    return experiment, filler, output, driver.returncode, finished


def test_a_disk_that_fills_up_mid_run_ends_it_with_one_line_naming_the_disk(filled_run, disk):
    experiment, _, output, code, finished = filled_run
    assert code == 2, output[-3000:]
    assert output.strip().splitlines()[-1] == (
        f"tune_search.py: error: the disk that holds {experiment} is full ({disk}: 0.0 MiB of 64 MiB free); free some "
        f"space there, then go on: python tune_search.py resume {experiment}")
    (trial, before), = finished.items()
    assert (experiment / trial / "result.json").read_bytes() == before  # the finished trial is untouched
    assert not list(experiment.rglob("*.tmp-*"))  # our writes leave no partial copies


def test_report_on_the_full_disk_is_one_line_then_lists_every_trial_once_there_is_space(filled_run, disk):
    experiment, filler, _, _, finished = filled_run
    full = run_in_process("report", experiment)
    assert full.returncode == 2 and full.stderr.strip().splitlines()[-1] == (
        f"tune_search.py: error: the disk that holds {experiment} is full ({disk}: 0.0 MiB of 64 MiB free); free some "
        "space there, then run the command again"), full.stderr
    assert not list(experiment.rglob("*.tmp-*"))
    filler.unlink()
    report = run_in_process("report", experiment, "--format", "csv")
    assert report.returncode == 0, report.stderr[-3000:]
    table = pd.read_csv(experiment / "summary.csv")
    assert len(table) == 2  # every trial, from Tune's state or, when the full disk cut it short, from the folders
    (trial,) = finished
    last = json.loads(finished[trial].splitlines()[-1])
    row = table[table.lr.notna() & (table.batch_size == 512)].iloc[0]
    assert row.status == "finished" and row.test_accuracy == round(100 * last["test_accuracy"], 2)
    assert row.epochs == EPOCHS


def test_resume_once_there_is_space_finishes_or_names_what_the_full_disk_damaged(filled_run):
    """Ray Tune writes its experiment state in place and copies its search algorithm's state, so a full disk may cut
    either short (Ray's, not ours to fix): then resume names the file in one line; otherwise the unfinished trial goes
    on from its checkpoint."""
    experiment, filler, _, _, finished = filled_run
    filler.unlink(missing_ok=True)
    resumed = run_cli("resume", experiment, timeout=300)
    if resumed.returncode == 2:
        (line,) = resumed.stderr.strip().splitlines()
        assert " is damaged (" in line and f"python tune_search.py report {experiment}` still lists" in line
        return
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for trial in trial_dirs(experiment):
        # The cut trial's result.json has a line cut short, which its next result continued: read past it.
        last = read_results(Location.parse(str(trial)))[-1]
        assert last["epoch"] == EPOCHS and "test_accuracy" in last


def test_report_and_convert_on_read_only_storage_are_one_line(filled_run, disk, tmp_path):
    experiment = filled_run[0]
    before = {p: p.read_bytes() for p in experiment.rglob("*") if p.is_file()}
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    try:
        report = run_in_process("report", experiment)
        converted = run_in_process("convert", "--data-dir", write_class_files(tmp_path / "data"), "--classes",
                            ",".join(SYNTHETIC_CLASSES), "--split", "300,60,30", "--storage", disk)
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)
    assert report.returncode == 2 and report.stderr.strip().splitlines()[-1] == (
        f"tune_search.py: error: report {experiment}: the folder cannot be written (Read-only file system), and the "
        "report's files go into it: copy the folder somewhere writable and report on the copy"), report.stderr
    assert converted.returncode == 2 and converted.stderr.startswith(
        f"tune_search.py: error: --storage {disk} cannot be written: ") and "Read-only file system" in converted.stderr
    assert len(converted.stderr.splitlines()) == 1
    assert {p: p.read_bytes() for p in experiment.rglob("*") if p.is_file()} == before


def test_download_onto_a_full_disk_is_one_line_naming_it_and_leaves_no_partial_file(tmp_path):
    """Room for the download (the header and the rows the split needs) but not for the file made of its rows."""
    data = mount_tmpfs(tmp_path / "data", "160k")
    mirror = Mirror({f"{name}.npy": npy_bytes(source_drawings(name)) for name in DOWNLOADED})
    server = serve(mirror)
    try:
        result = download(mirror, data, classes=("cat",), split=split_for(("cat",)))
    finally:
        server.shutdown()
        files = sorted(p.name for p in data.iterdir())
        unmount(data)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"tune_search.py: error: {data / 'cat.npy'} cannot be written: the disk that holds "
                           f"{data / 'cat.npy'} is full ({data}: ") and line.endswith(
        "free some space there, then run the command again"), line
    assert not [name for name in files if name.endswith(".tmp")], files  # the download itself stays, to go on from


def test_a_copy_that_fills_the_disk_leaves_the_file_it_replaces_and_no_staged_file(tmp_path):
    """Ray Tune's sync onto a full disk, through its local storage (quickdraw.whole_files): the copy fails with the
    disk's error, and the experiment state it was replacing stays whole."""
    disk = mount_tmpfs(tmp_path / "small", "1m")
    try:
        (disk / "experiment_state-1.json").write_bytes(b"{}" * 1000)
        (tmp_path / "staging").mkdir()
        (tmp_path / "staging" / "experiment_state-1.json").write_bytes(b"[]" * 2**20)  # 2 MiB, on the large disk
        with pytest.raises(OSError, match="No space left on device"):
            pafs.copy_files(str(tmp_path / "staging"), str(disk), destination_filesystem=tune_filesystem(True))
        files = {p.name: p.read_bytes() for p in disk.iterdir()}
    finally:
        unmount(disk)
    assert files == {"experiment_state-1.json": b"{}" * 1000}
