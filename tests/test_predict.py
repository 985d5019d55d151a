"""A grid over both models, the ensemble chosen on validation exported to best_model/, and `predict` run on it as a
user runs it: the test split through predict gives back the test accuracy the report states, from a .npy and from
the PNGs that `convert --png` writes, also once the trials' folders are gone; a damaged member leaves best_model/ as it
was; bad files get one line and exit code 2."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import (REPO, SYNTHETIC_CLASSES, imported_modules, is_ray, run_cli, run_in_process,
                      write_confusable_class_files)
from experiment_checks import chosen_trial, trial_dirs
from quickdraw.best_model import BestModel
from quickdraw.compute import Compute
from quickdraw.dataset import load_split
from quickdraw.model import MODELS
from quickdraw.portable import PortableModel, model_card
from quickdraw.storage import Location

pytestmark = pytest.mark.slow  # a real search of both models, and predict as its own process

MODEL_NAMES = ("seed", "vgg-bn")
LRS = (0.003,)
LINE = re.compile(r"^(?P<name>.+): (?P<top>.+)$")


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    """One grid of both models on synthetic drawings: (data folder, storage, experiment folder, its flags)."""
    root = tmp_path_factory.mktemp("predict")
    data, storage = write_confusable_class_files(root / "data"), root / "results"
    flags = ["--data-dir", data, "--classes", ",".join(SYNTHETIC_CLASSES), "--split", "300,60,60", "--storage", storage]
    result = run_cli(*flags, "--models", ",".join(MODEL_NAMES), "--lrs", ",".join(map(str, LRS)), "--batch-sizes",
                     "32", "--epochs", "3", "--name", "both")
    assert result.returncode == 0, result.stderr[-3000:]
    return data, storage, storage / "both", flags


def predictions(result) -> dict[str, list[tuple[str, float]]]:
    """predict's output: drawing name -> [(class, probability in %)] best first."""
    assert result.returncode == 0, result.stderr[-3000:]
    answers = {}
    for line in result.stdout.strip().splitlines():
        match = LINE.match(line)
        top = [part.rsplit(" ", 1) for part in match["top"].split(", ")]
        answers[match["name"]] = [(name, float(percent.rstrip("%"))) for name, percent in top]
    return answers


def stored_split(experiment: Path):
    return load_split(Location.parse(json.loads((experiment / "search.json").read_text())["dataset"]))


def test_the_grid_trains_each_model_at_each_setting(search):
    experiment = search[2]
    trials = trial_dirs(experiment)
    models = {t.name: json.loads((t / "params.json").read_text())["model"] for t in trials}
    assert sorted(models.values()) == sorted(MODEL_NAMES * len(LRS))
    assert all(f"_batch=32_model={model}_" in name for name, model in models.items())  # folder names say the model
    table = pd.read_csv(experiment / "summary.csv")
    assert sorted(table.model) == sorted(MODEL_NAMES * len(LRS))
    assert (table.status == "finished").all() and (table.test_accuracy > 60).all(), table
    assert (table.test_accuracy < 100).all()  # the confusable fifth
    summary = (experiment / "summary.md").read_text()
    assert "Best of each model: seed " in summary and "; vgg-bn " in summary


