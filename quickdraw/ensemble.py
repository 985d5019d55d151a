"""Ensemble selection (Caruana et al., 2004, as auto-sklearn and Auto-PyTorch use it) over a search's finished
trials, on their validation probabilities only. Pure NumPy: quickdraw.best_model reads the probabilities
(quickdraw.predictions) and exports what is chosen.

A candidate is a trial's probabilities in one view: as drawn, or mirrored when that scores higher on validation. A
score is validation accuracy, ties broken by the lower validation log loss. Selection is greedy, with replacement:
each step adds the candidate (again, if it is in already) whose addition scores highest, ties to the earlier
candidate in the order given (the summary's ranking); after `size` steps the chosen ensemble is the best-scoring
prefix of the steps, ties to the shorter. Its first step is the best single candidate, so the ensemble never scores
lower on validation than any single trial. A member's weight is the share of the steps that chose it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Member:
    trial_dir: str  # the trial's folder in the experiment
    weight: float  # its share of the average
    mirrored: bool  # whether its probabilities are the mean over each drawing and its mirror image


@dataclass(frozen=True)
class ChosenModel:
    """What best_model/ holds and the report shows: its members, and its accuracies in percent."""

    members: tuple[Member, ...]
    validation_accuracy: float
    test_accuracy: float
    size: int  # the most steps the selection could take (--ensemble)
    test_probabilities: np.ndarray | None = None  # None when they could not be read: the figures are left out
    note: str = ""  # what was left out of the selection, and why


def score(probabilities: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(accuracy, minus the mean log loss): higher is better, compared as a tuple."""
    accuracy = float((probabilities.argmax(1) == labels).mean())
    likelihood = np.clip(probabilities[np.arange(len(labels)), labels].astype(np.float64), 1e-12, None)
    return accuracy, float(np.log(likelihood).mean())


def average(probabilities: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """The weighted mean of members' probabilities, summed in the order given: the report and `predict` both average
    with it, so that they agree to the last bit."""
    total = np.zeros(probabilities[0].shape, dtype=np.float64)
    for member, weight in zip(probabilities, weights):
        total += weight * member.astype(np.float64)
    return total


def greedy_selection(candidates: Sequence[np.ndarray], labels: np.ndarray, size: int) -> dict[int, float]:
    """The chosen candidates by index, in the order first chosen, with their weights (see the module's docstring)."""
    steps: list[int] = []
    best_score, best_length = None, 0
    for _ in range(size):
        scores = [score(combined(candidates, steps + [index]), labels) for index in range(len(candidates))]
        chosen = max(range(len(candidates)), key=lambda index: (scores[index], -index))
        steps.append(chosen)
        if best_score is None or scores[chosen] > best_score:
            best_score, best_length = scores[chosen], len(steps)
    return weights_of(steps[:best_length])


def weights_of(steps: list[int]) -> dict[int, float]:
    """Each chosen index's share of the steps, in the order first chosen."""
    return {index: steps.count(index) / len(steps) for index in dict.fromkeys(steps)}


def combined(candidates: Sequence[np.ndarray], steps: list[int]) -> np.ndarray:
    chosen = weights_of(steps)
    return average([candidates[index] for index in chosen], list(chosen.values()))


def mirrored_helps(plain: np.ndarray, mirrored: np.ndarray, labels: np.ndarray) -> bool:
    """Whether the mirrored view scores higher on validation than the drawings as they are (a tie keeps them)."""
    return score(mirrored, labels) > score(plain, labels)
