"""Every setting of a search in one typed place, checked; the defaults are the seed experiment's. What the search
varies is its space (quickdraw.space), whose hyperparameters quickdraw.catalogue describes."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from quickdraw.errors import UserError
from quickdraw.space import Space, default_space, grid_size

GOOGLE_BASE_URL = "https://storage.googleapis.com/quickdraw_dataset/full/numpy_bitmap/"
PRECISIONS = ("auto", "bf16", "fp32")  # of a trial's arithmetic; see quickdraw.compute
SEED_CLASSES = ("bear", "bee", "camel", "cat", "cow", "crab", "crocodile", "dog", "dolphin", "duck")
EXPORT_FORMATS = ("md", "csv", "json", "html", "latex")  # quickdraw.summary.EXPORTERS; the CLI need not import pandas
SEARCHES = ("grid", "random", "optuna")  # every combination of the lists; Tune's random sampling; Optuna's TPE
DEFAULT_SAMPLES = 15  # trials of a random or Optuna search: the seed grid's budget
SCHEDULERS = ("none", "asha")  # none: Tune's FIFO, every trial runs all its epochs
# The most steps of the ensemble selection that chooses best_model/ (quickdraw.ensemble); 1: the best trial alone.
ENSEMBLE_SIZE = 10
ASHA_GRACE_PERIOD = 2
ASHA_REDUCTION_FACTOR = 3.0
NAME_MAX_BYTES = 255  # the longest file name of ext4, XFS, tmpfs and NFS (Linux's NAME_MAX)
# Seeds that every seeded part takes: Tune's variant generator and Optuna's sampler seed numpy's RandomState, which
# takes 0 to 2**32 - 1.
MAX_SEED = 2**32 - 1
# The most trials a search may have. Tune generates a whole grid before its first trial, and heeds a first Ctrl-C only
# then: 15-35 s for 100 x 100 values on this project's 2-core machine (the time grows with trials x values), while a
# 1000 x 1000 grid had started no trial after 10 minutes.
MAX_TRIALS = 10_000


@dataclass(frozen=True)
class SplitSizes:
    """Train, validation and test totals, divided evenly among the classes."""

    train: int = 20_000
    validation: int = 4_000
    test: int = 1_000

    def per_class(self, num_classes: int) -> list[tuple[int, int, int]]:
        """(train, validation, test) counts for each class; remainders go to the first classes."""
        def share(total: int, index: int) -> int:
            return total // num_classes + (1 if index < total % num_classes else 0)

        return [
            (share(self.train, i), share(self.validation, i), share(self.test, i))
            for i in range(num_classes)
        ]


def check_ensemble(size: int) -> None:
    if size < 1:
        raise UserError(f"--ensemble must be at least 1 (1: the best trial alone), got {size}")


def check_class_name(name: str) -> None:
    """A class name becomes a file name in --data-dir (<class>.npy) and a folder name under png/: it must be a name,
    not a path. Google's names have spaces ("hot dog", "The Eiffel Tower"), which are fine."""
    if not name or name.startswith(".") or any(c in name for c in "/\\\0"):
        raise UserError(f"--classes: {name!r} is not a class name: give the name of a <class>.npy file, without / "
                        "or \\ and not starting with a dot (e.g. cat or 'hot dog')")


def check_not_a_file(data_dir: Path) -> None:
    """--data-dir may be missing (downloads create it), but never a file."""
    if data_dir.exists() and not data_dir.is_dir():
        raise UserError(f"--data-dir {data_dir} is a file, not a folder: give the folder that holds the <class>.npy files")


