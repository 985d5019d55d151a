"""Training one network on Quick Draw bitmaps held as tensors: the epoch loop, evaluation, the learning-rate
schedule, the average of the weights, the best weights so far and the state a checkpoint keeps.

It imports neither Ray nor TensorBoard: quickdraw.trainable runs it as a Tune trial, benchmarks/model_ablation.py
runs it directly, and quickdraw.best_model predicts with its `predict_probabilities`."""

from __future__ import annotations

import contextlib
import copy
import math
import time
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn

from quickdraw.catalogue import (BEST_VAL_ACCURACY, BEST_VAL_LOSS, DIVERGED, EPOCH, EPOCH_SECONDS,
                                 IMAGES_PER_SECOND, LEARNING_RATE, TRAIN_ACCURACY, TRAIN_LOSS, TRAIN_SECONDS,
                                 VAL_ACCURACY, VAL_LOSS)
from quickdraw.augment import Augmentation
from quickdraw.compute import Compute
from quickdraw.dataset import PARTS, Split
from quickdraw.model import Recipe

EVAL_BATCH_SIZE = 2048
CHECKPOINT_FILE = "trial_state.pt"

Tensors = tuple[torch.Tensor, torch.Tensor]  # (N, 1, 28, 28) uint8 drawings and their int64 labels


@dataclass(frozen=True)
class Hyperparameters:
    """What the training of one trial is set by (besides its recipe), named as quickdraw.catalogue names them."""

    lr: float  # AdamW's learning rate, or the one-cycle schedule's peak when the recipe has one
    batch_size: int
    dropout: float
    epochs: int
    weight_decay: float = 0.0  # AdamW's decoupled weight decay; at 0 AdamW takes exactly Adam's steps
    label_smoothing: float = 0.0  # of the training loss; validation and test losses stay plain cross-entropy
    ema_decay: float = 0.0  # of the weights' moving average, validated and tested in their place; 0: no average

    @classmethod
    def of(cls, config: dict) -> Hyperparameters:
        """Those of a Tune trial's config, which holds more (model, seed, precision, ...)."""
        return cls(**{f.name: config[f.name] for f in fields(cls)})


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


@dataclass(frozen=True)
class Training:
    """How a batch updates the weights: the optimizer, the augmentation and the learning-rate schedule, if any."""

    optimizer: torch.optim.Optimizer
    augmentation: Augmentation | None = None
    schedule: torch.optim.lr_scheduler.LRScheduler | None = None
    label_smoothing: float = 0.0  # the cross-entropy's: each target puts this share of its weight evenly on every class
    average: AveragedModel | None = None  # the weights' exponential moving average, updated after every step


