"""Search spaces: which hyperparameters a search varies, and over what. Pure data: read from a YAML or JSON file
(`--space`, schema in docs/search-spaces.md) or from the hyperparameters' flags (quickdraw.catalogue), checked here,
and turned into Tune's domains by quickdraw.tuner, Optuna's distributions by quickdraw.importance and TensorBoard's
HParams domains by quickdraw.trainable.

A hyperparameter is one of
- a single value: fixed for every trial (`dropout: 0.3`);
- a list of values (`lr: [0.01, 0.001]`, or `{choice: [...]}`): every one under `--search grid`, one of them drawn
  per trial under `random` and `optuna`; a list of one value is a fixed value;
- a distribution over [low, high], both ends included: `uniform`, `loguniform`, `randint` or `lograndint`, sampled
  by `random` and `optuna` only."""

from __future__ import annotations

import collections.abc
import json
import math
from dataclasses import dataclass
from pathlib import Path

from quickdraw.catalogue import HYPERPARAMETER, HYPERPARAMETERS, Hyperparameter
from quickdraw.errors import UserError

RANGES = ("uniform", "loguniform", "randint", "lograndint")  # {name: [low, high]}
DISTRIBUTIONS = ("choice",) + RANGES
INTEGER_RANGES = ("randint", "lograndint")
LOG_RANGES = ("loguniform", "lograndint")
SCHEMA = "see docs/search-spaces.md and spaces/example.yaml"
MAX_SPACE_BYTES = 64 * 1024  # a space file is a few hundred bytes; PyYAML parses about 0.1 MB a second


@dataclass(frozen=True)
class Dimension:
    """One hyperparameter: `kind` is "value" (args holds it), "values" (args holds them) or a RANGES name (args is
    (low, high), both included)."""

    name: str
    kind: str
    args: tuple

    @property
    def hyperparameter(self) -> Hyperparameter:
        return HYPERPARAMETER[self.name]

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
        written = self.hyperparameter.written
        if self.kind == "value":
            return written(self.args[0])
        if self.kind == "values":
            return "one of " + ", ".join(map(written, self.args))
        return f"{self.kind} from {written(self.args[0])} to {written(self.args[1])}"


Space = tuple[Dimension, ...]  # one Dimension per hyperparameter, in the catalogue's order


def default_space() -> Space:
    """The seed experiment's: its grid of learning rates and batch sizes, the rest fixed."""
    return tuple(Dimension(h.name, "values" if len(h.default) > 1 else "value", h.default) for h in HYPERPARAMETERS)


def space_with(**values) -> Space:
    """The default space with some hyperparameters replaced: a tuple or list is a set of values, anything else a fixed
    value (space_with(lr=(0.01, 0.001), dropout=0.3)). For code that builds a search without flags."""
    given = tuple(parse_dimension(name, list(value) if isinstance(value, (tuple, list)) else value, "space_with")
                  for name, value in values.items())
    return merge(given)


def flag_dimension(hyperparameter: Hyperparameter, text: str, flag: str, listed: bool) -> Dimension:
    """What a hyperparameter's flag says: a list of values, from comma-separated text when `listed`, else one value.
    A ValueError says what is wrong."""
    parts = [part.strip() for part in text.split(",")] if listed else [text.strip()]
    parts = [part for part in parts if part]
    try:
        return Dimension(hyperparameter.name, "values", checked_values(hyperparameter, parts, flag))
    except UserError as e:
        raise ValueError(str(e).removeprefix(f"{flag}: ")) from None


def load_space(file: Path) -> Space:
    """The dimensions a `--space` file names (the rest are left to the flags: see `merge`)."""
    if not file.is_file():
        raise UserError(f"--space {file}: no such file; write one as in spaces/example.yaml")
    try:
        text = read_space_text(file)
        spec = json.loads(text, object_pairs_hook=unique_keys) if file.suffix.lower() == ".json" else _yaml_load(text)
    except DuplicateKey as e:
        raise UserError(f"--space {file}: {e} (the last would silently win); keep one of them") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        detail = " ".join(str(e).split())
        raise UserError(f"--space {file}: not YAML or JSON ({detail[:160]}); {SCHEMA}") from None
    return parse_space(spec, f"--space {file}")


def read_space_text(file: Path) -> str:
    """The file's text, refused before parsing when it is larger than a space file can sensibly be (reading at most
    one byte past the limit, whatever its size says)."""
    with open(file, "rb") as f:
        data = f.read(MAX_SPACE_BYTES + 1)
    if len(data) > MAX_SPACE_BYTES:
        raise UserError(f"--space {file} is over {MAX_SPACE_BYTES // 1024} KiB, and a space file names a few "
                        f"hyperparameters in a few lines; {SCHEMA}")
    return data.decode()


class DuplicateKey(ValueError):
    pass


def unique_keys(pairs) -> dict:
    """A mapping of the pairs, refusing a key given twice (JSON's and YAML's parsers keep the last silently)."""
    mapping = {}
    for key, value in pairs:
        if key in mapping:
            raise DuplicateKey(f"{key!r} is given twice")
        mapping[key] = value
    return mapping


