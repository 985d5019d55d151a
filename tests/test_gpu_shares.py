"""GPUs per trial (issue 17). Ray puts a fractional GPU request on one GPU, never across two, so the default share is
1 / ceil(trials / GPUs): all 15 trials of the seed grid run at once on 1, 2, 4 or more GPUs, and the CPUs beside them
are a share of each GPU node's. Ray is told of GPUs this machine lacks; the Tune trials that prove it train nothing:
each records its GPU and waits until all 15 have arrived (the scheduling is what is tested, with real Ray and Tune
and the real trial_resources)."""

from __future__ import annotations

import collections
import math
import shutil
import sys
import tempfile
import time

import pytest
import ray
from ray import cloudpickle, tune
from ray.cluster_utils import Cluster

from quickdraw.config import SearchConfig
from quickdraw.errors import UserError
from quickdraw.cluster import trial_resources

GRID = SearchConfig()  # the seed grid
TRIALS = GRID.concurrent_trials  # 15, all at once
BARRIER = "gpu-shares-barrier"
STALL_S = 45  # a trial gives up when no other trial has arrived for this long: the rest cannot start


# --- the rule, a pure function of the nodes' resources ------------------------------------------------------------


@pytest.mark.parametrize("nodes, expected", [
    pytest.param([{"CPU": 2}], {"cpu": 1.0, "gpu": 0}, id="no-gpu"),
    pytest.param([{"CPU": 16, "GPU": 1}], {"cpu": 1.0, "gpu": 0.0666}, id="1-gpu"),  # 15 on the GPU
    pytest.param([{"CPU": 8, "GPU": 2}], {"cpu": 0.5333, "gpu": 0.125}, id="2-gpus"),  # 8 + 7; 8 CPUs / 15
    pytest.param([{"CPU": 6, "GPU": 4}], {"cpu": 0.4, "gpu": 0.25}, id="4-gpus"),  # 4 + 4 + 4 + 3; 6 CPUs / 15
    pytest.param([{"CPU": 64, "GPU": 32}], {"cpu": 1.0, "gpu": 1.0}, id="more-gpus-than-trials"),
    # A CPU-only head takes no trial; each 2-GPU node takes 2 x 4 of them: 6 CPUs / 8.
    pytest.param([{"CPU": 2}, {"CPU": 6, "GPU": 2}, {"CPU": 6, "GPU": 2}], {"cpu": 0.75, "gpu": 0.25},
                 id="two-nodes-of-2-gpus"),
    # 4 trials a GPU: the 1-GPU node takes 4 (2 CPUs / 4), the 3-GPU node 12 (1 CPU each): the smaller share.
    pytest.param([{"CPU": 2, "GPU": 1}, {"CPU": 32, "GPU": 3}], {"cpu": 0.5, "gpu": 0.25}, id="unequal-nodes"),
])
def test_default_shares_let_every_trial_run_at_once(nodes, expected):
    assert trial_resources(GRID, nodes) == expected


def test_the_share_fits_the_trials_on_the_gpus_for_every_count():
    """Each GPU takes a whole number of trials, at most 1 GPU each: every trial fits, and none is given a share it
    cannot use (the old GPUs / trials, 4 / 15 = 0.2666, fitted 3 a GPU: 12 of 15)."""
    for gpus in range(1, 17):
        for trials in range(1, 41):
            config = SearchConfig(search="random", num_samples=trials)
            share = trial_resources(config, [{"CPU": 1000, "GPU": gpus}])["gpu"]
            per_gpu = math.ceil(trials / gpus)
            assert share == math.floor(10_000 / per_gpu) / 10_000, (gpus, trials)
            assert round(share * 10_000) * per_gpu <= 10_000 and gpus * per_gpu >= trials


def test_flags_override_the_shares():
    one_gpu = [{"CPU": 2, "GPU": 1}]
    assert trial_resources(SearchConfig(cpus_per_trial=2), one_gpu) == {"cpu": 2, "gpu": 0.0666}
    # Half a GPU each: 2 trials on the GPU, so each may take one of the node's 2 CPUs.
    assert trial_resources(SearchConfig(gpus_per_trial=0.5), one_gpu) == {"cpu": 1.0, "gpu": 0.5}
    assert trial_resources(SearchConfig(gpus_per_trial=0.25), one_gpu) == {"cpu": 0.5, "gpu": 0.25}
    assert trial_resources(SearchConfig(gpus_per_trial=0), one_gpu) == {"cpu": 1.0, "gpu": 0}  # on the CPU
    # --max-concurrent-trials 2: each of the 2 takes half the GPU.
    assert trial_resources(SearchConfig(max_concurrent_trials=2), one_gpu) == {"cpu": 1.0, "gpu": 0.5}


@pytest.mark.parametrize("gpus", [2, 1.5, float("nan"), -0.5])
def test_more_than_one_gpu_per_trial_is_refused(gpus):
    with pytest.raises(UserError, match="--gpus-per-trial"):
        SearchConfig(gpus_per_trial=gpus).validate()


@pytest.mark.parametrize("cpus", [0, float("inf"), float("nan")])
def test_cpus_per_trial_must_be_a_finite_number_above_0(cpus):
    with pytest.raises(UserError, match="--cpus-per-trial"):
        SearchConfig(cpus_per_trial=cpus).validate()


