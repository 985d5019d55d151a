"""Values that are refused in one line (exit code 2, nothing written lost): non-finite hyperparameters, space files
with duplicate keys or too large to be one, class names that differ only in case, a split.npz swapped after its
conversion, a search.json edited after its search wrote it; and what is accepted or mended instead: file:// storage,
strict JSON in every file we write, staged PNG folders a killed `convert --png` left, the TensorBoard line quoted,
16-bit PNGs read as their 8-bit versions. In this process (the values are refused before Ray starts), on planted
folders and copies of the session's finished grid."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shlex
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, copy_experiment, run_in_process, write_class_files
from quickdraw.storage import Location

CLASSES = ("circle", "line", "hot dog")


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` with its bytes (None for folders), but the drivers' claims, which a refused driver
    takes and releases."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*")) if "drivers" not in p.relative_to(folder).parts}


def one_line(result, *mentions: str) -> str:
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.returncode == 2, output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for mention in mentions:
        assert mention in lines[0], f"{mention!r} not in {lines[0]!r}"
    return lines[0]


def strict(text: str):
    """JSON parsed as strict readers do: NaN, Infinity and -Infinity are not JSON."""
    def refuse(token):
        raise ValueError(f"{token} is not JSON")
    return json.loads(text, parse_constant=refuse)


def run_flags(tmp_path: Path, *flags) -> list:
    """A tiny `run` that would fail at once (no class files, no download) if the values were accepted."""
    return ["run", "--data-dir", tmp_path / "no-data", "--no-download", "--classes", "cat,dog", "--storage",
            tmp_path / "results", "--epochs", "1", *flags]


# --- hyperparameters' values, from flags and space files alike ---------------------------------------------------


@pytest.mark.parametrize("flags, mention", [
    (("--lrs", "nan"), "--lrs"),
    (("--lrs", "0.01,inf"), "--lrs"),
    (("--lrs=-inf",), "--lrs"),
    (("--batch-sizes", "1e400"), "--batch-sizes"),
    (("--dropout", "nan"), "--dropout"),
    (("--weight-decay", "inf"), "--weight-decay"),
])
def test_non_finite_flags_are_refused(tmp_path, flags, mention):
    line = one_line(run_in_process(*run_flags(tmp_path, *flags)), mention, "is not a finite number")
    assert not (tmp_path / "results").exists(), line


@pytest.mark.parametrize("name, text", [
    ("space.yaml", "batch_size: 1e400\n"),
    ("space.yaml", "batch_size: .nan\n"),
    ("space.yaml", "lr: [0.01, .inf]\n"),
    ("space.yaml", "batch_size: {randint: [16, 1e400]}\n"),
    ("space.yaml", "lr: 1" + "0" * 400 + "\n"),  # an integer beyond a float's range
    ("space.json", '{"lr": NaN}\n'),
    ("space.json", '{"batch_size": 1e400}\n'),
    ("space.json", '{"weight_decay": {"uniform": [0, Infinity]}}\n'),
])
def test_non_finite_space_values_are_refused(tmp_path, name, text):
    space = tmp_path / name
    space.write_text(text)
    one_line(run_in_process(*run_flags(tmp_path, "--space", space, "--search", "random")), f"--space {space}",
             "is not a finite number")
    assert not (tmp_path / "results").exists()


def test_a_choice_of_one_value_asks_for_a_list(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("lr: {choice: 0.1}\n")
    line = one_line(run_in_process(*run_flags(tmp_path, "--space", space)), f"--space {space}: lr",
                    "choice takes a list of values, not 0.1")
    assert "empty" not in line


@pytest.mark.parametrize("name, text, key", [
    ("space.yaml", "lr: [0.1]\nbatch_size: [32]\nlr: [0.01]\n", "'lr'"),
    ("space.yaml", "lr: {choice: [0.1], choice: [0.01]}\n", "'choice'"),
    ("space.json", '{"dropout": 0.1, "dropout": 0.3}\n', "'dropout'"),
])
def test_a_space_file_with_a_key_given_twice_is_refused(tmp_path, name, text, key):
    space = tmp_path / name
    space.write_text(text)
    one_line(run_in_process(*run_flags(tmp_path, "--space", space)), f"--space {space}", f"{key} is given twice")


def test_a_yaml_merge_may_override_what_it_brings_in(tmp_path):
    """YAML's merge key (<<) is not a key given twice: the mapping's own keys override the merged ones."""
    from quickdraw.space import load_space

    space = tmp_path / "space.yaml"
    space.write_text("lr: &grid {choice: [0.1, 0.01]}\nbatch_size: {<<: *grid, choice: [32, 64]}\n")
    assert [d.args for d in load_space(space)] == [(0.1, 0.01), (32, 64)]


def test_a_space_file_over_the_limit_is_refused_before_it_is_parsed(tmp_path):
    from quickdraw.space import MAX_SPACE_BYTES, load_space

    space = tmp_path / "space.yaml"
    space.write_text("lr: [0.01]\n" + "#" * MAX_SPACE_BYTES + "\n")
    start = time.perf_counter()
    one_line(run_in_process(*run_flags(tmp_path, "--space", space)), f"--space {space} is over 64 KiB")
    assert time.perf_counter() - start < 1
    at_limit = "lr: [0.01]\n#"
    space.write_text(at_limit + "#" * (MAX_SPACE_BYTES - len(at_limit) - 1) + "\n")  # exactly the limit: read
    assert load_space(space)[0].args == (0.01,)


# --- class names, storage URIs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [("run",), ("convert", "--png"), ("download",)])
def test_classes_that_differ_only_in_case_are_refused(tmp_path, command):
    data = write_class_files(tmp_path / "data", classes=("cat", "Cat", "dog"))
    before = snapshot(tmp_path)
    storage = () if command == ("download",) else ("--storage", tmp_path / "results")
    result = run_in_process(*command, "--data-dir", data, "--classes", "cat,Cat,dog", "--split", "30,6,6",
                            "--base-url", "http://127.0.0.1:9/", *storage)
    one_line(result, "--classes names a class twice (cat,Cat", "differ only in case")
    assert snapshot(tmp_path) == before


def test_file_uris_are_local_paths(tmp_path):
    """file:///path is the local path (Ray Tune takes local storage as a path, and refused the URI after the
    conversion); its percent-escapes are decoded; a file URI naming another host is refused in one line."""
    folder = tmp_path / "with space"
    uri = "file://" + str(folder).replace(" ", "%20")
    assert Location.parse(uri) == Location.parse(str(folder))
    assert Location.parse(uri + "/").uri == str(folder)
    data = write_class_files(tmp_path / "data", classes=CLASSES)
    result = run_in_process("convert", "--data-dir", data, "--classes", ",".join(CLASSES), "--split", "30,6,6",
                            "--storage", uri)
    assert result.returncode == 0, result.stderr
    (dataset,) = (folder / "datasets").iterdir()
    assert f"-> {dataset}\n" in result.stdout
    one_line(run_in_process("convert", "--data-dir", data, "--classes", ",".join(CLASSES), "--storage",
                            "file://elsewhere/results"), "--storage file://elsewhere/results")


# --- strict JSON ------------------------------------------------------------------------------------------------


def test_every_json_we_write_goes_through_strict_json():
    """One writer of JSON (quickdraw.strict_json, allow_nan=False): no module writes json.dump(s) of its own."""
    package = REPO / "quickdraw"
    writers = [f"{path.name}:{n}" for path in package.glob("*.py") if path.name != "strict_json.py"
               for n, line in enumerate(path.read_text().splitlines(), 1) if re.search(r"\bjson\.dumps?\(", line)]
    assert writers == []
    from quickdraw import strict_json

    with pytest.raises(ValueError):
        strict_json.dumps({"val_loss": math.nan})
    assert strict(strict_json.dumps(strict_json.nulled({"a": [math.inf, 1.5], "b": -math.inf}))) == \
        {"a": [None, 1.5], "b": None}


@pytest.mark.slow  # reads a finished search and writes its whole report
def test_non_finite_results_are_null_in_the_summary_and_the_model(grid_experiment, tmp_path):
    """A trial whose last result holds NaN and infinities (as a diverged trial's may): summary.json, its --format
    json export and best_model/config.json are strict JSON, the numbers null."""
    experiment = copy_experiment(grid_experiment, tmp_path)
    results = sorted(experiment.glob("*/result.json"))
    for results_file in results:
        lines = results_file.read_text().splitlines()
        last = json.loads(lines[-1]) | {"train_seconds": math.inf, "best_val_loss": math.nan}
        results_file.write_text("\n".join(lines[:-1] + [json.dumps(last)]) + "\n")
    assert "Infinity" in results[0].read_text()

    result = run_in_process("report", experiment, "--format", "json")
    assert result.returncode == 0, result.stderr
    for text in (result.stdout, (experiment / "summary.json").read_text(),
                 (experiment / "best_model" / "config.json").read_text()):
        strict(text)
    trials = strict(result.stdout)["trials"]
    assert {trial["train_seconds"] for trial in trials} == {None}


# --- a swapped split.npz ----------------------------------------------------------------------------------------


def convert(data: Path, storage: Path, *flags):
    return run_in_process("convert", "--data-dir", data, "--classes", ",".join(CLASSES), "--split", "30,6,6",
                          "--storage", storage, *flags)


def swap_split(dataset: Path) -> None:
    """Another split of the same drawings, as another seed's would be: the same shapes, other drawings in each part."""
    with np.load(dataset / "split.npz") as arrays:
        parts = dict(arrays)
    parts["x_train"], parts["x_validation"] = parts["x_train"][::-1].copy(), parts["x_validation"][::-1].copy()
    with open(dataset / "split.npz", "wb") as file:
        np.savez(file, **parts)


def test_the_manifest_holds_the_split_hash_written_at_the_conversion(tmp_path):
    data = write_class_files(tmp_path / "data", classes=CLASSES)
    assert convert(data, tmp_path / "results").returncode == 0
    (dataset,) = (tmp_path / "results" / "datasets").iterdir()
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["split_sha256"] == hashlib.sha256((dataset / "split.npz").read_bytes()).hexdigest()


def test_a_swapped_split_is_refused_where_it_is_reused(tmp_path):
    """`convert` (and `run`, through the same reader) finds the stored split swapped: one line naming the file."""
    data = write_class_files(tmp_path / "data", classes=CLASSES)
    assert convert(data, tmp_path / "results").returncode == 0
    (dataset,) = (tmp_path / "results" / "datasets").iterdir()
    swap_split(dataset)
    before = snapshot(tmp_path / "results")
    one_line(convert(data, tmp_path / "results"), f"{dataset / 'split.npz'} has changed since it was converted")
    assert snapshot(tmp_path / "results") == before


def test_a_split_without_a_recorded_hash_is_taken_as_it_is(tmp_path):
    """A manifest written before the hash was recorded: the split is used unchecked (docs/data.md says why)."""
    data = write_class_files(tmp_path / "data", classes=CLASSES)
    assert convert(data, tmp_path / "results").returncode == 0
    (dataset,) = (tmp_path / "results" / "datasets").iterdir()
    manifest = json.loads((dataset / "manifest.json").read_text())
    del manifest["split_sha256"]
    (dataset / "manifest.json").write_text(json.dumps(manifest))
    swap_split(dataset)
    result = convert(data, tmp_path / "results")
    assert result.returncode == 0 and result.stdout.startswith("reused"), result.stderr


@pytest.fixture
def own_split_copy(grid_experiment, tmp_path) -> tuple[Path, Path]:
    """A copy of the finished grid with a copy of its split beside it, which its search.json names."""
    storage = tmp_path / "storage"
    experiment = copy_experiment(grid_experiment, storage)
    shutil.copytree(grid_experiment.parent / "datasets", storage / "datasets")
    (dataset,) = (storage / "datasets").iterdir()
    record = json.loads((experiment / "search.json").read_text())
    (experiment / "search.json").write_text(json.dumps(record | {"dataset": str(dataset)}, indent=2))
    return experiment, dataset


@pytest.mark.slow  # reads a finished search
@pytest.mark.parametrize("command", ["report", "resume"])
def test_a_swapped_split_is_refused_by_report_and_resume(own_split_copy, command):
    experiment, dataset = own_split_copy
    swap_split(dataset)
    before = snapshot(experiment.parent)
    one_line(run_in_process(command, experiment), f"{dataset / 'split.npz'} has changed since it was converted")
    assert snapshot(experiment.parent) == before


# --- an edited search.json --------------------------------------------------------------------------------------


@pytest.mark.slow  # reads a finished search
def test_an_edited_search_json_is_refused_by_resume(own_split_copy):
    """Ray Tune's restore goes on with the space it pickled: an edit of search.json's config would be shown by the
    report but never run. `resume` refuses it, before Ray starts, and leaves the folder as it was."""
    experiment, _ = own_split_copy
    record = json.loads((experiment / "search.json").read_text())
    record["config"]["space"]["lr"] = [0.1, 0.01]
    (experiment / "search.json").write_text(json.dumps(record, indent=2))
    before = snapshot(experiment)
    one_line(run_in_process("resume", experiment), f"{experiment / 'search.json'}: its config was edited")
    assert snapshot(experiment) == before


def written_record(tmp_path: Path) -> tuple[Path, dict]:
    """A search.json as a search writes it, and its JSON."""
    from quickdraw.config import SearchConfig
    from quickdraw.provenance import run_record
    from quickdraw.search_record import SearchRecord

    SearchRecord(SearchConfig(), "/nowhere", {"cpu": 1.0, "gpu": 0}, run_record({"CPU": 2.0}, 1)).write(
        Location.parse(str(tmp_path)))
    return tmp_path / "search.json", json.loads((tmp_path / "search.json").read_text())


@pytest.mark.parametrize("edit", [
    lambda config: config["space"].update(lr=[0.1, 0.01]),
    lambda config: config.update(epochs=8),
    lambda config: config["data"].update(seed=1),
], ids=["space", "epochs", "seed"])
def test_an_edited_config_is_refused_and_a_new_layout_is_not(tmp_path, edit):
    from quickdraw.errors import UserError
    from quickdraw.search_record import SearchRecord

    file, record = written_record(tmp_path)
    file.write_text(json.dumps(record, indent=4, sort_keys=True))  # the same config, laid out anew
    assert SearchRecord.read(Location.parse(str(tmp_path))).config.epochs == 50
    edit(record["config"])
    file.write_text(json.dumps(record, indent=2))
    with pytest.raises(UserError, match=re.escape(f"{file}: its config was edited after the search wrote it")):
        SearchRecord.read(Location.parse(str(tmp_path)))


def test_a_search_json_from_before_the_hash_is_read_as_it_is(tmp_path):
    from quickdraw.search_record import SearchRecord

    file, record = written_record(tmp_path)
    del record["config_sha256"]
    record["config"]["epochs"] = 8
    file.write_text(json.dumps(record, indent=2))
    assert SearchRecord.read(Location.parse(str(tmp_path))).config.epochs == 8


# --- what a killed convert --png left, the TensorBoard line, 16-bit PNGs ----------------------------------------


def plant_staged_pngs(dataset: Path, age_s: float) -> Path:
    staged = dataset / f".png.tmp-{os.urandom(16).hex()}"
    (staged / "train" / "Circle").mkdir(parents=True)
    (staged / "train" / "Circle" / "0.png").write_bytes(b"\x89PNG")
    then = time.time() - age_s
    for path in (staged / "train" / "Circle" / "0.png", staged / "train" / "Circle", staged / "train", staged):
        os.utime(path, (then, then))
    return staged


@pytest.mark.parametrize("png_written", [False, True], ids=["png-missing", "png-there"])
def test_convert_png_removes_staged_folders_that_killed_runs_left(tmp_path, png_written):
    """Staged PNG folders nothing has written into for 5 minutes are removed by the next `convert --png`, whether
    png/ is there already or not; one written into recently may belong to a live run and is kept."""
    data = write_class_files(tmp_path / "data", classes=CLASSES)
    assert convert(data, tmp_path / "results", *(("--png",) if png_written else ())).returncode == 0
    (dataset,) = (tmp_path / "results" / "datasets").iterdir()
    stale, live = plant_staged_pngs(dataset, age_s=3600), plant_staged_pngs(dataset, age_s=10)
    result = convert(data, tmp_path / "results", "--png")
    assert result.returncode == 0, result.stderr
    assert not stale.exists() and live.is_dir()
    assert len(list((dataset / "png" / "test" / "Hot dog").iterdir())) == 2


def test_the_tensorboard_line_is_shell_quoted(tmp_path):
    """The line under a search's table: its TensorBoard command pastes into a shell as one --logdir."""
    from quickdraw.cli import where_to_look

    experiment = Location.parse(str(tmp_path / "my results; rm -rf ~" / "grid"))
    command = where_to_look(experiment).split("TensorBoard: ")[1]
    assert shlex.split(command) == ["tensorboard", "--logdir", str(experiment)]


def test_a_16_bit_png_reads_as_its_8_bit_version(tmp_path):
    """A drawing saved with 16 bits a level (Pillow's I;16; v * 257 for the 8-bit v) reads as the 8-bit drawing, at
    28x28 and at other sizes: scaled by its depth, not clipped at 255 (which left it blank)."""
    from quickdraw.images import read_drawings

    drawing = np.zeros((28, 28), np.uint8)  # strokes of every grey level, as anti-aliased drawings have
    drawing[4:24, 6] = drawing[12, 4:24] = np.linspace(40, 255, 20).astype(np.uint8)
    drawing[16:20, 16:22] = 128
    for side in (28, 112):
        eight = Image.fromarray(255 - drawing).resize((side, side), Image.Resampling.NEAREST)  # dark on light
        sixteen = Image.fromarray(np.asarray(eight).astype(np.uint16) * 257)
        assert sixteen.mode == "I;16"
        eight.save(tmp_path / f"8-{side}.png")
        sixteen.save(tmp_path / f"16-{side}.png")
        assert Image.open(tmp_path / f"16-{side}.png").mode == "I;16"
        assert np.array_equal(read_drawings(tmp_path / f"16-{side}.png"), read_drawings(tmp_path / f"8-{side}.png"))
