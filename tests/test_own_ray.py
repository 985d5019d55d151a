"""Searches that run in a Ray of their own and can always start (issue 28): a stranger's `ray start` cluster on this
machine never captures the default run, and `--address auto` joins it only while it answers; a trial that no node
can hold, a grid too large to generate, and a seed the samplers refuse are each one line and exit code 2, before
anything is written; a Ctrl-C while Tune still generates a large grid ends with the resume line."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import SYNTHETIC_CLASSES, copy_experiment, run_cli, run_in_process, start_cli, write_class_files
from experiment_checks import trial_dirs
from ray_cluster import RAY, free_port, kill_processes
from quickdraw.config import MAX_SEED, MAX_TRIALS

TINY = ["--classes", ",".join(SYNTHETIC_CLASSES), "--split", "60,15,15", "--epochs", 1, "--lrs", "0.01",
        "--batch-sizes", "16"]


def tiny_run(data: Path, storage: Path, name: str, *flags) -> list:
    return ["--data-dir", data, *TINY, "--storage", storage, "--name", name, *flags]


def one_line_error(result: subprocess.CompletedProcess, *parts: str, after_ray_lines: bool = False) -> str:
    """The error line, which holds every one of `parts`; the only line on stderr but, with `after_ray_lines`, the lines
    Ray logs as it joins a cluster (with --address auto and several Rays here, which one it joins)."""
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-3000:])
    lines = result.stderr.splitlines()
    errors = [line for line in lines if line.startswith("tune_search.py")]
    assert errors == lines[-1:] and (after_ray_lines or len(lines) == 1), result.stderr[-3000:]
    assert all(part in lines[-1] for part in parts), result.stderr[-3000:]
    return lines[-1]


# --- flags refused before anything is written -------------------------------------------------------------------------

@pytest.mark.parametrize("command,seed", [("run", "-1"), ("convert", "-1"), ("run", str(MAX_SEED + 1)),
                                          ("convert", "1.5")])
def test_a_seed_the_samplers_refuse_is_one_line_at_parsing(tmp_path, command, seed):
    data = write_class_files(tmp_path / "data", count=30)
    result = run_in_process(command, "--data-dir", data, *TINY[:4], "--seed", seed, "--storage", tmp_path / "results")
    one_line_error(result, "argument --seed", f"from 0 to {MAX_SEED}", repr(seed))
    assert not (tmp_path / "results").exists()


def test_a_grid_too_large_to_generate_is_one_line_with_its_size(tmp_path):
    lrs = ",".join(f"{0.001 * (1 + i / 1000):.6f}" for i in range(101))
    result = run_in_process("--data-dir", tmp_path, "--lrs", lrs, "--batch-sizes", ",".join(map(str, range(1, 101))),
                            "--storage", tmp_path / "results")
    one_line_error(result, "the grid has 10,100 combinations (101 lr x 100 batch_size)", f"{MAX_TRIALS:,}")
    sampled = run_in_process("--data-dir", tmp_path, "--search", "random", "--num-samples", MAX_TRIALS + 1,
                             "--storage", tmp_path / "results")
    one_line_error(sampled, f"--num-samples {MAX_TRIALS + 1:,}", f"at most {MAX_TRIALS:,} trials")
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("flags,needs", [
    (("--cpus-per-trial", (os.cpu_count() or 1) + 1), f"{(os.cpu_count() or 1) + 1} CPUs"),
    (("--gpus-per-trial", 1), "1 GPU"),
])
def test_a_trial_this_machine_cannot_hold_is_refused_before_ray_starts(tmp_path, flags, needs):
    """Tune would wait for room forever: the run never ended."""
    import ray
    import torch

    if flags[0] == "--gpus-per-trial" and torch.cuda.device_count():
        pytest.skip("this machine has a GPU")
    data = write_class_files(tmp_path / "data", count=30)
    result = run_in_process(*tiny_run(data, tmp_path / "results", "unfit", *flags))
    one_line_error(result, f"{flags[0]} {flags[1]}: a trial needs", needs, f"this machine has {os.cpu_count()} CPUs",
                   "no trial could ever start", "--address")
    assert not ray.is_initialized() and not (tmp_path / "results").exists()


# --- a stranger's Ray on this machine ---------------------------------------------------------------------------------

@contextlib.contextmanager
def strangers_ray(ray_tmp: Path, cpus: int):
    """`ray start --head --block` as another user starts it, from another folder: a plain start but for its port (a
    free one) and CPUs. RAY_TMPDIR stands for /tmp, where a plain start keeps its sessions and the address that
    ray.init() and --address auto join (ray/ray_current_cluster), so that this machine's other Rays are left alone."""
    home = ray_tmp / "elsewhere"
    home.mkdir()
    port = free_port()
    with open(ray_tmp / "stranger.log", "w") as log:
        head = subprocess.Popen([RAY, "start", "--head", f"--port={port}", f"--num-cpus={cpus}", "--block",
                                 "--disable-usage-stats"], cwd=home, env={**os.environ, "RAY_TMPDIR": str(ray_tmp)},
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not answers(port) or not (ray_tmp / "ray" / "ray_current_cluster").is_file():
            assert head.poll() is None and time.monotonic() < deadline, (ray_tmp / "stranger.log").read_text()[-3000:]
            time.sleep(0.5)
        yield head
    finally:
        stop(head)


def answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def stop(head: subprocess.Popen) -> None:
    """The stranger's cluster killed, as a crash or SIGKILL ends it: its process group, not `ray stop` (which ends
    every Ray of this user) nor a clean stop (which would remove the address it left)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(head.pid, signal.SIGKILL)
    head.wait()


def drivers_joined(session: Path) -> list[str]:
    """The drivers that joined the cluster of `session`: each writes a log of its core worker there."""
    return [log.name for log in (session / "logs").glob("python-core-driver-*")]


def test_the_suite_starts_no_ray_implicitly():
    """conftest turns off the ray.init() of Ray's first ray.put or ray.get, which would join the cluster `ray start`
    last started on this machine; the tests start their Rays with an address ("local" or their cluster's)."""
    import ray

    if ray.is_initialized():
        pytest.skip("a Ray of this test process runs")
    with pytest.raises(ray.exceptions.RaySystemError, match="Ray has not been started yet"):
        ray.put(1)
    assert not ray.is_initialized()


@pytest.mark.slow
def test_a_strangers_ray_never_captures_the_run(tmp_path):
    data = write_class_files(tmp_path / "data", count=30)
    storage = tmp_path / "results"
    ray_tmp = Path(tempfile.mkdtemp(prefix="qdown-", dir="/tmp"))  # short: Ray's socket paths fit in 107 bytes
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp)}
    cpus_here = os.cpu_count() or 1
    theirs = cpus_here + 5
    remembered = ray_tmp / "ray" / "ray_current_cluster"
    try:
        with strangers_ray(ray_tmp, theirs) as head:
            session = (ray_tmp / "ray" / "session_latest").resolve()
            own = run_cli(*tiny_run(data, storage, "beside"), env=env, timeout=300)
            assert own.returncode == 0, own.stderr[-3000:]
            assert "Connecting to" not in own.stderr + own.stdout
            hardware = json.loads((storage / "beside" / "search.json").read_text())["run"]["hardware"]
            assert hardware["nodes"] == 1 and hardware["cpus"] <= cpus_here, hardware
            assert drivers_joined(session) == []

            # --address auto joins it, as documented: the check of a trial's size names its CPUs.
            joined = run_cli(*tiny_run(data, storage, "joined", "--address", "auto", "--cpus-per-trial", theirs + 1),
                             env=env, timeout=180)
            one_line_error(joined, f"the Ray cluster at --address auto has {theirs} CPUs and no GPU",
                           "ask for at most what one node has", after_ray_lines=True)
            assert drivers_joined(session) and not (storage / "joined").exists()
            stop(head)

        assert remembered.is_file()  # Ray still names the dead cluster, which ray.init() would retry for minutes
        started = time.monotonic()
        dead = run_cli(*tiny_run(data, storage, "dead", "--address", "auto"), env=env, timeout=120)
        one_line_error(dead, f"--address auto ({remembered} names", "nothing answers there",
                       "or leave out --address to run on this machine")
        assert time.monotonic() - started < 60 and not (storage / "dead").exists()

        after = run_cli(*tiny_run(data, storage, "after"), env=env, timeout=300)  # no longer retries it: at once
        assert after.returncode == 0, after.stderr[-3000:]
        assert json.loads((storage / "after" / "search.json").read_text())["run"]["hardware"]["cpus"] <= cpus_here
    finally:
        kill_processes(str(ray_tmp))  # whatever the stranger and the runs left under its temp folder
        shutil.rmtree(ray_tmp, ignore_errors=True)