def test_best_model_holds_the_members_chosen_on_validation_with_their_tested_weights(search):
    experiment = search[2]
    folder = experiment / "best_model"
    config = json.loads((folder / "config.json").read_text())
    chosen = json.loads((experiment / "summary.json").read_text())["chosen_model"]
    table = pd.read_csv(experiment / "summary.csv")
    assert [(m["trial"], m["weight"], m["mirrored"]) for m in config["members"]] == \
        [(m["trial_dir"], m["weight"], m["mirrored"]) for m in chosen["members"]]
    assert sum(m["weight"] for m in config["members"]) == pytest.approx(1)
    assert round(100 * config["test_accuracy"], 2) == chosen["test_accuracy"]
    # Never worse on validation than the best trial, which the table marks; test accuracy only reported.
    assert chosen["best_val_accuracy"] >= chosen_trial(table).best_val_accuracy == chosen["best_trial"]["best_val_accuracy"]
    for member in config["members"]:
        trial = experiment / member["trial"]
        params = json.loads((trial / "params.json").read_text())
        assert all(member[name] == params[name] for name in ("model", "lr", "batch_size", "dropout", "ema_decay"))
        assert member["mirrored"] <= (member["model"] == "vgg-bn")  # only a network trained on mirror images
        weights = torch.load(folder / member["weights_file"], weights_only=True)
        network = MODELS[member["model"]].build(len(SYNTHETIC_CLASSES), member["dropout"])
        network.load_state_dict(weights)  # strict: every tensor of the named model, nothing else
        (checkpoint,) = sorted(trial.glob("checkpoint_*/trial_state.pt"))[-1:]
        tested = torch.load(checkpoint, weights_only=True)["progress"]["best_weights"]
        assert all(torch.equal(weights[name], tested[name]) for name in tested)
    assert (folder / "classes.txt").read_text().splitlines() == list(SYNTHETIC_CLASSES)
    assert "numpy_bitmap" in json.loads((folder / "preprocessing.json").read_text())["bitmap"]


def test_model_onnx_is_the_whole_ensemble_as_torch_computes_it(search):
    """model.onnx, run by onnxruntime, gives torch's fp32 probabilities on the whole test split, in one batch and one
    drawing at a time; config.json and the graph's metadata describe it alike; the safetensors hold the .pt weights."""
    from safetensors.torch import load_file

    experiment = search[2]
    folder, split = experiment / "best_model", stored_split(experiment)
    config = json.loads((folder / "config.json").read_text())
    portable = PortableModel.from_bytes((folder / "model.onnx").read_bytes())
    assert config["onnx"] == json.loads(json.dumps(model_card(list(SYNTHETIC_CLASSES)))) and \
        portable.classes == list(SYNTHETIC_CLASSES)
    expected = BestModel.load(Location.parse(str(experiment))).probabilities(split.x_test, Compute(torch.device("cpu")))
    np.testing.assert_allclose(portable.probabilities(split.x_test), expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.concatenate([portable.probabilities(drawing[np.newaxis]) for drawing in split.x_test]),
                               expected, rtol=0, atol=1e-5)
    # The trials tested in the precision --precision auto resolved to (bf16 on CPUs that compute it natively).
    accuracy = 100 * np.mean(portable.probabilities(split.x_test).argmax(1) == split.y_test)
    assert accuracy == pytest.approx(100 * config["test_accuracy"], abs=2)
    for member in config["members"]:
        pt = torch.load(folder / member["weights_file"], weights_only=True)
        safe = load_file(folder / member["safetensors_file"])
        assert pt.keys() == safe.keys() and all(torch.equal(pt[name], safe[name]) for name in pt)