@dataclass(frozen=True)
class DataConfig:
    """What the conversion needs: which files, which classes, how to split them."""

    data_dir: Path = Path("data")
    classes: tuple[str, ...] = SEED_CLASSES
    split: SplitSizes = SplitSizes()
    seed: int = 0
    base_url: str = GOOGLE_BASE_URL  # where missing class files are downloaded from
    download: bool = True  # False: a missing class file is an error

    def drawings_per_class(self) -> dict[str, int]:
        """How many of each class's first drawings the split takes."""
        return {name: sum(counts) for name, counts in zip(self.classes, self.split.per_class(len(self.classes)))}

    def validate(self, min_classes: int = 2) -> None:
        if not self.classes:
            raise UserError("--classes is empty: name at least two classes, e.g. --classes cat,dog")
        folded = [name.casefold() for name in self.classes]
        if twice := [name for name, key in zip(self.classes, folded) if folded.count(key) > 1]:
            raise UserError(f"--classes names a class twice ({','.join(twice)}; names that differ only in case share "
                            "a PNG folder and, on some file systems, a class file): name each class once")
        if len(self.classes) < min_classes:
            raise UserError("--classes needs at least two classes to classify")
        for name in self.classes:
            check_class_name(name)
        check_not_a_file(self.data_dir)
        for name, value in dataclasses.asdict(self.split).items():
            if value < len(self.classes):
                raise UserError(
                    f"--split: the {name} total {value} is smaller than the number of classes "
                    f"({len(self.classes)}); give at least one drawing per class"
                )


