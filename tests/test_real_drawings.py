"""The whole command on real Quick, Draw! drawings from ../shared/quickdraw (or $QUICKDRAW_DATA), fetched the
way a new user's run fetches them: from a mirror over HTTP (a real server on loopback), first rows only (conftest's
`real_experiment`)."""

import json

import numpy as np
import pytest
from PIL import Image

from conftest import REAL, SHARED_CLASSES, SHARED_DRAWINGS, needs_shared_drawings, run_cli
from experiment_checks import check_experiment
from quickdraw.dataset import load_split
from quickdraw.storage import Location

pytestmark = pytest.mark.slow  # a real search on the real drawings

PER_CLASS = sum(map(int, REAL.split.split(","))) // len(SHARED_CLASSES)  # of each class file, read by the run


@needs_shared_drawings
def test_real_drawings_downloaded_by_the_run_learn_far_above_chance(real_experiment, tmp_path):
    data = real_experiment.parent.parent / "data"
    for name in SHARED_CLASSES:
        np.testing.assert_array_equal(np.load(data / f"{name}.npy"), np.load(SHARED_DRAWINGS / f"{name}.npy")[:PER_CLASS])
    table = check_experiment(real_experiment, REAL.lrs, REAL.batch_sizes, REAL.epochs)
    chance = 100 / len(SHARED_CLASSES)
    assert table.test_accuracy.max() > 4 * chance  # about 67%; two epochs reach about 90
    check_predict_on_large_black_on_white_pngs(real_experiment, tmp_path / "pngs")


def check_predict_on_large_black_on_white_pngs(experiment, folder):
    """Real test drawings as a user might save them, 280x280 and black on white, get the answers their
    28x28 bitmaps get, nearly always."""
    split = load_split(Location.parse(json.loads((experiment / "search.json").read_text())["dataset"]))
    drawings = split.x_test[::10]
    np.save(folder.parent / "bitmaps.npy", drawings)
    folder.mkdir()
    files = []
    for n, drawing in enumerate(drawings):
        files.append(folder / f"{n}.png")
        Image.fromarray(255 - drawing).resize((280, 280), Image.Resampling.NEAREST).save(files[-1])
    result = run_cli("predict", experiment, folder.parent / "bitmaps.npy", *files)
    assert result.returncode == 0, result.stderr[-3000:]
    top = [line.split(": ", 1)[1].split(" ", 1)[0] for line in result.stdout.splitlines()]
    from_bitmaps, from_pngs = top[:len(drawings)], top[len(drawings):]
    assert len(from_pngs) == len(drawings)
    assert np.mean(np.array(from_bitmaps) == np.array(from_pngs)) >= 0.9
