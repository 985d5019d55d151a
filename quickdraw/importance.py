"""What mattered: how much each searched hyperparameter explains of the trials' validation accuracy, and the
figures that show it, all from Optuna's own code rather than statistics of ours.

The trials of any search (grid, random or Optuna's) go into an in-memory Optuna study, one completed trial each with
its hyperparameters and its best validation accuracy as the value; the distributions are the space's (quickdraw.space:
a list of values is categorical, a range a float or integer distribution, logarithmic where the space is). Optuna's
fANOVA evaluator then splits the variance of validation accuracy among the hyperparameters, and its matplotlib
visualizations draw the parallel coordinates and one scatter (slice) per hyperparameter.

A trial counts when it has a validation result and ran as far as the search let it: finished, or stopped by ASHA,
which counts with the best validation accuracy it reached before it was stopped (so a hyperparameter that gets
trials stopped early shows as one that mattered). Trials that diverged, failed or never finished are left out (a
diverged trial's best validation accuracy, from before its loss became NaN, says nothing of where it ended). Only
hyperparameters that were searched and took at least two values among those trials are assessed; fixed ones
explain nothing. Optuna is imported only when it is used."""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap

from quickdraw.figures import plt  # pyplot with the Agg backend: no display on cluster nodes
from quickdraw.space import Dimension, Space
from quickdraw.summary import COMPLETE, Importance

SEED = 0  # of fANOVA's random forest: the same trials give the same shares every time
TARGET = "validation accuracy (%)"  # the value of each Optuna trial
# Optuna's Blues for the parallel coordinates' lines, less its near-white end: the worst trial's line stays visible.
LINE_COLOURS = ListedColormap(plt.get_cmap("Blues")(np.linspace(0.25, 1, 256)))


def counted_trials(table: pd.DataFrame) -> pd.DataFrame:
    """The trials that count (see the module's docstring), in the table's order."""
    return table[table.status.isin(COMPLETE) & table.best_val_accuracy.notna()]


def assessed_dimensions(table: pd.DataFrame, space: Space) -> list[Dimension]:
    """The searched dimensions that took two values or more among the counted trials, in the space's order."""
    counted = counted_trials(table)
    return [d for d in space if d.searched and counted[d.name].nunique() > 1]


def why_not(table: pd.DataFrame, space: Space) -> str:
    """Why importance cannot be computed for these trials; empty when it can."""
    counted = counted_trials(table)
    if len(counted) < 2:
        one = len(counted) == 1
        return (f"{len(counted)} trial{'' if one else 's'} finished or {'was' if one else 'were'} stopped by ASHA "
                "with a validation result; comparing hyperparameters takes 2 or more")
    if not assessed_dimensions(table, space):
        return "no searched hyperparameter took two different values among the trials with a validation result"
    if counted.best_val_accuracy.nunique() < 2:
        return "every trial with a validation result reached the same validation accuracy"
    for dimension in assessed_dimensions(table, space):
        outside = [v for v in counted[dimension.name] if not contains(dimension, v)]
        if outside:
            return (f"a trial's {dimension.name} ({outside[0]}) lies outside the space the search recorded "
                    f"({dimension.describe()})")
    return ""


def contains(dimension: Dimension, value) -> bool:
    if dimension.kind in ("value", "values"):
        return value in dimension.args
    low, high = dimension.args
    return low <= value <= high


def assess(table: pd.DataFrame, space: Space) -> Importance:
    """fANOVA's shares of the variance in validation accuracy, by Optuna's FanovaImportanceEvaluator."""
    if reason := why_not(table, space):
        return Importance(reason=reason)
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    with quiet_optuna():
        shares = get_param_importances(study(table, space), evaluator=FanovaImportanceEvaluator(seed=SEED))
    counted = counted_trials(table)
    stopped = (counted.status == "stopped").sum()
    method = (f"fANOVA: optuna {optuna.__version__} FanovaImportanceEvaluator(seed={SEED}) on {len(counted)} trials"
              + (f" ({stopped} of them stopped by ASHA)" if stopped else ""))
    return Importance({name: float(share) for name, share in shares.items()}, method)


def study(table: pd.DataFrame, space: Space):
    """An in-memory Optuna study of the counted trials, maximizing validation accuracy (call only when `why_not` is
    empty)."""
    import optuna

    dimensions = assessed_dimensions(table, space)
    distributions = {d.name: distribution(d) for d in dimensions}
    with quiet_optuna():
        result = optuna.create_study(direction="maximize", study_name="what mattered")
    for trial in counted_trials(table).sort_values("trial_number").itertuples():  # Optuna numbers them in search order
        params = {d.name: plain(d, getattr(trial, d.name)) for d in dimensions}
        result.add_trial(optuna.trial.create_trial(params=params, distributions=distributions,
                                                   value=float(trial.best_val_accuracy)))
    return result


def distribution(dimension: Dimension):
    """The Optuna distribution of a searched dimension."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if dimension.kind == "values":
        return CategoricalDistribution(dimension.args)
    low, high = dimension.args
    if dimension.kind in ("randint", "lograndint"):
        return IntDistribution(int(low), int(high), log=dimension.log)
    return FloatDistribution(float(low), float(high), log=dimension.log)


def plain(dimension: Dimension, value):
    """A table cell as the distribution takes it: a Python value, not NumPy's."""
    if dimension.kind == "values":
        return next(choice for choice in dimension.args if choice == value)
    return int(value) if dimension.kind in ("randint", "lograndint") else float(value)


def parallel_coordinates_figure(table: pd.DataFrame, space: Space):
    """Every counted trial as a line from its validation accuracy across its assessed hyperparameters (Optuna's
    plot_parallel_coordinate: log axes for logarithmic dimensions, value ticks for lists)."""
    from optuna.visualization.matplotlib import plot_parallel_coordinate

    with quiet_optuna(), plt.rc_context():
        axes = plot_parallel_coordinate(study(table, space), target_name=TARGET)
        axes.collections[0].set_cmap(LINE_COLOURS)
        axes.set_title("Each trial: validation accuracy (left) and its hyperparameters")
        axes.figure.set_size_inches(3 + 1.8 * len(assessed_dimensions(table, space)), 5)
        axes.figure.tight_layout()
    return axes.figure


def scatter_figure(table: pd.DataFrame, space: Space, name: str):
    """Validation accuracy against one assessed hyperparameter, a point per counted trial coloured by its order in
    the search (Optuna's plot_slice: a log axis for a logarithmic dimension)."""
    from optuna.visualization.matplotlib import plot_slice

    with quiet_optuna(), plt.rc_context():  # plot_slice switches pyplot to its ggplot style
        axes = plot_slice(study(table, space), params=[name], target_name=TARGET)
        axes.set_title(f"Validation accuracy against {name}")
        axes.figure.axes[-1].set_ylabel("trial number, in the order the search ran them")  # the colour bar
        axes.figure.tight_layout()
    return axes.figure


@contextlib.contextmanager
def quiet_optuna():
    """Optuna without its log lines (a study created in memory) and its ExperimentalWarning (the matplotlib
    visualizations are marked experimental; we use them knowingly, pinned to one version)."""
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(verbosity)

