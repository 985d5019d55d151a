"""Ray Tune's storage for local folders (quickdraw.whole_files): a process killed mid-write, as a driver is during one of
Tune's syncs, leaves each file as it was or whole, never cut short; Tune's own folder copy goes through it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from conftest import REPO
from quickdraw.whole_files import remove_staged_files, tune_filesystem

OLD, NEW = b'{"epoch": 1}\n' * 1000, b'{"epoch": 2}\n' * 2000

WRITER = """
import sys, time
import pyarrow.fs as pafs
from quickdraw.whole_files import tune_filesystem
path, new, whole_files, ready = sys.argv[1], sys.argv[2].encode(), sys.argv[3] == "1", sys.argv[4]
fs = tune_filesystem(True) if whole_files else pafs.LocalFileSystem()
with fs.open_output_stream(path) as stream:
    stream.write(new[: len(new) // 2])
    stream.flush()
    open(ready, "w").close()
    time.sleep(600)
"""


def kill_mid_write(path: Path, whole_files: bool) -> None:
    """A process writes NEW over `path` through the filesystem, and is SIGKILLed halfway through."""
    ready = path.with_name("halfway")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), NEW.decode(), str(int(whole_files)),
                               str(ready)], cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert writer.poll() is None and time.monotonic() < deadline, "the writer never got halfway"
            time.sleep(0.05)
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    finally:
        writer.kill()
    ready.unlink()


@pytest.mark.parametrize("whole_files", [False, True], ids=["pyarrow-local", "whole-files"])
def test_a_write_killed_halfway_leaves_the_file_as_it_was_only_through_whole_files(tmp_path, whole_files):
    result = tmp_path / "result.json"
    result.write_bytes(OLD)
    kill_mid_write(result, whole_files)
    if not whole_files:  # what Tune's sync does to local storage by itself: the file cut short
        assert result.read_bytes() == NEW[: len(NEW) // 2]
        return
    assert result.read_bytes() == OLD
    (staged,) = [p for p in tmp_path.iterdir() if p != result]  # the killed write's, hidden, never read for result.json
    assert staged.name.startswith(".result.json.tmp-") and staged.read_bytes() == NEW[: len(NEW) // 2]


def test_tunes_folder_copy_through_whole_files_replaces_each_file_and_leaves_no_staged_file(tmp_path):
    """What a Tune sync does: the driver's staging folder copied over the experiment folder, subfolders and all."""
    staging, storage = tmp_path / "staging", tmp_path / "storage"
    (staging / "trial").mkdir(parents=True)
    (staging / "experiment_state-1.json").write_bytes(NEW)
    (staging / "trial" / "result.json").write_bytes(NEW * 50)
    (storage / "trial").mkdir(parents=True)
    (storage / "trial" / "result.json").write_bytes(OLD)
    (storage / "trial" / "checkpoint.pt").write_bytes(OLD)

    pafs.copy_files(str(staging), str(storage), destination_filesystem=tune_filesystem(True))

    assert sorted(str(p.relative_to(storage)) for p in storage.rglob("*")) == [
        "experiment_state-1.json", "trial", "trial/checkpoint.pt", "trial/result.json"]
    assert (storage / "experiment_state-1.json").read_bytes() == NEW
    assert (storage / "trial" / "result.json").read_bytes() == NEW * 50
    assert (storage / "trial" / "checkpoint.pt").read_bytes() == OLD


def test_resume_s_sweep_removes_what_killed_writes_staged_and_nothing_else(tmp_path):
    """`resume` removes the staged files killed writes left in the experiment (this module's, and storage's own), but
    not files that only look alike, nor anything in the folder it keeps (the drivers' claims, renewed as it runs)."""
    (tmp_path / "trial").mkdir()
    result = tmp_path / "trial" / "result.json"
    result.write_bytes(OLD)
    kill_mid_write(result, whole_files=True)
    state = tmp_path / "search.json.tmp-0123456789abcdef0123456789abcdef"  # Location.write_bytes' staged file
    state.write_bytes(NEW)
    kept = [tmp_path / "trial" / ".notes.tmp-draft", tmp_path / "trial" / "run.tmp-0123abc",
            tmp_path / "drivers" / "0002.json.tmp-0123456789abcdef0123456789abcdef"]
    for path in kept:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(OLD)

    assert remove_staged_files(str(tmp_path), keep="drivers") == 2
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == sorted([result, *kept])
    assert result.read_bytes() == OLD
