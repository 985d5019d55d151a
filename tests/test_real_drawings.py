"""The whole command on real Quick, Draw! drawings from ../shared/quickdraw (or $QUICKDRAW_DATA), fetched the
way a new user's run fetches them: from a mirror over HTTP (a real server on loopback), first rows only."""

import json

import numpy as np
import pytest
from PIL import Image

from conftest import SHARED_CLASSES, SHARED_DRAWINGS, needs_shared_drawings, run_cli
from experiment_checks import check_experiment
from http_mirror import Mirror, serve
from quickdraw.dataset import load_split
from quickdraw.storage import Location

pytestmark = pytest.mark.slow  # a real search on the real drawings

LRS, BATCH_SIZES, EPOCHS = (0.001,), (64, 128), 2
PER_CLASS = 1000 + 200 + 100


@needs_shared_drawings
def test_real_drawings_downloaded_by_the_run_learn_far_above_chance(tmp_path):
    mirror = Mirror({f"{name}.npy": (SHARED_DRAWINGS / f"{name}.npy").read_bytes() for name in SHARED_CLASSES})
    server = serve(mirror)
    data, storage = tmp_path / "data", tmp_path / "results"
    try:
        result = run_cli(
            "--data-dir", data, "--base-url", mirror.base_url, "--classes", ",".join(SHARED_CLASSES),
            "--split", "6000,1200,600",  # 1000/200/100 per class: the seed's proportions, smaller
            "--lrs", ",".join(map(str, LRS)), "--batch-sizes", ",".join(map(str, BATCH_SIZES)),
            "--epochs", EPOCHS, "--storage", storage, "--name", "real",
        )
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr[-3000:]
    for name in SHARED_CLASSES:
        np.testing.assert_array_equal(np.load(data / f"{name}.npy"), np.load(SHARED_DRAWINGS / f"{name}.npy")[:PER_CLASS])
    table = check_experiment(storage / "real", LRS, BATCH_SIZES, EPOCHS)
    chance = 100 / len(SHARED_CLASSES)
    assert table.test_accuracy.max() > 4 * chance  # about 67%; two epochs reach about 90
    check_predict_on_large_black_on_white_pngs(storage / "real", tmp_path / "pngs")


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
