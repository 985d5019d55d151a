"""Tune's trainable: one trial of the search. Its config in, quickdraw.training trains; every epoch goes to
TensorBoard and to Tune (`tune.report`, with a checkpoint when validation improved and at the last epoch), and the
last epoch tests the weights with the lowest validation loss and keeps their probabilities (quickdraw.predictions).

An epoch whose loss diverged (NaN or infinite, quickdraw.training) is reported with `diverged: True` and ends the
trial there, untested: the function returns, so Tune ends it as TERMINATED, as it ends a finished trial. Divergence
is an outcome of the hyperparameters, not a failure: raising instead would make the trial an ERROR, retried up to
--max-failures times to diverge again, and the run's exit code 1."""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import ray
import torch
from ray import tune
from tensorboard.plugins.hparams import summary_v2 as hp
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as torch_hparams

from quickdraw.catalogue import BEST_VAL_ACCURACY, DEVICE, DIVERGED, EPOCH, METRICS, PRECISION, TEST_ACCURACY
from quickdraw.compute import choose
from quickdraw.dataset import Split
from quickdraw.figures import confusion_matrix_figure, misclassified_figure
from quickdraw.model import MODELS, Recipe
from quickdraw.predictions import PREDICTED_PARTS, PREDICTIONS_FILE, Predictions
from quickdraw.space import INTEGER_RANGES, Dimension, Space
from quickdraw.training import Hyperparameters, Trainer, split_tensors

EPOCH_SCALARS = [m for m in METRICS if m.tag and m is not TEST_ACCURACY]  # logged every epoch
HPARAM_METRICS = (BEST_VAL_ACCURACY, TEST_ACCURACY)
# TensorBoard's Custom Scalars dashboard: train and validation of each quantity as lines of one chart (its Scalars and
# Time Series dashboards give every tag a card of its own). Each chart takes the tags its regular expression matches.
CUSTOM_SCALARS = {"Train and validation": {
    "loss: train and validation": ["Multiline", [r"^loss/(train|validation)$"]],
    "accuracy: train and validation": ["Multiline", [r"^accuracy/(train|validation)$"]],
}}