# --- Ctrl-C while Tune generates the grid ------------------------------------------------------------------------------

@pytest.mark.slow
def test_ctrl_c_while_tune_generates_a_large_grid_ends_with_the_resume_line(tmp_path):
    """Tune generates a whole grid before its first trial and heeds a Ctrl-C only after: a quarter of the largest grid
    takes seconds here (the largest, 15-35 s), and the Ctrl-C lands while it does."""
    data = write_class_files(tmp_path / "data", count=30)
    experiment = tmp_path / "results" / "large"
    side = round((MAX_TRIALS / 4) ** 0.5)
    lrs = ",".join(f"{0.001 * (1 + i / 1000):.6f}" for i in range(side))
    driver = start_cli("--data-dir", data, *TINY[:4], "--epochs", 1, "--lrs", lrs,
                       "--batch-sizes", ",".join(map(str, range(1, side + 1))),
                       "--storage", experiment.parent, "--name", experiment.name)
    before = []
    for line in driver.stdout:  # Tune prints this line before it generates the grid
        before.append(line)
        if line.startswith("View detailed results here"):
            break
    time.sleep(2)  # into the grid's generation (a Ctrl-C before it is heeded as soon, and must end the same way)
    driver.send_signal(signal.SIGINT)
    rest = driver.communicate(timeout=300)[0]
    assert driver.returncode in (1, 130), "".join(before) + rest[-3000:]
    assert rest.splitlines()[-1].endswith(f"to go on: python tune_search.py resume {experiment}"), rest[-3000:]


