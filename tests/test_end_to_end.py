"""The whole command on small synthetic class files, run as a user runs it."""

import json
import os
import pickle
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from conftest import SYNTHETIC_CLASSES, run_cli, start_cli, write_class_files
from experiment_checks import check_experiment, ranked_rows, results, trial_dirs

LRS, BATCH_SIZES, EPOCHS = (0.01, 0.001), (16, 32), 3


def grid_args(data, storage, name, seed=0):
    return [
        "--data-dir", data, "--classes", ",".join(SYNTHETIC_CLASSES), "--split", "300,60,30",
        "--lrs", ",".join(map(str, LRS)), "--batch-sizes", ",".join(map(str, BATCH_SIZES)),
        "--epochs", EPOCHS, "--storage", storage, "--name", name, "--seed", seed,
    ]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    return write_class_files(root / "data"), root / "results"


@pytest.fixture(scope="module")
def first_run(workspace):
    """Two drivers started together with the same --name: exactly one runs the search (check_experiment finds its
    trials and no other's), the other is refused in one line and writes nothing."""
    data, storage = workspace
    drivers = [start_cli(*grid_args(data, storage, "first")) for _ in range(2)]
    outputs = [driver.communicate(timeout=300)[0] for driver in drivers]
    codes = sorted(driver.returncode for driver in drivers)
    assert codes == [0, 2], outputs
    result, refused = sorted(zip((d.returncode for d in drivers), outputs))
    (line,) = refused[1].splitlines()
    assert line.startswith(f"tune_search.py: error: {storage / 'first'} ") and (
        "is being run by another driver" in line or "already exists" in line), line
    return SimpleNamespace(stdout=result[1])  # stdout and stderr together


def test_grid_writes_trials_summaries_checkpoints_and_tensorboard(first_run, workspace):
    _, storage = workspace
    table = check_experiment(storage / "first", LRS, BATCH_SIZES, EPOCHS)
    rows = [row for trial in trial_dirs(storage / "first") for row in results(trial)]
    assert any(row["checkpoint_dir_name"] is None for row in rows)  # an epoch that did not improve: no checkpoint
    pids = {row["pid"] for row in rows}
    assert len(pids) < len(LRS) * len(BATCH_SIZES)  # Tune reused trial processes (two run at once here)
    printed = ranked_rows(first_run.stdout)  # the table is printed at the end too
    assert [row["Validation accuracy"].strip("*") for row in printed] == [f"{v:.2f}%" for v in table.best_val_accuracy]
    assert "Current best trial" not in first_run.stdout  # Tune names no "best" by a rule other than the summary's
    assert table.test_accuracy.max() > 100 / len(SYNTHETIC_CLASSES) + 20  # learnable synthetic classes


def test_conversion_is_written_once_with_a_manifest(first_run, workspace):
    _, storage = workspace
    (dataset,) = (storage / "datasets").iterdir()
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["classes"] == list(SYNTHETIC_CLASSES)
    assert manifest["counts"] == {"train": 300, "validation": 60, "test": 30}
    assert [s["file"] for s in manifest["sources"]] == [f"{c}.npy" for c in SYNTHETIC_CLASSES]
    assert all(len(s["sha256"]) == 64 for s in manifest["sources"])
    assert "converted into" in first_run.stdout


def test_second_run_reuses_the_conversion_without_reading_raw_files(first_run, workspace):
    data, storage = workspace
    # Garble the raw files but keep their size and mtime: a run that read them would fail.
    for path in data.iterdir():
        stat = path.stat()
        path.write_bytes(b"\0" * stat.st_size)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    # "second" holds a search stopped by Ctrl-C after its search.json, before Tune saved anything: `resume` has
    # nothing to continue and says to run the same command again, which then starts it over in that folder.
    (storage / "second").mkdir()
    (storage / "second" / "search.json").write_text("{}")
    resumed = run_cli("resume", storage / "second")
    assert resumed.returncode == 2 and resumed.stderr.strip().endswith(
        "the search stopped before its first trial started; run the same command again, which starts it over in "
        "this folder"), resumed.stderr
    try:
        result = run_cli(*grid_args(data, storage, "second"))
        assert result.returncode == 0, result.stderr[-3000:]
        assert "reused from" in result.stdout
        assert len(list((storage / "datasets").iterdir())) == 1
        check_experiment(storage / "second", LRS, BATCH_SIZES, EPOCHS)
    finally:
        write_class_files(data)


def test_a_started_search_is_not_run_over_and_the_error_names_resume(first_run, workspace):
    data, storage = workspace
    result = run_cli(*grid_args(data, storage, "first"))
    assert result.returncode == 2 and not result.stdout
    assert result.stderr == (f"tune_search.py: error: {storage / 'first'} already exists: pick another --name, or omit "
                             "it for a timestamp; to continue that search: python tune_search.py resume "
                             f"{storage / 'first'}\n")


