"""A trial on the CPU trains from the object store's copy of the split, viewing it rather than copying it, and
never writes to it: Ray hands every trial on a node the same read-only shared memory."""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pytest
import ray
import torch

from conftest import synthetic_drawings
from quickdraw.compute import Compute
from quickdraw.dataset import PARTS, Split
from quickdraw.model import MODELS
from quickdraw.training import Hyperparameters, Trainer, split_tensors

pytestmark = pytest.mark.slow  # trials on Ray's object store

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def shared_split():
    """A split as a trial gets it: put into Ray's object store by one process, got back zero-copy."""
    ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="WARNING")
    parts = {}
    for part, count in zip(PARTS, (60, 20, 20)):
        parts[f"x_{part}"] = np.concatenate([synthetic_drawings(label, count, seed=len(parts)).reshape(-1, 28, 28)
                                             for label in range(3)])
        parts[f"y_{part}"] = np.repeat(np.arange(3, dtype=np.int64), count)
    yield ray.get(ray.put(Split(classes=("a", "b", "c"), **parts)))
    ray.shutdown()


def fingerprint(split: Split) -> str:
    digest = hashlib.sha256()
    for part in PARTS:
        for array in split.part(part):
            digest.update(array.tobytes())
    return digest.hexdigest()


def test_the_trial_views_the_object_store_arrays_without_a_copy_or_a_warning(shared_split):
    assert not shared_split.x_train.flags.writeable  # Ray's object store hands out read-only arrays
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's non-writable-array warning is handled, not left to leak
        tensors = split_tensors(shared_split, CPU)
    for part in PARTS:
        drawings, labels = tensors[part]
        x, y = shared_split.part(part)
        assert drawings.shape == (len(x), 1, 28, 28) and drawings.dtype == torch.uint8
        assert drawings.data_ptr() == x.ctypes.data and labels.data_ptr() == y.ctypes.data  # views, not copies


@pytest.mark.parametrize("model", ["seed", "vgg-bn"])
def test_training_validating_and_testing_leave_the_shared_split_as_it_was(shared_split, model):
    before = fingerprint(shared_split)
    data = split_tensors(shared_split, CPU)
    torch.manual_seed(0)
    trainer = Trainer(MODELS[model], 3, Hyperparameters(lr=1e-3, batch_size=16, dropout=0.5, epochs=2), 180,
                      Compute(CPU))
    while not trainer.finished:
        trainer.run_epoch(data)
    trainer.best_probabilities(data["test"][0])
    assert fingerprint(shared_split) == before