@dataclass(frozen=True)
class SearchConfig:
    """A whole search: the data, the space its trials are drawn from and how, the training, and where results go."""

    data: DataConfig = DataConfig()
    space: Space = field(default_factory=default_space)  # every hyperparameter's value, values or distribution
    space_file: str | None = None  # the --space file that part of `space` came from, for errors
    search: str = "grid"  # how trials are drawn from the space: see SEARCHES
    num_samples: int | None = None  # trials of a random or Optuna search (default DEFAULT_SAMPLES)
    max_concurrent_trials: int | None = None  # None: as many as the resources allow
    epochs: int = 50
    storage: str = "ray_results"
    name: str | None = None
    gpus_per_trial: float | None = None  # None: share the GPUs Ray sees among all trials
    cpus_per_trial: float | None = None  # None: 1 without GPUs, else a share that lets all trials run
    address: str | None = None  # None: start Ray on this machine; "auto" or host:port joins a cluster
    max_failures: int = 3  # restarts of a failed trial, each from its last checkpoint; -1: no limit
    precision: str = "auto"  # "auto": bf16 autocast where the hardware computes it natively, else fp32
    compile: bool = False  # torch.compile each trial's model
    scheduler: str = "none"  # "asha": Tune's ASHAScheduler stops trials whose validation loss lags
    grace_period: int | None = None  # ASHA: epochs every trial runs before it can be stopped
    reduction_factor: float | None = None  # ASHA's eta: rungs every eta times as many epochs, 1/eta go on
    ensemble: int = ENSEMBLE_SIZE  # the most steps of the ensemble selection that chooses best_model/

    def __post_init__(self):
        if self.search != "grid" and self.num_samples is None:
            object.__setattr__(self, "num_samples", DEFAULT_SAMPLES)
        # ASHA's settings get their defaults only with ASHA, so that one given without it stays visible
        # to validate(); search.json then records the values the search ran with. A default grace period
        # longer than a short run would be an error about a flag nobody gave.
        if self.scheduler == "asha":
            if self.grace_period is None:
                object.__setattr__(self, "grace_period", min(ASHA_GRACE_PERIOD, max(self.epochs, 1)))
            if self.reduction_factor is None:
                object.__setattr__(self, "reduction_factor", ASHA_REDUCTION_FACTOR)

    @property
    def num_trials(self) -> int:
        return grid_size(self.space) if self.search == "grid" else self.num_samples

    @property
    def concurrent_trials(self) -> int:
        """How many trials run at once when the resources allow."""
        return min(self.num_trials, self.max_concurrent_trials or self.num_trials)

    def validate(self) -> None:
        """The settings the flags cannot check one by one; the space's values were checked when it was made."""
        self.data.validate()
        if self.epochs < 1:
            raise UserError(f"--epochs must be at least 1, got {self.epochs}")
        if self.gpus_per_trial is not None and self.gpus_per_trial > 1:
            raise UserError(f"--gpus-per-trial {self.gpus_per_trial:g}: a trial trains on one GPU and would leave the "
                            "others idle; give 1 or less (0.25 puts four trials on a GPU), or leave it out to "
                            "share the GPUs among all trials")
        if self.gpus_per_trial is not None and not 0 <= self.gpus_per_trial <= 1:
            raise UserError(f"--gpus-per-trial must be from 0 to 1, got {self.gpus_per_trial}")
        if self.cpus_per_trial is not None and not 0 < self.cpus_per_trial < math.inf:
            raise UserError(f"--cpus-per-trial must be a finite number above 0, got {self.cpus_per_trial}")
        if self.precision not in PRECISIONS:
            raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.max_failures < -1:
            raise UserError(f"--max-failures must be 0 or more (or -1 for no limit), got {self.max_failures}")
        if self.name is not None and (not self.name or "/" in self.name or self.name in (".", "..")):
            raise UserError(f"--name must be a plain folder name, got {self.name!r}")
        if self.name is not None and len(self.name.encode()) > NAME_MAX_BYTES:
            raise UserError(f"--name is {len(self.name.encode())} bytes long, and file systems take folder names of at "
                            f"most {NAME_MAX_BYTES}: give a shorter one")
        check_ensemble(self.ensemble)
        self._validate_scheduler()
        self._validate_search()

    def _validate_search(self) -> None:
        if self.search not in SEARCHES:
            raise UserError(f"--search must be one of {', '.join(SEARCHES)}, got {self.search!r}")
        if self.max_concurrent_trials is not None and self.max_concurrent_trials < 1:
            raise UserError(f"--max-concurrent-trials must be at least 1, got {self.max_concurrent_trials}")
        if self.search != "grid":
            if self.num_samples < 1:
                raise UserError(f"--num-samples must be at least 1, got {self.num_samples}")
            if self.num_samples > MAX_TRIALS:
                raise UserError(f"--num-samples {self.num_samples:,}: a search has at most {MAX_TRIALS:,} trials; "
                                "ask for fewer")
            return
        if self.num_samples is not None:
            raise UserError(f"--num-samples: a grid runs each of its {self.num_trials} combinations once; "
                            "drop --num-samples, or add --search random or --search optuna to sample")
        for dimension in self.space:
            if dimension.sampled:
                raise UserError(f"--space {self.space_file}: {dimension.name}: {dimension.kind} is sampled, not a "
                                "grid; give a list of values, or add --search random or --search optuna")
        if self.num_trials > MAX_TRIALS:
            sizes = " x ".join(f"{len(d.args)} {d.name}" for d in self.space if d.searched)
            raise UserError(f"the grid has {self.num_trials:,} combinations ({sizes}), more than the {MAX_TRIALS:,} "
                            "trials a search may have: give fewer values, or sample it with --search random or optuna")

    def _validate_scheduler(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise UserError(f"--scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}")
        if self.scheduler != "asha":
            given = [flag for flag, value in (("--grace-period", self.grace_period),
                                              ("--reduction-factor", self.reduction_factor)) if value is not None]
            if given:
                them = "it" if len(given) == 1 else "them"
                raise UserError(f"{' and '.join(given)}: only ASHA uses {them}; add --scheduler asha")
            return
        if not 1 <= self.grace_period <= self.epochs:
            raise UserError(f"--grace-period must be from 1 to --epochs ({self.epochs}), got {self.grace_period}")
        if not (self.reduction_factor > 1 and math.isfinite(self.reduction_factor)):
            raise UserError(f"--reduction-factor must be a finite number above 1, got {self.reduction_factor}")
