"""Search spaces: which hyperparameters a search varies, and over what. Pure data: read from a YAML or JSON file
(`--space`, schema in docs/search-spaces.md) or made from the grid flags (`--lrs`, `--batch-sizes`, `--models`),
checked here, and turned into Tune's domains by quickdraw.search, Optuna's distributions by quickdraw.importance and
TensorBoard's HParams domains by quickdraw.trainable.

A hyperparameter is one of
- a single value: fixed for every trial (`dropout: 0.3`);
- a list of values (`lr: [0.01, 0.001]`, or `{choice: [...]}`): every one under `--search grid`, one of them drawn
  per trial under `random` and `optuna`;
- a distribution over [low, high], both ends included: `uniform`, `loguniform`, `randint` or `lograndint`, sampled
  by `random` and `optuna` only."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from quickdraw.errors import UserError

MODEL_NAMES = ("seed", "vgg-bn")  # quickdraw.model.MODELS; named here so the CLI need not import torch
HYPERPARAMETERS = ("model", "lr", "batch_size", "dropout", "weight_decay")  # searchable, in the tables' order
RANGES = ("uniform", "loguniform", "randint", "lograndint")  # {name: [low, high]}
DISTRIBUTIONS = ("choice",) + RANGES
INTEGER_RANGES = ("randint", "lograndint")
LOG_RANGES = ("loguniform", "lograndint")
SCHEMA = "see docs/search-spaces.md and spaces/example.yaml"


@dataclass(frozen=True)
class Dimension:
    """One hyperparameter: `kind` is "value" (args holds it), "values" (args holds them) or a RANGES name (args is
    (low, high), both included)."""

    name: str
    kind: str
    args: tuple

    @property
    def searched(self) -> bool:
        """Whether trials can differ in it."""
        return self.kind in RANGES or (self.kind == "values" and len(self.args) > 1)

    @property
    def sampled(self) -> bool:
        """A distribution, which a grid cannot enumerate."""
        return self.kind in RANGES

    @property
    def log(self) -> bool:
        return self.kind in LOG_RANGES

    def as_spec(self):
        """The dimension as a space file writes it (search.json records the space this way)."""
        if self.kind == "value":
            return self.args[0]
        return list(self.args) if self.kind == "values" else {self.kind: list(self.args)}

    def describe(self) -> str:
        if self.kind == "value":
            return f"{self.args[0]}"
        if self.kind == "values":
            return "one of " + ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in self.args)
        return f"{self.kind} from {self.args[0]:g} to {self.args[1]:g}"


Space = tuple[Dimension, ...]


def load_space(file: Path) -> Space:
    """The space a `--space` file describes (missing hyperparameters are left to the flags: see `merge`)."""
    if not file.is_file():
        raise UserError(f"--space {file}: no such file; write one as in spaces/example.yaml")
    try:
        text = file.read_text()
        spec = json.loads(text) if file.suffix.lower() == ".json" else _yaml_load(text)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        detail = " ".join(str(e).split())
        raise UserError(f"--space {file}: not YAML or JSON ({detail[:160]}); {SCHEMA}") from None
    return parse_space(spec, f"--space {file}")


def _yaml_load(text: str):
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(str(e)) from None


def parse_space(spec, source: str) -> Space:
    """The dimensions of a parsed space file (a mapping of hyperparameter to its spec); `source` names it in errors."""
    if not isinstance(spec, dict) or not spec:
        raise UserError(f"{source}: expected a mapping of hyperparameter: values or {{distribution: [low, high]}}, "
                        f"e.g. 'lr: {{loguniform: [1e-4, 1e-1]}}'; {SCHEMA}")
    return tuple(parse_dimension(name, value, source) for name, value in spec.items())


def parse_dimension(name, spec, source: str) -> Dimension:
    if name not in HYPERPARAMETERS:
        raise UserError(f"{source}: unknown hyperparameter {name!r}; searchable are {', '.join(HYPERPARAMETERS)}")
    where = f"{source}: {name}"
    if isinstance(spec, dict):
        if len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
            raise UserError(f"{where}: unknown distribution {', '.join(map(str, spec)) or '{}'}; write one of "
                            f"{', '.join(DISTRIBUTIONS)}, e.g. {name}: {example(name)}")
        (kind, args), = spec.items()
        if kind == "choice":
            return Dimension(name, "values", checked_values(name, args, where))
        return Dimension(name, kind, checked_range(name, kind, args, where))
    if isinstance(spec, list):
        return Dimension(name, "values", checked_values(name, spec, where))
    return Dimension(name, "value", (checked_value(name, spec, where),))


def checked_values(name: str, values, where: str) -> tuple:
    if not isinstance(values, list) or not values:
        raise UserError(f"{where}: an empty list of values; give at least one, e.g. {name}: {example(name)}")
    values = tuple(checked_value(name, value, where) for value in values)
    if len(set(values)) < len(values):
        raise UserError(f"{where}: a value is listed twice in {list(values)}; list each once")
    return values


def checked_range(name: str, kind: str, bounds, where: str) -> tuple:
    if not (isinstance(bounds, list) and len(bounds) == 2):
        raise UserError(f"{where}: {kind} takes [low, high], got {bounds!r}; e.g. {name}: {example(name)}")
    if name == "model":
        raise UserError(f"{where}: a model is a name, not a number; write model: {{choice: [{', '.join(MODEL_NAMES)}]}}")
    integer = kind in INTEGER_RANGES
    if name == "batch_size" and not integer:
        raise UserError(f"{where}: a batch size is a whole number; use randint or lograndint instead of {kind}, "
                        f"or choice: [32, 64, 128]")
    if name != "batch_size" and integer:
        raise UserError(f"{where}: {name} is a real number; use uniform or loguniform instead of {kind}")
    low, high = (checked_value(name, bound, where) for bound in bounds)
    if not low < high:
        fix = f"for a fixed value write {name}: {low}" if low == high else f"write [{high}, {low}]"
        raise UserError(f"{where}: {kind} needs low < high, got [{low}, {high}]; {fix}")
    if kind in LOG_RANGES and low <= 0:
        raise UserError(f"{where}: {kind} needs low > 0 (a log scale never reaches 0), got [{low}, {high}]; "
                        f"use uniform, or a small positive low such as {high / 1e4:g}")
    return low, high


def checked_value(name: str, value, where: str):
    """One value of a hyperparameter, as the trial gets it: a model name, an int batch size, a float otherwise."""
    if name == "model":
        if value not in MODEL_NAMES:
            raise UserError(f"{where}: unknown model {value!r}; choose from {', '.join(MODEL_NAMES)}")
        return value
    number = as_number(value)
    if name == "batch_size":
        if number is None or number != int(number) or number < 1:
            raise UserError(f"{where}: {value!r} is not a batch size; batch sizes are whole numbers of 1 or more, "
                            f"such as 32 or 64")
        return int(number)
    valid = {"lr": (lambda x: x > 0, "above 0"), "dropout": (lambda x: 0 <= x < 1, "from 0 up to (not including) 1"),
             "weight_decay": (lambda x: x >= 0, "0 or more")}[name]
    if number is None or not math.isfinite(number) or not valid[0](number):
        raise UserError(f"{where}: {value!r} is not a valid {name}; it must be a number {valid[1]}")
    return float(number)


def as_number(value) -> float | None:
    """A number, or a string YAML left as one (PyYAML reads 1e-4 as text: YAML 1.1 wants 1.0e-4)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def example(name: str) -> str:
    return {"model": f"[{', '.join(MODEL_NAMES)}]", "lr": "{loguniform: [1e-4, 1e-1]}",
            "batch_size": "[32, 64, 128]", "dropout": "{uniform: [0.1, 0.6]}",
            "weight_decay": "{loguniform: [1e-6, 1e-2]}"}[name]


