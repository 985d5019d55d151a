"""Greedy ensemble selection on made-up probabilities: what it must pick, that it is never worse on validation than
the best single candidate, how ties go, and the mirrored view taken only where validation says it helps."""

from __future__ import annotations

import numpy as np
import pytest

from quickdraw.ensemble import average, greedy_selection, mirrored_helps, score

LABELS = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])


def sure(predicted, classes: int = 3, confidence: float = 0.8) -> np.ndarray:
    """Probabilities that put `confidence` on each predicted class and share the rest."""
    probabilities = np.full((len(predicted), classes), (1 - confidence) / (classes - 1), dtype=np.float32)
    probabilities[np.arange(len(predicted)), predicted] = confidence
    return probabilities


def right_on(indices, confidence: float = 0.8) -> np.ndarray:
    """Right on the drawings at `indices`, wrong (the next class) elsewhere."""
    predicted = (LABELS + 1) % 3
    predicted[list(indices)] = LABELS[list(indices)]
    return sure(predicted, confidence=confidence)


def test_the_first_step_is_the_best_single_candidate_and_size_1_stops_there():
    candidates = [right_on(range(5)), right_on(range(8)), right_on(range(6))]
    assert greedy_selection(candidates, LABELS, 1) == {1: 1.0}


def test_three_candidates_each_wrong_on_a_different_third_are_averaged_into_one_right_on_all():
    # Each is right on 7 of 10 (C on 6); averaged in equal parts, two right outvote one wrong on every drawing.
    a, b, c = right_on(range(3, 10)), right_on([0, 1, 2, 6, 7, 8, 9]), right_on(range(6))
    chosen = greedy_selection([a, b, c], LABELS, 10)
    assert sorted(chosen) == [0, 1, 2] and sum(chosen.values()) == pytest.approx(1)
    assert score(average([a, b, c], list(chosen.values())), LABELS)[0] == 1.0


def test_with_replacement_a_candidate_can_weigh_more_than_another():
    # B alone is the best; A, right where B is wrong on two drawings, helps only at a smaller weight.
    a, b = right_on([0, 1, 2, 7, 8], 0.95), right_on(range(7), 0.9)
    chosen = greedy_selection([a, b], LABELS, 10)
    assert chosen[1] > chosen[0] > 0
    # Each weight is the share of the steps that chose it, of at most 10 steps.
    assert any(all(weight * steps == pytest.approx(round(weight * steps)) for weight in chosen.values())
               for steps in range(3, 11))
    assert score(average([a, b], [chosen[0], chosen[1]]), LABELS) > score(b, LABELS)


@pytest.mark.parametrize("seed", range(20))
def test_never_worse_on_validation_than_the_best_single_candidate(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, 50)
    candidates = [rng.dirichlet(np.ones(4), 50).astype(np.float32) for _ in range(8)]
    for n, candidate in enumerate(candidates):  # some better than chance, by different amounts
        candidate[np.arange(50), labels] += 0.1 * n
        candidate /= candidate.sum(1, keepdims=True)
    for size in (1, 3, 10, 25):
        chosen = greedy_selection(candidates, labels, size)
        ensemble = average([candidates[i] for i in chosen], list(chosen.values()))
        assert score(ensemble, labels) >= max(score(c, labels) for c in candidates)
        assert sum(round(weight * size) for weight in chosen.values()) <= size


def test_a_candidate_that_only_hurts_is_never_added():
    perfect = sure(LABELS, confidence=0.99)
    chosen = greedy_selection([right_on(range(5)), perfect, right_on(range(9))], LABELS, 10)
    assert chosen == {1: 1.0}


def less_sure_where_wrong(probabilities: np.ndarray) -> np.ndarray:
    """The same predictions with a lower log loss: where they are wrong, 0.5 on the class predicted, 0.4 on the
    truth (3 classes)."""
    wrong = np.flatnonzero(probabilities.argmax(1) != LABELS)
    better = probabilities.copy()
    better[wrong] = 0.1
    better[wrong, probabilities[wrong].argmax(1)] = 0.5
    better[wrong, LABELS[wrong]] = 0.4
    return better


def test_ties_go_to_the_earlier_candidate_then_accuracy_before_loss():
    same = right_on(range(7))
    assert greedy_selection([same, same.copy()], LABELS, 5) == {0: 1.0}  # identical: the first, alone
    assert greedy_selection([same, less_sure_where_wrong(same)], LABELS, 1) == {1: 1.0}  # same accuracy: lower loss
    better_but_unsure = right_on(range(8), 0.4)
    assert score(better_but_unsure, LABELS)[1] < score(same, LABELS)[1]
    assert greedy_selection([same, better_but_unsure], LABELS, 1) == {1: 1.0}  # accuracy first


def test_the_mirrored_view_only_where_it_scores_higher_on_validation():
    plain = right_on(range(6))
    assert mirrored_helps(plain, right_on(range(7)), LABELS)
    assert not mirrored_helps(plain, right_on(range(5)), LABELS)
    assert not mirrored_helps(plain, plain.copy(), LABELS)  # a tie keeps the drawings as they are
    assert mirrored_helps(plain, less_sure_where_wrong(plain), LABELS)  # same accuracy, lower loss


def test_the_average_is_weighted_and_sums_in_the_order_given():
    a, b = right_on(range(3)), right_on(range(6))
    np.testing.assert_allclose(average([a, b], [0.25, 0.75]), 0.25 * a + 0.75 * b, rtol=1e-6)
    assert np.array_equal(average([a, b], [0.5, 0.5]), average([a, b], [0.5, 0.5]))
