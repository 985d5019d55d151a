"""The whole command on real Quick, Draw! drawings from ../shared/quickdraw (or $QUICKDRAW_DATA)."""

from conftest import SHARED_CLASSES, SHARED_DRAWINGS, needs_shared_drawings, run_cli
from experiment_checks import check_experiment

LRS, BATCH_SIZES, EPOCHS = (0.001,), (64, 128), 2


@needs_shared_drawings
def test_real_drawings_learn_far_above_chance(tmp_path):
    storage = tmp_path / "results"
    result = run_cli(
        "--data-dir", SHARED_DRAWINGS, "--classes", ",".join(SHARED_CLASSES),
        "--split", "6000,1200,600",  # 1000/200/100 per class: the seed's proportions, smaller
        "--lrs", ",".join(map(str, LRS)), "--batch-sizes", ",".join(map(str, BATCH_SIZES)),
        "--epochs", EPOCHS, "--storage", storage, "--name", "real",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = check_experiment(storage / "real", LRS, BATCH_SIZES, EPOCHS)
    chance = 100 / len(SHARED_CLASSES)
    assert table.test_accuracy.max() > 4 * chance  # about 67%; two epochs reach about 90