def test_a_search_stopped_before_its_first_trial_names_the_command_that_goes_on(grid_experiment, tmp_path, capsys):
    """What a Ctrl-C leaves when Tune heeds it before it has made any trial: a report of none, exit code 1 and the
    resume line (the summary's table of no rows was an IndexError)."""
    from quickdraw.cli import finish
    from quickdraw.storage import Location

    experiment = copy_experiment(grid_experiment, tmp_path)
    for state in experiment.glob("experiment_state-*.json"):
        state.write_text(json.dumps({**json.loads(state.read_text()), "trial_data": []}))
    for trial in trial_dirs(experiment):
        shutil.rmtree(trial)
    assert finish(Location.parse(str(experiment)), None) == 1
    out = capsys.readouterr().out
    assert "No trial has started." in (experiment / "summary.md").read_text()
    assert out.splitlines()[-1] == f"Not every trial finished; to go on: python tune_search.py resume {experiment}"


def test_resume_refuses_trials_this_machine_cannot_hold_before_ray_starts(grid_experiment, tmp_path):
    """A search resumed on a smaller machine than it ran on would wait for room forever."""
    import ray

    experiment = copy_experiment(grid_experiment, tmp_path)
    record = experiment / "search.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "resources": {"cpu": 1000, "gpu": 0}}))
    before = sorted(p.relative_to(experiment) for p in experiment.rglob("*"))
    result = run_in_process("resume", experiment)
    one_line_error(result, f"{experiment}'s trials (search.json): a trial needs 1000 CPUs and no GPU",
                   f"this machine has {os.cpu_count()} CPUs")
    assert not ray.is_initialized() and sorted(p.relative_to(experiment) for p in experiment.rglob("*")) == before
