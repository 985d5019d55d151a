"""Every hyperparameter a search can vary and every metric a trial reports, each described once.

A hyperparameter's record holds its flag, what it means, the values it takes and how a value is written; a metric's
record holds what it measures, its TensorBoard tag and how tables show it. The command line, the search space, the
Tuner, the trial, the console, the summary files, the report page and best_model/config.json all ask these records:
a new hyperparameter is a record here and its use in quickdraw.training. Pure data, so that the command line starts
without torch, Ray or pandas. `python -m quickdraw.catalogue` prints the table of docs/search-spaces.md."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

MODEL_NAMES = ("seed", "vgg-bn")  # quickdraw.model.MODELS, named here so that the command line need not import torch


@dataclass(frozen=True)
class Hyperparameter:
    """A setting a search can vary. A trial gets it as `kind` (str, int or float). Its flag takes a comma-separated
    list when `many` (each value a point of the grid), else one value; `default` holds the seed experiment's."""

    name: str  # the key in Tune's config, a --space file, search.json and the summary's columns
    flag: str
    metavar: str
    many: bool
    label: str  # a table's header
    phrase: str  # the hyperparameter in a sentence that names a trial: "lr 0.001, batch size 64"
    short: str  # the console's column, a trial folder's tag, a legend's label: "batch"
    meaning: str
    kind: type
    default: tuple
    valid: Callable[[object], bool]
    allowed: str  # what `valid` accepts, in words
    example: str  # how a --space file searches it
    single_flag: str = ""  # a flag that takes exactly one value, as an alternative to `flag`
    always_named: bool = False  # named in every trial's folder, console row and sentence; the others when searched

    def text(self, value) -> str:
        """A value as tables, sentences, the console and folder names write it: 0.001, 64, seed."""
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    def written(self, value) -> str:
        """A value exactly as a flag or a space file writes it: the shortest text that reads back as the same number
        (1e-05, 0.001, 64). TensorBoard's HParams table shows the values of a list this way."""
        if isinstance(value, float):
            short = f"{value:g}"
            return short if float(short) == value else repr(float(value))
        return str(value)

    def checked(self, value):
        """`value` as a trial gets it (a number YAML left as text, such as '1e-4', as a number); a ValueError that
        says what is allowed when it is not one."""
        if self.kind is str:
            if not self.valid(value):
                raise ValueError(f"unknown {self.name} {value!r}; choose from {self.allowed}")
            return value
        number = as_number(value)
        if number is not None and not finite(number):
            raise ValueError(f"{value!r} is not a finite number; {self.name} must be {self.allowed}")
        if number is None or (self.kind is int and number != int(number)) or not self.valid(number):
            raise ValueError(f"{value!r} is not a valid {self.name}: it must be {self.allowed}")
        return self.kind(number)


def finite(number) -> bool:
    """Whether a number is finite as a float: nan, inf, 1e400 (inf once read) and integers beyond a float's range
    are never a setting."""
    try:
        return math.isfinite(number)
    except OverflowError:
        return False


