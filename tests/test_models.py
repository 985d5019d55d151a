"""The models and their recipes, without Ray: each network's shape, the augmentation, the one-cycle schedule
carried through a checkpoint, and that the stronger recipe learns."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from conftest import synthetic_tensors
from quickdraw.augment import Augmentation
from quickdraw.compute import Compute
from quickdraw.catalogue import MODEL_NAMES
from quickdraw.model import MODELS
from quickdraw.training import Hyperparameters, Trainer, evaluate, train_epoch

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
    augmentation = MODELS["vgg-bn"].augmentation
    moved = augmentation(batch)
    assert moved.shape == batch.shape and moved.is_contiguous(memory_format=torch.channels_last)
    centres = centre_of_ink(moved)
    assert len({tuple(c) for c in centres.round(decimals=2).tolist()}) > 390  # a transform per drawing
    mirrored = centres[:, 1] > 14  # the dot went to the right half: mirrored
    assert 0.35 < mirrored.float().mean() < 0.65
    # Unmirrored, the dot stays within what rotation, scaling and shifting allow.
    distance = (centres[~mirrored] - torch.tensor([8.0, 8.0])).norm(dim=1)
    reach = 9 * (augmentation.max_rotation_degrees * np.pi / 180 + augmentation.max_scale_change) \
        + augmentation.max_shift_pixels * 2**0.5
    assert distance.max() < reach + 0.5 and distance.mean() > 0.5
    assert torch.allclose(moved.sum((1, 2, 3)).mean(), batch.sum((1, 2, 3)).mean(), rtol=0.15)  # ink is kept


def test_mirroring_is_a_setting_of_the_recipe():
    torch.manual_seed(0)
    batch = drawing_with_a_dot(8, 8).repeat(400, 1, 1, 1)
    centres = centre_of_ink(Augmentation(mirror=False)(batch))
    assert (centres[:, 1] < 14).all()  # never mirrored: the dot stays in the left half
    assert MODELS["vgg-bn"].augmentation.mirror and MODELS["seed"].augmentation is None


def new_trainer(name: str, epochs: int, train_size: int, lr: float = 0.003, batch_size: int = 32) -> Trainer:
    torch.manual_seed(0)
    hyperparameters = Hyperparameters(lr=lr, batch_size=batch_size, dropout=0.5, epochs=epochs)
    return Trainer(MODELS[name], 3, hyperparameters, train_size, Compute(CPU))


def test_vgg_bn_recipe_learns_and_its_learning_rate_makes_one_cycle():
    train, validation = synthetic_tensors(100, seed=0), synthetic_tensors(30, seed=1)
    trainer = new_trainer("vgg-bn", epochs=4, train_size=len(train[1]))
    training = trainer.training
    rates = []
    for _ in range(4):
        train_epoch(trainer.network, training, *train, 32, Compute(CPU))
        rates.append(training.optimizer.param_groups[0]["lr"])
    assert evaluate(trainer.network, *validation, Compute(CPU))[1] > 0.9  # chance is 1/3
    # Warmed up from lr/25 to about the grid's lr within the first epochs, then annealed to almost nothing.
    assert rates[0] > 0.003 / 25 and 0.0025 < max(rates) <= 0.003
    assert rates == sorted(rates, reverse=True) and rates[-1] < 0.01 * max(rates)


def test_a_restarted_trial_continues_its_schedule_and_weights(tmp_path):
    data = {"train": synthetic_tensors(40, seed=0), "validation": synthetic_tensors(10, seed=1)}
    straight = new_trainer("vgg-bn", epochs=3, train_size=len(data["train"][1]))
    for _ in range(2):
        straight.run_epoch(data)
    straight.save(tmp_path)
    saved = copy.deepcopy(straight.model.state_dict())

    restarted = new_trainer("vgg-bn", epochs=3, train_size=len(data["train"][1]))
    restarted.load(tmp_path)
    assert restarted.progress.epoch == 2 and not restarted.finished
    assert restarted.progress.best_val_loss == straight.progress.best_val_loss
    for trainer in (straight, restarted):
        torch.manual_seed(1)
        trainer.run_epoch(data)
        assert trainer.finished
    fresh, training = restarted.training, straight.training
    assert fresh.schedule.last_epoch == training.schedule.last_epoch == 3 * 4  # steps: 3 epochs of 4 batches
    assert fresh.optimizer.param_groups[0]["lr"] == training.optimizer.param_groups[0]["lr"]
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, restarted.model.state_dict()[key]), key
    assert any(not torch.equal(v, saved[k]) for k, v in straight.model.state_dict().items())  # it did train on


def trained_weights(hyperparameters: Hyperparameters, optimizer=None) -> torch.Tensor:
    """The seed network's weights after one epoch on synthetic drawings, by the Trainer's optimizer or `optimizer`."""
    torch.manual_seed(0)
    trainer = Trainer(MODELS["seed"], 3, hyperparameters, 120, Compute(CPU))
    if optimizer is not None:
        trainer.training = dataclasses.replace(trainer.training, optimizer=optimizer(trainer.model.parameters()))
    torch.manual_seed(1)
    trainer.run_epoch({"train": synthetic_tensors(40, seed=0), "validation": synthetic_tensors(10, seed=1)})
    return torch.cat([p.detach().flatten() for p in trainer.model.parameters()])


def test_weight_decay_0_is_the_seed_s_adam_bit_for_bit_and_decay_shrinks_the_weights():
    plain = Hyperparameters(lr=1e-3, batch_size=16, dropout=0.5, epochs=1)
    adam = trained_weights(plain, optimizer=lambda parameters: torch.optim.Adam(parameters, lr=1e-3))
    assert torch.equal(trained_weights(plain), adam)
    decayed = trained_weights(dataclasses.replace(plain, weight_decay=0.5))
    assert decayed.norm() < adam.norm()


def training_loss(hyperparameters: Hyperparameters) -> float:
    torch.manual_seed(0)
    trainer = Trainer(MODELS["seed"], 3, hyperparameters, 120, Compute(CPU))
    torch.manual_seed(1)
    metrics, _ = trainer.run_epoch({"train": synthetic_tensors(40, seed=0), "validation": synthetic_tensors(10, seed=1)})
    return metrics["train_loss"]


def test_label_smoothing_0_is_the_seed_s_cross_entropy_bit_for_bit_and_smoothing_changes_the_training():
    plain = Hyperparameters(lr=1e-3, batch_size=16, dropout=0.5, epochs=1)  # label_smoothing's default: 0
    assert torch.equal(trained_weights(dataclasses.replace(plain, label_smoothing=0.0)), trained_weights(plain))
    smoothed = dataclasses.replace(plain, label_smoothing=0.2)
    assert not torch.equal(trained_weights(smoothed), trained_weights(plain))
    # A smoothed target is never met exactly: once the network learns, its training loss stays well above the plain.
    fast = dataclasses.replace(plain, lr=1e-2)
    assert training_loss(dataclasses.replace(fast, label_smoothing=0.2)) > training_loss(fast) + 0.1


def test_with_an_ema_the_average_of_the_weights_is_validated_and_kept_with_its_own_batch_norm_statistics():
    data = {"train": synthetic_tensors(40, seed=0), "validation": synthetic_tensors(10, seed=1)}
    hyperparameters = Hyperparameters(lr=3e-3, batch_size=16, dropout=0.5, epochs=2, ema_decay=0.9)
    torch.manual_seed(0)
    trainer = Trainer(MODELS["vgg-bn"], 3, hyperparameters, 120, Compute(CPU))
    torch.manual_seed(1)
    metrics, improved = trainer.run_epoch(data)
    average = trainer.training.average.module
    trained, best = trainer.model.state_dict(), trainer.progress.best_weights
    assert improved
    for name, parameter in average.named_parameters():  # the average's weights, not the trained ones
        assert torch.equal(best[name], parameter) and not torch.equal(best[name], trained[name]), name
    # Its batch norms' statistics were recomputed for it: those of the training drawings through the average.
    recomputed = copy.deepcopy(average)
    torch.optim.swa_utils.update_bn([Compute(CPU).inputs(data["train"][0])], recomputed)
    first_norm = next(name for name, _ in average.named_buffers() if name.endswith("running_mean"))
    assert torch.allclose(best[first_norm], recomputed.state_dict()[first_norm], atol=1e-5)
    assert not torch.allclose(trained[first_norm], best[first_norm], atol=1e-3)  # the trained weights kept theirs
    # Validated: the loss reported is the average's, with those statistics.
    scored = MODELS["vgg-bn"].build(3, 0.5)
    scored.load_state_dict(best)
    assert evaluate(scored, *data["validation"], Compute(CPU))[0] == pytest.approx(metrics["val_loss"], rel=1e-5)


def test_ema_decay_0_trains_as_without_one_bit_for_bit_and_a_restart_continues_the_average(tmp_path):
    plain = Hyperparameters(lr=1e-3, batch_size=16, dropout=0.5, epochs=1)
    assert torch.equal(trained_weights(dataclasses.replace(plain, ema_decay=0.0)), trained_weights(plain))
    data = {"train": synthetic_tensors(40, seed=0), "validation": synthetic_tensors(10, seed=1)}
    averaged = Hyperparameters(lr=3e-3, batch_size=16, dropout=0.5, epochs=2, ema_decay=0.9)
    straight = Trainer(MODELS["vgg-bn"], 3, averaged, 120, Compute(CPU))
    straight.run_epoch(data)
    straight.save(tmp_path)
    restarted = Trainer(MODELS["vgg-bn"], 3, averaged, 120, Compute(CPU))
    restarted.load(tmp_path)
    for trainer in (straight, restarted):
        torch.manual_seed(1)
        trainer.run_epoch(data)
    for name, value in straight.training.average.state_dict().items():
        assert torch.equal(value, restarted.training.average.state_dict()[name]), name
