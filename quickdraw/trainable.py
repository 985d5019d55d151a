"""One trial: train for some epochs, report to Tune each epoch with a checkpoint, test the best weights."""

from __future__ import annotations

import copy
import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import ray
import torch
import torch.nn.functional as F
from ray import tune
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from quickdraw.augment import random_affine
from quickdraw.compute import Compute, choose
from quickdraw.dataset import Split
from quickdraw.experiment_files import PREDICTIONS_FILE
from quickdraw.model import MODELS

EVAL_BATCH_SIZE = 2048
CHECKPOINT_FILE = "trial_state.pt"
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
HPARAM_METRICS = ("accuracy/validation_best", "accuracy/test")


@dataclass
class Progress:
    """What a trial carries from epoch to epoch, and through a checkpoint into a restart."""

    epoch: int = 0
    train_seconds: float = 0.0
    best_val_loss: float = math.inf
    best_val_accuracy: float = 0.0
    best_weights: dict = field(default_factory=dict)

    def record(self, val_loss: float, val_accuracy: float, model: torch.nn.Module) -> bool:
        """Keep the weights if validation improved, and say whether it did."""
        # The seed kept the weights with the lowest validation loss; a diverged (NaN) epoch never wins.
        if not (math.isfinite(val_loss) and val_loss < self.best_val_loss):
            return False
        self.best_val_loss, self.best_val_accuracy = val_loss, val_accuracy
        self.best_weights = copy.deepcopy(model.state_dict())
        return True


def train_trial(config: dict, split: Split) -> None:
    """Tune's trainable. `config` holds model, lr, batch_size, dropout, epochs, seed, precision and compile."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # else a "Checkpoint successfully created" line per epoch
    # Experiments started before precision and compile were settings ran in fp32: a resumed one goes on so.
    compute = choose(trial_device(), config.get("precision", "fp32"), config.get("compile", False))
    torch.set_num_threads(trial_threads())
    torch.manual_seed(config["seed"])
    data = {part: to_device(split.part(part), compute.device) for part in ("train", "validation", "test")}
    recipe = MODELS[config.get("model", "seed")]  # experiments from before --model trained the seed's
    model = recipe.build(len(split.classes), config["dropout"])
    network = compute.prepare(model)  # runs the batches; `model` holds the weights that checkpoints keep
    optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"])
    schedule = one_cycle(optimizer, config, len(split.y_train)) if recipe.one_cycle else None
    progress = restore(model, optimizer, schedule, compute.device)
    training = Training(optimizer, recipe.augment, schedule)
    if not progress.best_weights:
        progress.best_weights = copy.deepcopy(model.state_dict())

    with SummaryWriter(tune.get_context().get_trial_dir()) as writer:
        start_hparams(writer, config)
        for epoch in range(progress.epoch + 1, config["epochs"] + 1):
            metrics, improved = run_epoch(network, model, training, data, config["batch_size"], compute, progress)
            log_epoch(writer, metrics)
            last = epoch == config["epochs"]
            if not (improved or last):
                # A checkpoint only when validation improves, and the last: fewer writes and syncs, and a
                # restarted trial goes back at most to its last improvement.
                tune.report(metrics)
                continue
            with tempfile.TemporaryDirectory() as checkpoint_dir:
                save(Path(checkpoint_dir), model, optimizer, schedule, progress)
                if last:
                    model.load_state_dict(progress.best_weights)
                    metrics["test_accuracy"] = test(network, split, data["test"], writer, epoch, compute)
                    end_hparams(writer, config)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(checkpoint_dir))


@dataclass(frozen=True)
class Training:
    """How the weights are updated: the optimizer, whether batches are augmented, the learning-rate schedule if any."""

    optimizer: torch.optim.Optimizer
    augment: bool = False
    schedule: torch.optim.lr_scheduler.LRScheduler | None = None


def one_cycle(optimizer, config: dict, train_size: int) -> torch.optim.lr_scheduler.OneCycleLR:
    """Warm up to the grid's learning rate, then anneal to nearly zero by the trial's last step."""
    steps = config["epochs"] * math.ceil(train_size / config["batch_size"])
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config["lr"], total_steps=steps)


def run_epoch(network, model, training: Training, data: dict, batch_size: int, compute: Compute, progress: Progress):
    """Train one epoch and validate; the metrics Tune and TensorBoard get, and whether validation improved."""
    started = time.perf_counter()
    train_loss, train_accuracy = train_epoch(network, training, *data["train"], batch_size, compute)
    epoch_seconds = time.perf_counter() - started
    val_loss, val_accuracy = evaluate(network, *data["validation"], compute)
    progress.epoch += 1
    progress.train_seconds += epoch_seconds
    improved = progress.record(val_loss, val_accuracy, model)
    metrics = {
        "epoch": progress.epoch,
        "train_loss": train_loss,
        "train_accuracy": train_accuracy,
        "val_loss": val_loss,
        "val_accuracy": val_accuracy,
        "best_val_loss": progress.best_val_loss,
        "best_val_accuracy": progress.best_val_accuracy,
        "train_seconds": progress.train_seconds,
        "epoch_seconds": epoch_seconds,
        "images_per_second": len(data["train"][1]) / epoch_seconds,
        "learning_rate": training.optimizer.param_groups[0]["lr"],
    }
    return metrics, improved


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


def to_device(part: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Drawings stay uint8 (N, 1, 28, 28) on the device; batches become float only when used.

    Copied: the arrays come read-only from Ray's object store, and torch wants its own memory."""
    drawings, labels = part
    return torch.tensor(drawings, device=device).unsqueeze(1), torch.tensor(labels, device=device)