def train_trial(config: dict, split: Split, space: Space) -> None:
    """`config` holds the hyperparameters (quickdraw.catalogue), epochs, seed, precision and compile
    (quickdraw.tuner.param_space); `space` says which of them the search varies, and over what, for TensorBoard."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # else a "Checkpoint successfully created" line per epoch
    sys.unraisablehook = unraisable_except_exit
    compute = choose(trial_device(), config["precision"], config["compile"])
    ran = {PRECISION: compute.precision, DEVICE: compute.device_name()}  # what "auto" resolved to, every epoch
    torch.set_num_threads(trial_threads())
    torch.manual_seed(config["seed"])
    data = split_tensors(split, compute.device)
    recipe = MODELS[config["model"]]
    trainer = Trainer(recipe, len(split.classes), Hyperparameters.of(config), len(split.y_train), compute)
    if (checkpoint := tune.get_checkpoint()) is not None:  # a restart: go on from the last checkpoint
        with checkpoint.as_directory() as directory:
            trainer.load(Path(directory))

    with SummaryWriter(tune.get_context().get_trial_dir()) as writer:
        writer.add_custom_scalars(CUSTOM_SCALARS)
        start_hparams(writer, config, space)
        while not trainer.finished:
            metrics, improved = trainer.run_epoch(data)
            log_epoch(writer, metrics)
            metrics |= ran
            if metrics.get(DIVERGED):
                end_hparams(writer)
                tune.report(metrics)
                return
            if not (improved or trainer.finished):
                # A checkpoint only when validation improves, and the last: fewer writes and syncs, and a
                # restarted trial goes back at most to its last improvement.
                tune.report(metrics)
                continue
            with tempfile.TemporaryDirectory() as checkpoint_dir:
                trainer.save(Path(checkpoint_dir))
                if trainer.finished:
                    metrics[TEST_ACCURACY.key] = test(trainer, recipe, split, data, writer)
                    end_hparams(writer)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(checkpoint_dir))


def unraisable_except_exit(unraisable, report=sys.__unraisablehook__) -> None:
    """The trial process's hook for exceptions Python cannot raise. Ray ends a worker with SIGTERM, whose handler raises
    SystemExit; landing in a garbage collector's callback, that exit cannot be raised, and Python's default hook would
    print it with a traceback, which Ray forwards to the driver's console under the command's last line. Such an exit
    is Ray ending the process, not a fault of the trial: it is not printed. Everything else is, as by default."""
    if not isinstance(unraisable.exc_value, SystemExit):
        report(unraisable)


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


def test(trainer: Trainer, recipe: Recipe, split: Split, data: dict, writer: SummaryWriter) -> float:
    """Test accuracy of the best weights; their validation and test probabilities go beside the event file (with
    mirrored views too when the recipe trains on mirror images), their mistakes into TensorBoard."""
    def probabilities(mirrored: bool) -> dict[str, np.ndarray]:
        return {part: trainer.best_probabilities(data[part][0], mirrored) for part in PREDICTED_PARTS}

    predictions = Predictions(probabilities(False), probabilities(True) if recipe.mirrors else {})
    predictions.write(Path(tune.get_context().get_trial_dir()) / PREDICTIONS_FILE)
    predicted = predictions.plain["test"].argmax(1)
    accuracy = float((predicted == split.y_test).mean())
    epoch = trainer.progress.epoch
    writer.add_scalar(TEST_ACCURACY.tag, accuracy, epoch)
    writer.add_figure("test/confusion_matrix", confusion_matrix_figure(split.y_test, predicted, split.classes), epoch)
    writer.add_figure("test/misclassified", misclassified_figure(split.x_test, split.y_test, predicted, split.classes), epoch)
    return accuracy


def start_hparams(writer: SummaryWriter, config: dict, space: Space) -> None:
    """Declare the trial to TensorBoard's HParams dashboard: every searched hyperparameter with its domain (its
    values, or the interval it was drawn from), its value in this trial, and the scalar tags that hold its metrics,
    so that every trial compares in one table. Fixed settings are left out: they would be axes of one value."""
    searched = [d for d in space if d.searched]
    metrics = [hp.Metric(metric.tag) for metric in HPARAM_METRICS]
    declared = [hp.HParam(d.name, hparam_domain(d), description=d.describe()) for d in searched]
    writer.file_writer.add_summary(hp.hparams_config_pb(declared, metrics))
    values = {d.name: hparam_value(d, config[d.name]) for d in searched}
    context = tune.get_context()
    label = trial_label(Path(context.get_trial_dir()).name, context.get_experiment_name())
    writer.file_writer.add_summary(hp.hparams_pb(values, trial_id=label))
    writer.flush()


def trial_label(folder: str, experiment: str) -> str:
    """The trial's name in the HParams table ("Trial ID"): the number its folder name ends with (quickdraw.search.
    trial_dirname), then its experiment: "00003 (grid1)". The table shows some 15 characters of it, so the number
    comes first; the experiment keeps it unique under a --logdir above several experiments, where TensorBoard would
    merge rows of the same name (its run names are the folders' paths, and their hyperparameters are columns)."""
    return f"{folder.rpartition('_')[2]} ({experiment})"


def end_hparams(writer: SummaryWriter) -> None:
    """Mark the trial's session done (TensorBoard's own API writes no end marker; torch's does)."""
    writer.file_writer.add_summary(torch_hparams({}, {})[2])
    writer.flush()


def hparam_domain(dimension: Dimension) -> hp.Domain:
    """TensorBoard's domain of a searched dimension. A list of values is a discrete domain of the values as written
    (text), which TensorBoard shows as they are and puts on a categorical axis; it would show a number as a double
    (64.000, 0.0010000) on a linear axis. A range stays a numeric interval, a numeric axis; TensorBoard's domains
    have no log scale (its parallel-coordinates view offers one)."""
    if dimension.kind == "values":
        return hp.Discrete([dimension.hyperparameter.written(value) for value in dimension.args])
    if dimension.kind in INTEGER_RANGES:
        return hp.IntInterval(*dimension.args)
    return hp.RealInterval(*map(float, dimension.args))


def hparam_value(dimension: Dimension, value):
    """The trial's value in its dimension's TensorBoard domain: as written from a list, a number from a range."""
    return dimension.hyperparameter.written(value) if dimension.kind == "values" else value


def log_epoch(writer: SummaryWriter, metrics: dict) -> None:
    """The epoch's scalars; a diverged epoch has fewer (quickdraw.training.Trainer.run_epoch)."""
    for metric in EPOCH_SCALARS:
        if metric.key in metrics:
            writer.add_scalar(metric.tag, metrics[metric.key], metrics[EPOCH.key])
    writer.flush()
