"""The grid on a real Ray cluster: a head and two worker nodes started with `ray start` on loopback.

The worker-node failure test kills a node, so it runs last in this module.
"""

import json
import multiprocessing
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import SYNTHETIC_CLASSES, start_cli, write_class_files
from experiment_checks import results, trial_dirs
from quickdraw.config import DataConfig, SplitSizes
from quickdraw.storage import Location
from ray_cluster import LoopbackCluster

pytestmark = pytest.mark.slow  # a Ray cluster of several processes


@pytest.fixture(scope="module")
def cluster():
    cluster = LoopbackCluster(workers=2, cpus_per_node=1)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def grid_args(cluster, data, storage, name, split, epochs, batch_size, lrs: str | None = "0.01,0.001,0.0001"):
    return [
        "--address", cluster.address, "--data-dir", data, "--classes", ",".join(SYNTHETIC_CLASSES),
        "--split", split, *(["--lrs", lrs] if lrs else []), "--batch-sizes", batch_size, "--epochs", epochs,
        "--storage", storage, "--name", name,
    ]


def finish(driver, timeout=300) -> str:
    output, _ = driver.communicate(timeout=timeout)
    assert driver.returncode == 0, output[-4000:]
    return output


def node_history(experiment: Path) -> dict[str, list[tuple[int, str]]]:
    """(epoch, node_ip) of every result each trial reported, by trial folder name."""
    return {t.name: [(r["epoch"], r["node_ip"]) for r in results(t)] for t in trial_dirs(experiment)}


def _driver(address: str, data: Path, storage: str, barrier, outcomes) -> None:
    """A driver process: join the cluster, wait for the other, then ask for the split."""
    import ray

    from quickdraw.cluster import convert_once

    ray.init(address=address, logging_level="ERROR")
    barrier.wait()
    conversion, _ = convert_once(DataConfig(data, SYNTHETIC_CLASSES, SplitSizes(12_000, 3_000, 1_500)),
                                 Location.parse(storage))
    outcomes.put(conversion.reused)
    ray.shutdown()


def test_drivers_asking_for_the_same_split_at_the_same_moment_convert_it_once(cluster, tmp_path, monkeypatch):
    data = write_class_files(tmp_path / "data", count=6_000)
    storage = tmp_path / "results"
    # The cluster's token settings must be in the environment before the drivers import Ray.
    for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
        monkeypatch.setenv(key, cluster.env[key])
    spawn = multiprocessing.get_context("spawn")
    barrier, outcomes = spawn.Barrier(2), spawn.Queue()
    drivers = [
        spawn.Process(target=_driver, args=(cluster.address, data, str(storage), barrier, outcomes)) for _ in range(2)
    ]
    for driver in drivers:
        driver.start()
    reused = sorted(outcomes.get(timeout=120) for _ in drivers)
    for driver in drivers:
        driver.join(timeout=60)
    assert reused == [False, True]
    assert len(list((storage / "datasets").iterdir())) == 1


def test_the_trials_spread_over_every_node_and_one_that_loses_its_node_continues_elsewhere(cluster, tmp_path):
    """An Optuna search on the head and two worker nodes, one trial a node; a worker node dies mid-trial and its trial
    continues on another node from its checkpoint."""
    data = write_class_files(tmp_path / "data", count=1_200)
    storage = tmp_path / "results"
    # Epochs of about 0.6 s here (three trials on two cores): 20 of them keep a trial on the victim long enough for its
    # results to reach the experiment folder (and this test) and the node to be killed before the trial ends (with 10
    # epochs of 3,000 drawings, it ended first once).
    epochs = 20
    experiment = storage / "failover"
    (tmp_path / "space.yaml").write_text("lr: {loguniform: [1.0e-4, 1.0e-2]}\n")
    args = grid_args(cluster, data, storage, "failover", "2000,200,100", epochs, batch_size=32, lrs=None)
    # Tune keeps one trial of a searcher such as Optuna's pending at a time, so each would wait for the one before to
    # start (seconds a node here); all three pending at once start together.
    driver = start_cli(*args, "--search", "optuna", "--num-samples", 3, "--space", tmp_path / "space.yaml",
                       env={**cluster.env, "TUNE_MAX_PENDING_TRIALS_PG": "3"})
    victim = cluster.worker_ips[0]
    deadline = time.monotonic() + 180
    while not any(2 <= epoch < epochs and ip == victim for epoch, ip in _latest_results(experiment)):
        assert time.monotonic() < deadline and driver.poll() is None, "no trial ran two epochs on the victim node"
        time.sleep(0.2)
    assert cluster.kill_node(victim) > 0
    output = finish(driver)
    assert "converted into" in output

    nodes = {ip for history in node_history(experiment).values() for _, ip in history}
    assert set(cluster.worker_ips) < nodes and len(nodes) == 3, nodes  # every node ran a trial

    moved = 0
    for trial, history in node_history(experiment).items():
        assert history[-1][0] == epochs, (trial, history)
        switches = [i for i in range(1, len(history)) if history[i][1] != history[i - 1][1]]
        for i in switches:
            moved += 1
            assert history[i - 1][1] == victim
            assert history[i][0] > 1, f"{trial} started over after its node died: {history}"
            assert history[i][0] <= history[i - 1][0] + 1, f"{trial} skipped epochs: {history}"
    assert moved >= 1
    table = pd.read_csv(experiment / "summary.csv")
    assert len(table) == 3 and (table.status == "finished").all() and (table.epochs == epochs).all()
    assert table.lr.nunique() == 3 and table.lr.between(1e-4, 1e-2).all()


def _latest_results(experiment: Path):
    """(epoch, node_ip) of each running trial's latest result; a line being written is skipped."""
    for result_file in experiment.glob("lr=*/result.json"):
        for line in reversed(result_file.read_text().splitlines()):
            try:
                row = json.loads(line)
            except ValueError:
                continue
            yield row["epoch"], row["node_ip"]
            break