def as_number(value) -> float | None:
    """A number, or a string that YAML left as one (PyYAML reads 1e-4 as text: YAML 1.1 wants 1.0e-4)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


HYPERPARAMETERS = (  # in the order of every table
    Hyperparameter(
        name="model", flag="--models", single_flag="--model", metavar="NAME,...", many=True, label="Model",
        phrase="model", short="model", meaning="the network and its training recipe (docs/models.md)", kind=str,
        default=("seed",),
        valid=lambda name: name in MODEL_NAMES, allowed=" or ".join(MODEL_NAMES), example="[seed, vgg-bn]"),
    Hyperparameter(
        name="lr", flag="--lrs", metavar="LR,...", many=True, label="Learning rate", phrase="lr", short="lr",
        meaning="AdamW's learning rate: constant for seed, the one-cycle schedule's peak for vgg-bn", kind=float,
        default=(0.01, 0.001, 0.0001), valid=lambda x: x > 0, allowed="a number above 0",
        example="{loguniform: [1.0e-4, 1.0e-1]}", always_named=True),
    Hyperparameter(
        name="batch_size", flag="--batch-sizes", metavar="N,...", many=True, label="Batch size", phrase="batch size",
        short="batch",
        meaning="drawings per training step", kind=int, default=(32, 64, 128, 256, 512), valid=lambda n: n >= 1,
        allowed="a whole number of 1 or more", example="[32, 64, 128]", always_named=True),
    Hyperparameter(
        name="dropout", flag="--dropout", metavar="P", many=False, label="Dropout", phrase="dropout",
        short="dropout",
        meaning="the dropout rate", kind=float, default=(0.5,), valid=lambda x: 0 <= x < 1,
        allowed="a number from 0 up to, not including, 1", example="{uniform: [0.1, 0.6]}"),
    Hyperparameter(
        name="weight_decay", flag="--weight-decay", metavar="WD", many=False, label="Weight decay",
        phrase="weight decay",
        short="wd",
        meaning="AdamW's decoupled weight decay; 0 trains as Adam does", kind=float, default=(0.0,),
        valid=lambda x: x >= 0, allowed="a number of 0 or more", example="{loguniform: [1.0e-6, 1.0e-2]}"),
    Hyperparameter(
        name="label_smoothing", flag="--label-smoothing", metavar="EPS", many=False, label="Label smoothing",
        phrase="label smoothing", short="ls",
        meaning="the training loss's label smoothing (torch's cross-entropy); 0 trains on the labels as they are",
        kind=float, default=(0.0,), valid=lambda x: 0 <= x < 1, allowed="a number from 0 up to, not including, 1",
        example="{uniform: [0.0, 0.2]}"),
    Hyperparameter(
        name="ema_decay", flag="--ema-decay", metavar="DECAY", many=False, label="EMA decay", phrase="EMA decay",
        short="ema",
        meaning="the decay of an exponential moving average of the weights, updated every step and validated and "
                "tested in their place (BatchNorm statistics recomputed on the training drawings); 0 uses the "
                "weights as trained", kind=float, default=(0.0,), valid=lambda x: 0 <= x < 1,
        allowed="a number from 0 up to, not including, 1", example="[0.0, 0.998]"),
)
HYPERPARAMETER = {hyperparameter.name: hyperparameter for hyperparameter in HYPERPARAMETERS}


@dataclass(frozen=True)
class Metric:
    """A number a trial reports to Tune (its `key` in result.json) and, with a `tag`, logs to TensorBoard. `percent`:
    a fraction that tables hold in percent. `form` formats a table's value, `decimals` rounds it in the summary
    files."""

    key: str
    meaning: str
    tag: str = ""
    label: str = ""  # a table's header; none for those the tables leave out
    short: str = ""  # the console's column
    percent: bool = False
    form: str = "{:.4g}"
    decimals: int | None = None


EPOCH = Metric("epoch", "epochs the trial ran", label="Epochs", form="{:d}")
TRAIN_LOSS = Metric("train_loss", "mean cross-entropy over the epoch's training batches", tag="loss/train")
TRAIN_ACCURACY = Metric("train_accuracy", "accuracy on the epoch's training batches", tag="accuracy/train",
                        percent=True)
VAL_LOSS = Metric("val_loss", "cross-entropy on the validation drawings", tag="loss/validation")
VAL_ACCURACY = Metric("val_accuracy", "accuracy on the validation drawings", tag="accuracy/validation",
                      short="val acc %", percent=True, form="{:.2f}")
BEST_VAL_LOSS = Metric("best_val_loss", "the lowest validation loss over the trial's epochs; breaks ties",
                       label="Validation loss", decimals=4, form="{:.4f}")
BEST_VAL_ACCURACY = Metric(
    "best_val_accuracy", "validation accuracy at the epoch of the lowest validation loss, whose weights are tested: "
    "what chooses the best trial", tag="accuracy/validation_best", label="Validation accuracy", short="best val %",
    percent=True, form="{:.2f}%", decimals=2)
TEST_ACCURACY = Metric(
    "test_accuracy", "accuracy on the test drawings of the weights with the lowest validation loss; reported only, "
    "never used to choose", tag="accuracy/test", label="Test accuracy", percent=True, form="{:.2f}%", decimals=2)
TRAIN_SECONDS = Metric(
    "train_seconds", "seconds spent in the training passes over the training drawings; Ray's time_total_s (in "
    "result.json) also counts validation, testing, checkpoints and start-up", label="Training time",
    form="{:.1f} s", decimals=1)
EPOCH_SECONDS = Metric("epoch_seconds", "seconds of the epoch's training pass", tag="speed/seconds_per_epoch")
IMAGES_PER_SECOND = Metric("images_per_second", "training drawings per second in the epoch",
                           tag="speed/images_per_second")
LEARNING_RATE = Metric("learning_rate", "the optimizer's learning rate at the epoch's end",
                       tag="optimizer/learning_rate")
METRICS = (EPOCH, TRAIN_LOSS, TRAIN_ACCURACY, VAL_LOSS, VAL_ACCURACY, BEST_VAL_LOSS, BEST_VAL_ACCURACY, TEST_ACCURACY,
           TRAIN_SECONDS, EPOCH_SECONDS, IMAGES_PER_SECOND, LEARNING_RATE)
# What a trial also reports every epoch, as text: what its --precision resolved to, and the device it ran on.
PRECISION, DEVICE = "precision", "device"
# True in the result of the epoch whose training or validation loss was NaN or infinite, the trial's last
# (quickdraw.training); absent from every other result.
DIVERGED = "diverged"
# The objective: what chooses the best trial (quickdraw.summary) and what Optuna maximises.
OBJECTIVE = BEST_VAL_ACCURACY


def markdown_table() -> str:
    """The searchable hyperparameters as docs/search-spaces.md lists them (a test checks that it does)."""
    searched_by = {str: "a list or choice", int: "a list, choice, randint or lograndint",
                   float: "a list, choice, uniform or loguniform"}
    rows = ["| key | flag | values | searched by | default |", "| --- | --- | --- | --- | --- |"]
    for h in HYPERPARAMETERS:
        flags = " or ".join(f"`{flag}`" for flag in (h.single_flag, h.flag) if flag)
        default = ",".join(h.written(value) for value in h.default)
        rows.append(f"| `{h.name}` | {flags} | {h.allowed}: {h.meaning} | {searched_by[h.kind]} | `{default}` |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
