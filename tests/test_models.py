"""The models and their recipes, without Ray: each network's shape, the augmentation, the one-cycle schedule
carried through a checkpoint, and that the stronger recipe learns."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from conftest import synthetic_tensors
from quickdraw import augment
from quickdraw.compute import Compute
from quickdraw.config import MODEL_NAMES
from quickdraw.model import MODELS
from quickdraw.trainable import Progress, Training, evaluate, load, one_cycle, save, train_epoch

CPU = torch.device("cpu")


def test_the_cli_names_every_model_there_is():
    assert MODEL_NAMES == tuple(MODELS)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_each_model_maps_drawings_to_class_scores(name):
    network = MODELS[name].build(7, 0.5)
    assert network(torch.rand(5, 1, 28, 28)).shape == (5, 7)


def drawing_with_a_dot(row: int, column: int) -> torch.Tensor:
    image = torch.zeros(1, 1, 28, 28)
    image[0, 0, row - 1:row + 2, column - 1:column + 2] = 1.0
    return image


def centre_of_ink(images: torch.Tensor) -> torch.Tensor:
    grid = torch.arange(28.0)
    mass = images.sum((1, 2, 3))
    return torch.stack([(images.sum(3)[:, 0] * grid).sum(1) / mass, (images.sum(2)[:, 0] * grid).sum(1) / mass], 1)


def test_augmentation_moves_each_drawing_a_little_and_differently():
    torch.manual_seed(0)
    batch = drawing_with_a_dot(8, 8).repeat(400, 1, 1, 1)  # up and left of the centre
    moved = augment.random_affine(batch)
    assert moved.shape == batch.shape and moved.is_contiguous(memory_format=torch.channels_last)
    centres = centre_of_ink(moved)
    assert len({tuple(c) for c in centres.round(decimals=2).tolist()}) > 390  # a transform per drawing
    mirrored = centres[:, 1] > 14  # the dot went to the right half: mirrored
    assert 0.35 < mirrored.float().mean() < 0.65
    # Unmirrored, the dot stays within what rotation, scaling and shifting allow.
    distance = (centres[~mirrored] - torch.tensor([8.0, 8.0])).norm(dim=1)
    reach = 9 * (augment.MAX_ROTATION_DEGREES * np.pi / 180 + augment.MAX_SCALE_CHANGE) + augment.MAX_SHIFT_PIXELS * 2**0.5
    assert distance.max() < reach + 0.5 and distance.mean() > 0.5
    assert torch.allclose(moved.sum((1, 2, 3)).mean(), batch.sum((1, 2, 3)).mean(), rtol=0.15)  # ink is kept


def new_training(name: str, epochs: int, train_size: int, lr: float = 0.003, batch_size: int = 32):
    torch.manual_seed(0)
    recipe = MODELS[name]
    model = recipe.build(3, 0.5).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    config = {"epochs": epochs, "batch_size": batch_size, "lr": lr}
    schedule = one_cycle(optimizer, config, train_size) if recipe.one_cycle else None
    return model, Training(optimizer, recipe.augment, schedule)


def test_vgg_bn_recipe_learns_and_its_learning_rate_makes_one_cycle():
    train, validation = synthetic_tensors(100, seed=0), synthetic_tensors(30, seed=1)
    model, training = new_training("vgg-bn", epochs=4, train_size=len(train[1]))
    rates = []
    for _ in range(4):
        train_epoch(model, training, *train, 32, Compute(CPU))
        rates.append(training.optimizer.param_groups[0]["lr"])
    assert evaluate(model, *validation, Compute(CPU))[1] > 0.9  # chance is 1/3
    # Warmed up from lr/25 to about the grid's lr within the first epochs, then annealed to almost nothing.
    assert rates[0] > 0.003 / 25 and 0.0025 < max(rates) <= 0.003
    assert rates == sorted(rates, reverse=True) and rates[-1] < 0.01 * max(rates)


def test_a_restarted_trial_continues_its_schedule_and_weights(tmp_path):
    train = synthetic_tensors(40, seed=0)
    compute = Compute(CPU)
    straight, training = new_training("vgg-bn", epochs=3, train_size=len(train[1]))
    for _ in range(2):
        train_epoch(straight, training, *train, 32, compute)
    save(tmp_path, straight, training.optimizer, training.schedule, Progress(epoch=2))
    saved = copy.deepcopy(straight.state_dict())

    restarted, fresh = new_training("vgg-bn", epochs=3, train_size=len(train[1]))
    progress = load(tmp_path, restarted, fresh.optimizer, fresh.schedule, CPU)
    assert progress.epoch == 2
    for model, how in ((straight, training), (restarted, fresh)):
        torch.manual_seed(1)
        train_epoch(model, how, *train, 32, compute)
    assert fresh.schedule.last_epoch == training.schedule.last_epoch == 3 * 4  # steps: 3 epochs of 4 batches
    assert fresh.optimizer.param_groups[0]["lr"] == training.optimizer.param_groups[0]["lr"]
    for key, value in straight.state_dict().items():
        assert torch.equal(value, restarted.state_dict()[key]), key
    assert any(not torch.equal(v, saved[k]) for k, v in straight.state_dict().items())  # it did train on