def test_a_damaged_or_missing_member_leaves_best_model_as_it_was(search, tmp_path):
    import shutil

    experiment = tmp_path / "copy"
    shutil.copytree(search[2], experiment)
    before = {file.name: file.read_bytes() for file in (experiment / "best_model").iterdir()}
    member = json.loads((experiment / "best_model" / "config.json").read_text())["members"][-1]["trial"]
    checkpoint = sorted((experiment / member).glob("checkpoint_*"))[-1]
    for damage in ("cut short", "missing"):
        if damage == "missing":
            shutil.rmtree(checkpoint)
        else:
            data = (checkpoint / "trial_state.pt").read_bytes()
            (checkpoint / "trial_state.pt").write_bytes(data[:len(data) // 2])
        reported = run_in_process("report", experiment)
        assert reported.returncode == 0, reported.stderr[-3000:]
        (line,) = [line for line in reported.stderr.splitlines() if "best_model" in line]
        assert line.startswith(f"{experiment / 'best_model'} not written (left as it was): the member {member} ")
        assert {file.name: file.read_bytes() for file in (experiment / "best_model").iterdir()} == before


def test_a_report_of_the_same_model_keeps_its_model_onnx_and_exports_a_changed_one(search, tmp_path, monkeypatch):
    """config.json holds each other file's SHA-256; a report that chooses the same model reuses model.onnx (the
    exporter takes seconds), and one whose model.onnx no longer matches its SHA-256 exports it again."""
    import hashlib
    import shutil

    experiment = shutil.copytree(search[2], tmp_path / "copy")
    folder = experiment / "best_model"
    assert run_in_process("report", experiment).returncode == 0  # config.json names the copy: exported again
    hashes = json.loads((folder / "config.json").read_text())["sha256"]
    assert hashes == {file.name: hashlib.sha256(file.read_bytes()).hexdigest()
                      for file in folder.iterdir() if file.name != "config.json"}
    before = {file.name: file.read_bytes() for file in folder.iterdir()}

    def exporter(*_):
        raise RuntimeError("exported again")

    monkeypatch.setattr("quickdraw.best_model.onnx_model", exporter)
    reused = run_in_process("report", experiment)
    assert reused.returncode == 0 and "best_model" not in reused.stderr, reused.stderr
    assert {file.name: file.read_bytes() for file in folder.iterdir()} == before
    (folder / "model.onnx").write_bytes(before["model.onnx"][:-1] + b"\0")
    changed = run_in_process("report", experiment)
    assert f"{folder} not written (left as it was): exported again" in changed.stderr, changed.stderr


def test_best_model_predicts_alone_once_the_trials_are_gone(search, tmp_path):
    import shutil

    moved = tmp_path / "moved"
    shutil.copytree(search[2] / "best_model", moved / "best_model")  # nothing of the experiment but best_model/
    np.save(tmp_path / "test.npy", stored_split(search[2]).x_test)
    assert run_in_process("predict", moved, tmp_path / "test.npy").stdout.replace(str(moved), "") == \
        run_in_process("predict", search[2], tmp_path / "test.npy").stdout.replace(str(search[2]), "")


def test_predicting_the_test_split_from_a_npy_gives_the_stored_test_accuracy(search, tmp_path):
    experiment = search[2]
    split = stored_split(experiment)
    np.save(tmp_path / "test.npy", split.x_test)  # (N, 28, 28)
    np.save(tmp_path / "flat.npy", split.x_test[:5].reshape(5, 784))  # Google's own layout
    answers = predictions(run_in_process("predict", experiment, tmp_path / "test.npy", tmp_path / "flat.npy"))
    assert len(answers) == len(split.y_test) + 5
    predicted = [answers[f"{tmp_path / 'test.npy'}[{n}]"][0][0] for n in range(len(split.y_test))]
    accuracy = 100 * np.mean(np.array(predicted) == np.array(split.classes)[split.y_test])
    assert round(accuracy, 2) == json.loads((experiment / "summary.json").read_text())["chosen_model"]["test_accuracy"]
    assert accuracy == pytest.approx(100 * json.loads((experiment / "best_model" / "config.json").read_text())["test_accuracy"])
    for n in range(5):
        first = answers[f"{tmp_path / 'flat.npy'}[{n}]"]
        assert len(first) == 3 and first == answers[f"{tmp_path / 'test.npy'}[{n}]"]
        assert sum(p for _, p in first) <= 100.2 and first[0][1] >= first[1][1] >= first[2][1]


def test_predicting_the_test_pngs_gives_the_stored_test_accuracy(search):
    data, storage, experiment, flags = search
    result = run_in_process("convert", *flags, "--png")  # the seed's PNGs, black on white, of the same split
    assert result.returncode == 0, result.stderr[-3000:]
    (png_root,) = storage.glob("datasets/*/png")
    files = sorted((png_root / "test").glob("*/*.png"))
    answers = predictions(run_in_process("predict", experiment, *files))
    right = [answers[str(f)][0][0].capitalize() == f.parent.name for f in files]
    stored = 100 * json.loads((experiment / "best_model" / "config.json").read_text())["test_accuracy"]
    assert 100 * np.mean(right) == pytest.approx(stored)


def test_predict_does_not_import_ray(search, tmp_path):
    np.save(tmp_path / "one.npy", stored_split(search[2]).x_test[:1])
    result, modules = imported_modules("predict", search[2], tmp_path / "one.npy")
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 1, result.stderr[-3000:]
    assert {"torch", "quickdraw.best_model", "quickdraw.predict"} <= modules  # the log holds what ran
    assert not [module for module in modules if is_ray(module)]


def test_predict_top_flag(search, tmp_path):
    np.save(tmp_path / "one.npy", stored_split(search[2]).x_test[:1])
    (answer,) = predictions(run_in_process("predict", search[2], tmp_path / "one.npy", "--top", "1")).values()
    assert len(answer) == 1


def bad_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, a word the error line must hold)."""
    Image.fromarray(np.full((40, 40), 255, np.uint8)).save(folder / "whole.png")
    (folder / "truncated.png").write_bytes((folder / "whole.png").read_bytes()[:60])
    (folder / "notes.png").write_text("not an image\n")
    (folder / "notes.txt").write_text("not an image\n")
    np.save(folder / "floats.npy", np.zeros((2, 784)))
    np.save(folder / "shape.npy", np.zeros((2, 30), np.uint8))
    np.save(folder / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (folder / "broken.npy").write_bytes(b"\x93NUMPY garbage")
    return {
        "truncated PNG": (folder / "truncated.png", "not an image"),
        "text named .png": (folder / "notes.png", "not an image"),
        "text file": (folder / "notes.txt", "not an image"),
        "blank image": (folder / "whole.png", "blank"),
        "float .npy": (folder / "floats.npy", "uint8"),
        "wrong shape .npy": (folder / "shape.npy", "(N, 784)"),
        "pickled .npy": (folder / "objects.npy", ".npy"),
        "corrupt .npy": (folder / "broken.npy", ".npy"),
        "missing file": (folder / "absent.png", "no such file"),
    }


def assert_one_line_error(result, *mentions: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output and not result.stdout, output
    (line,) = result.stderr.strip().splitlines()
    for mention in mentions:
        assert mention in line, line


def test_bad_drawing_files_get_one_line_each(search, tmp_path):
    good = tmp_path / "good.npy"
    np.save(good, stored_split(search[2]).x_test[:2])
    for kind, (path, mention) in bad_files(tmp_path).items():
        result = run_in_process("predict", search[2], good, path)  # the good file first: still no answer printed
        assert_one_line_error(result, str(path), mention)


def test_predict_on_a_folder_without_a_best_model(tmp_path):
    (tmp_path / "drawing.npy").write_bytes(b"")
    result = run_in_process("predict", tmp_path, tmp_path / "drawing.npy")
    assert_one_line_error(result, str(tmp_path), "best_model", "report")


def test_predict_top_must_be_positive(search, tmp_path):
    assert_one_line_error(run_in_process("predict", search[2], tmp_path / "x.npy", "--top", "0"), "--top")


def test_predict_with_a_damaged_best_model(search, tmp_path):
    experiment = tmp_path / "copy"
    (experiment / "best_model").mkdir(parents=True)
    for file in (search[2] / "best_model").iterdir():
        (experiment / "best_model" / file.name).write_bytes(file.read_bytes())
    (experiment / "best_model" / "weights_0.pt").write_bytes(b"not a torch file")
    np.save(tmp_path / "one.npy", stored_split(search[2]).x_test[:1])
    result = run_in_process("predict", experiment, tmp_path / "one.npy")
    assert_one_line_error(result, f"{experiment / 'best_model'} cannot be loaded", "report")


class Payload:
    """A pickle that creates `marker` when it is un-pickled: planted where a results folder can hold a pickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def is_pickle_hex(text: str) -> bool:
    """Tune's hex-encoded cloudpickle fields in its experiment state (protocol 2 and up start with 0x80)."""
    return len(text) > 4 and len(text) % 2 == 0 and text[:2] == "80" and all(c in "0123456789abcdef" for c in text)


def plant(value, payload: str):
    """`value` (the experiment state's JSON) with every hex pickle in it, at any depth, replaced by `payload`."""
    if isinstance(value, dict):
        return {key: plant(item, payload) for key, item in value.items()}
    if isinstance(value, list):
        return [plant(item, payload) for item in value]
    if isinstance(value, str):
        if is_pickle_hex(value):
            return payload
        if value[:1] in "{[":  # the trial entries are JSON strings within the JSON
            try:
                return json.dumps(plant(json.loads(value), payload))
            except ValueError:
                return value
    return value


def test_a_results_folder_is_never_unpickled(search, tmp_path):
    """Every pickle a results folder can hold replaced by one that creates a file: `predict` and `report` never
    run it; they answer, or fail with one line."""
    import pickle
    import shutil

    marker = tmp_path / "pwned"
    payload = pickle.dumps(Payload(marker))
    pickle.loads(payload)  # the payload is live: un-pickled, it creates the marker
    assert marker.exists()
    marker.unlink()

    experiment = tmp_path / "copy"
    shutil.copytree(search[2], experiment)
    (state_file,) = experiment.glob("experiment_state-*.json")
    state = json.loads(state_file.read_text())
    planted = plant(state, payload.hex())
    assert planted != state  # the trial entries' pickled fields were there to replace
    state_file.write_text(json.dumps(planted))
    pickles = [*experiment.rglob("*.pkl"), *experiment.glob("basic-variant-state*"),
               *experiment.glob("searcher-state-*"), experiment / "tuner.pkl",
               *experiment.glob("*/checkpoint_*/*.pt"), *experiment.glob("best_model/weights_*.pt")]
    assert len(list(experiment.glob("*/checkpoint_*/*.pt"))) == 2  # each trial's training checkpoint
    for file in pickles:
        file.write_bytes(payload)
    torch.save(Payload(marker), experiment / "best_model" / "weights_0.pt")  # the payload in torch.save's zip format
    for predictions_file in experiment.glob("*/predictions.npz"):
        np.savez(predictions_file, validation=np.array([Payload(marker)], dtype=object))
    np.save(tmp_path / "one.npy", stored_split(search[2]).x_test[:1])

    predicted = run_in_process("predict", experiment, tmp_path / "one.npy")
    assert_one_line_error(predicted, f"{experiment / 'best_model'} cannot be loaded", "never un-pickled")
    reported = run_in_process("report", experiment)
    assert not marker.exists()
    assert reported.returncode == 0 and "Traceback" not in reported.stderr, reported.stderr[-3000:]
    assert "best_model not written" in reported.stderr  # its checkpoint is no tensor file
    assert "predictions.npz cannot be read" in (experiment / "report.html").read_text()


def test_predict_bounds_a_long_thin_image_by_its_ink(search, tmp_path):
    """A 300000 x 250 PNG of a line (about 70 KB): padded square before reducing, it would take 84 GB."""
    from PIL import ImageDraw

    image = Image.new("L", (300_000, 250), 255)
    ImageDraw.Draw(image).line([(1000, 125), (299_000, 125)], fill=0, width=3)
    image.save(tmp_path / "long.png")
    script = ("import atexit, resource, runpy, sys; sys.argv = ['tune_search.py', *sys.argv[1:]]; "
              "atexit.register(lambda: print(f'maxrss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}', "
              "file=sys.stderr)); runpy.run_path('tune_search.py', run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", script, "predict", search[2], tmp_path / "long.png"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith(f"{tmp_path / 'long.png'}: ")
    peak_kib = int(re.search(r"maxrss (\d+)", result.stderr)[1])
    assert peak_kib < 2 * 2**20, result.stderr  # under 2 GiB: the image's own 75 M pixels, a few times


def test_predict_refuses_forged_npy_files_in_one_line(search, tmp_path, capsys):
    """An .npz renamed .npy, and an .npy whose header claims 10^12 drawings: one line each, before any read."""
    from quickdraw.cli import main

    with open(tmp_path / "archive.npy", "wb") as f:  # a file object: np.savez would append .npz to a name
        np.savez(f, drawings=np.zeros((2, 784), np.uint8))
    forged = tmp_path / "forged.npy"
    with open(forged, "wb") as f:
        np.lib.format.write_array_header_2_0(f, {"descr": "|u1", "fortran_order": False, "shape": (10**12, 784)})
        f.write(np.zeros((2, 784), np.uint8).tobytes())
    for path, mention in ((tmp_path / "archive.npy", "is not a .npy file"), (forged, "truncated")):
        capsys.readouterr()
        started = time.perf_counter()
        assert main(["predict", str(search[2]), str(path)]) == 2
        assert time.perf_counter() - started < 10
        output = capsys.readouterr()
        (line,) = output.err.strip().splitlines()
        assert not output.out and str(path) in line and mention in line, line
