"""Tune's trainable: one trial of the search. Its config in, quickdraw.training trains; every epoch goes to
TensorBoard and to Tune (`tune.report`, with a checkpoint when validation improved and at the last epoch), and the
last epoch tests the weights with the lowest validation loss."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import ray
import torch
from ray import tune
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from quickdraw.compute import choose
from quickdraw.dataset import Split
from quickdraw.experiment import PREDICTIONS_FILE
from quickdraw.figures import confusion_matrix_figure, misclassified_figure
from quickdraw.model import MODELS
from quickdraw.training import Hyperparameters, Trainer, split_tensors

SCALAR_TAGS = {  # TensorBoard tag -> the metric reported to Tune
    "loss/train": "train_loss",
    "loss/validation": "val_loss",
    "accuracy/train": "train_accuracy",
    "accuracy/validation": "val_accuracy",
    "accuracy/validation_best": "best_val_accuracy",
    "optimizer/learning_rate": "learning_rate",
    "speed/seconds_per_epoch": "epoch_seconds",
    "speed/images_per_second": "images_per_second",
}
HPARAMS = ("model", "lr", "batch_size", "dropout")
HPARAM_METRICS = ("accuracy/validation_best", "accuracy/test")


def train_trial(config: dict, split: Split) -> None:
    """`config` holds model, lr, batch_size, dropout, epochs, seed, precision and compile (quickdraw.search)."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # else a "Checkpoint successfully created" line per epoch
    compute = choose(trial_device(), config["precision"], config["compile"])
    torch.set_num_threads(trial_threads())
    torch.manual_seed(config["seed"])
    data = split_tensors(split, compute.device)
    trainer = Trainer(MODELS[config["model"]], len(split.classes), Hyperparameters.of(config), len(split.y_train),
                      compute)
    if (checkpoint := tune.get_checkpoint()) is not None:  # a restart: go on from the last checkpoint
        with checkpoint.as_directory() as directory:
            trainer.load(Path(directory))

    with SummaryWriter(tune.get_context().get_trial_dir()) as writer:
        start_hparams(writer, config)
        while not trainer.finished:
            metrics, improved = trainer.run_epoch(data)
            log_epoch(writer, metrics)
            if not (improved or trainer.finished):
                # A checkpoint only when validation improves, and the last: fewer writes and syncs, and a
                # restarted trial goes back at most to its last improvement.
                tune.report(metrics)
                continue
            with tempfile.TemporaryDirectory() as checkpoint_dir:
                trainer.save(Path(checkpoint_dir))
                if trainer.finished:
                    metrics["test_accuracy"] = test(trainer, split, data["test"][0], writer)
                    end_hparams(writer, config)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(checkpoint_dir))


def trial_device() -> torch.device:
    """The trial's GPU when Ray gave it one (Ray sets CUDA_VISIBLE_DEVICES), the CPU otherwise."""
    if ray.get_gpu_ids():
        if torch.cuda.is_available():
            return torch.device("cuda")
        print("Ray assigned this trial a GPU but torch sees no CUDA device; training on the CPU")
    return torch.device("cpu")


def trial_threads() -> int:
    cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", 1)
    return max(1, int(cpus))


def test(trainer: Trainer, split: Split, drawings: torch.Tensor, writer: SummaryWriter) -> float:
    """Test accuracy of the best weights; their probabilities go beside the event file, their mistakes into
    TensorBoard."""
    probabilities = trainer.test_probabilities(drawings)
    predictions = probabilities.argmax(1)
    accuracy = float((predictions == split.y_test).mean())
    np.savez_compressed(Path(tune.get_context().get_trial_dir()) / PREDICTIONS_FILE, probabilities=probabilities)
    epoch = trainer.progress.epoch
    writer.add_scalar("accuracy/test", accuracy, epoch)
    writer.add_figure("test/confusion_matrix", confusion_matrix_figure(split.y_test, predictions, split.classes), epoch)
    writer.add_figure("test/misclassified", misclassified_figure(split.x_test, split.y_test, predictions, split.classes), epoch)
    return accuracy


def start_hparams(writer: SummaryWriter, config: dict) -> None:
    """Declare the trial to TensorBoard's HParams dashboard: its hyperparameters, and the scalar tags
    that hold its metrics (written per epoch and at the end), so every trial compares in one table."""
    experiment, session_start, _ = hparams_summaries(config)
    for summary in (experiment, session_start):
        writer.file_writer.add_summary(summary)


def end_hparams(writer: SummaryWriter, config: dict) -> None:
    writer.file_writer.add_summary(hparams_summaries(config)[2])  # marks the trial's session done
    writer.flush()


def hparams_summaries(config: dict):
    return hparams({key: config[key] for key in HPARAMS}, metric_dict={tag: 0.0 for tag in HPARAM_METRICS})


def log_epoch(writer: SummaryWriter, metrics: dict) -> None:
    for tag, key in SCALAR_TAGS.items():
        writer.add_scalar(tag, metrics[key], metrics["epoch"])
    writer.flush()
