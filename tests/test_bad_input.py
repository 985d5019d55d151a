"""Bad input to the main command stops it before any trial starts: one line on stderr that names the
file or flag and says what to do, exit code 2, no traceback, and nothing in --storage is touched."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, run_cli, run_in_process, synthetic_drawings, write_class_files
from quickdraw.config import DataConfig
from quickdraw.errors import UserError
from ray_cluster import free_port

CLASSES = "circle,hot dog,cat"  # "hot dog" checks that a class name with a space travels as one argv element
NAME = "exp"
TIMEOUT = 180  # if validation wrongly passed, one tiny trial still ends well within this


@pytest.fixture
def data(tmp_path) -> Path:
    """circle.npy and hot dog.npy are fine; each test writes (or leaves out) cat.npy."""
    return write_class_files(tmp_path / "data", classes=("circle", "hot dog"), count=200)


@pytest.fixture
def storage(tmp_path) -> Path:
    """A storage folder with an earlier run in it, which a failed run must leave exactly as it is."""
    folder = tmp_path / "results"
    (folder / "earlier_run").mkdir(parents=True)
    (folder / "earlier_run" / "result.json").write_text('{"val_loss": 0.5}\n')
    return folder


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` with its bytes (None for folders); empty when it does not exist."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(folder.rglob("*"))
    }


def run_main(data_dir: Path, storage: Path, *flags: str, classes: str = CLASSES, split: str = "30,6,3",
             env: dict | None = None, timeout: int = TIMEOUT):
    """The main command (no subcommand) with a tiny valid setup, then `flags`; later flags override. In this process
    (its input is refused before Ray starts), or as its own process when it needs its own environment."""
    args = ("--data-dir", data_dir, "--classes", classes, "--split", split, "--storage", storage,
            "--name", NAME, "--lrs", "0.01", "--batch-sizes", "32", "--epochs", "1", *flags)
    if env is None:
        return run_in_process(*args)
    return run_cli(*args, timeout=timeout, env=env)


def assert_rejected(result, storage: Path, before: dict, *mentions: str) -> str:
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.returncode == 2, output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{result.stderr}"
    line = lines[0]
    for mention in mentions:
        assert mention in line, f"{mention!r} not in {line!r}"
    assert snapshot(storage) == before, "a failed run changed the storage folder"
    assert not (storage / "datasets").exists()
    return line


# --- data files (checked on the driver before Ray starts) ---------------------------------------


def test_missing_data_folder(tmp_path, storage):
    before = snapshot(storage)
    missing = tmp_path / "nowhere"
    result = run_main(missing, storage, "--no-download")
    assert_rejected(result, storage, before, "nowhere", "--data-dir")
    assert not (storage / NAME).exists()


def test_missing_class_file(data, storage):
    before = snapshot(storage)
    result = run_main(data, storage, "--no-download")  # cat.npy was never written
    assert_rejected(result, storage, before, "cat.npy", "--classes", "tune_search.py download")


def offline_url() -> str:
    return f"http://127.0.0.1:{free_port()}/numpy_bitmap/"  # nothing listens there


def test_missing_class_file_offline(data, storage):
    before, files = snapshot(storage), snapshot(data)
    result = run_main(data, storage, "--base-url", offline_url())
    assert_rejected(result, storage, before, "cannot download cat.npy", str(data), "--base-url", "Connection refused")
    assert snapshot(data) == files


def test_missing_data_folder_offline(tmp_path, storage):
    before = snapshot(storage)
    missing = tmp_path / "nowhere"
    result = run_main(missing, storage, "--base-url", offline_url())
    assert_rejected(result, storage, before, "circle.npy, hot dog.npy, cat.npy", "nowhere", "--base-url")
    assert not missing.exists()


def test_data_dir_that_is_a_file(tmp_path, storage):
    not_a_folder = tmp_path / "cat.npy"
    np.save(not_a_folder, synthetic_drawings(0, 200))
    before, files = snapshot(storage), snapshot(tmp_path)
    result = run_main(not_a_folder, storage, "--base-url", offline_url())
    line = assert_rejected(result, storage, before, f"--data-dir {not_a_folder} is a file", "<class>.npy")
    assert "does not exist" not in line
    assert snapshot(tmp_path) == files


@pytest.mark.parametrize("command", ["run", "convert"])
def test_storage_that_is_a_file(data, tmp_path, command):
    storage = tmp_path / "results.txt"
    storage.write_text("not a folder")
    result = run_in_process(command, "--data-dir", data, "--classes", CLASSES, "--split", "30,6,3", "--storage", storage)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr == f"tune_search.py: error: --storage {storage} is a file: give a folder (created if " \
                            "missing) or a URI such as s3://bucket/prefix\n"
    assert storage.read_text() == "not a folder"


# --- class names: each is a file name in --data-dir and a folder name under png/ ------------------


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("../../etc/x", id="path-up"),
        pytest.param("a/b", id="slash"),
        pytest.param("..", id="dot-dot"),
        pytest.param(".", id="dot"),
        pytest.param(".hidden", id="leading-dot"),
        pytest.param("a\\b", id="backslash"),
    ],
)
def test_class_name_that_is_a_path(data, storage, name):
    before, files = snapshot(storage), snapshot(data.parent)
    result = run_main(data, storage, "--base-url", offline_url(), classes=f"{name},cat")
    assert_rejected(result, storage, before, "--classes", repr(name))
    assert snapshot(data.parent) == files  # nothing beside --data-dir or --storage either


@pytest.mark.parametrize("command", ["convert", "download"])
def test_class_name_that_is_a_path_in_other_commands(data, storage, command):
    files = snapshot(data.parent)
    result = run_in_process(command, "--data-dir", data, "--classes", "../x,cat", "--base-url", offline_url(),
                            *(("--storage", storage) if command == "convert" else ()))
    assert_rejected(result, storage, snapshot(storage), "--classes", "'../x'")
    assert snapshot(data.parent) == files


def test_class_names_are_names_but_may_have_spaces():
    DataConfig(classes=("hot dog", "The Eiffel Tower", "cat")).validate()  # Google's own names
    with pytest.raises(UserError, match="--classes"):
        DataConfig(classes=("a\0b", "cat")).validate()


def write_html(path: Path) -> None:
    path.write_bytes(b"<!DOCTYPE html><html><head><title>Sign in</title></head><body>Sign in</body></html>\n")


def write_pickled_objects(path: Path) -> None:
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)


def write_wrong_shape(path: Path) -> None:
    np.save(path, np.zeros((200, 100), dtype=np.uint8))


def write_wrong_dtype(path: Path) -> None:
    np.save(path, synthetic_drawings(2, 200).astype(np.float32))


def write_truncated(path: Path) -> None:
    np.save(path, synthetic_drawings(2, 200))
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])


def write_too_few(path: Path) -> None:
    np.save(path, synthetic_drawings(2, 5))  # the split 30,6,3 over three classes needs 13 per class


@pytest.mark.parametrize(
    "write_cat, extra_mentions",
    [
        pytest.param(write_html, (), id="html-page"),
        pytest.param(write_pickled_objects, (), id="pickled-objects"),
        pytest.param(write_wrong_shape, ("(200, 100)",), id="wrong-shape"),
        pytest.param(write_wrong_dtype, ("float32",), id="wrong-dtype"),
        pytest.param(write_truncated, ("truncated",), id="truncated"),
        pytest.param(write_too_few, ("--split",), id="too-few-drawings"),
    ],
)
def test_bad_class_file(data, storage, write_cat, extra_mentions):
    write_cat(data / "cat.npy")
    before = snapshot(storage)
    result = run_main(data, storage)
    assert_rejected(result, storage, before, "cat.npy", *extra_mentions)


# --- flags (rejected before Ray starts) ---------------------------------------------------------


@pytest.mark.parametrize(
    "flags, flag",
    [
        pytest.param(("--bogus", "1"), "--bogus", id="unknown-flag"),
        pytest.param(("--lrs", "0.01,0"), "--lrs", id="lr-not-above-0"),
        pytest.param(("--batch-sizes", "0"), "--batch-sizes", id="batch-size-0"),
        pytest.param(("--epochs", "-1"), "--epochs", id="negative-epochs"),
        pytest.param(("--split", "100,20"), "--split", id="split-of-two-numbers"),
        pytest.param(("--lrs", ""), "--lrs", id="empty-lrs"),
        pytest.param(("--batch-sizes", ""), "--batch-sizes", id="empty-batch-sizes"),
        pytest.param(("--scheduler", "hyperband"), "--scheduler", id="unknown-scheduler"),
        pytest.param(("--grace-period", "1"), "add --scheduler asha", id="grace-period-without-asha"),
        pytest.param(("--reduction-factor", "2"), "add --scheduler asha", id="reduction-factor-without-asha"),
        pytest.param(("--scheduler", "asha", "--grace-period", "0"), "--grace-period", id="grace-period-0"),
        pytest.param(("--scheduler", "asha", "--grace-period", "2"), "--grace-period", id="grace-period-over-epochs"),
        pytest.param(("--scheduler", "asha", "--grace-period", "one"), "--grace-period",
                     id="grace-period-not-a-number"),
        pytest.param(("--scheduler", "asha", "--reduction-factor", "1"), "--reduction-factor", id="reduction-factor-1"),
        pytest.param(("--scheduler", "asha", "--reduction-factor", "nan"), "--reduction-factor",
                     id="reduction-factor-nan"),
        pytest.param(("--model", "resnet"), "--model: unknown model 'resnet'; choose from seed or vgg-bn",
                     id="unknown-model"),
        pytest.param(("--models", "seed,vggbn"), "unknown model 'vggbn'", id="unknown-model-in-list"),
        pytest.param(("--models", "seed,seed"), "listed twice", id="model-twice"),
        pytest.param(("--models", ","), "--models: an empty list of values", id="empty-models"),
        pytest.param(("--dropout", "1"), "--dropout: '1' is not a valid dropout", id="dropout-1"),
        pytest.param(("--model", "seed", "--models", "seed,vgg-bn"), "not allowed with argument --model",
                     id="model-and-models"),
        pytest.param(("--name", "n" * 256), "--name is 256 bytes long", id="name-too-long"),
    ],
)
def test_bad_flag(data, storage, flags, flag):
    write_class_files(data, classes=("cat",), count=200)  # every file is fine: only the flag is wrong
    before = snapshot(storage)
    result = run_main(data, storage, *flags)
    assert_rejected(result, storage, before, flag)


def test_existing_experiment_folder_is_not_overwritten(data, storage):
    write_class_files(data, classes=("cat",), count=200)
    (storage / NAME).mkdir()
    (storage / NAME / "notes.txt").write_text("results of a run that must survive\n")
    before = snapshot(storage)
    result = run_main(data, storage)  # --name exp, which is already there
    line = assert_rejected(result, storage, before, NAME, "--name")
    assert str(storage / NAME) in line


# --- report of something that is not an experiment ------------------------------------------------


def test_report_of_a_missing_folder(tmp_path):
    result = run_in_process("report", tmp_path / "no_such_experiment")
    assert_rejected(result, tmp_path, snapshot(tmp_path), "no_such_experiment")


def test_report_of_a_folder_that_holds_no_experiment(tmp_path):
    (tmp_path / "notes.txt").write_text("not an experiment\n")
    before = snapshot(tmp_path)
    result = run_in_process("report", tmp_path)
    line = assert_rejected(result, tmp_path, before, str(tmp_path))
    assert "no Ray Tune experiment" in line


# --- Ray cluster address (checked before ray.init, which would retry for minutes) ------------------


def test_address_where_nothing_listens(data, storage):
    write_class_files(data, classes=("cat",), count=200)
    address = f"127.0.0.1:{free_port()}"
    before = snapshot(storage)
    result = run_main(data, storage, "--address", address)
    line = assert_rejected(result, storage, before, f"--address {address}", "nothing answers there")
    assert "Connection refused" in line
    assert not (storage / NAME).exists()


@pytest.mark.slow  # its own process, with its own environment
@pytest.mark.parametrize("flags", [(), ("--address", "auto")], ids=["no-address", "address-auto"])
def test_ray_address_where_nothing_listens(data, storage, flags):
    """ray.init() takes RAY_ADDRESS over no address and over 'auto', and retries a dead one for minutes."""
    write_class_files(data, classes=("cat",), count=200)
    address = f"127.0.0.1:{free_port()}"
    before = snapshot(storage)
    result = run_main(data, storage, *flags, env={**os.environ, "RAY_ADDRESS": address}, timeout=60)
    line = assert_rejected(result, storage, before, f"RAY_ADDRESS={address}", "nothing answers there",
                           "unset RAY_ADDRESS")
    assert "Connection refused" in line
    assert not (storage / NAME).exists()


@pytest.mark.parametrize(
    "address",
    [
        pytest.param("nonsense", id="no-port"),
        pytest.param("127.0.0.1:", id="empty-port"),
        pytest.param(":6379", id="no-host"),
        pytest.param("127.0.0.1:port", id="port-not-a-number"),
    ],
)
def test_malformed_address(data, storage, address):
    write_class_files(data, classes=("cat",), count=200)
    before = snapshot(storage)
    result = run_main(data, storage, "--address", address)
    assert_rejected(result, storage, before, f"--address {address}", "host:port")
    assert not (storage / NAME).exists()


# --- failures allowed per trial ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, mention",
    [
        pytest.param("-2", "got -2", id="below-minus-1"),
        pytest.param("-100", "got -100", id="far-below-minus-1"),
        pytest.param("three", "'three'", id="not-a-number"),
    ],
)
def test_bad_max_failures(data, storage, value, mention):
    write_class_files(data, classes=("cat",), count=200)
    before = snapshot(storage)
    result = run_main(data, storage, "--max-failures", value)
    assert_rejected(result, storage, before, "--max-failures", mention)


# --- storage URIs ---------------------------------------------------------------------------------


def test_storage_uri_of_an_unknown_scheme(data, tmp_path):
    write_class_files(data, classes=("cat",), count=200)
    before = snapshot(tmp_path)  # holds the data folder; nothing may appear beside it
    result = run_main(data, "foo://x")
    line = assert_rejected(result, tmp_path, before, "--storage foo://x")
    assert "Unrecognized filesystem type" in line
    assert not (REPO / "foo:").exists()  # not taken for a local folder under the working directory


def test_report_of_a_uri_of_an_unknown_scheme(tmp_path):
    result = run_in_process("report", "foo://x")
    line = assert_rejected(result, tmp_path, snapshot(tmp_path), "report foo://x")
    assert "Unrecognized filesystem type" in line


# --- resume ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags",
    [
        pytest.param(("--lrs", "0.1", "--epochs", "2"), id="lrs-and-epochs"),
        pytest.param(("--epochs", "50"), id="a-flag-at-its-default-value"),
        pytest.param(("--storage", "elsewhere"), id="storage"),
        pytest.param(("--max-failures", "5"), id="max-failures"),
        pytest.param(("--gpus-per-trial", "0.5"), id="gpus-per-trial"),
        pytest.param(("--models", "seed,vgg-bn"), id="models"),
        pytest.param(("--scheduler", "asha", "--reduction-factor", "2"), id="scheduler-and-reduction-factor"),
        pytest.param(("--data-dir", "data", "--classes", "cat,dog", "--name", "exp"), id="data-flags-and-name"),
    ],
)
def test_resume_takes_no_flag_but_address(storage, flags):
    """resume continues with the search's own settings: argparse itself refuses every other flag, whatever its
    value, before anything is read."""
    before = snapshot(storage)
    result = run_in_process("resume", storage / "earlier_run", *flags)
    line = assert_rejected(result, storage, before, f"unrecognized arguments: {' '.join(flags)}")
    assert line.startswith("tune_search.py: error:") and "--help" in line


def test_the_old_resume_flag_is_an_unknown_flag(storage):
    before = snapshot(storage)
    result = run_in_process("--resume", storage / "earlier_run")
    assert_rejected(result, storage, before, "unrecognized arguments: --resume")


@pytest.mark.parametrize(
    "folder",
    [
        pytest.param("earlier_run", id="folder-without-search-json"),  # holds only result.json
        pytest.param("no_such_experiment", id="missing-folder"),
    ],
)
@pytest.mark.parametrize("with_address", [False, True], ids=["alone", "with-address"])
def test_resume_of_something_that_is_not_a_search(storage, folder, with_address):
    """--address is the one flag resume takes: the folder is still what gets rejected, before Ray."""
    flags = ("--address", f"127.0.0.1:{free_port()}") if with_address else ()
    before = snapshot(storage)
    result = run_in_process("resume", storage / folder, *flags)
    line = assert_rejected(result, storage, before, f"resume {storage / folder}", "no search.json there")
    assert "unrecognized" not in line
    assert not (storage / folder).exists() or folder == "earlier_run"


def test_resume_without_a_folder(tmp_path):
    result = run_in_process("resume", "")
    assert_rejected(result, tmp_path, snapshot(tmp_path), "resume needs the experiment folder")


def test_resume_of_a_uri_of_an_unknown_scheme(tmp_path):
    result = run_in_process("resume", "foo://x")
    line = assert_rejected(result, tmp_path, snapshot(tmp_path), "resume foo://x")
    assert "Unrecognized filesystem type" in line


def test_more_than_one_gpu_per_trial(data, storage):
    before = snapshot(storage)
    result = run_main(data, storage, "--gpus-per-trial", "2")
    assert_rejected(result, storage, before, "--gpus-per-trial 2:", "trains on one GPU", "give 1 or less")
    assert not (storage / NAME).exists()


# --- the machine: where Ray keeps its files (checked when Ray starts, before any trial) --------------


@pytest.mark.slow  # its own process, with its own environment
def test_a_tmpdir_too_long_for_rays_sockets_names_what_to_set(data, storage, tmp_path):
    write_class_files(data, classes=("cat",), count=200)
    long = tmp_path / ("t" * (120 - len(str(tmp_path))))
    long.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "RAY_TMPDIR"}
    before = snapshot(storage)
    result = run_main(data, storage, env={**env, "TMPDIR": str(long)})
    line = assert_rejected(result, storage, before, f"TMPDIR={long} is too long",
                           "set RAY_TMPDIR to a short folder")
    assert line.endswith("export RAY_TMPDIR=/tmp")


@pytest.mark.slow  # its own process, with its own environment
def test_an_unwritable_home_names_what_to_set(data, storage):
    write_class_files(data, classes=("cat",), count=200)
    before = snapshot(storage)
    result = run_main(data, storage, env={**os.environ, "HOME": "/proc/self/no-home"})  # even root cannot write there
    assert_rejected(result, storage, before, "HOME=/proc/self/no-home cannot be written",
                    "set HOME to a folder you can write")