def test_report_rebuilds_the_summary_files(first_run, workspace):
    _, storage = workspace
    experiment = storage / "first"
    before = {name: (experiment / name).read_text() for name in ("summary.md", "summary.csv", "summary.json")}
    for name in before:
        (experiment / name).unlink()
    result = run_cli("report", experiment)
    assert result.returncode == 0, result.stderr[-3000:]
    assert {name: (experiment / name).read_text() for name in before} == before


def test_convert_png_writes_the_seed_layout(first_run, workspace, tmp_path):
    data, _ = workspace
    storage = tmp_path / "storage"
    result = run_cli("convert", "--png", "--data-dir", data, "--classes", ",".join(SYNTHETIC_CLASSES),
                     "--split", "300,60,30", "--storage", storage)
    assert result.returncode == 0, result.stderr
    (png,) = storage.glob("datasets/*/png")
    for part, total in (("train", 300), ("validation", 60), ("test", 30)):
        folders = sorted(p.name for p in (png / part).iterdir())
        assert folders == sorted(c.capitalize() for c in SYNTHETIC_CLASSES)
        assert sum(len(list((png / part / f).glob("*.png"))) for f in folders) == total
    image = Image.open(next((png / "test" / "Line").glob("*.png")))
    assert image.mode == "L" and image.size == (28, 28)
    pixels = np.asarray(image)
    assert pixels.min() == 0 and pixels.mean() > 128  # black strokes on a white page


def cut(path) -> None:
    """What a full disk or a killed copy leaves: the file's first half."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


DAMAGES = {
    "search.json-cut": (lambda exp, split: cut(exp / "search.json"), "search.json is damaged"),
    "tuner.pkl-missing": (lambda exp, split: (exp / "tuner.pkl").unlink(), "tuner.pkl is missing"),
    "tuner.pkl-cut": (lambda exp, split: cut(exp / "tuner.pkl"), "tuner.pkl is damaged"),
    "state-missing": (lambda exp, split: next(exp.glob("experiment_state-*.json")).unlink(),
                      "holds no Ray Tune experiment state"),
    "state-cut": (lambda exp, split: cut(next(exp.glob("experiment_state-*.json"))), ".json is damaged ("),
    "searcher-state-cut": (lambda exp, split: cut(next(exp.glob("basic-variant-state-*.json"))), ".json is damaged ("),
    # Whole, but not what Tune saved: only its restore finds out, and Ray has started by then.
    "searcher-state-emptied": (lambda exp, split: next(exp.glob("basic-variant-state-*.json")).write_bytes(
        pickle.dumps({})), "Ray Tune could not restore its state (RuntimeError: Unable to find checkpoint"),
    "manifest-missing": (lambda exp, split: (split / "manifest.json").unlink(), "the split that"),
    "manifest-cut": (lambda exp, split: cut(split / "manifest.json"), "cannot be read"),
    "split-cut": (lambda exp, split: cut(split / "split.npz"), "cannot be read"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_resume_of_a_damaged_search_is_one_line_and_changes_nothing(first_run, workspace, tmp_path, capsys, damage,
                                                                     monkeypatch):
    """A copy of the finished search with one of the files `resume` needs missing or cut short: one line that names
    it, exit code 2, Ray never started, and the folder as it was (but for the claim the refused driver released)."""
    from quickdraw.cli import main

    _, storage = workspace
    copy = tmp_path / "storage"
    shutil.copytree(storage / "first", copy / "first")
    shutil.copytree(storage / "datasets", copy / "datasets")
    experiment, (split,) = copy / "first", list((copy / "datasets").iterdir())
    record = json.loads((experiment / "search.json").read_text())
    record["dataset"] = str(split)  # the copy's own split, not the original's
    (experiment / "search.json").write_text(json.dumps(record))
    apply, mention = DAMAGES[damage]
    apply(experiment, split)
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file() and "drivers" not in p.parts}

    import quickdraw.cluster

    started = []
    monkeypatch.setattr(quickdraw.cluster, "connect", lambda address, connect=quickdraw.cluster.connect: (
        started.append(address), connect(address)))
    exit_code, ray_started = main(["resume", str(experiment)]), bool(started)
    assert exit_code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"tune_search.py: error: resume {experiment}: ") or "split" in line, line
    assert mention in line, line
    assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file() and "drivers" not in p.parts} == before
    assert ray_started == (damage == "searcher-state-emptied")
    if damage.startswith("state"):  # what the line promises: the trials, finished, from their own folders
        from quickdraw.experiment import load_trials
        from quickdraw.storage import Location

        trials, _ = load_trials(Location.parse(str(experiment)))
        assert len(trials) == len(LRS) * len(BATCH_SIZES) and trials.test_accuracy.notna().all()
