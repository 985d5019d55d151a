"""The split and its conversion, on synthetic class files: no Ray, no training."""

import multiprocessing
import os
import stat
import time
from pathlib import Path

import numpy as np

from conftest import SYNTHETIC_CLASSES, synthetic_drawings
from quickdraw.config import DataConfig, SplitSizes
from quickdraw.bitmaps import find_class_files
from quickdraw.dataset import PARTS, _conversion_dir, conversion_lock, load_split, prepare_split, write_pngs
from quickdraw.storage import Location


def convert(config: DataConfig, storage):
    """The split and where it went, with `storage` a local folder."""
    return prepare_split(config, Location.parse(str(storage)))


def config(data, **changes) -> DataConfig:
    return DataConfig(data_dir=data, classes=SYNTHETIC_CLASSES, split=SplitSizes(150, 30, 15), **changes)


def drawing_ids(drawings: np.ndarray) -> set[int]:
    """The index synthetic_drawings wrote into each drawing's first four pixels."""
    return set(drawings.reshape(len(drawings), -1)[:, :4].copy().view(np.uint32).ravel().tolist())


def test_split_sizes_divide_evenly_and_remainders_go_first():
    assert SplitSizes(20_000, 4_000, 1_000).per_class(10) == [(2000, 400, 100)] * 10
    assert SplitSizes(10, 5, 4).per_class(3) == [(4, 2, 2), (3, 2, 1), (3, 1, 1)]


def test_split_has_the_asked_sizes_and_no_drawing_in_two_parts(synthetic_data, tmp_path):
    split, _ = convert(config(synthetic_data), tmp_path / "storage")
    assert split.counts() == {"train": 150, "validation": 30, "test": 15}
    for label in range(len(SYNTHETIC_CLASSES)):
        ids = [drawing_ids(split.part(p)[0][split.part(p)[1] == label]) for p in PARTS]
        assert [len(i) for i in ids] == [50, 10, 5]
        assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
        assert set.union(*ids) == set(range(65))  # the first train+validation+test drawings of the file
        assert split.x_train.dtype == np.uint8 and split.x_train.shape[1:] == (28, 28)


def test_split_is_the_same_for_the_same_seed_and_differs_for_another(synthetic_data, tmp_path):
    first, _ = convert(config(synthetic_data), tmp_path / "a")
    again, _ = convert(config(synthetic_data), tmp_path / "b")
    other, _ = convert(config(synthetic_data, seed=1), tmp_path / "c")
    assert np.array_equal(first.x_train, again.x_train) and np.array_equal(first.y_test, again.y_test)
    assert not np.array_equal(first.x_train, other.x_train)


def test_reuse_reads_the_stored_split_and_other_inputs_make_a_new_one(synthetic_data, tmp_path):
    storage = tmp_path / "storage"
    first_split, first = convert(config(synthetic_data), storage)
    second_split, second = convert(config(synthetic_data), storage)
    assert not first.reused and second.reused and second.directory.uri == first.directory.uri
    assert np.array_equal(second_split.x_validation, first_split.x_validation)
    _, third = convert(config(synthetic_data, seed=3), storage)
    assert not third.reused and third.directory.uri != first.directory.uri


def test_google_file_names_other_shapes_and_spaces_in_class_names(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    np.save(data / "full_numpy_bitmap_hot dog.npy", synthetic_drawings(0, 80).reshape(80, 1, 784))
    np.save(data / "ice cream.npy", synthetic_drawings(1, 80).reshape(80, 28, 28))
    cfg = DataConfig(data_dir=data, classes=("hot dog", "ice cream"), split=SplitSizes(100, 20, 10))
    split, _ = convert(cfg, tmp_path / "storage")
    assert split.classes == ("hot dog", "ice cream")
    assert np.array_equal(np.bincount(split.y_train), [50, 50])


def _convert_into(args, queue) -> None:
    queue.put(_convert(args))


def _convert(args):
    data, storage = args
    conversion = convert(config(data), storage)[1]
    return conversion.directory.uri, conversion.reused


def test_two_conversions_at_once_leave_one_complete_dataset(synthetic_data, tmp_path):
    """Two drivers on one machine, each with a Ray of its own: one converts, the other waits for it and reuses."""
    storage = tmp_path / "storage"
    target = _conversion_dir(Location.parse(str(storage)), config(synthetic_data),
                             find_class_files(synthetic_data, SYNTHETIC_CLASSES))
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    drivers = [context.Process(target=_convert_into, args=((synthetic_data, storage), queue)) for _ in range(2)]
    with conversion_lock(target):  # as if a third driver were converting: both must wait for it
        for driver in drivers:
            driver.start()
        time.sleep(3)
        assert all(driver.is_alive() for driver in drivers) and queue.empty()
    results = [queue.get(timeout=120) for _ in drivers]
    for driver in drivers:
        driver.join(timeout=60)
    directories = [directory for directory, _ in results]
    assert sorted(reused for _, reused in results) == [False, True]
    assert directories[0] == directories[1]
    assert [p.name for p in (storage / "datasets").iterdir()] == [directories[0].rsplit("/", 1)[1]]
    assert load_split(Location.parse(directories[0])).counts()["train"] == 150


def test_a_conversion_that_lost_the_race_keeps_the_winner_and_cleans_up(synthetic_data, tmp_path):
    storage = tmp_path / "storage"
    winner_location = convert(config(synthetic_data), storage)[1].directory
    winner = Path(winner_location.path)
    before = sorted(p.name for p in winner.iterdir())
    winner_location.write_folder(lambda tmp: (tmp / "late.txt").write_text("the slower run's copy"))
    assert sorted(p.name for p in winner.iterdir()) == before
    assert [p.name for p in winner.parent.iterdir()] == [winner.name]  # no temporary folder left


def test_converted_folders_follow_the_umask_so_others_on_a_shared_cluster_can_read_them(synthetic_data, tmp_path):
    old = os.umask(0o022)
    try:
        split, conversion = convert(config(synthetic_data), tmp_path / "storage")
        png = Path(write_pngs(split, conversion.directory).path)
    finally:
        os.umask(old)
    dataset = Path(conversion.directory.path)
    for folder in (dataset, png, png / "train"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755, folder
    for file in (dataset / "split.npz", dataset / "manifest.json"):
        assert stat.S_IMODE(file.stat().st_mode) == 0o644, file


def test_the_report_reads_only_the_test_part_of_a_stored_split(synthetic_data, tmp_path):
    split, conversion = convert(config(synthetic_data), tmp_path / "storage")
    test_only = load_split(conversion.directory, parts=("test",))
    assert np.array_equal(test_only.x_test, split.x_test) and np.array_equal(test_only.y_test, split.y_test)
    assert test_only.classes == split.classes
    assert test_only.counts() == {"train": 0, "validation": 0, "test": len(split.y_test)}