def train_epoch(model, training: Training, drawings, labels, batch_size: int, compute: Compute) -> tuple[float, float]:
    model.train()
    optimizer = training.optimizer
    total_loss = torch.zeros((), device=drawings.device)
    correct = torch.zeros((), dtype=torch.long, device=drawings.device)
    for batch in torch.randperm(len(labels), device=drawings.device).split(batch_size):
        inputs = compute.inputs(drawings[batch])
        if training.augment:
            inputs = random_affine(inputs)
        with compute.autocast():
            logits = model(inputs)
        loss = F.cross_entropy(logits.float(), labels[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if training.schedule is not None:
            training.schedule.step()
        total_loss += loss.detach() * len(batch)
        correct += (logits.argmax(1) == labels[batch]).sum()
    return total_loss.item() / len(labels), correct.item() / len(labels)


@torch.no_grad()
def evaluate(model, drawings, labels, compute: Compute) -> tuple[float, float]:
    logits = predict_logits(model, drawings, compute)
    labels = labels.to(logits.device)
    return F.cross_entropy(logits, labels).item(), (logits.argmax(1) == labels).float().mean().item()


@torch.no_grad()
def predict_logits(model, drawings, compute: Compute) -> torch.Tensor:
    """fp32 logits of every drawing, computed in batches of EVAL_BATCH_SIZE."""
    model.eval()
    batches = drawings.split(EVAL_BATCH_SIZE)
    with compute.autocast():
        return torch.cat([model(compute.inputs(batch)).float() for batch in batches])


def test(model, split: Split, test_part: tuple, writer: SummaryWriter, epoch: int, compute: Compute) -> float:
    """Test accuracy of `model`; its probabilities go beside the event file, its mistakes into TensorBoard."""
    from quickdraw.figures import confusion_matrix_figure, misclassified_figure

    probabilities = predict_logits(model, test_part[0], compute).softmax(1).cpu().numpy()
    predictions = probabilities.argmax(1)
    accuracy = float((predictions == split.y_test).mean())
    np.savez_compressed(Path(tune.get_context().get_trial_dir()) / PREDICTIONS_FILE, probabilities=probabilities)
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
    return hparams(
        {"model": config.get("model", "seed"), **{key: config[key] for key in ("lr", "batch_size", "dropout")}},
        metric_dict={tag: 0.0 for tag in HPARAM_METRICS},
    )


def log_epoch(writer: SummaryWriter, metrics: dict) -> None:
    for tag, key in SCALAR_TAGS.items():
        writer.add_scalar(tag, metrics[key], metrics["epoch"])
    writer.flush()


def save(directory: Path, model, optimizer, schedule, progress: Progress) -> None:
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "progress": progress.__dict__,
             "schedule": schedule.state_dict() if schedule is not None else None}
    torch.save(state, directory / CHECKPOINT_FILE)


def restore(model, optimizer, schedule, device: torch.device) -> Progress:
    """Continue from the trial's last checkpoint after a restart; start fresh otherwise."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return Progress()
    with checkpoint.as_directory() as directory:
        return load(Path(directory), model, optimizer, schedule, device)


def load(directory: Path, model, optimizer, schedule, device: torch.device) -> Progress:
    """Put a saved trial state back into `model`, `optimizer` and `schedule`; return its progress."""
    state = torch.load(directory / CHECKPOINT_FILE, map_location=device, weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if schedule is not None:
        schedule.load_state_dict(state["schedule"])
    return Progress(**state["progress"])