class Trainer:
    """One network with its optimizer, schedule and progress, trained epoch by epoch; saved and loaded whole."""

    def __init__(self, recipe: Recipe, num_classes: int, hyperparameters: Hyperparameters, train_size: int,
                 compute: Compute):
        self.hyperparameters, self.compute = hyperparameters, compute
        self.model = recipe.build(num_classes, hyperparameters.dropout)  # holds the weights that checkpoints keep
        self.network = compute.prepare(self.model)  # runs the batches (compiled when asked), sharing those weights
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=hyperparameters.lr,
                                      weight_decay=hyperparameters.weight_decay)
        trained = compute.epoch_size(train_size, hyperparameters.batch_size)  # all, or whole batches when compiled
        schedule = one_cycle(optimizer, hyperparameters, trained) if recipe.one_cycle else None
        average = (AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(hyperparameters.ema_decay))
                   if hyperparameters.ema_decay > 0 else None)
        self.training = Training(optimizer, recipe.augmentation, schedule, hyperparameters.label_smoothing, average)
        self.progress = Progress(best_weights=copy.deepcopy(self.model.state_dict()))

    @property
    def finished(self) -> bool:
        return self.progress.epoch >= self.hyperparameters.epochs

    def run_epoch(self, data: dict[str, Tensors]) -> tuple[dict, bool]:
        """Train one epoch and validate: the metrics of the epoch, and whether validation improved.

        An epoch whose training or validation loss is NaN or infinite has diverged: its metrics hold DIVERGED (True)
        and leave out what it measured on the broken network (its losses and accuracies), and the best validation
        result too when no epoch had one, so that they hold no NaN or infinity. Training cannot go on from it."""
        started = time.perf_counter()
        train_loss, train_accuracy = train_epoch(self.network, self.training, *data["train"],
                                                 self.hyperparameters.batch_size, self.compute)
        epoch_seconds = time.perf_counter() - started
        trained = self.compute.epoch_size(len(data["train"][1]), self.hyperparameters.batch_size)
        progress = self.progress
        progress.epoch += 1
        progress.train_seconds += epoch_seconds
        with self.averaged_weights(data["train"][0]):
            val_loss, val_accuracy = evaluate(self.network, *data["validation"], self.compute)
            improved = progress.record(val_loss, val_accuracy, self.model)
        measured = {TRAIN_LOSS.key: train_loss, TRAIN_ACCURACY.key: train_accuracy, VAL_LOSS.key: val_loss,
                    VAL_ACCURACY.key: val_accuracy}
        best = {BEST_VAL_LOSS.key: progress.best_val_loss, BEST_VAL_ACCURACY.key: progress.best_val_accuracy}
        timing = {
            TRAIN_SECONDS.key: progress.train_seconds,
            EPOCH_SECONDS.key: epoch_seconds,
            IMAGES_PER_SECOND.key: trained / epoch_seconds,
            LEARNING_RATE.key: self.training.optimizer.param_groups[0]["lr"],
        }
        if diverged(train_loss, val_loss):
            kept = best if math.isfinite(progress.best_val_loss) else {}
            return {EPOCH.key: progress.epoch, DIVERGED: True, **kept, **timing}, False
        return {EPOCH.key: progress.epoch, **measured, **best, **timing}, improved

    @contextlib.contextmanager
    def averaged_weights(self, train_drawings: torch.Tensor):
        """With a moving average of the weights, the model holds the average inside the block, with BatchNorm
        statistics recomputed for it on the training drawings (those it has are the trained weights'), and its trained
        weights again after; without one, the trained weights throughout."""
        average = self.training.average
        if average is None:
            yield
            return
        trained = copy.deepcopy(self.model.state_dict())
        self.model.load_state_dict(average.module.state_dict())
        with self.compute.autocast():
            update_bn((self.compute.inputs(batch) for batch in train_drawings.split(EVAL_BATCH_SIZE)), self.model)
        try:
            yield
        finally:
            self.model.load_state_dict(trained)

    def best_probabilities(self, drawings: torch.Tensor, mirrored: bool = False) -> np.ndarray:
        """Class probabilities from the best weights so far (the lowest validation loss), which stay loaded; with
        `mirrored`, the mean of each drawing's and its mirror image's."""
        self.model.load_state_dict(self.progress.best_weights)
        return predict_probabilities(self.network, drawings, self.compute, mirrored).cpu().numpy()

    def save(self, directory: Path) -> None:
        """Write the state a restart continues from: weights, optimizer, schedule, progress and the random number
        generators' states (torch's global CPU generator, and the GPU's when training on one), so that a restart
        shuffles and drops out as the uninterrupted trial would have, instead of replaying its first epoch."""
        schedule = self.training.schedule
        average = self.training.average
        state = {"model": self.model.state_dict(), "optimizer": self.training.optimizer.state_dict(),
                 "progress": self.progress.__dict__, "schedule": schedule.state_dict() if schedule else None,
                 "average": average.state_dict() if average else None, "rng": rng_state(self.compute.device)}
        torch.save(state, directory / CHECKPOINT_FILE)

    def load(self, directory: Path) -> None:
        """Continue from a state that `save` wrote: weights, optimizer, schedule, progress and random state.

        It is read onto the CPU, whatever the device: the weights are copied into the model where it is, and the
        optimizer moves each state tensor where its policy keeps it, which for AdamW's step counters (neither fused
        nor capturable) is the CPU; loaded onto a GPU they would stay there, and every step would read them back
        to the host, a sync per parameter."""
        state = torch.load(directory / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
        self.model.load_state_dict(state["model"])
        self.training.optimizer.load_state_dict(state["optimizer"])
        if self.training.schedule is not None:
            self.training.schedule.load_state_dict(state["schedule"])
        if self.training.average is not None:
            self.training.average.load_state_dict(state["average"])
        self.progress = Progress(**state["progress"])
        set_rng_state(state["rng"], self.compute.device)


def diverged(*losses: float) -> bool:
    """Whether a loss is NaN or infinite: the weights went with it, and no later epoch can mend them."""
    return not all(math.isfinite(loss) for loss in losses)


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The states of torch's global generators that training draws from: the CPU's, and the GPU's on a GPU
    (shuffles, dropout and augmentation draw from the generator of the device they run on)."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    """Restore what `rng_state` kept; a GPU's state only onto a GPU (a GPU trial restarted on the CPU keeps the
    CPU's state and its seed's CPU stream)."""
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def one_cycle(optimizer, hyperparameters: Hyperparameters, train_size: int) -> torch.optim.lr_scheduler.OneCycleLR:
    """Warm up to the search's learning rate, then anneal to nearly zero by the trial's last step (`train_size`:
    the drawings an epoch trains on)."""
    steps = hyperparameters.epochs * math.ceil(train_size / hyperparameters.batch_size)
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=hyperparameters.lr, total_steps=steps)


def split_tensors(split: Split, device: torch.device) -> dict[str, Tensors]:
    """Every part of the split (train, validation, test) on the device."""
    return {part: to_device(split.part(part), device) for part in PARTS}


def to_device(part: tuple, device: torch.device) -> Tensors:
    """Drawings stay uint8 (N, 1, 28, 28) on the device; batches become float only when used.

    On the CPU the tensors are views of the arrays, not copies: a trial's split is Ray's object-store copy, shared by
    every trial on the node, so memory grows by one split per node rather than per trial. Those arrays are read-only,
    and nothing here writes to a part (a batch is gathered by indexing, a new tensor, and made float out of place),
    so torch's warning that it cannot protect a non-writable array is silenced here on purpose. On a GPU the part is
    copied there once, with no second copy on the host."""
    drawings, labels = part
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
        drawings, labels = torch.from_numpy(drawings), torch.from_numpy(labels)
    return drawings.unsqueeze(1).to(device), labels.to(device)


def train_epoch(network, training: Training, drawings, labels, batch_size: int, compute: Compute) -> tuple[float, float]:
    """One pass over the drawings in a random order: the mean training loss and accuracy. Compiled, the pass
    leaves out the order's last, partial batch (`Compute.epoch_size`), so that every batch has one shape."""
    network.train()
    optimizer = training.optimizer
    total_loss = torch.zeros((), device=drawings.device)
    correct = torch.zeros((), dtype=torch.long, device=drawings.device)
    count = compute.epoch_size(len(labels), batch_size)
    for batch in torch.randperm(len(labels), device=drawings.device)[:count].split(batch_size):
        inputs = compute.inputs(drawings[batch])
        if training.augmentation is not None:
            inputs = training.augmentation(inputs)
        with compute.autocast():
            logits = network(inputs)
        loss = F.cross_entropy(logits.float(), labels[batch], label_smoothing=training.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if training.schedule is not None:
            training.schedule.step()
        if training.average is not None:
            training.average.update_parameters(network)
        total_loss += loss.detach() * len(batch)
        correct += (logits.argmax(1) == labels[batch]).sum()
    return total_loss.item() / count, correct.item() / count


@torch.no_grad()
def evaluate(network, drawings, labels, compute: Compute) -> tuple[float, float]:
    """Mean loss and accuracy on drawings the network does not train on, summed batch by batch (see
    `evaluation_batches`): the set's logits are never held."""
    total_loss = torch.zeros((), dtype=torch.float64, device=drawings.device)
    correct = torch.zeros((), dtype=torch.long, device=drawings.device)
    with compute.autocast():
        for batch, inputs in evaluation_batches(network, drawings, compute):
            logits = network(inputs).float()
            batch_labels = labels[batch].to(logits.device)
            total_loss += F.cross_entropy(logits, batch_labels, reduction="sum")
            correct += (logits.argmax(1) == batch_labels).sum()
    return total_loss.item() / len(labels), correct.item() / len(labels)


@torch.no_grad()
def predict_probabilities(network, drawings, compute: Compute, mirrored: bool = False) -> torch.Tensor:
    """fp32 class probabilities of every drawing, on the drawings' device, each batch written into one array (see
    `evaluation_batches`); with `mirrored`, the mean of the probabilities of each drawing and of its mirror image
    (left-right), a test-time view for a network trained on mirrored drawings."""
    probabilities = None
    with compute.autocast():
        for batch, inputs in evaluation_batches(network, drawings, compute):
            batch_probabilities = view_probabilities(network, inputs, mirrored)
            if probabilities is None:  # the first batch tells the number of classes
                probabilities = batch_probabilities.new_empty((len(drawings), batch_probabilities.shape[1]))
            probabilities[batch] = batch_probabilities
    return probabilities


def view_probabilities(network, inputs: torch.Tensor, mirrored: bool) -> torch.Tensor:
    """fp32 class probabilities of a batch of network inputs; with `mirrored`, averaged with their mirror images'."""
    views = (inputs, inputs.flip(-1)) if mirrored else (inputs,)
    return torch.stack([network(view).float().softmax(1) for view in views]).mean(0)


def evaluation_batches(network, drawings, compute: Compute):
    """The network in eval mode, then (slice, float inputs) of each batch of EVAL_BATCH_SIZE drawings (of any size
    when compiled: one graph, see `Compute.dynamic_batch`); no drawings give one empty batch, so that a prediction
    still has its classes' width.

    Memory stays that of a batch whatever the set's size when nothing made for a batch outlives it but sums and
    what is written into an array allocated once: on the CPU, batch outputs kept until the end (logits gathered for
    one torch.cat) sat between the batches' large temporaries in the heap, which then could reuse none of them,
    and grew by several KB per drawing (issue 28)."""
    network.eval()
    for start in range(0, len(drawings) or 1, EVAL_BATCH_SIZE):
        batch = slice(start, start + EVAL_BATCH_SIZE)
        yield batch, compute.dynamic_batch(compute.inputs(drawings[batch]))