def _yaml_load(text: str):
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            keys = [self.construct_object(key, deep=deep) for key, _ in node.value
                    if key.tag != "tag:yaml.org,2002:merge"]  # keys a merge (<<) brings in may be overridden
            unique_keys((key, None) for key in keys if isinstance(key, collections.abc.Hashable))
            return super().construct_mapping(node, deep)

    try:
        return yaml.load(text, Loader=UniqueKeyLoader)
    except yaml.YAMLError as e:
        raise ValueError(str(e)) from None


def parse_space(spec, source: str) -> Space:
    """The dimensions of a parsed space file (a mapping of hyperparameter to its spec); `source` names it in errors."""
    if not isinstance(spec, dict) or not spec:
        raise UserError(f"{source}: expected a mapping of hyperparameter: values or {{distribution: [low, high]}}, "
                        f"e.g. 'lr: {{loguniform: [1e-4, 1e-1]}}'; {SCHEMA}")
    return tuple(parse_dimension(name, value, source) for name, value in spec.items())


def parse_dimension(name, spec, source: str) -> Dimension:
    if name not in HYPERPARAMETER:
        raise UserError(f"{source}: unknown hyperparameter {name!r}; searchable are {', '.join(HYPERPARAMETER)}")
    hyperparameter, where = HYPERPARAMETER[name], f"{source}: {name}"
    if isinstance(spec, dict):
        if len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
            raise UserError(f"{where}: unknown distribution {', '.join(map(str, spec)) or '{}'}; write one of "
                            f"{', '.join(DISTRIBUTIONS)}, e.g. {name}: {hyperparameter.example}")
        (kind, args), = spec.items()
        if kind == "choice":
            return Dimension(name, "values", checked_values(hyperparameter, args, where))
        return Dimension(name, kind, checked_range(hyperparameter, kind, args, where))
    if isinstance(spec, list):
        return Dimension(name, "values", checked_values(hyperparameter, spec, where))
    return Dimension(name, "value", (checked_value(hyperparameter, spec, where),))


def checked_values(hyperparameter: Hyperparameter, values, where: str) -> tuple:
    if not isinstance(values, list):
        name = hyperparameter.name
        raise UserError(f"{where}: choice takes a list of values, not {values!r}; write {name}: {{choice: [{values!r}, "
                        f"...]}}, or {name}: {values!r} for a fixed value")
    if not values:
        raise UserError(f"{where}: an empty list of values; give at least one, e.g. "
                        f"{hyperparameter.name}: {hyperparameter.example}")
    values = tuple(checked_value(hyperparameter, value, where) for value in values)
    if len(set(values)) < len(values):
        raise UserError(f"{where}: a value is listed twice in {list(values)}; list each once")
    return values


def checked_range(hyperparameter: Hyperparameter, kind: str, bounds, where: str) -> tuple:
    name = hyperparameter.name
    if not (isinstance(bounds, list) and len(bounds) == 2):
        raise UserError(f"{where}: {kind} takes [low, high], got {bounds!r}; e.g. {name}: {hyperparameter.example}")
    if hyperparameter.kind is str:
        raise UserError(f"{where}: a {name} is a name, not a number; "
                        f"write {name}: {{choice: {hyperparameter.example}}}")
    integer = kind in INTEGER_RANGES
    if hyperparameter.kind is int and not integer:
        raise UserError(f"{where}: a {name} is a whole number; use randint or lograndint instead of {kind}, "
                        f"or choice: {hyperparameter.example}")
    if hyperparameter.kind is float and integer:
        raise UserError(f"{where}: {name} is a real number; use uniform or loguniform instead of {kind}")
    low, high = (checked_value(hyperparameter, bound, where) for bound in bounds)
    if not low < high:
        fix = f"for a fixed value write {name}: {low}" if low == high else f"write [{high}, {low}]"
        raise UserError(f"{where}: {kind} needs low < high, got [{low}, {high}]; {fix}")
    if kind in LOG_RANGES and low <= 0:
        raise UserError(f"{where}: {kind} needs low > 0 (a log scale never reaches 0), got [{low}, {high}]; "
                        f"use uniform, or a small positive low such as {high / 1e4:g}")
    return low, high


def checked_value(hyperparameter: Hyperparameter, value, where: str):
    """One value of a hyperparameter, as the trial gets it."""
    try:
        return hyperparameter.checked(value)
    except ValueError as e:
        raise UserError(f"{where}: {e}") from None


def merge(given: Space, file_space: Space = ()) -> Space:
    """Every hyperparameter, in the catalogue's order: the space file's where it names one, else the `given` flags',
    else its default. A hyperparameter both given by its flag and named in the file is an error."""
    from_file = {d.name: d for d in file_space}
    for dimension in given:
        if dimension.name in from_file:
            raise UserError(f"{dimension.hyperparameter.flag} and {dimension.name} in the --space file both set "
                            f"{dimension.name}; keep one of them")
    by_name = {d.name: d for d in default_space()} | {d.name: d for d in given} | from_file
    return tuple(by_name[h.name] for h in HYPERPARAMETERS)


def grid_size(space: Space) -> int:
    return math.prod(len(d.args) for d in space if d.kind == "values")

