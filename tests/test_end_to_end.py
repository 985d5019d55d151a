"""The whole command on small synthetic class files, run as a user runs it."""

import json
import os
import pickle
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import (GRID, SYNTHETIC_CLASSES, copy_experiment, grid_drivers, grid_flags, run_cli,
                      run_in_process)
from experiment_checks import check_experiment, ranked_rows, results, trial_dirs

pytestmark = pytest.mark.slow  # the command, as its own process, runs real searches

LRS, BATCH_SIZES, EPOCHS = GRID.lrs, GRID.batch_sizes, GRID.epochs


def test_of_two_drivers_started_together_with_one_name_one_runs_the_search(grid_experiment):
    """The session's grid was started by two drivers at once with the same --name: exactly one ran the search
    (check_experiment finds its trials and no other's), the other was refused in one line and wrote nothing."""
    (refused, code), (_, ran) = sorted(grid_drivers(grid_experiment), key=lambda outcome: -outcome[1])
    assert (code, ran) == (2, 0), refused
    (line,) = refused.splitlines()
    assert line.startswith(f"tune_search.py: error: {grid_experiment} ") and (
        "is being run by another driver" in line or "already exists" in line), line


def test_grid_writes_trials_summaries_checkpoints_and_tensorboard(grid_experiment):
    table = check_experiment(grid_experiment, LRS, BATCH_SIZES, EPOCHS)
    rows = [row for trial in trial_dirs(grid_experiment) for row in results(trial)]
    assert any(row["checkpoint_dir_name"] is None for row in rows)  # an epoch that did not improve: no checkpoint
    pids = {row["pid"] for row in rows}
    assert len(pids) < len(LRS) * len(BATCH_SIZES)  # Tune reused trial processes (two run at once here)
    (output, _), = [outcome for outcome in grid_drivers(grid_experiment) if outcome[1] == 0]
    printed = ranked_rows(output)  # the table is printed at the end too
    assert [row["Validation accuracy"].strip("*") for row in printed] == [f"{v:.2f}%" for v in table.best_val_accuracy]
    assert "Current best trial" not in output  # Tune names no "best" by a rule other than the summary's
    assert table.test_accuracy.max() > 100 / len(SYNTHETIC_CLASSES) + 20  # learnable synthetic classes


def test_conversion_is_written_once_with_a_manifest(grid_experiment):
    (dataset,) = (grid_experiment.parent / "datasets").iterdir()
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["classes"] == list(SYNTHETIC_CLASSES)
    assert manifest["counts"] == {"train": 300, "validation": 60, "test": 60}
    assert [s["file"] for s in manifest["sources"]] == [f"{c}.npy" for c in SYNTHETIC_CLASSES]
    assert all(len(s["sha256"]) == 64 for s in manifest["sources"])
    assert any("converted into" in output for output, _ in grid_drivers(grid_experiment))


def test_second_run_reuses_the_conversion_without_reading_raw_files(grid_experiment, tmp_path):
    # The grid's class files and storage, copied with their sizes and mtimes, which the conversion is known by.
    data, storage = tmp_path / "data", tmp_path / "results"
    shutil.copytree(grid_experiment.parent.parent / "data", data)
    shutil.copytree(grid_experiment.parent / "datasets", storage / "datasets")
    # Garble the raw files but keep their size and mtime: a run that read them would fail.
    for path in data.iterdir():
        stat = path.stat()
        path.write_bytes(b"\0" * stat.st_size)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    # "second" holds a search stopped by Ctrl-C after its search.json, before Tune saved anything: `resume` has
    # nothing to continue and says to run the same command again, which then starts it over in that folder.
    (storage / "second").mkdir()
    (storage / "second" / "search.json").write_text("{}")
    resumed = run_in_process("resume", storage / "second")
    assert resumed.returncode == 2 and resumed.stderr.strip().endswith(
        "the search stopped before its first trial started; run the same command again, which starts it over in "
        "this folder"), resumed.stderr
    # One trial of the grid is enough to show the reuse.
    result = run_cli("--data-dir", data, "--classes", ",".join(SYNTHETIC_CLASSES), "--split", GRID.split, "--lrs", LRS[0],
                     "--batch-sizes", BATCH_SIZES[0], "--epochs", 2, "--storage", storage, "--name", "second")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reused from" in result.stdout
    assert len(list((storage / "datasets").iterdir())) == 1
    check_experiment(storage / "second", LRS[:1], BATCH_SIZES[:1], 2)


def test_a_started_search_is_not_run_over_and_the_error_names_resume(grid_experiment):
    result = run_in_process(*grid_flags(grid_experiment.parent.parent / "data", grid_experiment.parent))
    assert result.returncode == 2 and not result.stdout
    assert result.stderr == (f"tune_search.py: error: {grid_experiment} already exists: pick another --name, or omit "
                             "it for a timestamp; to continue that search: python tune_search.py resume "
                             f"{grid_experiment}\n")


def test_report_rebuilds_the_summary_files(grid_experiment, tmp_path):
    experiment = copy_experiment(grid_experiment, tmp_path)
    before = {name: (experiment / name).read_text() for name in ("summary.md", "summary.csv", "summary.json")}
    for name in before:
        (experiment / name).unlink()
    result = run_in_process("report", experiment)
    assert result.returncode == 0, result.stderr[-3000:]
    assert {name: (experiment / name).read_text() for name in before} == before


def test_convert_png_writes_the_seed_layout(grid_experiment, tmp_path):
    data, storage = grid_experiment.parent.parent / "data", tmp_path / "storage"
    result = run_cli("convert", "--png", "--data-dir", data, "--classes", ",".join(SYNTHETIC_CLASSES),
                     "--split", GRID.split, "--storage", storage)
    assert result.returncode == 0, result.stderr
    (png,) = storage.glob("datasets/*/png")
    for part, total in (("train", 300), ("validation", 60), ("test", 60)):
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
def test_resume_of_a_damaged_search_is_one_line_and_changes_nothing(grid_experiment, tmp_path, capsys, damage,
                                                                     monkeypatch):
    """A copy of the finished search with one of the files `resume` needs missing or cut short: one line that names
    it, exit code 2, Ray never started, and the folder as it was (but for the claim the refused driver released)."""
    from quickdraw.cli import main

    copy = tmp_path / "storage"
    experiment = copy_experiment(grid_experiment, copy)
    shutil.copytree(grid_experiment.parent / "datasets", copy / "datasets")
    (split,) = list((copy / "datasets").iterdir())
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
