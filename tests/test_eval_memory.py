"""Validating and testing hold memory bounded by the evaluation batch, not by the set (issue 28): a trial's peak grew
by several KB per validation and test drawing, because each batch's output, kept for one torch.cat at the end, was
allocated between that batch's large temporaries and the next's, so that glibc's heap could not reuse their space.

Measured as a trial computes, without Ray: the training core on read-only uint8 drawings (as the object store hands
them), on the CPU, in a thread of its own (Ray Tune runs a trial's function in one: its own heap arena), the
process's RSS sampled every millisecond while it runs, for N and for 4N drawings. What may grow from N to 4N is
the probabilities (fp32, a view's: CLASSES x 4 bytes a drawing) and noise."""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from torch import nn

from conftest import REPO
from quickdraw.compute import Compute
from quickdraw.training import EVAL_BATCH_SIZE, evaluate, predict_probabilities, to_device

CLASSES = 3
SMALL = 50_000  # drawings; the large set has 4x as many (25 batches and 98 of EVAL_BATCH_SIZE)
PROBABILITY_BYTES = CLASSES * 4
SLACK = 64 * 2**20  # noise; before the fix, validating the 150,000 more drawings took about 180 MiB more


def tiny_network(classes: int = CLASSES, dropout: float = 0.0) -> nn.Module:
    """Cheap to run, so that the sets can be large: what is measured is what the loop keeps, not the network."""
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, classes))


@pytest.fixture(scope="module")
def large_set():
    """4 x SMALL read-only (N, 1, 28, 28) uint8 drawings and their labels, viewed as a trial views its split."""
    rng = np.random.default_rng(0)
    drawings = np.tile(rng.integers(0, 256, (1000, 28, 28), dtype=np.uint8), (4 * SMALL // 1000, 1, 1))
    labels = np.resize(np.arange(CLASSES, dtype=np.int64), 4 * SMALL)
    drawings.setflags(write=False)
    labels.setflags(write=False)
    return to_device((drawings, labels), torch.device("cpu"))


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def peak_growth(work) -> int:
    """How far the process's RSS rose above where it was, at its highest while `work()` ran in a thread of its own.
    First the heap is left as a trial's training leaves it, and its free memory handed back to the system."""
    # A freed block of 30 MiB raises glibc's threshold for serving a block by mmap to that size, as a trial's
    # batches do: blocks of a batch's size then come from the heap, which holds what they leave behind.
    torch.empty(30 * 2**20, dtype=torch.uint8)
    ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
    start = peak = rss()
    running = True

    def sample():
        nonlocal peak
        while running:
            peak = max(peak, rss())
            threading.Event().wait(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with ThreadPoolExecutor(1) as worker:
            worker.submit(work).result()
    finally:
        running = False
        sampler.join()
    return max(peak, rss()) - start


def growth_from_n_to_4n(run, large_set) -> int:
    drawings, labels = large_set
    run(drawings[:SMALL], labels[:SMALL])  # torch's and the model's one-time allocations
    small = peak_growth(lambda: run(drawings[:SMALL], labels[:SMALL]))
    large = peak_growth(lambda: run(drawings, labels))
    return large - small


@pytest.fixture
def network():
    torch.manual_seed(0)
    return tiny_network().eval()


def test_validating_holds_a_batch_s_memory_whatever_the_set_s_size(large_set, network):
    compute = Compute(torch.device("cpu"))
    grown = growth_from_n_to_4n(lambda x, y: evaluate(network, x, y, compute), large_set)
    assert grown < SLACK, f"validating 3 x {SMALL} more drawings took {grown / 2**20:.0f} MiB more"


def test_testing_holds_its_probabilities_and_a_batch_s_memory(large_set, network):
    """In the mirrored view, as a trial of a network trained on mirror images tests (two passes a batch); both views
    give each drawing's probabilities, up to the last, partial batch."""
    compute = Compute(torch.device("cpu"))
    grown = growth_from_n_to_4n(lambda x, y: predict_probabilities(network, x, compute, mirrored=True), large_set)
    allowed = 3 * SMALL * PROBABILITY_BYTES + SLACK
    assert grown < allowed, f"testing 3 x {SMALL} more drawings took {grown / 2**20:.0f} MiB more"
    drawings = large_set[0][:EVAL_BATCH_SIZE + 5]
    some = drawings[-5:].float().div(255)
    with torch.no_grad():
        plain, flipped = network(some).softmax(1), network(some.flip(-1)).softmax(1)
    for mirrored, expected in ((False, plain), (True, (plain + flipped) / 2)):
        probabilities = predict_probabilities(network, drawings, compute, mirrored)
        assert probabilities.shape == (len(drawings), CLASSES) and probabilities.dtype == torch.float32
        torch.testing.assert_close(probabilities[-5:], expected)


def test_memory_scaling_states_what_each_validation_or_test_drawing_adds_to_a_trial(monkeypatch):
    """benchmarks/memory_scaling.py --splits: against the case of the same training part with the fewest."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import memory_scaling

    rows = [{"split": [600, 100, 100], "trials": 1, "trial_own_bytes": 500e6},
            {"split": [600, 1100, 1100], "trials": 1, "trial_own_bytes": 502e6},
            {"split": [600, 1100, 1100], "trials": 2, "trial_own_bytes": 600e6},
            {"split": [900, 100, 100], "trials": 1, "trial_own_bytes": 510e6}]
    memory_scaling.add_evaluated_drawing_cost(rows)
    assert [row["trial_own_added_per_evaluated_drawing_bytes"] for row in rows] == [None, 1000, None, None]
