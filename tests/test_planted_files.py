"""Files planted in an experiment, or handed to a command, by a hostile user: links out of the experiment, named
pipes (FIFOs), devices, files where folders go, and outputs that are devices, pipes, links or the experiment's own
files. Nothing outside the experiment is written or deleted, nothing blocks or reads without end, and a kill while
the report is written leaves each of its parts (best_model/, report/, the summary files) all old or all new.

A test that could block (a FIFO) or exhaust memory (/dev/zero) before its fix runs its work in a forked child with a
deadline (`in_child`), so it fails instead of hanging."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, copy_experiment, run_cli, run_in_process
from quickdraw.bitmaps import find_class_files
from quickdraw.errors import UserError
from quickdraw.images import read_drawings
from quickdraw.safe_files import UnsafeFile
from quickdraw.storage import Location, output_file, write_output


def in_child(work, timeout: float = 30) -> int:
    """Run `work()` in a forked child: its exit code (0 when it returned, 1 when it raised, minus the signal when
    one killed it). A child still running after `timeout` seconds is killed and the test fails: nothing hangs."""
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            work()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"still running after {timeout} s: blocked or reading without end")
        time.sleep(0.02)


def kill_when(event_name: str, matches) -> None:
    """From now on, this process kills itself (SIGKILL, as a lost machine or the OOM killer would) at the first
    audit event `event_name` whose arguments `matches`: an exact, repeatable point to cut a write."""
    def hook(event, args):
        if event == event_name and matches(*args):
            os.kill(os.getpid(), signal.SIGKILL)
    sys.addaudithook(hook)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (links not followed) by relative path: its content's hash, or where a link points."""
    files = {}
    for path in sorted(folder.rglob("*")):
        name = str(path.relative_to(folder))
        if path.is_symlink():
            files[name] = f"-> {os.readlink(path)}"
        elif path.is_file():
            files[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def expect_unsafe(read, *words: str) -> None:
    """`read()`, in a child with a deadline and a memory cap, raises an UnsafeFile whose line holds `words`."""
    def work():
        limit = resource.getrlimit(resource.RLIMIT_AS)
        in_use = int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        resource.setrlimit(resource.RLIMIT_AS, (in_use + 512 * 2**20, limit[1]))  # /dev/zero: MemoryError, not OOM
        try:
            read()
        except UnsafeFile as e:
            assert len(str(e).splitlines()) == 1 and all(word in str(e) for word in words), str(e)
            return
        raise AssertionError("read without refusal")
    assert in_child(work) == 0


# --- reads: regular files only, within their limits, never through a link out --------------------------------------

def test_a_fifo_is_refused_at_once_not_waited_on(tmp_path):
    os.mkfifo(tmp_path / "search.json")
    expect_unsafe(lambda: Location.parse(str(tmp_path)).confined().__truediv__("search.json").read_text(),
                  "search.json", "named pipe (FIFO)")


def test_a_link_to_dev_zero_is_refused_not_read_until_memory_runs_out(tmp_path):
    experiment = Location.parse(str(tmp_path))
    (tmp_path / "weights_0.pt").symlink_to("/dev/zero")
    expect_unsafe(lambda: (experiment.confined() / "weights_0.pt").read_bytes(), "link out of", "/dev/zero")
    # Outside any experiment (a split's files, wherever search.json says): a link is followed, a device never read.
    expect_unsafe(lambda: (experiment / "weights_0.pt").read_bytes(), "character device")


def test_a_file_bigger_than_what_it_holds_is_refused(tmp_path):
    with open(tmp_path / "params.json", "wb") as f:
        f.truncate(64 * 2**20)  # sparse: takes no disk
    with pytest.raises(UnsafeFile, match="holds 64 MiB, more than such a file holds"):
        (Location.parse(str(tmp_path)).confined() / "params.json").read_text()


def test_links_inside_the_experiment_are_followed_and_links_out_refused(tmp_path):
    outside, experiment = tmp_path / "outside", tmp_path / "experiment"
    (experiment / "trial").mkdir(parents=True)
    outside.mkdir()
    (experiment / "trial" / "params.json").write_text("{}")
    (outside / "params.json").write_text('{"planted": 1}')
    (experiment / "inner").symlink_to("trial")
    (experiment / "outer").symlink_to(outside)
    confined = Location.parse(str(experiment)).confined()
    assert (confined / "inner" / "params.json").read_text() == "{}"
    with pytest.raises(UnsafeFile, match="is a link out of"):
        (confined / "outer" / "params.json").read_text()
    with pytest.raises(UnsafeFile, match="is a link out of"):
        (confined / "outer" / "written.json").write_text("{}")
    assert not (outside / "written.json").exists()


# --- folders published whole: a link replaced, never written through; a kill leaves old or new ----------------------

def planted_folder(tmp_path: Path) -> tuple[Location, Path]:
    """An experiment whose best_model/ holds an old model of two files."""
    experiment = tmp_path / "experiment"
    (experiment / "best_model").mkdir(parents=True)
    for name in ("weights_0.pt", "config.json"):
        (experiment / "best_model" / name).write_text(f"old {name}")
    return Location.parse(str(experiment)).confined(), experiment / "best_model"


def new_model(staged: Path) -> None:
    for name in ("weights_0.pt", "weights_1.pt", "config.json"):
        (staged / name).write_text(f"new {name}")


def test_a_folder_is_swapped_in_whole_replacing_a_link_not_its_target(tmp_path):
    experiment, folder = planted_folder(tmp_path)
    foreign = tmp_path / "foreign"
    shutil.move(folder, foreign)
    (foreign / "mine.png").write_text("not the report's")
    folder.symlink_to(foreign)
    before = snapshot(foreign)
    (experiment / "best_model").write_folder(new_model, last="config.json", replace=True)
    assert snapshot(foreign) == before
    assert not folder.is_symlink() and snapshot(folder) == snapshot_of_new(tmp_path)
    assert [p.name for p in folder.parent.iterdir()] == ["best_model"]  # nothing staged left


def snapshot_of_new(tmp_path: Path) -> dict[str, str]:
    new = tmp_path / "expected"
    new.mkdir()
    new_model(new)
    return snapshot(new)


@pytest.mark.parametrize("event, matches", [
    ("open", lambda path, mode, flags: str(path).endswith("weights_1.pt") and mode == "w"),  # while staging
    ("ctypes.dlopen", lambda *args: True),  # just before the exchange
    ("shutil.rmtree", lambda path, dir_fd: ".best_model.tmp-" in str(path)),  # after it, before the old one goes
])
def test_a_kill_while_a_folder_is_published_leaves_it_all_old_or_all_new(tmp_path, event, matches):
    experiment, folder = planted_folder(tmp_path)
    old = snapshot(folder)

    def publish():
        kill_when(event, matches)
        (experiment / "best_model").write_folder(new_model, last="config.json", replace=True)

    assert in_child(publish) == -signal.SIGKILL
    assert snapshot(folder) in (old, snapshot_of_new(tmp_path))


def test_files_are_all_written_before_any_is_renamed_in(tmp_path):
    for name in ("summary.csv", "summary.md", "summary.json"):
        (tmp_path / name).write_text(f"old {name}")
    old = snapshot(tmp_path)
    experiment = Location.parse(str(tmp_path)).confined()
    files = {name: f"new {name}".encode() for name in ("summary.csv", "summary.md", "summary.json")}

    def write():
        kill_when("open", lambda path, mode, flags: "summary.json.tmp-" in str(path))
        experiment.write_files(files)

    assert in_child(write) == -signal.SIGKILL
    assert {name: digest for name, digest in snapshot(tmp_path).items() if ".tmp-" not in name} == old
    experiment.write_files(files)
    assert {name: (tmp_path / name).read_bytes() for name in files} == files


def test_a_file_where_the_report_writes_a_folder_is_one_line_and_exit_code_2(tmp_path):
    for folder in ("report", "best_model"):
        experiment = tmp_path / folder / "experiment"
        experiment.mkdir(parents=True)
        (experiment / folder).write_text("a user's notes")
        result = run_in_process("report", experiment)
        assert result.returncode == 2
        (line,) = result.stderr.strip().splitlines()
        assert f"{experiment / folder} is a file, where a folder is written" in line
        assert (experiment / folder).read_text() == "a user's notes"
        assert sorted(p.name for p in experiment.iterdir()) == [folder]


# --- --output: devices, pipes and links written as what they are; the experiment's own files refused ----------------

def test_output_to_a_device_stays_a_device(tmp_path):
    device = tmp_path / "null"
    try:
        os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # the system's /dev/null, planted here
    except PermissionError:
        pytest.skip("making a device node needs root")
    write_output(output_file(str(device)), "a table\n")
    assert stat.S_ISCHR(device.stat().st_mode)


def test_output_through_a_link_writes_its_target_and_keeps_the_link(tmp_path):
    (tmp_path / "tables").mkdir()
    link = tmp_path / "table.csv"
    link.symlink_to(tmp_path / "tables" / "latest.csv")
    write_output(output_file(str(link)), "a,b\n")
    assert link.is_symlink() and (tmp_path / "tables" / "latest.csv").read_text() == "a,b\n"


def test_output_to_a_pipe_is_read_by_its_reader_and_without_one_is_one_line(tmp_path):
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    assert in_child(lambda: write_output(output_file(str(pipe)), "unread\n"), timeout=10) == 1  # refused, not blocked
    with pytest.raises(UserError, match="no process reads from it"):
        write_output(output_file(str(pipe)), "unread\n")
    got = []
    reader = threading.Thread(target=lambda: got.append(pipe.read_text()), daemon=True)
    reader.start()
    for _ in range(200):  # until the reader has opened its end
        try:
            write_output(output_file(str(pipe)), "a table\n")
            break
        except UserError:
            time.sleep(0.01)
    reader.join(timeout=10)
    assert got == ["a table\n"] and stat.S_ISFIFO(pipe.stat().st_mode)


def test_output_dash_is_standard_output():
    assert output_file("-") is None


def test_output_inside_the_experiment_is_refused(tmp_path):
    experiment = tmp_path / "experiment"
    experiment.mkdir()
    (experiment / "search.json").write_text("the record")
    (tmp_path / "elsewhere.json").symlink_to(experiment / "search.json")
    for output in (experiment / "search.json", tmp_path / "elsewhere.json", experiment / "table.csv"):
        with pytest.raises(UserError, match="is inside the experiment"):
            output_file(str(output), experiment=Location.parse(str(experiment)).confined())
    assert (experiment / "search.json").read_text() == "the record"


# --- predict's files and class files: say what they are -------------------------------------------------------------

@pytest.mark.parametrize("plant, words", [
    (lambda path: path.mkdir(), "a folder, not a file"),
    (os.mkfifo, "a named pipe (FIFO), not a file"),
    (lambda path: path.symlink_to("/dev/zero"), "a character device, not a file"),
    (lambda path: None, "no such file"),
])
def test_a_drawing_or_class_file_that_is_not_a_file_is_named_for_what_it_is(tmp_path, plant, words):
    plant(tmp_path / "apple.npy")
    with pytest.raises(UserError, match=words.replace("(", r"\(").replace(")", r"\)")):
        read_drawings(tmp_path / "apple.npy")
    if words != "no such file":
        with pytest.raises(UserError, match=r"apple.npy: .*; a class file is a .npy"):
            find_class_files(tmp_path, ("apple",))


# --- the commands on a finished experiment ---------------------------------------------------------------------------

@pytest.fixture
def experiment(grid_experiment, tmp_path) -> Path:
    """A copy of the session's finished grid to plant files in."""
    return copy_experiment(grid_experiment, tmp_path / "copy")


@pytest.mark.slow
def test_report_through_linked_folders_writes_and_deletes_nothing_outside(experiment, tmp_path):
    """report/ and best_model/ links to another folder: `report` replaces the links with folders of its own, and the
    other folders keep every file, a PNG of their own among them, unchanged."""
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    for name in ("report", "best_model"):
        shutil.move(experiment / name, foreign / name)
        (experiment / name).symlink_to(foreign / name)
    (foreign / "report" / "holiday.png").write_bytes(b"a user's picture")
    before = snapshot(foreign)
    result = run_in_process("report", experiment)
    assert result.returncode == 0, result.stderr[-3000:]
    assert snapshot(foreign) == before
    for name in ("report", "best_model"):
        assert not (experiment / name).is_symlink() and (experiment / name).is_dir()
    assert (experiment / "best_model" / "config.json").is_file() and list((experiment / "report").glob("*.png"))


@pytest.mark.slow
def test_report_and_predict_end_on_planted_fifos_and_devices(experiment, tmp_path):
    """search.json a FIFO: `report` ends, without best_model/ (which needs the classes search.json names), saying
    why; best_model/classes.txt a FIFO, or weights a link to /dev/zero: `predict` refuses in one line."""
    drawing = tmp_path / "drawing.png"
    Image.fromarray(np.pad(np.full((8, 20), 255, np.uint8), 10)).save(drawing)
    os.replace(experiment / "search.json", tmp_path / "search.json")
    os.mkfifo(experiment / "search.json")
    result = run_cli("report", experiment, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "search.json is a named pipe (FIFO), not a file" in result.stderr
    os.replace(tmp_path / "search.json", experiment / "search.json")

    model = experiment / "best_model"
    os.replace(model / "classes.txt", tmp_path / "classes.txt")
    os.mkfifo(model / "classes.txt")
    refuses_in_one_line(["predict", experiment, drawing], "classes.txt is a named pipe (FIFO), not a file")
    (model / "classes.txt").unlink()
    os.replace(tmp_path / "classes.txt", model / "classes.txt")
    (model / "weights_0.pt").unlink()
    (model / "weights_0.pt").symlink_to("/dev/zero")
    refuses_in_one_line(["predict", experiment, drawing], "weights_0.pt is a link out of")


def refuses_in_one_line(args: list, words: str) -> None:
    """The command, in a child with a deadline and a memory cap, ends with exit code 2 and one line holding `words`
    that says how to export best_model/ again."""
    def work():
        in_use = int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        resource.setrlimit(resource.RLIMIT_AS, (in_use + 2 * 2**30, resource.getrlimit(resource.RLIMIT_AS)[1]))
        result = run_in_process(*args)
        assert result.returncode == 2, result.stderr[-3000:]
        (line,) = result.stderr.strip().splitlines()
        assert words in line and "tune_search.py report" in line, line
    assert in_child(work, timeout=120) == 0


@pytest.mark.slow
def test_predict_answers_a_file_given_twice_twice(experiment, tmp_path):
    drawing = tmp_path / "drawing.png"
    Image.fromarray(np.pad(np.full((8, 20), 255, np.uint8), 10)).save(drawing)
    result = run_in_process("predict", experiment, drawing, drawing)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0] == lines[1] and lines[0].startswith(f"{drawing}: ")


@pytest.mark.slow
def test_output_of_the_experiments_own_file_is_refused_and_the_record_kept(experiment):
    record = (experiment / "search.json").read_bytes()
    result = run_in_process("report", experiment, "--format", "csv", "--output", experiment / "search.json")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "is inside the experiment" in line
    assert (experiment / "search.json").read_bytes() == record


@pytest.mark.slow
def test_a_report_killed_while_it_writes_leaves_each_part_old(experiment):
    """Killed as it writes best_model/'s second member (where the old report had written summary.csv and .json but
    not summary.md, and deleted config.json): best_model/ and the summary files are still all old; the next report
    makes them all new."""
    for name in ("summary.csv", "summary.md", "summary.json"):
        (experiment / name).write_text(f"the old {name}")
    config = json.loads((experiment / "best_model" / "config.json").read_text())
    (experiment / "best_model" / "config.json").write_text(json.dumps({**config, "old": True}))
    old_model, old_summaries = snapshot(experiment / "best_model"), snapshot_summaries(experiment)
    hook = ("import os, signal, sys\n"
            "def hook(event, args):\n"
            "    if event == 'open' and 'best_model' in str(args[0]) and os.path.basename(str(args[0]))"
            ".startswith('weights_1') and args[1] and 'w' in args[1]:\n"
            "        os.kill(os.getpid(), signal.SIGKILL)\n"
            "sys.addaudithook(hook)\n"
            "from quickdraw.cli import main\n"
            f"sys.exit(main(['report', {str(experiment)!r}]))\n")
    killed = subprocess.run([sys.executable, "-c", hook], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert snapshot(experiment / "best_model") == old_model
    assert snapshot_summaries(experiment) == old_summaries
    assert run_in_process("report", experiment).returncode == 0
    assert "old" not in json.loads((experiment / "best_model" / "config.json").read_text())
    assert all("the old" not in (experiment / name).read_text() for name in old_summaries)


def snapshot_summaries(experiment: Path) -> dict[str, str]:
    return {name: (experiment / name).read_text() for name in ("summary.csv", "summary.md", "summary.json")}