def merge(flags: Space, file_space: Space, given_flags: dict[str, str]) -> Space:
    """Every hyperparameter: the space file's where it names one, the flags' otherwise (in HYPERPARAMETERS order).
    `given_flags` maps a hyperparameter to the flag the user gave for it; naming it in the file too is an error."""
    from_file = {d.name: d for d in file_space}
    for name, flag in given_flags.items():
        if name in from_file:
            raise UserError(f"{flag} and {name} in the --space file both set {name}; keep one of them")
    by_name = {d.name: d for d in flags} | from_file
    return tuple(by_name[name] for name in HYPERPARAMETERS)


def flag_space(models, lrs, batch_sizes, dropout: float, weight_decay: float) -> Space:
    """The space of the grid flags: learning rates by batch sizes (by models when more than one), the rest fixed."""
    dims = [Dimension("model", "values", tuple(models)) if len(models) > 1 else Dimension("model", "value", tuple(models)),
            Dimension("lr", "values", tuple(lrs)), Dimension("batch_size", "values", tuple(batch_sizes)),
            Dimension("dropout", "value", (dropout,)), Dimension("weight_decay", "value", (weight_decay,))]
    return tuple(dims)


def grid_size(space: Space) -> int:
    return math.prod(len(d.args) for d in space if d.kind == "values")


def searched(space: Space) -> list[str]:
    return [d.name for d in space if d.searched]


def space_of_record(record: dict) -> Space:
    """The space a search ran with, from its search.json: the "space" it recorded (`as_spec` of each dimension),
    or for a search from before spaces, the grid its flags made."""
    if "space" in record:
        return parse_space(record["space"], "search.json space")
    config = record["config"]
    return flag_space(config["models"], config["lrs"], config["batch_sizes"], config["dropout"], 0.0)