# --- Ray itself: all 15 trials at once ------------------------------------------------------------------------------


@ray.remote(num_cpus=0)
class Barrier:
    """Where the trials say which GPU they hold, and wait for each other."""

    def __init__(self):
        self.arrived: dict[int, tuple[str, tuple]] = {}
        self.last = time.monotonic()

    def arrive(self, trial: int, node: str, gpu_ids: list) -> None:
        self.arrived[trial] = (node, tuple(gpu_ids))
        self.last = time.monotonic()

    def state(self) -> tuple[int, float]:
        return len(self.arrived), time.monotonic() - self.last

    def arrivals(self) -> dict[int, tuple[str, tuple]]:
        return self.arrived


def wait_for_every_trial(config: dict) -> None:
    """A Tune trial: record this trial's node and GPU ids, then wait until all have arrived, i.e. are RUNNING together;
    fail if none arrives for STALL_S (the others wait for resources that never come free)."""
    barrier = ray.get_actor(BARRIER)
    barrier.arrive.remote(config["trial"], ray.get_runtime_context().get_node_id(), ray.get_gpu_ids())
    while True:
        count, quiet = ray.get(barrier.state.remote())
        if count == config["trials"]:
            break
        if quiet > STALL_S:
            raise TimeoutError(f"only {count} of {config['trials']} trials ever ran at once")
        time.sleep(0.2)
    tune.report({"arrived": count})


@pytest.fixture
def pickled_by_value():
    """Ray's workers get this module's trial and actor by value: importing the module there would import torch."""
    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    yield
    cloudpickle.unregister_pickle_by_value(module)


def run_all_at_once(tmp_path, monkeypatch) -> tuple[dict, dict[int, tuple[str, tuple]]]:
    """The seed grid's 15 trials with the resources trial_resources gives on the running Ray; returns those resources
    and each trial's (node, GPU ids)."""
    monkeypatch.setenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    resources = trial_resources(GRID, [node["Resources"] for node in ray.nodes() if node["Alive"]])
    barrier = Barrier.options(name=BARRIER).remote()
    grid = tune.Tuner(
        tune.with_resources(wait_for_every_trial, resources),
        param_space={"trial": tune.grid_search(list(range(TRIALS))), "trials": TRIALS},
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="shares", verbose=0),
    ).fit()
    assert not grid.errors, grid.errors[0]
    arrivals = ray.get(barrier.arrivals.remote())
    assert sorted(arrivals) == list(range(TRIALS))
    return resources, arrivals


def assert_shared_evenly(arrivals: dict[int, tuple[str, tuple]], gpus: int) -> None:
    """One GPU id each; no GPU holds more trials than ceil(15 / GPUs), so every GPU holds some."""
    assert all(len(ids) == 1 for _, ids in arrivals.values()), arrivals
    per_gpu = collections.Counter((node, ids[0]) for node, ids in arrivals.values())
    assert len(per_gpu) == gpus and max(per_gpu.values()) == math.ceil(TRIALS / gpus), per_gpu


@pytest.fixture
def ray_with_gpus(request):
    gpus, cpus = request.param
    ray.init(address="local", num_cpus=cpus, num_gpus=gpus, include_dashboard=False, logging_level="WARNING")
    yield gpus
    ray.shutdown()


@pytest.mark.slow
# One GPU shared by all 15 trials; four GPUs shared unevenly (4 + 4 + 4 + 3) run on two nodes below, and the other
# counts' shares are worked out above (each count here is a Ray of 15 trial processes: seconds of the suite's time).
@pytest.mark.parametrize("ray_with_gpus, expected", [
    pytest.param((1, 16), {"cpu": 1.0, "gpu": 0.0666}, id="1-gpu"),
], indirect=["ray_with_gpus"])
def test_all_trials_run_at_once_on_one_node(ray_with_gpus, expected, pickled_by_value, tmp_path, monkeypatch):
    resources, arrivals = run_all_at_once(tmp_path, monkeypatch)
    assert resources == expected
    assert_shared_evenly(arrivals, ray_with_gpus)


@pytest.fixture
def two_gpu_nodes(monkeypatch):
    """A CPU-only head, where the driver runs, and two nodes of 2 GPUs and 6 CPUs each. In a Ray temp folder of its
    own: Ray's Cluster writes its address where `ray start` does, and deletes that file at its end, which would
    redirect and then forget a user's `ray start` cluster."""
    ray_tmp = tempfile.mkdtemp(prefix="qdgpu-", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=6, num_gpus=2)
        ray.init(address=cluster.address, logging_level="WARNING")
        cluster.wait_for_nodes()
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.slow
def test_all_trials_run_at_once_on_two_nodes_of_2_gpus(two_gpu_nodes, pickled_by_value, tmp_path, monkeypatch):
    resources, arrivals = run_all_at_once(tmp_path, monkeypatch)
    # 4 trials a GPU, 8 a node; 6 CPUs / 8 each. The old shares, 4 / 15 GPU and 14 / 15 CPU, fitted 6 a node.
    assert resources == {"cpu": 0.75, "gpu": 0.25}
    assert_shared_evenly(arrivals, 4)
    assert len({node for node, _ in arrivals.values()}) == 2
